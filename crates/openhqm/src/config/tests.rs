use std::collections::HashMap;
use std::io::Write;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn yaml(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("tempfile");
    f.write_all(text.as_bytes()).expect("write");
    f
}

fn errors_of(sources: &Sources) -> Vec<String> {
    load(sources)
        .expect_err("should fail")
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn defaults_are_the_embedded_single_process_setup() {
    let c = load(&Sources::default()).expect("defaults are valid");
    assert_eq!(c.queue.kind, BackendType::Embedded);
    assert_eq!(c.cache.kind, StoreType::Embedded);
    assert_eq!(c.server.port, 8000);
    assert_eq!(c.worker.count, 64);
    assert_eq!(c.queue.request_queue_name, "openhqm-requests");
    assert_eq!(
        c.proxy.forward_headers,
        ["Content-Type", "Accept", "User-Agent"]
    );
}

#[test]
fn layers_apply_in_order_file_env_flags() {
    let file =
        yaml("server:\n  port: 9000\n  host: 127.0.0.1\nworker:\n  count: 8\n  max_retries: 5\n");
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[
            ("OPENHQM_WORKER__COUNT", "16"),
            ("OPENHQM_SERVER__PORT", "9100"),
            ("PORT", "1"),
            ("TYPE", "kafka"),
        ]),
        overrides: vec!["server.port=9200".into()],
    };
    let c = load(&sources).expect("valid");
    assert_eq!(c.server.host, "127.0.0.1", "file");
    assert_eq!(c.worker.max_retries, 5, "file");
    assert_eq!(c.worker.count, 16, "env over file");
    assert_eq!(c.server.port, 9200, "flag over env");
}

#[test]
fn env_values_parse_by_the_type_of_their_key() {
    let sources = Sources {
        env: env(&[
            (
                "OPENHQM_PROXY__FORWARD_HEADERS",
                "Content-Type, X-Request-Id",
            ),
            ("OPENHQM_PROXY__STRIP_HEADERS", r#"["Host","Cookie"]"#),
            ("OPENHQM_QUEUE__FSYNC", "false"),
            ("OPENHQM_WORKER__RETRY_DELAY_BASE", "0.5"),
            (
                "OPENHQM_PROXY__ENDPOINTS",
                r#"{"api": {"url": "http://127.0.0.1:9/x", "auth_type": "bearer", "auth_token": "t0k"}}"#,
            ),
            ("OPENHQM_PROXY__DEFAULT_ENDPOINT", "api"),
            ("OPENHQM_CONFIG", "ignored-here"),
        ]),
        ..Sources::default()
    };
    let c = load(&sources).expect("valid");
    assert_eq!(c.proxy.forward_headers, ["Content-Type", "X-Request-Id"]);
    assert_eq!(c.proxy.strip_headers, ["Host", "Cookie"]);
    assert!(!c.queue.fsync);
    assert!((c.worker.retry_delay_base - 0.5).abs() < f64::EPSILON);
    assert_eq!(c.proxy.endpoints["api"].auth_token.expose(), "t0k");
    assert_eq!(c.proxy.endpoints["api"].method, "POST");
}

#[test]
fn variables_expand_in_the_file_and_secrets_never_print() {
    let file = yaml(
        "proxy:\n  endpoints:\n    api:\n      url: \"${API_URL:-http://127.0.0.1:8080}\"\n      auth_type: bearer\n      auth_token: \"${API_TOKEN}\"\n",
    );
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[("API_TOKEN", "s3cr3t")]),
        ..Sources::default()
    };
    let c = load(&sources).expect("valid");
    let endpoint = &c.proxy.endpoints["api"];
    assert_eq!(endpoint.url.as_deref(), Some("http://127.0.0.1:8080"));
    assert_eq!(endpoint.auth_token.expose(), "s3cr3t");
    let printed = format!("{c:?} {}", serde_json::to_string(&c).expect("json"));
    assert!(!printed.contains("s3cr3t"), "secret leaked: {printed}");
    assert!(printed.contains("***"));
}

#[test]
fn an_error_found_when_a_section_is_read_names_the_layer_that_set_it() {
    let file = yaml("worker:\n  max_retries: -1\n");
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[
            ("OPENHQM_WORKER__COUNT", "-1"),
            // Merges with the file's `worker` section, and sets no `max_retries`.
            (
                "OPENHQM_WORKER",
                r#"{"timeout_seconds": 5, "max_retries": null}"#,
            ),
            ("OPENHQM_PROXY__ENDPOINTS__API__RETRY_ON", "[500, 70000]"),
            (
                "OPENHQM_PROXY__ENDPOINTS",
                r#"{"api": {"url": "http://b/", "timeout": "soon"}}"#,
            ),
        ]),
        overrides: vec!["server.max_pending=-5".into()],
    };
    let errors = errors_of(&sources);
    for (key, origin) in [
        (
            "`worker.count`",
            "(from environment variable OPENHQM_WORKER__COUNT)",
        ),
        (
            "`proxy.endpoints.api.timeout`",
            "(from environment variable OPENHQM_PROXY__ENDPOINTS)",
        ),
        ("`server.max_pending`", "(from --set)"),
        (
            "`proxy.endpoints.api.retry_on[1]`",
            "(from environment variable OPENHQM_PROXY__ENDPOINTS__API__RETRY_ON)",
        ),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(key) && e.ends_with(origin)),
            "{key} {origin} in {errors:#?}"
        );
    }
    // The file's own mistake is not put down to the section given as JSON.
    let from_file = errors
        .iter()
        .find(|e| e.starts_with("`worker.max_retries`"))
        .expect("the file's error");
    assert!(!from_file.contains("from environment"), "{from_file}");
}

#[test]
fn every_error_is_collected_and_names_its_key() {
    let file = yaml(
        "server:\n  prot: 1\n  port: \"eighty\"\nqueue:\n  type: kafka\nworker:\n  count: 0\n  retry_delay_base: 5\n  retry_delay_max: 1\nbogus: {}\nproxy:\n  forward_headers: [\"*\", \"Bad Header\"]\n  strip_headers: [\"*\"]\n  endpoints:\n    api:\n      url: \"${MISSING}\"\n      auth_type: custom\n      auth_token: x\n    pool:\n      targets: [{url: \"http://a:1\", weight: 0}]\n      headers: {Expect: 100-continue, X-Correlation-ID: mine}\n",
    );
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[
            ("OPENHQM_QUEUE__NOPE", "1"),
            ("OPENHQM_SERVER__WORKERS", "many"),
        ]),
        overrides: vec![],
    };
    let errors = errors_of(&sources);
    let expect = [
        "`server.prot`: unknown key",
        "`bogus`: unknown key",
        "`server.port`: expected a number, got `eighty`",
        "`queue.type`: `kafka` is not available in this build",
        "`worker.count`: must be at least 1",
        "`worker.retry_delay_max`: must be from worker.retry_delay_base",
        "`proxy.endpoints.api.url`: environment variable `MISSING` is not set",
        "`proxy.endpoints.api.auth_header_name`: is required",
        "`queue.nope`: unknown key (from environment variable OPENHQM_QUEUE__NOPE)",
        "`server.workers`: expected a number, got `many`",
        "`proxy.forward_headers[1]`: `Bad Header` is not a valid HTTP header name",
        // `*` means all only on a forward list.
        "`proxy.strip_headers[0]`: `*` means every header only on a forward list",
        // List items are named as `--set` names them.
        "`proxy.endpoints.pool.targets[0].weight`: must be at least 1",
        // Static headers the forwarder sets or drops for each forward.
        "`proxy.endpoints.pool.headers.Expect`: `Expect` belongs to each forward",
        "`proxy.endpoints.pool.headers.X-Correlation-ID`: `X-Correlation-ID` belongs to each forward",
    ];
    for needle in expect {
        assert!(
            errors.iter().any(|e| e.starts_with(needle)),
            "missing `{needle}` in {errors:#?}"
        );
    }
    // The unset variable is the one error of its key, not also "is required".
    let url_errors = errors
        .iter()
        .filter(|e| e.starts_with("`proxy.endpoints.api.url`"))
        .count();
    assert_eq!(url_errors, 1, "{errors:#?}");
}

#[test]
fn a_key_refused_in_one_layer_and_set_in_another_is_validated_as_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "proxy:\n  endpoints:\n    api:\n      url: \"${UNSET}\"\n",
    )
    .expect("write");
    let sources = Sources {
        file: Some(file),
        env: HashMap::new(),
        overrides: vec!["proxy.endpoints.api.url=ftp://x".into()],
    };
    let errors = errors_of(&sources);
    for needle in [
        "`proxy.endpoints.api.url`: environment variable `UNSET` is not set",
        "`proxy.endpoints.api.url`: must be an http:// or https:// URL",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(needle)),
            "missing `{needle}` in {errors:#?}"
        );
    }
}

#[test]
fn every_type_error_of_a_section_is_reported_and_its_other_keys_still_apply() {
    let file = yaml(
        "worker:\n  count: lots\n  batch_size: some\n  max_retries: 9\nproxy:\n  endpoints:\n    api:\n      url: http://127.0.0.1:1/\n      timeout: soon\n      max_retries: 2\n",
    );
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    };
    let (config, errors) = load_all(&sources);
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    for key in [
        "worker.count",
        "worker.batch_size",
        "proxy.endpoints.api.timeout",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("`{key}`"))),
            "missing `{key}` in {errors:#?}"
        );
    }
    assert_eq!(
        config.worker.max_retries, 9,
        "the section's good keys apply"
    );
    assert_eq!(
        config.worker.count,
        WorkerSection::default().count,
        "a bad key keeps its default"
    );
    assert_eq!(config.proxy.endpoints["api"].max_retries, Some(2));
}

#[test]
fn unknown_keys_inside_endpoints_are_named() {
    let file =
        yaml("proxy:\n  endpoints:\n    api:\n      url: http://127.0.0.1\n      tiemout: 3\n");
    let errors = errors_of(&Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    });
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("`proxy.endpoints.api.tiemout`: unknown field `tiemout`")),
        "{errors:#?}"
    );
}

#[test]
fn a_negative_count_is_refused_in_serdes_words() {
    let file = yaml(
        "server:\n  port: 70000\nproxy:\n  endpoints:\n    api:\n      url: http://127.0.0.1\n      max_retries: -1\n",
    );
    let errors = errors_of(&Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    });
    for expected in [
        "`proxy.endpoints.api.max_retries`: invalid value: integer `-1`, expected u32",
        "`server.port`: invalid value: integer `70000`, expected u16",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{errors:#?}"
        );
    }
}

#[test]
fn every_contract_key_parses() {
    let file = yaml(
        r#"
server: {host: 0.0.0.0, port: 8000, workers: 4}
queue:
  type: embedded
  redis_url: redis://localhost:6379
  kafka_bootstrap_servers: localhost:9092
  kafka_consumer_group: openhqm-workers
  kafka_topics: [openhqm-requests]
  sqs_region: us-east-1
  sqs_queue_url: ""
  azure_eventhubs_connection_string: ""
  azure_eventhubs_name: openhqm
  azure_eventhubs_consumer_group: $Default
  gcp_project_id: ""
  gcp_credentials_path: ""
  gcp_max_messages: 10
  mqtt_broker_host: localhost
  mqtt_broker_port: 1883
  mqtt_username: ""
  mqtt_password: ""
  mqtt_qos: 1
  mqtt_client_id: null
  request_queue_name: openhqm-requests
  response_queue_name: openhqm-responses
  dlq_name: openhqm-dlq
worker: {count: 5, batch_size: 10, timeout_seconds: 300, max_retries: 3, retry_delay_base: 1.0, retry_delay_max: 60.0}
proxy:
  enabled: false
  default_endpoint: null
  endpoints:
    legacy:
      url: http://localhost:8080
      method: PUT
      timeout: 30
      headers: {X-Service: openhqm}
      auth_type: basic
      auth_username: u
      auth_password: p
  forward_headers: ["*"]
  strip_headers: [Host, Connection]
  max_response_size: 10485760
cache: {type: embedded, redis_url: "redis://localhost:6379", ttl_seconds: 3600, max_connections: 10}
monitoring: {metrics_enabled: true, log_level: INFO, log_format: json}
routing: {enabled: false, config_path: routes.yaml}
partitioning: {enabled: false, strategy: sticky, partition_count: 10, partition_key_field: metadata.partition_key, session_key_field: metadata.session_id, sticky_session_ttl: 3600}
"#,
    );
    let c = load(&Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    })
    .expect("the contract's keys all parse");
    assert_eq!(c.worker.count, 5);
    assert_eq!(c.proxy.endpoints["legacy"].method, "PUT");
    assert_eq!(c.partitioning.strategy, PartitionStrategy::Sticky);
}

#[test]
fn contract_backends_parse_but_unavailable_ones_are_refused() {
    for kind in [
        #[cfg(not(feature = "redis"))]
        "redis",
        "kafka",
        "sqs",
        "azure_eventhubs",
        "gcp_pubsub",
        "mqtt",
        "custom",
    ] {
        let sources = Sources {
            env: env(&[("OPENHQM_QUEUE__TYPE", kind)]),
            ..Sources::default()
        };
        let errors = errors_of(&sources);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!("`queue.type`: `{kind}` is not available")),
            "{errors:?}"
        );
    }
    let sources = Sources {
        env: env(&[("OPENHQM_QUEUE__TYPE", "rabbit")]),
        ..Sources::default()
    };
    assert!(errors_of(&sources)[0].starts_with("`queue.type`: unknown variant `rabbit`"));
}

#[test]
fn expanded_file_values_are_read_by_the_type_of_their_key() {
    let file = yaml(concat!(
        "server:\n  port: ${PORT:-8000}\n",
        "worker:\n  count: ${WORKERS}\n  retry_delay_base: \"${BASE}\"\n",
        "proxy:\n  enabled: ${PROXY}\n",
        "  endpoints:\n    api:\n      url: http://127.0.0.1:${APP_PORT}/x\n      max_retries: ${RETRIES}\n      retry_on: [\"${R1}\", 503]\n",
    ));
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[
            ("WORKERS", "12"),
            ("BASE", "0.5"),
            ("PROXY", "true"),
            ("R1", "502"),
            ("APP_PORT", "9000"),
            ("RETRIES", "7"),
        ]),
        ..Sources::default()
    };
    let c = load(&sources).expect("valid");
    assert_eq!(c.server.port, 8000);
    assert_eq!(c.worker.count, 12);
    assert!((c.worker.retry_delay_base - 0.5).abs() < f64::EPSILON);
    assert!(c.proxy.enabled);
    let api = &c.proxy.endpoints["api"];
    assert_eq!(api.retry_on, [502, 503]);
    assert_eq!(api.url.as_deref(), Some("http://127.0.0.1:9000/x"));
    assert_eq!(api.max_retries, Some(7));
    // A value of the wrong type after expansion names its key.
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[
            ("WORKERS", "many"),
            ("BASE", "1"),
            ("PROXY", "true"),
            ("R1", "1"),
            ("APP_PORT", "1"),
            ("RETRIES", "1"),
        ]),
        ..Sources::default()
    };
    let errors = errors_of(&sources);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("worker.count") && e.contains("many")),
        "{errors:?}"
    );
    assert_eq!(
        errors.iter().filter(|e| e.contains("worker.count")).count(),
        1,
        "reported once: {errors:?}"
    );
}

#[test]
fn expansion_rules() {
    let vars = env(&[("A", "1"), ("EMPTY", "")]);
    for (input, expected) in [
        ("x${A}y", Ok("x1y".to_owned())),
        ("${B:-dflt}", Ok("dflt".to_owned())),
        // As in the shell: `:-` also covers a variable set empty; plain
        // `${VAR}` keeps it empty.
        ("${EMPTY:-dflt}", Ok("dflt".to_owned())),
        ("[${EMPTY}]", Ok("[]".to_owned())),
        ("$${A}", Ok("${A}".to_owned())),
        ("cost $5", Ok("cost $5".to_owned())),
        (
            "${B}",
            Err("environment variable `B` is not set".to_owned()),
        ),
        (
            "${s3cr3t",
            Err("unterminated `${` (write `$${` for a literal one)".to_owned()),
        ),
    ] {
        assert_eq!(load::expand(input, &vars), expected, "{input}");
    }
}

#[cfg(feature = "redis")]
#[test]
fn redis_queue_and_store_are_accepted_with_their_keys() {
    let sources = Sources {
        env: env(&[
            ("OPENHQM_QUEUE__TYPE", "redis"),
            ("OPENHQM_CACHE__TYPE", "redis"),
            ("OPENHQM_QUEUE__REDIS_CONSUMER_NAME", "worker-7"),
        ]),
        ..Sources::default()
    };
    let c = load(&sources).expect("redis is available in this build");
    assert_eq!(c.queue.redis_consumer_group, "openhqm-workers");
    assert_eq!(c.queue.redis_consumer_name.as_deref(), Some("worker-7"));
    let sources = Sources {
        env: env(&[
            ("OPENHQM_QUEUE__TYPE", "redis"),
            ("OPENHQM_QUEUE__REDIS_CONSUMER_GROUP", ""),
        ]),
        ..Sources::default()
    };
    assert!(errors_of(&sources)[0].starts_with("`queue.redis_consumer_group`: must not be empty"));
}

#[cfg(feature = "redis")]
#[test]
fn foreign_message_settings_parse_and_are_checked() {
    let file = yaml(
        "queue:\n  type: redis\n  message_format: auto\ncache:\n  type: redis\n\
         proxy:\n  enabled: true\n  endpoints:\n    events: {url: 'http://127.0.0.1:1'}\n\
         worker:\n  foreign:\n    endpoint: events\n    attribute_headers: {type: X-Event-Type}\n",
    );
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    };
    let c = load(&sources).expect("valid");
    assert_eq!(c.queue.message_format, MessageFormat::Auto);
    assert_eq!(c.worker.foreign.endpoint.as_deref(), Some("events"));
    assert_eq!(c.worker.foreign.attribute_headers["type"], "X-Event-Type");
    let from_env = Sources {
        env: env(&[
            ("OPENHQM_QUEUE__TYPE", "redis"),
            ("OPENHQM_CACHE__TYPE", "redis"),
            ("OPENHQM_QUEUE__MESSAGE_FORMAT", "cloudevents"),
            (
                "OPENHQM_WORKER__FOREIGN__ATTRIBUTE_HEADERS",
                r#"{"subject": "X-Subject"}"#,
            ),
        ]),
        ..Sources::default()
    };
    let c = load(&from_env).expect("valid");
    assert_eq!(c.queue.message_format, MessageFormat::Cloudevents);
    assert_eq!(c.worker.foreign.attribute_headers["subject"], "X-Subject");
    let from_env = Sources {
        env: env(&[
            ("OPENHQM_QUEUE__TYPE", "redis"),
            ("OPENHQM_CACHE__TYPE", "redis"),
            ("OPENHQM_QUEUE__MESSAGE_FORMAT", "raw"),
        ]),
        ..Sources::default()
    };
    assert_eq!(
        load(&from_env).expect("valid").queue.message_format,
        MessageFormat::Raw
    );

    let bad = Sources {
        env: env(&[
            ("OPENHQM_QUEUE__MESSAGE_FORMAT", "raw"),
            ("OPENHQM_WORKER__FOREIGN__ENDPOINT", "nowhere"),
            (
                "OPENHQM_WORKER__FOREIGN__ATTRIBUTE_HEADERS",
                r#"{"a": "Bad Header", "b": "Connection", "c": "x-correlation-id", "d": "Host"}"#,
            ),
            ("OPENHQM_WORKER__FOREIGN__COLOR", "red"),
        ]),
        ..Sources::default()
    };
    let errors = errors_of(&bad);
    for expected in [
        "`worker.foreign.color`: unknown key",
        "`queue.message_format`: `raw` needs a queue that other producers write to",
        "`queue.message_format`: `raw` needs cache.type redis",
        "`worker.foreign.endpoint`: forwarding to an endpoint needs proxy.enabled: true",
        "`worker.foreign.attribute_headers.a`: `Bad Header` is not a valid HTTP header name",
        "`worker.foreign.attribute_headers.b`: `Connection` is a hop-by-hop header",
        "`worker.foreign.attribute_headers.c`: `x-correlation-id` is set or dropped by the forwarder",
        "`worker.foreign.attribute_headers.d`: `Host` is set or dropped by the forwarder",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{expected} in {errors:#?}"
        );
    }
    let typo = Sources {
        env: env(&[("OPENHQM_QUEUE__MESSAGE_FORMAT", "cloudevent")]),
        ..Sources::default()
    };
    assert!(
        errors_of(&typo)[0].starts_with("`queue.message_format`: unknown variant `cloudevent`")
    );
}

#[test]
fn sidecar_and_idempotency_settings_parse_and_broken_ones_are_named() {
    let from_env = Sources {
        env: env(&[
            ("OPENHQM_PROXY__ENABLED", "true"),
            ("OPENHQM_PROXY__DEFAULT_ENDPOINT", "http://127.0.0.1:8080"),
            ("OPENHQM_SIDECAR__ENABLED", "true"),
            ("OPENHQM_SIDECAR__PORT", "9000"),
            ("OPENHQM_SIDECAR__FORWARD_HEADERS", "Accept,Authorization"),
            ("OPENHQM_IDEMPOTENCY__TTL_SECONDS", "600"),
        ]),
        ..Sources::default()
    };
    let c = load(&from_env).expect("valid");
    assert_eq!(c.sidecar.port, Some(9000));
    assert_eq!(c.sidecar.forward_headers, ["Accept", "Authorization"]);
    assert_eq!(c.idempotency.ttl_seconds, Some(600));

    let broken = Sources {
        env: env(&[
            ("OPENHQM_SIDECAR__ENABLED", "true"),
            ("OPENHQM_SIDECAR__PATH_PREFIX", "/api/app"),
            ("OPENHQM_SIDECAR__WAIT_SECONDS", "600"),
            ("OPENHQM_SERVER__MAX_WAITING", "0"),
            ("OPENHQM_SERVER__MAX_BUFFERED_BYTES", "1000"),
            ("OPENHQM_SIDECAR__ENDPOINT", "nope"),
            ("OPENHQM_IDEMPOTENCY__TTL_SECONDS", "7200"),
            ("OPENHQM_IDEMPOTENCY__IDENTITY_HEADER", "not a header"),
        ]),
        ..Sources::default()
    };
    let errors = errors_of(&broken).join("\n");
    for key in [
        "sidecar.enabled",
        "sidecar.path_prefix",
        "sidecar.wait_seconds",
        "server.max_waiting",
        "server.max_buffered_bytes",
        "sidecar.endpoint",
        "idempotency.ttl_seconds",
        "idempotency.identity_header",
    ] {
        assert!(
            errors.contains(&format!("`{key}`")),
            "{key} not named in:\n{errors}"
        );
    }
    let port = Sources {
        env: env(&[("OPENHQM_SIDECAR__PORT", "nine")]),
        ..Sources::default()
    };
    assert!(errors_of(&port).join("\n").contains("sidecar.port"));
}

#[test]
fn infinity_and_nan_in_yaml_are_errors_by_key_not_defaults() {
    let file = yaml(
        "queue:\n  dlq_retention_seconds: .inf\n  lease_seconds: -.inf\nserver:\n  port: .nan\n",
    );
    let errors = errors_of(&Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    });
    for key in [
        "queue.dlq_retention_seconds",
        "queue.lease_seconds",
        "server.port",
    ] {
        let needle = format!("`{key}`: ");
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&needle) && e.contains("is not a finite number")),
            "missing `{key}` in {errors:#?}"
        );
    }
}

#[test]
fn durations_past_a_week_are_refused_before_they_overflow() {
    let file = yaml(
        "queue:\n  lease_seconds: 18446744073709551615\nworker:\n  timeout_seconds: 604801\n  retry_delay_max: 1e300\ncallbacks:\n  allowed_hosts: [hooks.example.com]\n  retry_delay_max: 1e20\n",
    );
    let errors = errors_of(&Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    });
    for needle in [
        "`queue.lease_seconds`: must be from 1 to 604800",
        "`worker.timeout_seconds`: must be from 1 to 604800",
        "`worker.retry_delay_max`: must be from worker.retry_delay_base",
        "`callbacks.retry_delay_max`: must be from callbacks.retry_delay_base",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(needle)),
            "missing `{needle}` in {errors:#?}"
        );
    }
}

#[test]
fn a_missing_callback_secret_is_said_to_be_required() {
    let errors = errors_of(&Sources {
        env: env(&[("OPENHQM_CALLBACKS__ALLOWED_HOSTS", "hooks.example.com")]),
        ..Sources::default()
    });
    assert!(
        errors.iter().any(|e| e
            .starts_with("`callbacks.secret`: is required once callbacks.allowed_hosts is set")),
        "{errors:#?}"
    );
}

#[test]
fn callback_settings_are_checked_by_key() {
    let file = yaml(
        "callbacks:\n  allowed_hosts: [\"hooks.example.com\", \"bad:port\"]\n  secret: nope\n  timeout_seconds: 60\n  queue_name: openhqm-requests\nqueue:\n  reply_enabled: true\n  response_queue_name: openhqm-dlq\nproxy:\n  endpoints:\n    api:\n      url: http://127.0.0.1:9\n      callback_url: https://elsewhere.example.com/hook\n",
    );
    let errors = errors_of(&Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    });
    for needle in [
        "`callbacks.allowed_hosts`: `bad:port`: `port` is not a port",
        "`callbacks.secret`: must start with `whsec_`",
        "`callbacks.timeout_seconds`: must be at least 1 and less than queue.lease_seconds",
        "`callbacks.queue_name`: must be set and differ",
        "`queue.response_queue_name`: must be set and differ",
        "`queue.reply_enabled`: needs a queue other processes can read",
        "`proxy.endpoints.api.callback_url`: callback_url host `elsewhere.example.com` is not on callbacks.allowed_hosts",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(needle)),
            "missing `{needle}` in {errors:#?}"
        );
    }
}

/// The reply queue needs a queue other processes can read: Redis here.
#[cfg(feature = "redis")]
#[test]
fn valid_callback_settings_load() {
    let good = yaml(
        "callbacks:\n  allowed_hosts: [\"hooks.example.com\", \"127.0.0.1:9000\"]\n  secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nqueue:\n  type: redis\n  reply_enabled: true\nproxy:\n  endpoints:\n    api:\n      url: http://127.0.0.1:9\n      callback_url: http://127.0.0.1:9000/done\n",
    );
    let c = load(&Sources {
        file: Some(good.path().to_path_buf()),
        ..Sources::default()
    })
    .expect("valid");
    assert_eq!(c.callbacks.queue_name, "openhqm-callbacks");
    assert!(c.queue.reply_enabled);
    assert_eq!(format!("{:?}", c.callbacks.secret), "***");
}

#[test]
fn kubernetes_service_links_are_not_configuration() {
    // What a pod gets for Services named `openhqm`, `openhqm-api` and
    // `openhqm-server` in its namespace.
    let sources = Sources {
        env: env(&[
            ("OPENHQM_SERVICE_HOST", "10.0.0.1"),
            ("OPENHQM_SERVICE_PORT", "8000"),
            ("OPENHQM_SERVICE_PORT_HTTP", "8000"),
            ("OPENHQM_PORT", "tcp://10.0.0.1:8000"),
            ("OPENHQM_PORT_8000_TCP", "tcp://10.0.0.1:8000"),
            ("OPENHQM_API_SERVICE_HOST", "10.0.0.2"),
            ("OPENHQM_API_SERVICE_PORT_HTTP", "80"),
            ("OPENHQM_API_PORT", "tcp://10.0.0.2:80"),
            ("OPENHQM_API_PORT_80_TCP", "tcp://10.0.0.2:80"),
            ("OPENHQM_API_PORT_80_TCP_PROTO", "tcp"),
            ("OPENHQM_API_PORT_80_TCP_PORT", "80"),
            ("OPENHQM_API_PORT_80_TCP_ADDR", "10.0.0.2"),
            ("OPENHQM_SERVER_PORT", "tcp://10.0.0.3:8000"),
            ("OPENHQM_SERVER__PORT", "9100"),
            ("openhqm_worker__count", "3"),
        ]),
        ..Sources::default()
    };
    let c = load(&sources).expect("service links are ignored");
    assert_eq!(c.server.port, 9100);
    assert_eq!(c.worker.count, 3, "the prefix is matched in any case");
}

/// A deployment may keep its own secrets under the prefix and name them in
/// the file: they are the file's, not misspelt keys.
#[test]
fn variables_the_file_names_are_not_keys() {
    let file = yaml(
        "proxy:\n  endpoints:\n    api:\n      url: http://127.0.0.1:8080\n      auth_type: bearer\n      auth_token: \"${OPENHQM_API_TOKEN}\"\n",
    );
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[("OPENHQM_API_TOKEN", "t0ken-value")]),
        ..Sources::default()
    };
    let c = load(&sources).expect("the file's own variable");
    assert_eq!(c.proxy.endpoints["api"].auth_token.expose(), "t0ken-value");
    let unnamed = Sources {
        env: env(&[("OPENHQM_API_TOKEN", "t0ken-value")]),
        ..Sources::default()
    };
    assert!(
        load(&unnamed).is_err(),
        "named nowhere, it is a misspelt key"
    );
}

#[test]
fn a_section_that_is_not_a_mapping_is_one_error_saying_so() {
    let file = yaml("server: [1, 2]\nqueue: x\nworker: 5\n");
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    };
    let errors = errors_of(&sources);
    for expected in [
        "`server`: expected a mapping of its settings, got a list",
        "`queue`: expected a mapping of its settings, got a string",
        "`worker`: expected a mapping of its settings, got a number",
    ] {
        assert!(
            errors.iter().any(|e| e == expected),
            "{expected} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn a_section_and_key_joined_by_one_underscore_is_reported() {
    let sources = Sources {
        env: env(&[
            ("OPENHQM_SERVER_PORT", "9000"),
            ("OPENHQM_WORKER_COUNT", "8"),
            ("OPENHQM_WORKER_CONUT", "8"),
            ("OPENHQM_REDIS_URL", "redis://cache:6379"),
            ("OPENHQM_LOG_LEVEL", "DEBUG"),
            ("OPENHQM_TIMEOUT", "5"),
        ]),
        ..Sources::default()
    };
    let errors = errors_of(&sources);
    for (var, hint) in [
        (
            "OPENHQM_REDIS_URL",
            "it is now OPENHQM_QUEUE__REDIS_URL and OPENHQM_CACHE__REDIS_URL",
        ),
        (
            "OPENHQM_LOG_LEVEL",
            "it is now OPENHQM_MONITORING__LOG_LEVEL",
        ),
        (
            "OPENHQM_TIMEOUT",
            "keys are set as OPENHQM_<SECTION>__<KEY>",
        ),
        ("OPENHQM_SERVER_PORT", "did you mean OPENHQM_SERVER__PORT?"),
        (
            "OPENHQM_WORKER_COUNT",
            "did you mean OPENHQM_WORKER__COUNT?",
        ),
        (
            "OPENHQM_WORKER_CONUT",
            "keys are set as OPENHQM_WORKER__<KEY>",
        ),
    ] {
        let needle = format!("`{var}`: not a configuration variable; {hint}");
        assert!(
            errors.iter().any(|e| e.starts_with(&needle)),
            "missing `{needle}` in {errors:#?}"
        );
    }
}

#[test]
fn null_endpoint_fields_are_unset_as_in_the_earlier_implementation() {
    let file = yaml(
        "proxy:\n  enabled: true\n  endpoints:\n    api:\n      url: http://127.0.0.1:8080\n      headers: null\n      auth_type: null\n      auth_token: null\n      auth_username: null\n      auth_password: null\n",
    );
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    };
    let c = load(&sources).expect("nulls are unset values");
    let api = &c.proxy.endpoints["api"];
    assert!(api.headers.is_empty());
    assert!(api.auth_token.is_empty() && api.auth_password.is_empty());
}

#[test]
fn an_endpoint_is_set_key_by_key_from_the_environment() {
    let file = yaml(
        "proxy:\n  enabled: true\n  endpoints:\n    app:\n      url: http://127.0.0.1:8080\n      method: PUT\n",
    );
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[
            ("OPENHQM_PROXY__ENDPOINTS__APP__TIMEOUT", "5"),
            ("OPENHQM_PROXY__ENDPOINTS__APP__AUTH_TYPE", "bearer"),
            ("OPENHQM_PROXY__ENDPOINTS__APP__AUTH_TOKEN", "12345"),
            ("OPENHQM_PROXY__ENDPOINTS__APP__MAX_CONCURRENCY", "50"),
            ("OPENHQM_PROXY__ENDPOINTS__APP__RETRY_ON", "502,503"),
            (
                "OPENHQM_PROXY__ENDPOINTS__APP__HEADERS",
                r#"{"X-Team":"orders"}"#,
            ),
            (
                "OPENHQM_PROXY__ENDPOINTS__BILLING__URL",
                "http://127.0.0.1:9090",
            ),
            (
                "OPENHQM_PROXY__ENDPOINTS__BILLING__RATE_LIMIT",
                r#"{"requests_per_second": 10}"#,
            ),
        ]),
        ..Sources::default()
    };
    let c = load(&sources).expect("valid");
    let app = &c.proxy.endpoints["app"];
    assert_eq!(
        app.url.as_deref(),
        Some("http://127.0.0.1:8080"),
        "the file's keys stay"
    );
    assert_eq!(app.method, "PUT");
    assert_eq!(app.timeout, 5);
    assert_eq!(app.auth_type, Some(AuthType::Bearer));
    assert_eq!(app.auth_token.expose(), "12345", "a secret stays text");
    assert_eq!(app.max_concurrency, Some(50));
    assert_eq!(app.retry_on, [502, 503]);
    assert_eq!(app.headers["X-Team"], "orders");
    let billing = &c.proxy.endpoints["billing"];
    assert_eq!(billing.url.as_deref(), Some("http://127.0.0.1:9090"));
    assert!(billing.rate_limit.is_some());

    let typo = Sources {
        env: env(&[("OPENHQM_PROXY__ENDPOINTS__APP__URLL", "http://x")]),
        ..Sources::default()
    };
    let errors = errors_of(&typo);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("`proxy.endpoints.app.urll`: unknown key")),
        "{errors:#?}"
    );
}

/// `null` from the environment or `--set` is "not set", as in the file: the
/// layers below decide, not an error.
#[test]
fn null_from_the_environment_or_a_flag_leaves_the_key_to_the_layers_below() {
    let file = yaml("server:\n  port: 9000\nsidecar:\n  port: 8081\n");
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[("OPENHQM_SERVER__PORT", "null")]),
        overrides: vec!["sidecar.port=null".into(), "worker.count= null ".into()],
    };
    let c = load(&sources).expect("valid");
    assert_eq!(c.server.port, 9000);
    assert_eq!(c.sidecar.port, Some(8081));
    assert_eq!(c.worker.count, Config::default().worker.count);

    // So is a variable in the file that expands to `null`.
    let file = yaml("server:\n  port: ${QA_PORT}\nsidecar:\n  port: ${QA_SIDECAR}\n");
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[("QA_PORT", "null"), ("QA_SIDECAR", " null")]),
        ..Sources::default()
    };
    let c = load(&sources).expect("valid");
    assert_eq!(c.server.port, Config::default().server.port);
    assert_eq!(c.sidecar.port, None);
}

/// A quoted number or boolean in the file is read by its key's type, as
/// Helm templates (`port: "{{ .Values.port }}"`) and the earlier
/// implementation's users write them; a quoted word where a number belongs
/// is still an error naming the key.
#[test]
fn quoted_numbers_booleans_and_lists_in_the_file_are_read_by_type() {
    let file = yaml(concat!(
        "server:\n  port: \"9000\"\n",
        "worker:\n  count: ' 8 '\n  retry_delay_base: \"0.5\"\n",
        "proxy:\n  enabled: \"true\"\n  default_endpoint: app\n",
        "  endpoints:\n    app:\n      url: http://127.0.0.1:8080\n      timeout: \"7\"\n",
        "      retry_on: [\"502\", 503]\n",
        "  forward_headers: Content-Type, Accept\n",
        "  strip_headers: Cookie\n",
    ));
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    };
    let c = load(&sources).expect("valid");
    assert_eq!(c.server.port, 9000);
    assert_eq!(c.worker.count, 8);
    assert!((c.worker.retry_delay_base - 0.5).abs() < f64::EPSILON);
    assert!(c.proxy.enabled);
    assert_eq!(c.proxy.endpoints["app"].timeout, 7);
    assert_eq!(c.proxy.endpoints["app"].retry_on, [502, 503]);
    // A string where a list belongs is comma-separated, as from the environment.
    assert_eq!(c.proxy.forward_headers, ["Content-Type", "Accept"]);
    assert_eq!(c.proxy.strip_headers, ["Cookie"]);

    let word = yaml("server:\n  port: \"eighty\"\n");
    let errors = errors_of(&Sources {
        file: Some(word.path().to_path_buf()),
        ..Sources::default()
    });
    assert_eq!(errors, ["`server.port`: expected a number, got `eighty`"]);
}

/// Environment variable names are upper case and read lowercased; an
/// endpoint the file spells `OrdersApi` is still the one they set.
#[test]
fn the_environment_reaches_an_endpoint_named_in_mixed_case() {
    let file = yaml(
        "proxy:\n  enabled: true\n  endpoints:\n    OrdersApi:\n      url: http://127.0.0.1:8080\n",
    );
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[
            ("OPENHQM_PROXY__ENDPOINTS__ORDERSAPI__AUTH_TYPE", "bearer"),
            ("OPENHQM_PROXY__ENDPOINTS__ORDERSAPI__AUTH_TOKEN", "s3cret"),
        ]),
        ..Sources::default()
    };
    let c = load(&sources).expect("valid");
    assert_eq!(c.proxy.endpoints.len(), 1, "{:?}", c.proxy.endpoints.keys());
    let api = &c.proxy.endpoints["OrdersApi"];
    assert_eq!(api.auth_token.expose(), "s3cret");
    assert_eq!(api.url.as_deref(), Some("http://127.0.0.1:8080"));
}

#[test]
fn a_whole_section_can_be_given_as_json_and_merges_with_the_file() {
    let file = yaml("worker:\n  timeout_seconds: 45\n  max_retries: 5\n");
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[
            ("OPENHQM_WORKER", r#"{"count": 7, "max_retries": 1}"#),
            ("openhqm_worker__count", "9"),
        ]),
        ..Sources::default()
    };
    let c = load(&sources).expect("valid");
    assert_eq!(c.worker.timeout_seconds, 45, "the file's other keys stay");
    assert_eq!(c.worker.max_retries, 1);
    assert_eq!(c.worker.count, 9, "a key refines its section");
}

#[test]
fn digits_stay_text_where_an_endpoint_option_is_text() {
    let sources = Sources {
        env: env(&[
            (
                "OPENHQM_PROXY__ENDPOINTS__APP__URL",
                "http://127.0.0.1:8080",
            ),
            ("OPENHQM_PROXY__ENDPOINTS__APP__AUTH_TYPE", "basic"),
            ("OPENHQM_PROXY__ENDPOINTS__APP__AUTH_USERNAME", "12345"),
            ("OPENHQM_PROXY__ENDPOINTS__APP__AUTH_PASSWORD", "678"),
            ("OPENHQM_PROXY__ENDPOINTS__APP__MAX_RETRIES", "2"),
        ]),
        ..Sources::default()
    };
    let c = load(&sources).expect("valid");
    let app = &c.proxy.endpoints["app"];
    assert_eq!(app.auth_username.as_deref(), Some("12345"));
    assert_eq!(app.max_retries, Some(2));
}

#[test]
fn a_null_key_or_section_is_not_set_and_the_layer_below_applies() {
    let file = yaml(concat!(
        "proxy:\n  # enabled: true\n",
        "server:\n  port: null\n  host: 127.0.0.1\n",
        "worker:\n  count: null\n  max_retries: 5\n  foreign: null\n",
        "queue:\n  type: null\n  redis_url: null\n  kafka_topics: null\n",
        "cache: null\nmonitoring:\n  log_format: null\n",
        "sidecar:\n  forward_headers: null\n",
    ));
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    };
    let c = load(&sources).expect("a null is not set");
    let d = Config::default();
    assert_eq!(c.server.port, d.server.port);
    assert_eq!(c.server.host, "127.0.0.1", "the section's other keys apply");
    assert_eq!(c.worker.count, d.worker.count);
    assert_eq!(c.worker.max_retries, 5);
    assert_eq!(c.queue.kind, d.queue.kind);
    assert_eq!(c.queue.redis_url.expose(), d.queue.redis_url.expose());
    assert_eq!(c.queue.kafka_topics, d.queue.kafka_topics);
    assert_eq!(c.monitoring.log_format, d.monitoring.log_format);
    assert_eq!(c.sidecar.forward_headers, d.sidecar.forward_headers);
    assert!(!c.proxy.enabled);

    let endpoint = yaml(concat!(
        "proxy:\n  enabled: true\n  endpoints:\n    api:\n",
        "      url: http://127.0.0.1:8080\n      method: null\n      timeout: null\n",
        "      retry_on: null\n      health_check:\n        path: null\n",
        "      targets:\n        - url: http://127.0.0.1:8081\n          weight: null\n",
        "      headers:\n        X-Team: null\n",
    ));
    let sources = Sources {
        file: Some(endpoint.path().to_path_buf()),
        ..Sources::default()
    };
    let c = load(&sources).expect("a null endpoint key is not set");
    let api = &c.proxy.endpoints["api"];
    let d = EndpointConfig::with_url("");
    assert_eq!((&api.method, api.timeout), (&d.method, d.timeout));
    assert_eq!(api.retry_on, d.retry_on);
    assert_eq!(
        api.health_check.as_ref().map(|h| h.path.as_str()),
        Some("/health")
    );
    assert_eq!(api.targets[0].weight, 1);
    assert!(api.headers.is_empty());
}

#[test]
fn a_null_from_a_higher_layer_keeps_the_value_below() {
    let file = yaml("server:\n  port: 9000\nproxy:\n  default_endpoint: http://127.0.0.1:1\n");
    let sources = Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[
            ("OPENHQM_SERVER", r#"{"port": null, "host": "127.0.0.1"}"#),
            ("OPENHQM_WORKER", "null"),
        ]),
        overrides: vec![
            r#"proxy={"default_endpoint": null}"#.into(),
            "worker.count=3".into(),
        ],
    };
    let c = load(&sources).expect("valid");
    assert_eq!(c.server.port, 9000, "the file's value stays");
    assert_eq!(c.server.host, "127.0.0.1");
    assert_eq!(
        c.proxy.default_endpoint.as_deref(),
        Some("http://127.0.0.1:1")
    );
    assert_eq!(c.worker.count, 3);
}

#[test]
fn a_null_unknown_key_is_still_reported() {
    let file = yaml(concat!(
        "servr:\n  # port: 1\n",
        "server:\n  prot: null\n",
        "proxy:\n  endpoints:\n    api:\n      url: http://127.0.0.1\n      tiemout: null\n",
    ));
    let errors = errors_of(&Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    });
    for needle in [
        "`servr`: unknown key",
        "`server.prot`: unknown key",
        "`proxy.endpoints.api.tiemout`: unknown field",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(needle)),
            "missing `{needle}` in {errors:#?}"
        );
    }
}

#[test]
fn an_endpoint_with_nothing_under_it_is_an_error_naming_it() {
    let file = yaml("proxy:\n  enabled: true\n  endpoints:\n    api:\n    billing: null\n");
    let errors = errors_of(&Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    });
    for name in ["api", "billing"] {
        let needle = format!("`proxy.endpoints.{name}`: the endpoint has no settings");
        assert!(
            errors.iter().any(|e| e.starts_with(&needle)),
            "missing `{needle}` in {errors:#?}"
        );
    }
}

#[cfg(feature = "redis")]
#[test]
fn an_unusable_redis_url_is_refused_by_its_key_when_redis_is_selected() {
    let sources = Sources {
        overrides: vec![
            "queue.type=redis".into(),
            "queue.redis_url=http://u:hunter2@h".into(),
            "cache.redis_url=garbage".into(),
        ],
        ..Sources::default()
    };
    let errors = errors_of(&sources);
    assert_eq!(errors.len(), 1, "the store is embedded: {errors:#?}");
    assert!(
        errors[0].starts_with("`queue.redis_url`: `http://u:***@h/`: the scheme `http`"),
        "{errors:#?}"
    );
    let sources = Sources {
        overrides: vec![
            "cache.type=redis".into(),
            "cache.redis_url=redis://h:notaport".into(),
        ],
        ..Sources::default()
    };
    let errors = errors_of(&sources);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("`cache.redis_url`: is not a URL"),
        "{errors:#?}"
    );
}

#[test]
fn config_errors_never_quote_a_secret() {
    let file = yaml(concat!(
        "proxy:\n  default_endpoint: \"htps://user:hunter2@api.example.com/x?api_key=abc123\"\n",
        "  endpoints:\n",
        "    wrapped: \"https://user:hunter2@h/x?api_key=abc123\"\n",
        "    basic:\n      url: http://127.0.0.1:8080\n      auth_type: basic\n",
        "      auth_username: svc\n      auth_password: 98765432\n",
        "      headers: {X-Api-Key: 55554444, X-Version: 2}\n",
    ));
    let (config, errors) = load_all(&Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    });
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    for needle in [
        "`proxy.default_endpoint`: `htps://user:***@api.example.com/x?***` is neither",
        "`proxy.endpoints.wrapped`: invalid type: string \"https://user:***@h/x?***\"",
        "`proxy.endpoints.basic.auth_password`: a secret must be text: quote it",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(needle)),
            "missing `{needle}` in {errors:#?}"
        );
    }
    for secret in ["hunter2", "abc123", "98765432", "55554444"] {
        assert!(
            errors.iter().all(|e| !e.contains(secret)),
            "{secret} in {errors:#?}"
        );
    }
    drop(config);
    // A header value may be a number: it is its text (`X-Version: 2`).
    let file = yaml(concat!(
        "proxy:\n  endpoints:\n    api:\n      url: http://127.0.0.1:8080\n",
        "      headers: {X-Api-Key: 55554444, X-Version: 2, X-Beta: true}\n",
    ));
    let config = load(&Sources {
        file: Some(file.path().to_path_buf()),
        ..Sources::default()
    })
    .expect("numbers are header values");
    let headers = &config.proxy.endpoints["api"].headers;
    assert_eq!(headers["X-Version"], "2");
    assert_eq!(headers["X-Api-Key"], "55554444");
    assert_eq!(headers["X-Beta"], "true");
}

#[test]
fn cache_type_names_the_result_stores_not_the_queue_backends() {
    for kind in ["kafka", "sqs", "bogus"] {
        let errors = errors_of(&Sources {
            overrides: vec![format!("cache.type={kind}")],
            ..Sources::default()
        });
        assert_eq!(
            errors,
            [format!(
                "`cache.type`: unknown variant `{kind}`, expected `embedded` or `redis` (from --set)"
            )]
        );
    }
    let redis = Sources {
        overrides: vec!["cache.type=redis".into()],
        ..Sources::default()
    };
    #[cfg(feature = "redis")]
    assert!(load(&redis).is_ok());
    #[cfg(not(feature = "redis"))]
    assert_eq!(
        errors_of(&redis),
        [
            "`cache.type`: `redis` is not available in this build of OpenHQM: it was built \
             without the `redis` feature (available: embedded)"
        ]
    );
}

/// `server.host` is checked before binding, so `check-config` catches a
/// typo that `serve` would only find when it fails to listen.
#[test]
fn server_host_must_be_an_address_or_a_host_name() {
    let with = |host: &str| Sources {
        overrides: vec![format!("server.host={host}")],
        ..Sources::default()
    };
    for good in [
        "0.0.0.0",
        "127.0.0.1",
        "::1",
        "[::1]",
        "localhost",
        "my-host.example.",
        "a1",
    ] {
        let c = load(&with(good)).unwrap_or_else(|e| panic!("{good}: {e:?}"));
        assert_eq!(c.server.host, good);
    }
    for bad in [
        "not a host!",
        "-lead",
        "trail-.x",
        "a..b",
        "host:80",
        "http://x",
    ] {
        let errors = errors_of(&with(bad));
        assert!(
            errors.iter().any(|e| e.starts_with("`server.host`:")),
            "{bad}: {errors:?}"
        );
    }
}
