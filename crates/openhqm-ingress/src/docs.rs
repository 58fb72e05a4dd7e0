//! `/openapi.json` and a self-contained `/docs` page that renders it (no CDN,
//! so it works in air-gapped clusters too).

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};

/// The API description, kept beside the code; a test checks it covers every route.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

pub(crate) async fn openapi() -> Response {
    let mut response = OPENAPI.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) async fn page() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>OpenHQM API</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
code{background:#f3f3f3;padding:0 .3em}.op{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.5rem 1rem}
.m{font-weight:bold;text-transform:uppercase;margin-right:.5em}</style></head>
<body><h1>OpenHQM API</h1><p>Machine-readable description: <a href="/openapi.json">/openapi.json</a></p>
<div id="ops">Loading…</div>
<script>
fetch('/openapi.json').then(r => r.json()).then(spec => {
  const out = [];
  out.push('<p>' + spec.info.description + '</p>');
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const codes = Object.keys(op.responses).join(', ');
      out.push('<div class="op"><span class="m">' + method + '</span><code>' + path + '</code>' +
        '<div>' + op.summary + '</div><div>Responses: ' + codes + '</div></div>');
    }
  }
  document.getElementById('ops').innerHTML = out.join('');
});
</script></body></html>"#,
    )
}

#[cfg(test)]
mod tests {
    use super::OPENAPI;

    #[test]
    fn description_covers_every_route() {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let paths = spec["paths"].as_object().expect("paths");
        for route in crate::ROUTES {
            assert!(
                paths.contains_key(*route),
                "{route} missing from openapi.json"
            );
        }
        assert_eq!(
            paths.len(),
            crate::ROUTES.len(),
            "openapi.json lists a route that does not exist"
        );
    }
}
