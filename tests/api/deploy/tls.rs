//! TLS: Postgres's sslmode against a Postgres with TLS on, and rediss:// against a Redis that
//! speaks only TLS, each with a certificate from a CA the test makes with openssl. A wrong CA
//! or host name fails with a sentence that says why.

use clap::Parser;
use reviews_db::DbArgs;
use reviews_service::redis::RedisArgs;
use reviews_worker::queue::JobQueue;

use super::servers::{Scratch, TestCa, TlsPostgres, TlsRedis};

#[derive(Parser)]
struct DbCli {
    #[command(flatten)]
    db: DbArgs,
}

/// Settings as the binaries read them, from a DATABASE_URL for `database`.
fn db_args(url: &str) -> DbArgs {
    DbCli::try_parse_from(["test", "--database-url", url])
        .unwrap()
        .db
}

/// Connects as the pool would and says whether the session is encrypted.
async fn encrypted(args: &DbArgs) -> Result<bool, String> {
    let targets = args.targets().map_err(|e| e.to_string())?;
    let client = targets.pool.connect_spawned().await.map_err(|e| {
        format!(
            "{e:#}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        )
    })?;
    let row = client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

#[tokio::test]
async fn postgres_sslmodes_encrypt_and_verify_full_checks_the_ca_and_the_host_name() {
    let scratch = Scratch::new("pg-tls");
    let ca = TestCa::new(&scratch, "postgres");
    let server = TlsPostgres::start(&ca).await;
    let server_cert = ca.cert().display().to_string();
    let port = server.port;
    let url =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres?{query}");

    assert!(!encrypted(&db_args(&url("127.0.0.1", "sslmode=disable")))
        .await
        .unwrap());
    assert!(encrypted(&db_args(&url("127.0.0.1", "sslmode=prefer")))
        .await
        .unwrap());
    assert!(encrypted(&db_args(&url("127.0.0.1", "sslmode=require")))
        .await
        .unwrap());
    // DB_SSLMODE / DB_SSLROOTCERT apply when the URL says nothing.
    let mut args = db_args(&url("localhost", ""));
    args.db_sslmode = Some("verify-full".parse().unwrap());
    args.db_sslrootcert = Some(server_cert.clone());
    assert!(
        encrypted(&args).await.unwrap(),
        "verify-full with the right CA"
    );
    let verify_ca = url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={server_cert}"),
    );
    assert!(
        encrypted(&db_args(&verify_ca)).await.unwrap(),
        "verify-ca ignores the host name"
    );

    let wrong_host = url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={server_cert}"),
    );
    let refused = encrypted(&db_args(&wrong_host)).await.unwrap_err();
    assert!(
        refused.contains("not valid for the host 127.0.0.1"),
        "{refused}"
    );

    let other_ca = TestCa::new(&scratch, "other");
    let wrong_ca = url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            other_ca.cert().display()
        ),
    );
    let refused = encrypted(&db_args(&wrong_ca)).await.unwrap_err();
    assert!(
        refused.contains("not signed by a CA in") && refused.contains("other-ca.pem"),
        "{refused}"
    );

    // The binary says the same in one line and exits 1.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_reviews-api"))
        .arg("migrate")
        .env("DATABASE_URL", &wrong_ca)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not signed by a CA in"), "{stderr}");
}

#[tokio::test]
async fn rediss_reaches_a_tls_only_redis_with_its_ca_and_refuses_a_wrong_one_saying_why() {
    let scratch = Scratch::new("redis-tls");
    let ca = TestCa::new(&scratch, "redis");
    let redis = TlsRedis::start(&ca, &scratch).await;
    let prefix = format!("tls-{}", uuid::Uuid::new_v4().simple());

    let mut args = RedisArgs::local(&prefix);
    args.redis_url = Some(format!("rediss://localhost:{}", redis.port).into());
    args.redis_ca_cert = Some(ca.cert());
    let queue = JobQueue::new(args.target().unwrap(), &prefix).unwrap();
    queue.ensure_group().await.unwrap();
    assert_eq!(queue.enqueue(&[41, 42]).await.unwrap(), 2);
    let mut reader = queue.blocking_connection().await.unwrap();
    let read = queue
        .read(
            &mut reader,
            "tls-reader",
            10,
            std::time::Duration::from_millis(100),
        )
        .await
        .unwrap();
    assert_eq!(
        read.iter().map(|d| d.job_id).collect::<Vec<_>>(),
        vec![41, 42]
    );
    queue.finish_all(&read).await.unwrap();

    // 127.0.0.1 is in the certificate too.
    args.redis_url = Some(format!("rediss://127.0.0.1:{}", redis.port).into());
    let queue = JobQueue::new(args.target().unwrap(), &prefix).unwrap();
    assert_eq!(queue.depth().await.unwrap().known, 0);

    let other = TestCa::new(&scratch, "other");
    args.redis_ca_cert = Some(other.cert());
    let queue = JobQueue::new(args.target().unwrap(), &prefix).unwrap();
    let refused = queue.depth().await.unwrap_err().to_string();
    assert!(
        refused.contains("certificate was refused")
            && refused.contains("other-ca.pem (REDIS_CA_CERT)"),
        "{refused}"
    );
    // Plaintext to a TLS-only port gets nowhere either.
    args.redis_url = Some(format!("redis://127.0.0.1:{}", redis.port).into());
    args.redis_ca_cert = None;
    let queue = JobQueue::new(args.target().unwrap(), &prefix).unwrap();
    assert!(queue.depth().await.is_err());
}
