//! A minimal HTTP backend for the benchmarks (`bench/proxy.sh`): answers
//! every request with a small JSON body, after an optional delay that stands
//! in for a slow service.
//!
//! ```bash
//! cargo run --release --example bench_backend -- 127.0.0.1:9000 50   # 50 ms per request
//! ```

use std::time::Duration;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:9000".into());
    let delay = Duration::from_millis(args.next().and_then(|d| d.parse().ok()).unwrap_or(0));
    let router = Router::new().fallback(move || async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        ([(CONTENT_TYPE, "application/json")], r#"{"ok":true}"#).into_response()
    });
    let listener = tokio::net::TcpListener::bind(&address).await?;
    axum::serve(listener, router).await
}
