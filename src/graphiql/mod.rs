//! GraphiQL served by the API itself: the page at `GET /graphql` and its assets under
//! `/graphiql/`, embedded in the binary, so it works offline and without a CDN.
//! `scripts/vendor-graphiql` refreshes the assets (pinned versions in `assets/VERSIONS`).

use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::reply::{Reply, Response};

/// The query GraphiQL opens with: it runs as is against the demo catalogue.
const DEFAULT_QUERY: &str = "# Reads need no token; mutations need `Authorization: Bearer <token>`
# in the Headers tab below (scripts/dev prints one).
{
  products(first: 5) {
    edges {
      node { id name rating { count average histogram } }
    }
  }
}
";

/// The GraphiQL page.
pub fn page() -> Response {
    let default_query = serde_json::to_string(DEFAULT_QUERY).expect("a string serialises");
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>reviews · GraphiQL</title>
  <link rel="stylesheet" href="/graphiql/graphiql.min.css">
  <style>body {{ margin: 0; height: 100vh; }} #graphiql {{ height: 100vh; }}</style>
</head>
<body>
  <div id="graphiql">Loading GraphiQL…</div>
  <script src="/graphiql/react.production.min.js"></script>
  <script src="/graphiql/react-dom.production.min.js"></script>
  <script src="/graphiql/graphiql.min.js"></script>
  <script>
    const wsUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/graphql';
    const fetcher = GraphiQL.createFetcher({{ url: '/graphql', subscriptionUrl: wsUrl }});
    ReactDOM.createRoot(document.getElementById('graphiql')).render(
      React.createElement(GraphiQL, {{ fetcher, defaultQuery: {default_query}, defaultEditorToolsVisibility: true }})
    );
  </script>
</body>
</html>"#
    );
    warp::reply::html(html).into_response()
}

/// One embedded asset by file name, or None.
pub fn asset(name: &str) -> Option<Response> {
    let (body, content_type): (&'static [u8], &str) = match name {
        "graphiql.min.js" => (include_bytes!("assets/graphiql.min.js"), "text/javascript"),
        "graphiql.min.css" => (include_bytes!("assets/graphiql.min.css"), "text/css"),
        "react.production.min.js" => (
            include_bytes!("assets/react.production.min.js"),
            "text/javascript",
        ),
        "react-dom.production.min.js" => (
            include_bytes!("assets/react-dom.production.min.js"),
            "text/javascript",
        ),
        _ => return None,
    };
    let mut response = Response::new(body.into());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type.parse().expect("static header"));
    headers.insert(
        CACHE_CONTROL,
        "public, max-age=86400".parse().expect("static header"),
    );
    Some(response)
}
