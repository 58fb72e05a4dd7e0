//! The root configuration: every key of CONTRACT.md's table, plus ours.
//!
//! Only the binary composes this; each component receives its own settings
//! struct built from it in `wiring`. Durations are plain numbers of seconds
//! (`*_seconds`, or the contract's `retry_delay_*`), one convention everywhere.

mod load;
mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use load::{CONFIG_FILE_VAR, ConfigError, Sources, Substitution, load, load_all};
pub use openhqm_core::{MessageFormat, Secret};
pub use openhqm_upstream::{AuthType, EndpointConfig, UpstreamConfig};
pub use validate::file_problems;

/// Everything OpenHQM can be configured with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The HTTP listener.
    pub server: ServerConfig,
    /// The request queue.
    pub queue: QueueConfig,
    /// The worker pool.
    pub worker: WorkerSection,
    /// Forwarding to HTTP backends.
    pub proxy: ProxyConfig,
    /// The result store.
    pub cache: CacheConfig,
    /// Logs and metrics.
    pub monitoring: MonitoringConfig,
    /// Content-based routing.
    pub routing: RoutingConfig,
    /// Partitioned consumption.
    pub partitioning: PartitioningConfig,
    /// The transparent (passthrough) ingress.
    pub sidecar: SidecarSection,
    /// `Idempotency-Key` handling.
    pub idempotency: IdempotencySection,
    /// Completion callbacks (webhooks).
    pub callbacks: CallbacksConfig,
    /// The values the file took from the environment (`${VAR}`) that are
    /// still in effect: secrets, shown only as written.
    #[serde(skip)]
    pub from_env: Vec<Substitution>,
}

/// `server.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// Async runtime threads; 0 means one per CPU.
    pub workers: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_size: usize,
    /// Seconds a client gets to send a request's head (a keep-alive
    /// connection idle this long is closed), and may then pause in the
    /// middle of its body. Longer than load balancers keep idle connections
    /// (60 s on AWS), so none reuses one just as it is closed here.
    pub read_timeout_seconds: u64,
    /// `Retry-After` sent with 503 answers, in seconds.
    pub retry_after_seconds: u32,
    /// Longest `Prefer: wait=N` honoured on `GET /api/v1/response/{id}`
    /// and on the passthrough ingress.
    pub max_wait_seconds: u64,
    /// Admission control: past this many waiting requests on the queue,
    /// new ones are refused with 429 and `Retry-After`; 0 = unbounded.
    pub max_pending: u64,
    /// Callers held waiting at once (passthrough and long-poll); past it a
    /// caller gets its 202 with `Location` at once.
    pub max_waiting: usize,
    /// Request bodies held at once, in bytes, while they are read and
    /// until their requests are stored; past it a request is refused with
    /// 503 and `Retry-After`. 0 = unbounded.
    pub max_buffered_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8000,
            workers: 0,
            max_body_size: 10 * 1024 * 1024,
            read_timeout_seconds: 75,
            retry_after_seconds: 1,
            max_wait_seconds: 60,
            max_pending: 100_000,
            max_waiting: 10_000,
            max_buffered_bytes: 128 * 1024 * 1024,
        }
    }
}

/// `sidecar.*`: the transparent ingress. Clients call it as they would
/// call the app; each request is queued whole and replayed to the endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SidecarSection {
    /// Whether the passthrough ingress runs.
    pub enabled: bool,
    /// Its own port, where every path is passed through.
    #[serde(deserialize_with = "openhqm_core::number_or_text")]
    pub port: Option<u16>,
    /// Or a prefix of the API port (e.g. `/app`), stripped before the replay.
    pub path_prefix: Option<String>,
    /// The proxy endpoint to replay against; unset = `proxy.default_endpoint`.
    pub endpoint: Option<String>,
    /// How long a caller waits for the answer unless it sends `Prefer: wait=N`.
    pub wait_seconds: u64,
    /// Client headers passed on; `"*"` = all but hop-by-hop ones.
    pub forward_headers: Vec<String>,
    /// Whether the app gets the caller's `Host` rather than the endpoint
    /// URL's. Off by default: with it, callers choose the virtual host the
    /// endpoint's credentials go to.
    pub preserve_host: bool,
}

impl Default for SidecarSection {
    fn default() -> Self {
        Self {
            enabled: false,
            port: None,
            path_prefix: None,
            endpoint: None,
            wait_seconds: 30,
            forward_headers: vec!["*".into()],
            preserve_host: false,
        }
    }
}

/// `idempotency.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencySection {
    /// How long a key is remembered; unset = `cache.ttl_seconds`, and never
    /// longer (a key must not outlive the result it replays).
    #[serde(deserialize_with = "openhqm_core::number_or_text")]
    pub ttl_seconds: Option<u64>,
    /// The header whose value identifies the caller; keys are scoped by it.
    pub identity_header: String,
}

impl Default for IdempotencySection {
    fn default() -> Self {
        Self {
            ttl_seconds: None,
            identity_header: "Authorization".into(),
        }
    }
}

/// Queue backends named by `queue.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendType {
    /// In-process durable storage; the default.
    Embedded,
    /// Redis Streams.
    Redis,
    /// Apache Kafka.
    Kafka,
    /// AWS SQS.
    Sqs,
    /// Azure Event Hubs.
    AzureEventhubs,
    /// GCP Pub/Sub.
    GcpPubsub,
    /// MQTT.
    Mqtt,
    /// A user-supplied backend.
    Custom,
}

impl BackendType {
    /// The config spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Redis => "redis",
            Self::Kafka => "kafka",
            Self::Sqs => "sqs",
            Self::AzureEventhubs => "azure_eventhubs",
            Self::GcpPubsub => "gcp_pubsub",
            Self::Mqtt => "mqtt",
            Self::Custom => "custom",
        }
    }
}

/// Result stores named by `cache.type`: only these two exist (the queue
/// backends are not stores), so a wrong value is refused naming them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreType {
    /// In-process durable storage, beside the embedded queue; the default.
    Embedded,
    /// Redis keys, shared by every process.
    Redis,
}

impl StoreType {
    /// The config spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Redis => "redis",
        }
    }
}

/// `queue.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct QueueConfig {
    #[serde(rename = "type")]
    pub kind: BackendType,
    /// Directory of the embedded database (queue and store).
    pub data_dir: String,
    /// Embedded: fsync every group commit (power-loss durability); `false`
    /// hands commits to the OS (process-crash durability).
    pub fsync: bool,
    /// How long a delivery is leased before it is handed out again.
    pub lease_seconds: u64,
    pub redis_url: Secret,
    /// Redis: the consumer group shared by every worker process.
    pub redis_consumer_group: String,
    /// Redis: this process's consumer name; unset means `<hostname>-<pid>`.
    /// Must be unique among live workers: two processes under one name would
    /// settle each other's deliveries.
    pub redis_consumer_name: Option<String>,
    pub kafka_bootstrap_servers: String,
    pub kafka_consumer_group: String,
    pub kafka_topics: Vec<String>,
    pub sqs_region: String,
    pub sqs_queue_url: String,
    pub azure_eventhubs_connection_string: Secret,
    pub azure_eventhubs_name: String,
    pub azure_eventhubs_consumer_group: String,
    pub gcp_project_id: String,
    pub gcp_credentials_path: String,
    pub gcp_max_messages: u32,
    pub mqtt_broker_host: String,
    pub mqtt_broker_port: u16,
    pub mqtt_username: String,
    pub mqtt_password: Secret,
    pub mqtt_qos: u8,
    pub mqtt_client_id: Option<String>,
    pub request_queue_name: String,
    pub response_queue_name: String,
    pub dlq_name: String,
    /// Dead letters (of requests and of callbacks) older than this are
    /// deleted; `0` keeps them until they are redriven.
    pub dlq_retention_seconds: u64,
    /// What producers write on the request queue: `envelope` (OpenHQM's),
    /// `raw` (any JSON), `cloudevents` (structured or binary) or `auto`.
    pub message_format: MessageFormat,
    /// Publish every finished request (the `/response` JSON, with its
    /// correlation id) to `response_queue_name`.
    pub reply_enabled: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            kind: BackendType::Embedded,
            data_dir: "openhqm-data".into(),
            fsync: true,
            lease_seconds: 30,
            redis_url: Secret::from("redis://localhost:6379"),
            redis_consumer_group: "openhqm-workers".into(),
            redis_consumer_name: None,
            kafka_bootstrap_servers: "localhost:9092".into(),
            kafka_consumer_group: "openhqm-workers".into(),
            kafka_topics: vec!["openhqm-requests".into()],
            sqs_region: "us-east-1".into(),
            sqs_queue_url: String::new(),
            azure_eventhubs_connection_string: Secret::default(),
            azure_eventhubs_name: "openhqm".into(),
            azure_eventhubs_consumer_group: "$Default".into(),
            gcp_project_id: String::new(),
            gcp_credentials_path: String::new(),
            gcp_max_messages: 10,
            mqtt_broker_host: "localhost".into(),
            mqtt_broker_port: 1883,
            mqtt_username: String::new(),
            mqtt_password: Secret::default(),
            mqtt_qos: 1,
            mqtt_client_id: None,
            request_queue_name: "openhqm-requests".into(),
            response_queue_name: "openhqm-responses".into(),
            dlq_name: "openhqm-dlq".into(),
            // SQS's longest message retention.
            dlq_retention_seconds: 14 * 24 * 3600,
            message_format: MessageFormat::Envelope,
            reply_enabled: false,
        }
    }
}

/// `callbacks.*`: completion callbacks, off while `allowed_hosts` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbacksConfig {
    /// The only hosts (`host` or `host:port`) a callback may go to; empty
    /// disables callbacks, and a submit naming one is refused.
    pub allowed_hosts: Vec<String>,
    /// The Standard Webhooks signing secret, `whsec_<base64 key>`.
    pub secret: Secret,
    /// The queue holding callback jobs, on the same backend as the requests.
    pub queue_name: String,
    /// Where callback jobs that were given up on are kept.
    pub dlq_name: String,
    /// POSTs per callback before it is dead-lettered.
    pub max_attempts: u32,
    /// Shortest delay between attempts, in seconds.
    pub retry_delay_base: f64,
    /// Longest delay between attempts, in seconds.
    pub retry_delay_max: f64,
    /// How long one POST may take, in seconds; less than `queue.lease_seconds`.
    pub timeout_seconds: u64,
    /// POSTs in flight per process.
    pub concurrency: usize,
}

impl Default for CallbacksConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            secret: Secret::default(),
            queue_name: "openhqm-callbacks".into(),
            dlq_name: "openhqm-callbacks-dlq".into(),
            max_attempts: 8,
            retry_delay_base: 1.0,
            retry_delay_max: 300.0,
            timeout_seconds: 10,
            concurrency: 16,
        }
    }
}

/// `worker.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSection {
    /// Messages in flight per process.
    pub count: usize,
    /// Most messages taken per receive.
    pub batch_size: usize,
    /// Upper bound of a processing attempt, in seconds.
    pub timeout_seconds: u64,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Shortest retry delay, in seconds.
    pub retry_delay_base: f64,
    /// Longest retry delay, in seconds.
    pub retry_delay_max: f64,
    /// How long in-flight work may finish after SIGTERM, in seconds.
    pub drain_timeout_seconds: u64,
    /// Messages that are not OpenHQM envelopes (`queue.message_format`).
    pub foreign: ForeignSection,
}

/// `worker.foreign.*`: how raw JSON and CloudEvents are forwarded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForeignSection {
    /// A `proxy.endpoints` name; unset means `proxy.default_endpoint`.
    pub endpoint: Option<String>,
    /// Attribute name → header name: a CloudEvent's attributes (`type`,
    /// `subject`, extensions) or, failing that, the message's attributes.
    pub attribute_headers: BTreeMap<String, String>,
}

impl Default for WorkerSection {
    fn default() -> Self {
        Self {
            count: 64,
            batch_size: 10,
            timeout_seconds: 300,
            max_retries: 3,
            retry_delay_base: 1.0,
            retry_delay_max: 60.0,
            drain_timeout_seconds: 30,
            foreign: ForeignSection::default(),
        }
    }
}

/// `proxy.*`: the forwarder's own settings ([`UpstreamConfig`]) plus the
/// switch that turns proxy mode on. Kept flat rather than flattened, because
/// serde cannot combine `flatten` with `deny_unknown_fields`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ProxyConfig {
    pub enabled: bool,
    pub default_endpoint: Option<String>,
    pub endpoints: BTreeMap<String, EndpointConfig>,
    pub forward_headers: Vec<String>,
    pub strip_headers: Vec<String>,
    pub max_response_size: usize,
    /// What a `default_endpoint` URL took from the environment.
    #[serde(skip)]
    pub default_from_env: openhqm_upstream::config::FromEnv,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let u = UpstreamConfig::default();
        Self {
            enabled: false,
            default_endpoint: u.default_endpoint,
            endpoints: u.endpoints,
            forward_headers: u.forward_headers,
            strip_headers: u.strip_headers,
            max_response_size: u.max_response_size,
            default_from_env: u.default_from_env,
        }
    }
}

impl ProxyConfig {
    /// The forwarder's configuration.
    #[must_use]
    pub fn upstream(&self) -> UpstreamConfig {
        UpstreamConfig {
            endpoints: self.endpoints.clone(),
            default_endpoint: self.default_endpoint.clone(),
            forward_headers: self.forward_headers.clone(),
            strip_headers: self.strip_headers.clone(),
            max_response_size: self.max_response_size,
            default_from_env: self.default_from_env.clone(),
        }
    }
}

/// `cache.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct CacheConfig {
    #[serde(rename = "type")]
    pub kind: StoreType,
    pub redis_url: Secret,
    /// How long a result is kept after its last change, in seconds.
    pub ttl_seconds: u64,
    /// Accepted for existing files; no effect, since every Redis client
    /// here is one multiplexed connection.
    pub max_connections: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            kind: StoreType::Embedded,
            redis_url: Secret::from("redis://localhost:6379"),
            ttl_seconds: 3600,
            max_connections: 10,
        }
    }
}

/// `monitoring.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct MonitoringConfig {
    pub metrics_enabled: bool,
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            metrics_enabled: true,
            log_level: "INFO".into(),
            log_format: LogFormat::Json,
        }
    }
}

/// `monitoring.log_format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// `routing.*`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RoutingConfig {
    pub enabled: bool,
    pub config_path: Option<String>,
}

/// `partitioning.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct PartitioningConfig {
    pub enabled: bool,
    pub strategy: PartitionStrategy,
    pub partition_count: u32,
    pub partition_key_field: String,
    pub session_key_field: String,
    pub sticky_session_ttl: u64,
}

impl Default for PartitioningConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            strategy: PartitionStrategy::Hash,
            partition_count: 10,
            partition_key_field: "metadata.partition_key".into(),
            session_key_field: "metadata.session_id".into(),
            sticky_session_ttl: 3600,
        }
    }
}

/// `partitioning.strategy`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum PartitionStrategy {
    Sticky,
    Hash,
    Key,
    RoundRobin,
}

#[cfg(test)]
mod tests;
