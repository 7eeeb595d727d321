//! Deployment settings that cannot work stop start-up with one line that names the variable
//! to fix: the real binary, the real environment.

use std::time::Duration;

/// Starts `reviews-api serve` with `env` (on a free port, with a valid secret); returns its
/// stderr once it has exited, failing if it keeps running.
async fn refused_start(env: &[(&str, &str)]) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_reviews-api"));
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("API_ADDR", "127.0.0.1:0")
        .env("AUTH_JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .unwrap_or_else(|_| panic!("reviews-api kept running with {env:?}"))
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
async fn a_wrong_sslmode_ca_file_seed_list_or_pool_mode_is_refused_naming_its_variable() {
    for (env, names) in [
        (vec![("DB_SSLMODE", "verify-everything")], "DB_SSLMODE"),
        (
            vec![("DATABASE_URL", "postgres://u@h/db?sslmode=allow-all")],
            "DATABASE_URL",
        ),
        (
            vec![
                ("DB_SSLMODE", "verify-full"),
                ("DB_SSLROOTCERT", "/nonexistent/ca.pem"),
            ],
            "DB_SSLROOTCERT: cannot use /nonexistent/ca.pem",
        ),
        (vec![("DB_POOL_MODE", "statement")], "DB_POOL_MODE"),
        (
            vec![("DB_POOL_MODE", "transaction")],
            "DB_POOL_MODE=transaction needs DATABASE_DIRECT_URL",
        ),
        (
            vec![("REDIS_CLUSTER_NODES", "127.0.0.1:7000,,nohost")],
            "REDIS_CLUSTER_NODES",
        ),
        (
            vec![
                ("REDIS_URL", "rediss://127.0.0.1:6390"),
                ("REDIS_CA_CERT", "/nonexistent/redis-ca.pem"),
            ],
            "REDIS_CA_CERT: cannot use /nonexistent/redis-ca.pem",
        ),
        (
            vec![
                ("REDIS_URL", "redis://127.0.0.1:6379"),
                ("REDIS_CA_CERT", "/etc/hostname"),
            ],
            "REDIS_CA_CERT",
        ),
    ] {
        let stderr = refused_start(&env).await;
        assert!(stderr.contains(names), "{env:?}: {stderr}");
        assert!(
            stderr.lines().filter(|l| !l.trim().is_empty()).count() <= 3,
            "a short message, not a backtrace: {stderr}"
        );
    }
}
