//! Logging: JSON lines by default (`monitoring.log_format: text` for people).
//! The span of a request carries its `correlation_id`, so every line logged
//! while handling it names the request.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, MonitoringConfig};

pub(crate) fn init(monitoring: &MonitoringConfig) {
    let level = match monitoring.log_level.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_owned(),
        "critical" => "error".to_owned(),
        other => other.to_owned(),
    };
    // The storage engine logs through the `log` crate (bridged here, so its
    // errors are seen); its routine notes are not news to an operator.
    let directives = match level.as_str() {
        "info" | "debug" | "trace" => format!("{level},fjall=warn,lsm_tree=warn"),
        _ => level,
    };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(directives));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = match monitoring.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    if let Err(e) = result {
        eprintln!("warning: logging already initialised: {e}");
    }
}
