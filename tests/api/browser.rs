//! GraphiQL works offline: a real headless Chromium opens /graphql, runs a query through the
//! page and reads the result, and its docs explorer lists Query's fields (tests/node/graphiql.mjs; scripts/test installs Chromium and
//! playwright-core).

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

#[tokio::test]
async fn graphiql_runs_a_query_in_a_real_browser_without_any_cdn() {
    let app = TestApp::spawn().await;
    app.create_product("owner", "Browser-tested kettle").await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/node/graphiql.mjs");
    assert!(
        root.join("tests/node/node_modules/playwright-core")
            .exists(),
        "run `npm ci` in tests/node (scripts/test does it)"
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
    let (result, docs) = stdout
        .split_once("--- docs explorer ---")
        .expect("the script prints the docs explorer");
    assert!(
        result.contains("Browser-tested kettle"),
        "the result panel shows: {result}"
    );
    // GraphiQL's docs come from graphql-js's standard introspection query: every Query
    // field is listed, with its description.
    for field in [
        "product(id: ID!): Product",
        "products(",
        "reviews(",
        "deadJobs(",
        "webhookDeliveries(",
    ] {
        assert!(
            docs.contains(field),
            "the docs explorer lists {field}: {docs}"
        );
    }
    assert!(docs.contains("All products, newest first."), "{docs}");
    assert!(root.join("target/graphiql.png").exists());
}
