//! Worker settings that cannot work stop start-up with one line that names the variable to
//! fix, before the worker connects to anything: the real binary, the real environment.

use std::time::Duration;

/// Starts `reviews-worker` with `env` and Postgres and Redis on ports nobody listens on (a
/// setting refused before connecting is refused all the same); returns its stderr once it
/// has exited, failing if it keeps running.
async fn refused_start(env: &[(&str, &str)]) -> String {
    let dead = crate::support::free_port();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_reviews-worker"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{dead}/none"),
        )
        .env("REDIS_URL", format!("redis://127.0.0.1:{dead}"))
        .env("WORKER_METRICS_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .unwrap_or_else(|_| panic!("reviews-worker kept running with {env:?}"))
        .unwrap();
    // 2 for a value the command line refuses (clap's usage error), 1 for settings refused
    // at start-up.
    assert!(
        matches!(output.status.code(), Some(1 | 2)),
        "{env:?}: {:?}",
        output.status
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_worker_setting_that_cannot_work_is_refused_naming_its_variable() {
    for (env, names) in [
        (vec![("WORKER_CONCURRENCY", "0")], "WORKER_CONCURRENCY"),
        (vec![("JOB_LEASE", "soon")], "JOB_LEASE"),
        (
            vec![("WORKER_ASYNC_COMMIT", "maybe")],
            "WORKER_ASYNC_COMMIT",
        ),
        (
            vec![("JOB_TIMEOUT", "40s")],
            "JOB_TIMEOUT (40s) must be shorter than JOB_LEASE (30s)",
        ),
        (
            vec![("WEBHOOK_TIMEOUT", "30s")],
            "WEBHOOK_TIMEOUT (30s) must be shorter than JOB_TIMEOUT (20s)",
        ),
        (
            vec![("DB_POOL_MODE", "transaction")],
            "DB_POOL_MODE=transaction needs DATABASE_DIRECT_URL",
        ),
        (
            vec![("REDIS_CLUSTER_NODES", "127.0.0.1:7000,,nohost")],
            "REDIS_CLUSTER_NODES",
        ),
    ] {
        let stderr = refused_start(&env).await;
        assert!(stderr.contains(names), "{env:?}: {stderr}");
        assert!(
            !stderr.contains("panicked"),
            "{env:?} is refused, not a crash: {stderr}"
        );
    }
}
