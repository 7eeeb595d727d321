//! The psql-driven ops scripts, run as a user would against a real database: their output
//! and their effects.

use std::process::{Command, Output};

use reviews_db::testing::TestDatabase;
use serde_json::Value;

struct Ops {
    database: TestDatabase,
}

impl Ops {
    async fn new() -> Self {
        Ops {
            database: TestDatabase::create().await,
        }
    }

    fn run(&self, script: &str, args: &[&str]) -> Output {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/").to_owned() + script)
            .args(args)
            .env("DATABASE_URL", self.database.url())
            .output()
            .unwrap()
    }

    /// Runs a script that must succeed; returns its stdout.
    fn ok(&self, script: &str, args: &[&str]) -> String {
        let output = self.run(script, args);
        assert!(
            output.status.success(),
            "{script} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs a script that must fail; returns its stderr.
    fn refused(&self, script: &str, args: &[&str]) -> String {
        let output = self.run(script, args);
        assert!(!output.status.success(), "{script} {args:?} was accepted");
        String::from_utf8(output.stderr).unwrap()
    }

    async fn sql(&self, sql: &str) {
        self.database
            .client()
            .await
            .batch_execute(sql)
            .await
            .unwrap();
    }

    async fn count(&self, sql: &str) -> i64 {
        self.database
            .client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }
}

const SEED: &str = "
    insert into products (id, name, owner_id) values ('00000000-0000-4000-8000-000000000001', 'p', 'owner');
    insert into reviews (product_id, author_id, rating, title, body)
    select '00000000-0000-4000-8000-000000000001', 'a' || i, 5, 't', 'b' from generate_series(1, 3) i;";

#[tokio::test]
async fn every_script_has_help_and_refuses_unknown_arguments() {
    let ops = Ops::new().await;
    for script in [
        "outbox-status",
        "dead-jobs",
        "retry-policy",
        "purge",
        "replay-events",
        "repair-ratings",
        "migrate",
    ] {
        assert!(ops.ok(script, &["--help"]).contains("Usage"), "{script}");
        assert!(!ops.refused(script, &["--bogus"]).is_empty(), "{script}");
    }
}

#[tokio::test]
async fn an_unreachable_database_gets_a_clear_message() {
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/outbox-status"
    ))
    .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach the database"), "{stderr}");
    assert!(
        stderr.contains("Connection refused"),
        "psql's reason: {stderr}"
    );

    // A server that answers, without the database: it says so, not "unreachable" alone.
    let ops = Ops::new().await;
    let mut url = ops.database.url();
    url.push_str("_missing");
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/outbox-status"
    ))
    .env("DATABASE_URL", url)
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[tokio::test]
async fn outbox_status_reports_the_backlog_and_jobs_by_state() {
    let ops = Ops::new().await;
    ops.sql(SEED).await;
    let status: Value = serde_json::from_str(&ops.ok("outbox-status", &["--json"])).unwrap();
    assert_eq!(status["outbox"]["pending"], 3);
    assert_eq!(status["jobs"]["in_flight"], 0);

    // Relay them as the worker does (one notify job for the batch, its events' outbox ids in
    // the payload) and finish all but one job; make that one dead.
    ops.sql(
        "delete from outbox_pending;
         insert into jobs (kind, status, finished_at, payload)
         select 'notify_owner', 'done', now(), jsonb_build_object('outbox_ids', jsonb_agg(id)) from outbox;
         insert into jobs (kind, status, attempts) values ('recompute_rating', 'dead', 10), ('recompute_rating', 'pending', 0);",
    )
    .await;
    let status: Value = serde_json::from_str(&ops.ok("outbox-status", &["--json"])).unwrap();
    assert_eq!(status["outbox"]["pending"], 0);
    assert_eq!(status["jobs"]["finished"], 1);
    assert_eq!(status["jobs"]["dead"], 1);
    assert_eq!(status["jobs"]["in_flight"], 1);
    assert_eq!(status["last_5_minutes"]["relay_lag_ms"]["count"], 3);
    assert_eq!(status["last_5_minutes"]["job_latency_ms"]["count"], 3);

    let text = ops.ok("outbox-status", &[]);
    assert!(
        text.contains("finished") && text.contains("relay lag"),
        "{text}"
    );
    assert!(ops
        .refused("outbox-status", &["--watch", "0"])
        .contains("--watch"));
}

#[tokio::test]
async fn dead_jobs_can_be_listed_shown_replayed_once_and_discarded() {
    let ops = Ops::new().await;
    ops.sql(
        "insert into jobs (kind, payload, attempts, status, last_error) values
             ('notify_owner', '{\"event_id\": \"x\"}', 10, 'pending', 'boom'),
             ('recompute_rating', '{}', 10, 'pending', 'bang');
         select 1;",
    )
    .await;
    let conn = ops.database.db().conn().await.unwrap();
    for (job_id, error) in [(1, "boom"), (2, "bang")] {
        let attempt = reviews_db::jobs::Attempt {
            job_id,
            attempt: 10,
        };
        assert!(reviews_db::jobs::bury_job(&conn, attempt, error)
            .await
            .unwrap());
    }

    // A kind no job has is refused, with the kinds there are (not an empty table).
    let refused = ops.refused("dead-jobs", &["list", "--kind", "nope"]);
    assert!(
        refused.contains("unknown job kind 'nope'") && refused.contains("notify_owner"),
        "{refused}"
    );
    let list = ops.ok("dead-jobs", &["list"]);
    assert!(
        list.contains("notify_owner") && list.contains("recompute_rating"),
        "{list}"
    );
    let filtered = ops.ok(
        "dead-jobs",
        &["list", "--kind", "notify_owner", "--since", "1h"],
    );
    assert!(
        filtered.contains("notify_owner") && !filtered.contains("recompute_rating"),
        "{filtered}"
    );
    let shown = ops.ok("dead-jobs", &["show", "1"]);
    assert!(
        shown.contains("boom") && shown.contains("event_id"),
        "{shown}"
    );

    assert!(ops.ok("dead-jobs", &["replay", "1"]).contains("replayed"));
    assert!(ops
        .ok("dead-jobs", &["replay", "1"])
        .contains("already replayed"));
    assert_eq!(
        ops.count("select count(*) from jobs where id = 1 and status = 'pending' and attempts = 0")
            .await,
        1
    );
    assert!(!ops.ok("dead-jobs", &["list"]).contains("notify_owner"));

    assert!(ops.ok("dead-jobs", &["discard", "2"]).contains("discarded"));
    assert_eq!(
        ops.count("select count(*) from dead_jobs where id = 2")
            .await,
        0
    );
    assert_eq!(
        ops.count("select count(*) from jobs where id = 2 and status = 'dead'")
            .await,
        1
    );

    assert!(ops
        .refused("dead-jobs", &["show", "99"])
        .contains("no dead job with id 99"));
    assert!(ops
        .refused("dead-jobs", &["replay", "x1"])
        .contains("positive whole number"));
    assert!(ops
        .refused("dead-jobs", &["discard", "99"])
        .contains("no dead job"));
    assert!(ops
        .refused("dead-jobs", &["list", "--since", "yesterday-ish"])
        .contains("--since"));
    assert!(ops
        .refused("dead-jobs", &["explode"])
        .contains("unknown command"));
}

#[tokio::test]
async fn replay_all_replays_every_open_dead_job_of_a_kind() {
    let ops = Ops::new().await;
    ops.sql("insert into jobs (kind) select case when i % 2 = 0 then 'a' else 'b' end from generate_series(1, 4) i").await;
    let conn = ops.database.db().conn().await.unwrap();
    for id in 1..=4 {
        let attempt = reviews_db::jobs::Attempt {
            job_id: id,
            attempt: 0,
        };
        assert!(reviews_db::jobs::bury_job(&conn, attempt, "e")
            .await
            .unwrap());
    }
    assert_eq!(
        ops.ok("dead-jobs", &["replay", "--all", "--kind", "a"])
            .trim(),
        "replayed 2 dead jobs"
    );
    assert_eq!(
        ops.ok("dead-jobs", &["replay", "--all"]).trim(),
        "replayed 2 dead jobs"
    );
    assert_eq!(
        ops.ok("dead-jobs", &["replay", "--all"]).trim(),
        "replayed 0 dead jobs"
    );
    assert_eq!(
        ops.count("select count(*) from jobs where status = 'pending'")
            .await,
        4
    );
}

#[tokio::test]
async fn retry_policy_shows_schedules_and_validates_changes() {
    let ops = Ops::new().await;
    let shown = ops.ok("retry-policy", &["show"]);
    assert!(shown.contains("2:1.0s 3:2.0s 4:4.0s"), "{shown}");
    assert!(shown.contains("00:08:31"), "total time to dead: {shown}");

    let set = ops.ok(
        "retry-policy",
        &[
            "set",
            "notify_owner",
            "--max-attempts",
            "4",
            "--base",
            "2s",
            "--max",
            "1h",
            "--multiplier",
            "3",
            "--jitter",
            "0.1",
        ],
    );
    assert!(set.contains("2:2.0s 3:6.0s 4:18.0s"), "{set}");
    assert_eq!(
        ops.count("select count(*) from retry_policies where kind = 'notify_owner' and max_attempts = 4 and base_delay_ms = 2000 and max_delay_ms = 3600000 and multiplier = 3 and jitter = 0.1").await,
        1
    );

    for (args, message) in [
        (vec!["set", "no_such_kind", "--base", "1s"], "unknown kind"),
        (
            vec!["set", "notify_owner", "--max-attempts", "-1"],
            "--max-attempts",
        ),
        (vec!["set", "notify_owner", "--base", "-2s"], "--base"),
        (
            vec!["set", "notify_owner", "--base", "2h", "--max", "1h"],
            "--max must not be below --base",
        ),
        (
            vec!["set", "notify_owner", "--multiplier", "0.5"],
            "--multiplier",
        ),
        (vec!["set", "notify_owner", "--jitter", "1.5"], "--jitter"),
        (vec!["set", "notify_owner"], "at least one"),
    ] {
        let stderr = ops.refused("retry-policy", &args);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    assert_eq!(
        ops.count("select max_attempts::bigint from retry_policies where kind = 'notify_owner'")
            .await,
        4
    );
}

#[tokio::test]
async fn purge_removes_old_finished_rows_in_batches_and_never_pending_or_dead_ones() {
    let ops = Ops::new().await;
    ops.sql(SEED).await;
    ops.sql(
        "update outbox set occurred_at = now() - interval '10 days';
         delete from outbox_pending where id <= 2;
         insert into jobs (kind, status, finished_at) select 'notify_owner', 'done', now() - interval '10 days' from generate_series(1, 7);
         insert into jobs (kind, status, finished_at) values ('notify_owner', 'done', now());
         insert into jobs (kind, status, attempts, created_at) values ('notify_owner', 'dead', 10, now() - interval '30 days'),
                                                                     ('notify_owner', 'pending', 0, now() - interval '30 days');
         insert into notifications (recipient_id, kind, event_id, read_at) values
             ('a', 'review.created', gen_random_uuid(), now() - interval '10 days'),
             ('a', 'review.created', gen_random_uuid(), null);",
    )
    .await;
    let dry = ops.ok("purge", &["--older-than", "7d", "--dry-run"]);
    assert!(
        dry.contains("outbox: would delete 2") && dry.contains("jobs: would delete 7"),
        "{dry}"
    );
    assert_eq!(ops.count("select count(*) from jobs").await, 10);

    let done = ops.ok("purge", &["--older-than", "7d", "--batch-size", "3"]);
    assert!(
        done.contains("outbox: deleted 2")
            && done.contains("jobs: deleted 7")
            && done.contains("notifications: deleted 1"),
        "{done}"
    );
    assert_eq!(
        ops.count("select count(*) from outbox").await,
        1,
        "the pending event stays, however old"
    );
    assert_eq!(
        ops.count("select count(*) from jobs").await,
        3,
        "recent, dead and pending jobs stay"
    );
    assert_eq!(
        ops.count("select count(*) from notifications").await,
        1,
        "unread notifications stay"
    );
    assert!(ops
        .refused("purge", &["--older-than", "a week"])
        .contains("--older-than"));
    assert!(ops
        .refused("purge", &["--batch-size", "0"])
        .contains("--batch-size"));
}

#[tokio::test]
async fn purge_keeps_the_events_notify_jobs_not_yet_done_read_from_the_outbox() {
    let ops = Ops::new().await;
    ops.sql(SEED).await;
    // Three old, relayed events. A notify job names each by its outbox id: one pending (its
    // handler reads the event when it runs), one dead with an open dead letter (read when
    // replayed), one done.
    ops.sql(
        "update outbox set occurred_at = now() - interval '10 days';
         delete from outbox_pending;
         insert into jobs (kind, status, attempts, finished_at, payload)
         select 'notify_owner', s.status, 1, case when s.status <> 'pending' then now() - interval '10 days' end,
                jsonb_build_object('outbox_ids', jsonb_build_array(o.id))
         from (select id, row_number() over (order by id) as n from outbox) o
         join (values (1, 'pending'), (2, 'dead'), (3, 'done')) as s (n, status) using (n);
         -- Payloads no worker could read, as dead letters have: they name no event.
         insert into jobs (kind, status, attempts, payload) values
             ('notify_owner', 'dead', 1, '{\"outbox_ids\": [null, \"x\"]}'),
             ('notify_owner', 'dead', 1, '{\"event_id\": \"x\"}'),
             ('notify_owner', 'pending', 1, '{\"outbox_ids\": 5, \"events\": 5}');
         insert into dead_jobs (job_id, kind, payload, attempts, created_at)
         select id, kind, payload, attempts, created_at from jobs where status = 'dead';",
    )
    .await;
    let dry = ops.ok("purge", &["--older-than", "7d", "--dry-run"]);
    assert!(dry.contains("outbox: would delete 1"), "{dry}");

    let done = ops.ok("purge", &["--older-than", "7d"]);
    assert!(done.contains("outbox: deleted 1"), "{done}");
    assert_eq!(
        ops.count(
            "select count(*) from jobs j cross join lateral notify_job_outbox_ids(j.payload) e
             join outbox o on o.id = e where j.status in ('pending', 'dead')"
        )
        .await,
        2,
        "the pending and the dead job's events stay"
    );
}

#[tokio::test]
async fn replay_events_marks_the_chosen_events_pending_again() {
    let ops = Ops::new().await;
    ops.sql(SEED).await;
    ops.sql("delete from outbox_pending").await;
    let review: String = ops
        .database
        .client()
        .await
        .query_one(
            "select review_id::text from outbox order by id limit 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    assert_eq!(
        ops.ok("replay-events", &["--review", &review, "--dry-run"])
            .trim(),
        "would replay 1 events"
    );
    assert!(ops
        .ok("replay-events", &["--review", &review])
        .contains("replayed 1 events"));
    assert_eq!(ops.count("select count(*) from outbox_pending").await, 1);
    assert_eq!(
        ops.count("select count(*) from outbox_pending where replayed")
            .await,
        1,
        "marked replayed: its rating job recomputes instead of adding its delta again"
    );
    assert!(ops
        .ok(
            "replay-events",
            &["--product", "00000000-0000-4000-8000-000000000001"]
        )
        .contains("replayed 2 events"));
    ops.sql("delete from outbox_pending").await;
    assert!(ops
        .ok("replay-events", &["--since", "1h"])
        .contains("replayed 3 events"));
    ops.sql("delete from outbox_pending").await;
    assert!(ops
        .ok(
            "replay-events",
            &["--since", "2000-01-01", "--until", "2001-01-01"]
        )
        .contains("replayed 0 events"));

    assert!(ops
        .refused("replay-events", &["--review", "42"])
        .contains("UUID"));
    assert!(ops
        .refused("replay-events", &[])
        .contains("say which events"));
    assert!(ops
        .refused("replay-events", &["--until", "1h"])
        .contains("--until goes with --since"));
    assert!(ops
        .refused("replay-events", &["--since", "someday"])
        .contains("--since"));
}

#[tokio::test]
async fn repair_ratings_recomputes_exactly_and_says_what_changed() {
    let ops = Ops::new().await;
    ops.sql(SEED).await;
    // The three events are on their way: the exact summary is empty until they are applied.
    assert_eq!(
        ops.ok("repair-ratings", &[]).trim(),
        "recomputed 1 rating summaries; 1 changed"
    );
    assert_eq!(
        ops.count("select review_count::int8 from product_ratings")
            .await,
        0
    );
    // Relayed and applied; then a summary damaged by hand is put right.
    ops.sql(
        "delete from outbox_pending;
         update product_ratings set review_count = 1, stars_5 = 1, rating_sum = 5",
    )
    .await;
    assert_eq!(
        ops.ok(
            "repair-ratings",
            &[
                "--product",
                "00000000-0000-4000-8000-000000000001",
                "--batch-size",
                "1"
            ]
        )
        .trim(),
        "recomputed 1 rating summaries; 1 changed"
    );
    assert_eq!(
        ops.count("select (review_count * 100 + rating_sum)::int8 from product_ratings")
            .await,
        315
    );
    assert_eq!(
        ops.ok("repair-ratings", &[]).trim(),
        "recomputed 1 rating summaries; 0 changed"
    );
    assert!(ops
        .refused("repair-ratings", &["--product", "p1"])
        .contains("a UUID"));
    assert!(ops
        .refused(
            "repair-ratings",
            &["--product", "00000000-0000-4000-8000-00000000dead"]
        )
        .contains("no such product"));
    assert!(ops
        .refused("repair-ratings", &["--batch-size", "0"])
        .contains("--batch-size"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn scripts_dev_brings_the_stack_up_twice_safely_and_down_again() {
    let admin = reviews_db::testing::server_config("postgres");
    let db_name = format!("reviews_dev_{}", uuid::Uuid::new_v4().simple());
    let dev_dir = std::env::temp_dir().join(&db_name);
    let api_port = free_port();
    let dev = |arg: &str| {
        let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev"));
        command
            .arg(arg)
            .env("DEV_DIR", &dev_dir)
            .env("DB_NAME", &db_name)
            .env("API_ADDR", format!("127.0.0.1:{api_port}"))
            .env("WORKER_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("REDIS_PREFIX", &db_name)
            .env_remove("DATABASE_URL");
        // The server the tests use, without its database name.
        let url = reviews_db::testing::url_of(&admin);
        let server = url
            .strip_suffix("/postgres")
            .expect("a URL ending in the database name");
        command.env("DATABASE_URL", format!("{server}/{db_name}"));
        command.output().unwrap()
    };

    let up = dev("up");
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(
        stdout.contains(&format!("http://127.0.0.1:{api_port}/graphql")),
        "{stdout}"
    );
    assert!(
        stdout.contains("Token:") && stdout.contains("scripts/dev down"),
        "{stdout}"
    );
    let products = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{api_port}/graphql"))
        .json(&serde_json::json!({"query": "{ products { edges { node { name } } } }"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        products.contains("Espresso machine"),
        "the demo catalogue: {products}"
    );

    let again = dev("up");
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already runs"));

    let down = dev("down");
    assert!(down.status.success());
    let status = String::from_utf8_lossy(&dev("status").stdout).into_owned();
    assert!(
        status.contains("api: stopped") && status.contains("worker: stopped"),
        "{status}"
    );

    let client = {
        let (client, connection) = admin.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    };
    client
        .batch_execute(&format!("drop database if exists {db_name} with (force)"))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dev_dir);
    // The worker made its queue under the prefix: remove it too (the same Redis scripts/dev
    // used: REDIS_URL, else REDIS_HOST and REDIS_PORT, else the default).
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| {
        format!(
            "redis://{}:{}",
            var("REDIS_HOST", "127.0.0.1"),
            var("REDIS_PORT", "6379")
        )
    });
    let redis = redis::Client::open(redis_url).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{db_name}}}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
}

/// A client connected as `role` (trust authentication on the test server).
async fn as_role(database: &TestDatabase, role: &str) -> reviews_db::Sql<tokio_postgres::Client> {
    let mut config = database.config.clone();
    config.user(role);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    reviews_db::Sql::new(client, Default::default())
}

async fn refused(sql: &reviews_db::Sql<tokio_postgres::Client>, statement: &str) -> bool {
    match sql.batch_execute(statement).await {
        Err(reviews_db::StoreError::Postgres(e)) => {
            e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        }
        other => panic!("{statement}: not refused for want of privilege: {other:?}"),
    }
}

/// Least privilege, whatever order the roles and the migrations come in: the API's role
/// writes reviews (the trigger writes the outbox as its owner) but never the outbox, never
/// the migrations' ledger, never reads a webhook secret; the worker's relays and runs jobs;
/// neither may change the schema. Passwords never reach a child's arguments.
#[tokio::test]
async fn each_process_role_may_do_what_its_process_does_and_nothing_more() {
    for roles_first in [true, false] {
        let ops = Ops {
            database: if roles_first {
                TestDatabase::create_empty().await
            } else {
                TestDatabase::create().await
            },
        };
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let (owner, api, worker) = (
            format!("owner_{suffix}"),
            format!("api_{suffix}"),
            format!("worker_{suffix}"),
        );
        let secret_password = format!("pw'\\ {suffix}");
        // A psql that records its arguments, in front of the real one.
        let shim = tempfile_dir(&suffix);
        let argv_log = shim.join("argv.log");
        std::fs::write(
            shim.join("psql"),
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\nexec {} \"$@\"\n",
                argv_log.display(),
                which("psql")
            ),
        )
        .unwrap();
        Command::new("chmod")
            .arg("755")
            .arg(shim.join("psql"))
            .status()
            .unwrap();
        let password_file = shim.join("passwords");
        let output = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/db-roles"))
            .args([
                "--owner-role",
                &owner,
                "--api-role",
                &api,
                "--worker-role",
                &worker,
            ])
            .args(["--statement-timeout", "3s", "--password-file"])
            .arg(&password_file)
            .env("DATABASE_URL", ops.database.url())
            .env("API_DB_PASSWORD", &secret_password)
            .env(
                "PATH",
                format!("{}:{}", shim.display(), std::env::var("PATH").unwrap()),
            )
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{said}");
        assert!(said.contains("roles ready"), "{said}");
        assert!(!said.contains(&secret_password), "a password in the output");
        let argv = std::fs::read_to_string(&argv_log).unwrap();
        let passwords = std::fs::read_to_string(&password_file).unwrap();
        for line in passwords.lines() {
            let (_, password) = line.split_once('=').unwrap();
            assert!(
                !argv.contains(password),
                "a password in psql's arguments: {argv}"
            );
        }
        assert!(
            passwords.contains(&format!("{api}={secret_password}")),
            "{passwords}"
        );
        assert!(
            passwords.contains(&format!("{worker}=")),
            "generated: {passwords}"
        );
        let mode = std::fs::metadata(&password_file).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        if roles_first {
            // Then the migrations, as the owner (the documented order).
            let migrated = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/migrate"))
                .env(
                    "DATABASE_URL",
                    ops.database
                        .url()
                        .replacen("postgres@", &format!("{owner}@"), 1),
                )
                .output()
                .unwrap();
            assert!(
                migrated.status.success(),
                "{}",
                String::from_utf8_lossy(&migrated.stderr)
            );
        }

        let api_sql = as_role(&ops.database, &api).await;
        api_sql.batch_execute(SEED).await.unwrap();
        api_sql
            .batch_execute("select count(*) from outbox; select id, url from webhooks")
            .await
            .unwrap();
        for statement in [
            "update outbox set event_type = event_type",
            "delete from outbox",
            "insert into schema_migrations (version, name, checksum, applied_by) values ('9', 'x', 'y', 'z')",
            "delete from schema_migrations",
            "select secret from webhooks",
            "select previous_secret from webhooks",
            "delete from outbox_pending",
            "truncate reviews",
            "create table intruder (id int)",
            "alter table reviews add column extra text",
        ] {
            assert!(refused(&api_sql, statement).await, "{statement}");
        }
        let timeout: String = api_sql
            .query_one("show statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(timeout, "3s");
        // The start-up check (db/migrations/0024), which neither role could make by reading
        // schema_migrations.
        assert_eq!(
            reviews_db::migrate::schema_state(&api_sql).await.unwrap(),
            reviews_db::migrate::SchemaState::Current,
            "the API's role asks which migrations are applied"
        );

        let worker_sql = as_role(&ops.database, &worker).await;
        assert_eq!(
            reviews_db::migrate::schema_state(&worker_sql)
                .await
                .unwrap(),
            reviews_db::migrate::SchemaState::Current,
            "the worker's role asks which migrations are applied"
        );
        let statements = reviews_worker::relay::statements_for(
            &reviews_worker::jobs::JobRegistry::standard(),
            100,
            std::time::Duration::ZERO,
            reviews_db::Bookkeeping::Synchronous,
        );
        let batch = reviews_db::outbox::relay_pending_events(&worker_sql, &statements)
            .await
            .unwrap();
        assert_eq!(
            batch.events, 3,
            "the worker relays (roles first: {roles_first})"
        );
        worker_sql
            .batch_execute("select secret from webhooks")
            .await
            .unwrap();
        // A notification takes its id from time_ordered_uuid() (db/migrations/0020).
        worker_sql
            .batch_execute(
                "insert into notifications (recipient_id, kind, event_id)
                 select 'owner', 'review.created', event_id from outbox limit 1",
            )
            .await
            .unwrap();
        for statement in [
            "insert into schema_migrations (version, name, checksum, applied_by) values ('9', 'x', 'y', 'z')",
            "insert into reviews (product_id, author_id, rating, title, body) values ('00000000-0000-4000-8000-000000000001', 'w', 1, 't', 'b')",
            "update outbox set event_type = event_type",
            "drop table reviews",
        ] {
            assert!(refused(&worker_sql, statement).await, "{statement}");
        }
        drop((api_sql, worker_sql));

        // Clean up: the database first (the owner role owns it), then the roles.
        let mut admin = ops.database.config.clone();
        admin.dbname("postgres");
        let (admin, connection) = admin.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(&format!(
                "drop database if exists {} with (force)",
                ops.database.name
            ))
            .await
            .unwrap();
        admin
            .batch_execute(&format!(
                "drop role {api}; drop role {worker}; drop role {owner}"
            ))
            .await
            .unwrap();
        let _ = std::fs::remove_dir_all(&shim);
    }
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("reviews-ops-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn which(program: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Every value an ops script takes reaches SQL as a psql variable: quotes and backslashes in
/// it cannot end a literal, even with `standard_conforming_strings` turned off (where a
/// backslash escapes a quote, which doubling quotes does not guard against).
#[tokio::test]
async fn values_given_to_the_ops_scripts_never_become_sql() {
    let ops = Ops::new().await;
    ops.sql(SEED).await;
    let hostile = [
        r"\'; drop table reviews; --",
        "'; drop table reviews; --",
        "1h' or true or '",
    ];
    for value in hostile {
        for (script, args) in [
            ("dead-jobs", vec!["list", "--since", value]),
            ("dead-jobs", vec!["list", "--kind", value]),
            ("replay-events", vec!["--since", value]),
            ("retry-policy", vec!["show", value]),
        ] {
            let output =
                Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/").to_owned() + script)
                    .args(&args)
                    .env("DATABASE_URL", ops.database.url())
                    .env("PGOPTIONS", "-c standard_conforming_strings=off")
                    .output()
                    .unwrap();
            assert!(
                !output.status.success(),
                "{script} {args:?} accepted a hostile value"
            );
        }
    }
    assert_eq!(
        ops.count("select count(*) from reviews").await,
        3,
        "nothing dropped"
    );
}

/// README.md's own commands ("Try it", the journey's lines, the ops walkthrough) run as
/// written against a stack scripts/dev starts (a private one: its own folder, database, Redis
/// prefix and ports): the front door cannot drift from the house.
#[test]
fn the_readme_commands_work_as_written() {
    let output = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/readme/run_readme.py"
        ))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let said = String::from_utf8_lossy(&output.stdout);
    for part in ["Try it", "One review's journey", "Break a job on purpose"] {
        assert!(said.contains(&format!("README: {part}")), "{said}");
    }
}

/// A password in DATABASE_URL reaches psql in its environment (percent-decoded), never in its
/// arguments, which every user can read in /proc/*/cmdline.
#[tokio::test]
async fn a_password_in_database_url_never_reaches_psqls_arguments() {
    let ops = Ops::new().await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    // The test server trusts every local connection, so any password is accepted.
    let url = ops.database.url().replacen('@', ":s3cr%2Fet%40pw@", 1);
    assert!(url.contains(":s3cr%2Fet%40pw@"), "{url}");
    let shim = tempfile_dir(&format!("pw-{suffix}"));
    let seen = shim.join("seen.log");
    std::fs::write(
        shim.join("psql"),
        format!(
            "#!/bin/sh\necho \"argv: $*\" >> {seen}\necho \"PGPASSWORD=$PGPASSWORD\" >> {seen}\nexec {} \"$@\"\n",
            which("psql"),
            seen = seen.display(),
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(shim.join("psql"))
        .status()
        .unwrap();
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/outbox-status"
    ))
    .env("DATABASE_URL", &url)
    .env(
        "PATH",
        format!("{}:{}", shim.display(), std::env::var("PATH").unwrap()),
    )
    .output()
    .unwrap();
    let seen_text = std::fs::read_to_string(&seen).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&shim);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(seen_text.contains("argv: "), "psql ran: {seen_text}");
    assert!(!seen_text.contains("s3cr%2F"), "{seen_text}");
    for line in seen_text.lines().filter(|l| l.starts_with("argv: ")) {
        assert!(
            !line.contains("s3cr"),
            "a password in psql's arguments: {line}"
        );
    }
    assert!(
        seen_text.contains("PGPASSWORD=s3cr/et@pw"),
        "the password, decoded, in psql's environment: {seen_text}"
    );
}
