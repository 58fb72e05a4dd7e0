//! Logging: JSON lines by default (`monitoring.log_format: text` for people).
//! The span of a request carries its `correlation_id`; a JSON line holds the
//! fields of its event and of the spans it was logged in at its top level,
//! so `select(.correlation_id == $id)` finds every line about a request,
//! whether its id was logged as a field or came from the span.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

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
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    if let Err(e) = result {
        eprintln!("warning: logging already initialised: {e}");
    }
}

/// One JSON object per line, its keys in alphabetical order: the event's
/// fields (`message` among them), the fields of the spans it was logged in
/// (innermost first; a name already on the line keeps its value), `span`
/// (the innermost span's name), and `timestamp`, `level` and `target`,
/// which no field overrides.
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A record of the `log` crate (the storage engine's) under its own
        // target and level, not the bridge's.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut line = Map::new();
        event.record(&mut Fields(&mut line));
        for span in ctx.event_scope().into_iter().flatten() {
            let extensions = span.extensions();
            // Recorded by `JsonFields`: the span's fields as a JSON object.
            let Some(recorded) = extensions.get::<FormattedFields<N>>() else {
                continue;
            };
            if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(recorded) {
                for (name, value) in fields {
                    line.entry(name).or_insert(value);
                }
            }
        }
        if let Some(span) = ctx.event_scope().and_then(|mut scope| scope.next()) {
            line.entry("span").or_insert_with(|| span.name().into());
        }
        let now = openhqm_core::time::now_ms();
        line.insert(
            "timestamp".into(),
            openhqm_core::time::rfc3339_ms(now).into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// An event's fields, added to a line.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        // The `log` bridge's own fields are in the line's target already.
        if !field.name().starts_with("log.") {
            self.0.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}
