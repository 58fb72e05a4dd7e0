//! Test support shared by the binary's tests: the real `openhqm` process,
//! free ports, readiness, and polling with a deadline.
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_openhqm");

/// A plain-HTTP client; the workspace's rustls has no default provider.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Polls `probe` every 25 ms until it gives a value, for at most `within`.
pub async fn until_within<T>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Submits `body`; the correlation id if it was accepted (202).
pub async fn submit(
    http: &reqwest::Client,
    base: &str,
    body: &serde_json::Value,
) -> Option<String> {
    let response = http
        .post(format!("{base}/api/v1/submit"))
        .json(body)
        .send()
        .await
        .ok()?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        return None;
    }
    let accepted: serde_json::Value = response.json().await.ok()?;
    accepted["correlation_id"].as_str().map(str::to_owned)
}

/// The request's status string, if the API answered with one.
pub async fn status_of(http: &reqwest::Client, base: &str, id: &str) -> Option<String> {
    let r = http
        .get(format!("{base}/api/v1/status/{id}"))
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = r.json().await.ok()?;
    body["status"].as_str().map(str::to_owned)
}

/// GETs `url` and reads its JSON body.
pub async fn get_json(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    http.get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("a JSON body")
}

/// Waits until `{base}/health/ready` answers 200.
pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    let url = format!("{base}/health/ready");
    until(&format!("readiness of {base}"), async || {
        let r = http.get(&url).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
}

/// [`until_within`] 20 seconds.
pub async fn until<T>(what: &str, probe: impl AsyncFnMut() -> Option<T>) -> T {
    until_within(Duration::from_secs(20), what, probe).await
}

/// A running `openhqm` child process, killed when dropped.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:<port>` of the API.
    pub base: String,
    pub log: std::path::PathBuf,
}

impl Server {
    /// Starts `openhqm <args>` with its log in `dir/server.log`; `port` is the
    /// API port the caller put in `args`.
    pub fn spawn(dir: &Path, port: u16, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = dir.join("server.log");
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("spawn openhqm");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Waits until `/health/ready` answers 200.
    pub async fn ready(&self, http: &reqwest::Client) {
        wait_ready(http, &self.base).await;
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate();
        self.child.wait().expect("wait")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of one Prometheus sample (0 if absent).
    pub async fn metric(&self, http: &reqwest::Client, sample: &str) -> f64 {
        let text = http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .filter(|l| l.starts_with(sample))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .next_back()
            .unwrap_or(0.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
