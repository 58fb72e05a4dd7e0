//! Command line: subcommands and the flags that become the last config layer.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{CONFIG_FILE_VAR, Config, ConfigError, Sources};

/// OpenHQM: accept HTTP requests onto a durable queue, process or forward them,
/// and hand back the results.
#[derive(Debug, Parser)]
#[command(name = "openhqm", version)]
pub struct Cli {
    /// YAML configuration file [default: $OPENHQM_CONFIG, if set and not empty].
    // Read by `sources`, not by clap's `env`: clap takes a variable set
    // empty (as templating leaves them) for a missing `--config` value.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Override any key, e.g. `--set worker.count=128` (repeatable; applied last).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Shortcut for `--set server.host=...`.
    #[arg(long, global = true)]
    pub host: Option<String>,
    /// Shortcut for `--set server.port=...`.
    #[arg(long, global = true)]
    pub port: Option<u16>,
    /// Shortcut for `--set queue.data_dir=...`.
    #[arg(long, global = true)]
    pub data_dir: Option<String>,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Ingress and workers in one process (the default setup).
    Serve,
    /// Ingress only: beside workers in other processes on a shared queue and
    /// store (Redis); on the embedded engine, a buffer that a later `serve`
    /// or `worker` on the same data directory drains.
    Listener,
    /// Workers only, with health and metrics endpoints (on the embedded
    /// engine: running what an earlier process stored).
    Worker,
    /// Validate the configuration, print it with secrets masked, list every error.
    CheckConfig,
}

impl Cli {
    /// The configuration sources this command line names.
    #[must_use]
    pub fn sources(&self) -> Sources {
        let mut overrides = Vec::new();
        if let Some(host) = &self.host {
            overrides.push(format!("server.host={host}"));
        }
        if let Some(port) = self.port {
            overrides.push(format!("server.port={port}"));
        }
        if let Some(dir) = &self.data_dir {
            overrides.push(format!("queue.data_dir={dir}"));
        }
        overrides.extend(self.set.iter().cloned());
        let from_env = std::env::var_os(CONFIG_FILE_VAR).filter(|v| !v.is_empty());
        Sources {
            file: self.config.clone().or_else(|| from_env.map(PathBuf::from)),
            env: std::env::vars().collect(),
            overrides,
        }
    }
}

/// `openhqm check-config`: the effective configuration on stdout, errors on stderr.
///
/// A config file that could not be read or parsed (an error about the file
/// as a whole) leaves no effective configuration to show: printing the
/// defaults instead would look like what would run.
#[must_use]
pub fn check_config(config: &Config, errors: &[ConfigError]) -> ExitCode {
    let file_unusable = errors.iter().any(ConfigError::is_about_the_file);
    if !file_unusable {
        print_effective(config, errors);
    }
    if errors.is_empty() {
        eprintln!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!("{} configuration error(s)", errors.len());
    if file_unusable {
        eprintln!(
            "the configuration could not be read as a whole; no effective configuration to show"
        );
    }
    ExitCode::from(2)
}

/// `config` as YAML on stdout, secrets masked.
fn print_effective(config: &Config, errors: &[ConfigError]) {
    match effective_yaml(config, errors) {
        Ok(yaml) => print!("{yaml}"),
        Err(e) => eprintln!("error: cannot print the configuration: {e}"),
    }
}

/// What a key with an error shows: a value that could not be read was left
/// at its default, which printed as is would look like what would run.
const INVALID: &str = "<invalid: see the errors>";

/// `config` as YAML, secrets masked, every key whose value could not be
/// read marked.
fn effective_yaml(config: &Config, errors: &[ConfigError]) -> Result<String, String> {
    let mut tree = serde_json::to_value(config).map_err(|e| e.to_string())?;
    // Unset, it is the cache's: the value in effect is shown.
    if let Some(ttl) = tree.pointer_mut("/idempotency/ttl_seconds")
        && ttl.is_null()
    {
        *ttl = config.cache.ttl_seconds.into();
    }
    as_written(&mut tree, config);
    mask_for_printing(&mut tree);
    show_redis_urls(&mut tree, config);
    for error in errors.iter().filter(|e| e.fell_back) {
        if let Some(slot) = lookup_mut(&mut tree, &error.key) {
            *slot = serde_json::Value::String(INVALID.into());
        }
    }
    serde_norway::to_string(&tree).map_err(|e| e.to_string())
}

/// The value at an error's key path (`a.b[0].c`), if the tree has it. Map
/// keys may hold dots themselves (endpoints `my` and `my.api`), so each way
/// of reading the dots is tried until one leads to the end of the path.
fn lookup_mut<'a>(tree: &'a mut serde_json::Value, key: &str) -> Option<&'a mut serde_json::Value> {
    let segments: Vec<&str> = key.split('.').collect();
    let pointer = pointer_to(tree, &segments)?;
    tree.pointer_mut(&pointer)
}

/// The JSON pointer of `segments` under `node`. A list item that is not
/// there points at the list: the item fell back with it.
fn pointer_to(node: &serde_json::Value, segments: &[&str]) -> Option<String> {
    if segments.is_empty() {
        return Some(String::new());
    }
    (1..=segments.len()).find_map(|n| {
        let joined = segments[..n].join(".");
        let (name, indices) = split_index(&joined)?;
        let mut child = node.get(name)?;
        let mut pointer = pointer_segment(name);
        for i in indices {
            let Some(item) = child.get(i) else {
                return Some(pointer);
            };
            child = item;
            pointer.push_str(&format!("/{i}"));
        }
        pointer_to(child, &segments[n..]).map(|rest| pointer + &rest)
    })
}

/// `/name` as a JSON pointer step (RFC 6901: `~` and `/` escaped).
fn pointer_segment(name: &str) -> String {
    format!("/{}", name.replace('~', "~0").replace('/', "~1"))
}

/// `targets[0][1]` -> (`targets`, [0, 1]); `None` for a segment that is
/// not a name followed only by indices.
fn split_index(segment: &str) -> Option<(&str, Vec<usize>)> {
    let Some(open) = segment.find('[') else {
        return Some((segment, Vec::new()));
    };
    let indices = segment[open..]
        .strip_prefix('[')?
        .strip_suffix(']')?
        .split("][")
        .map(|i| i.parse().ok())
        .collect::<Option<_>>()?;
    Some((&segment[..open], indices))
}

/// Every string that took text from the environment, as the file wrote it
/// (`${VAR}` in place): such text is taken for a secret. (Secret keys print
/// `***`, Redis URLs included when they took any.)
fn as_written(tree: &mut serde_json::Value, config: &Config) {
    for s in &config.from_env {
        let pointer: String = s
            .path
            .iter()
            .map(|segment| pointer_segment(segment))
            .collect();
        // A `Secret` prints `***` already, as every secret key does.
        if let Some(slot) = tree.pointer_mut(&pointer)
            && slot.as_str() == Some(s.expanded.expose())
        {
            *slot = serde_json::Value::String(s.written.clone());
        }
    }
}

/// Redis URLs are `Secret`s (a password may be in them) and serialize as
/// `***`; which server they point at is worth seeing, so they are shown
/// with only the password (and query) masked.
fn show_redis_urls(tree: &mut serde_json::Value, config: &Config) {
    let urls = [
        ("queue", &config.queue.redis_url),
        ("cache", &config.cache.redis_url),
    ];
    for (section, url) in urls {
        let written = |s: &&crate::config::Substitution| s.path == [section, "redis_url"];
        if config.from_env.iter().any(|s| written(&s)) {
            continue;
        }
        if let Some(slot) = tree.get_mut(section).and_then(|s| s.get_mut("redis_url"))
            && let Some(shown) = openhqm_upstream::config::printable_url(url.expose())
        {
            *slot = serde_json::Value::String(shown);
        }
    }
}

/// Masks what a printed configuration must not show beyond its `Secret`s
/// (printed `***` already): credentials inside URLs and in a health check
/// path's query, and static header values whose names say they are
/// credentials.
fn mask_for_printing(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        // Anything written as a URL, parseable or not (a typo in the port
        // must not print the password next to it).
        Value::String(s) if s.contains("://") => {
            *s = openhqm_upstream::config::quotable(s);
        }
        Value::Array(items) => items.iter_mut().for_each(mask_for_printing),
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::Object(headers) if key == "headers" => {
                        for (name, v) in headers.iter_mut() {
                            if openhqm_upstream::config::is_sensitive_header(name) {
                                *v = Value::String("***".into());
                            }
                        }
                    }
                    // Meant as a URL even without its scheme
                    // (`host:8080/x?token=T`, an error of its own).
                    Value::String(s) if key == "url" || key == "default_endpoint" => {
                        *s = openhqm_upstream::config::quotable(s);
                    }
                    // A path, not a URL: `masked_url` does not see its query.
                    Value::Object(check) if key == "health_check" => {
                        if let Some(Value::String(path)) = check.get_mut("path")
                            && let Some(masked) = openhqm_upstream::config::masked_path(path)
                        {
                            *path = masked;
                        }
                    }
                    other => mask_for_printing(other),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::effective_yaml;
    use crate::config::{Config, EndpointConfig, Secret, Sources, load_all};

    /// A value that could not be read is left at its default in the loaded
    /// configuration; printed, it says it is invalid instead of showing
    /// that default as if it would run.
    #[test]
    fn check_config_marks_every_key_with_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("openhqm.yaml");
        let yaml = "server: {port: abc}\nworker: {count: 0}\n\
                    proxy: {endpoints: {my.api: {url: 'http://backend', timeout: -3}}}\n";
        std::fs::write(&file, yaml).expect("write config");
        let sources = Sources {
            file: Some(file),
            ..Sources::default()
        };
        let (config, errors) = load_all(&sources);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.port",
                "proxy.endpoints.my.api.timeout",
                "worker.count"
            ]
        );
        let yaml = effective_yaml(&config, &errors).expect("printable");
        let tree: serde_json::Value = serde_norway::from_str(&yaml).expect("yaml");
        let invalid = serde_json::json!(super::INVALID);
        assert_eq!(tree["server"]["port"], invalid, "{yaml}");
        assert_eq!(
            tree["worker"]["count"], 0,
            "read, then refused: shown as given"
        );
        assert_eq!(tree["proxy"]["endpoints"]["my.api"]["timeout"], invalid);
        assert_eq!(
            tree["proxy"]["endpoints"]["my.api"]["url"],
            "http://backend"
        );
        assert_eq!(
            tree["server"]["host"], "0.0.0.0",
            "valid keys are untouched"
        );
        assert_eq!(
            tree["idempotency"]["ttl_seconds"], tree["cache"]["ttl_seconds"],
            "unset, the value in effect"
        );
    }

    #[test]
    fn error_keys_find_list_items_and_names_with_dots() {
        let mut tree = serde_json::json!({
            "a": {"b": {"t": 0}, "b.c": {"t": [{"w": 1}, {"w": 2}]}},
        });
        *super::lookup_mut(&mut tree, "a.b.c.t[1].w").expect("found") = 9.into();
        assert_eq!(
            tree["a"]["b.c"]["t"][1]["w"], 9,
            "`b.c`, after `b` led nowhere"
        );
        *super::lookup_mut(&mut tree, "a.b.t").expect("found") = 7.into();
        assert_eq!(tree["a"]["b"]["t"], 7);
        assert!(super::lookup_mut(&mut tree, "a.x.t").is_none());
        assert!(super::lookup_mut(&mut tree, "a.b.c.t[1].nope").is_none());
        let list = super::lookup_mut(&mut tree, "a.b.c.t[5]").expect("the list");
        assert!(list.is_array(), "a missing item points at its list");
    }

    #[test]
    fn check_config_prints_no_credential_of_an_endpoint() {
        let mut config = Config::default();
        let mut api = EndpointConfig::with_url("https://user:URLPW@api.example/x?code=URLKEY");
        api.auth_token = Secret::from("TOKEN");
        api.headers.insert("X-Api-Key".into(), "HEADERKEY".into());
        api.health_check = Some(openhqm_upstream::config::HealthCheckConfig {
            path: "/health?key=HCKEY".into(),
            ..Default::default()
        });
        config.proxy.endpoints.insert("api".into(), api);
        // Not parseable (a port typo): printed with its credentials masked all the same.
        config.proxy.default_endpoint = Some("http://u:BADPW@h:x/?k=BADKEY".into());
        let yaml = effective_yaml(&config, &[]).expect("printable");
        for secret in [
            "URLPW",
            "URLKEY",
            "TOKEN",
            "HEADERKEY",
            "HCKEY",
            "BADPW",
            "BADKEY",
        ] {
            assert!(!yaml.contains(secret), "{secret} printed in:\n{yaml}");
        }
        assert!(yaml.contains("path: /health?***"), "{yaml}");
    }

    /// A secret may sit anywhere a `${VAR}` is written: in a webhook URL's
    /// path, a header with an ordinary name, a Redis URL. What the file took
    /// from the environment is printed as written, unless a later layer set
    /// the key to something else.
    #[test]
    fn check_config_prints_what_came_from_the_environment_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("openhqm.yaml");
        let yaml = "queue: {redis_url: '${REDIS_URL}'}\n\
                    proxy: {default_endpoint: 'https://hooks.example/d/${HOOK_PATH}', endpoints: {\n\
                      hook: {url: 'https://hooks.example/services/${HOOK_PATH}', headers: {X-Custom: 'v=${CUSTOM}'}},\n\
                      other: {url: 'http://${OTHER_HOST}:8080/'}}}\n";
        std::fs::write(&file, yaml).expect("write config");
        let env = [
            ("REDIS_URL", "redis://:REDISPW@cache:6379"),
            ("HOOK_PATH", "T0/B0/HOOKSECRET"),
            ("CUSTOM", "CUSTOMSECRET"),
            ("OTHER_HOST", "other-host"),
            (
                "OPENHQM_PROXY__ENDPOINTS__OTHER__URL",
                "http://replaced:8080/",
            ),
        ];
        let sources = Sources {
            file: Some(file),
            env: env
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ..Sources::default()
        };
        let (config, errors) = load_all(&sources);
        assert!(errors.is_empty(), "{errors:?}");
        let hook = &config.proxy.endpoints["hook"];
        assert_eq!(
            hook.url.as_deref(),
            Some("https://hooks.example/services/T0/B0/HOOKSECRET")
        );
        assert_eq!(
            hook.from_env.urls_as_written[hook.url.as_deref().expect("url")],
            "https://hooks.example/services/${HOOK_PATH}"
        );
        let mut values: Vec<&str> = hook.from_env.values.iter().map(Secret::expose).collect();
        values.sort_unstable();
        assert_eq!(values, ["CUSTOMSECRET", "T0/B0/HOOKSECRET"]);
        // A URL as the default endpoint is an endpoint of its own.
        let default = config.proxy.upstream().default_from_env;
        assert_eq!(
            default.urls_as_written["https://hooks.example/d/T0/B0/HOOKSECRET"],
            "https://hooks.example/d/${HOOK_PATH}"
        );
        assert_eq!(default.values, [Secret::from("T0/B0/HOOKSECRET")]);
        let printed = effective_yaml(&config, &errors).expect("printable");
        for secret in ["REDISPW", "HOOKSECRET", "CUSTOMSECRET", "other-host"] {
            assert!(!printed.contains(secret), "{secret} printed in:\n{printed}");
        }
        let tree: serde_json::Value = serde_norway::from_str(&printed).expect("yaml");
        let endpoints = &tree["proxy"]["endpoints"];
        assert_eq!(
            endpoints["hook"]["url"],
            "https://hooks.example/services/${HOOK_PATH}"
        );
        assert_eq!(endpoints["hook"]["headers"]["X-Custom"], "v=${CUSTOM}");
        assert_eq!(tree["queue"]["redis_url"], "***");
        assert_eq!(
            tree["proxy"]["default_endpoint"],
            "https://hooks.example/d/${HOOK_PATH}"
        );
        assert_eq!(
            endpoints["other"]["url"], "http://replaced:8080/",
            "set again from the environment: no longer the file's"
        );
        assert!(
            config.proxy.endpoints["other"]
                .from_env
                .urls_as_written
                .is_empty()
        );
    }
}
