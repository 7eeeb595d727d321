//! GraphiQL works offline: a real headless Chromium opens /graphql, runs a query through the
//! page and reads the result (tests/browser/graphiql.mjs; scripts/test installs Chromium and
//! playwright-core).

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

#[tokio::test]
async fn graphiql_runs_a_query_in_a_real_browser_without_any_cdn() {
    let app = TestApp::spawn().await;
    app.create_product("owner", "Browser-tested kettle").await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/graphiql.mjs");
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists(),
        "run `npm ci` in tests/browser (scripts/test does it)"
    );
    let screenshot = root.join("target/graphiql.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = app.url("/graphql");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(url)
            .arg(&screenshot)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "browser run failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Browser-tested kettle"),
        "the result panel shows: {stdout}"
    );
    assert!(root.join("target/graphiql.png").exists());
}
