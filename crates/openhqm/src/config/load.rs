//! Layering: defaults, then the YAML file, then `OPENHQM_<SECTION>__<KEY>`
//! environment variables, then `--set key.path=value` flags.
//!
//! Layers are merged as JSON trees and deserialized once at the end, so every
//! layer obeys the same rules. Values from the environment and flags are
//! strings; the type of the default at the same key decides how they parse
//! (so `OPENHQM_PROXY__FORWARD_HEADERS=a,b` is a list and `OPENHQM_SERVER__PORT`
//! a number). Every problem is collected and named by its key path.
//!
//! `null` is "not set" at every key, as in the earlier implementation: a
//! section whose keys are all commented out, `port: null`, or a `null` in
//! JSON from the environment leaves the key to the layers below, and in the
//! end to its default.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{Config, Secret};

/// Where configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The YAML file, if any.
    pub file: Option<PathBuf>,
    /// The process environment (also used for `${VAR}` expansion).
    pub env: HashMap<String, String>,
    /// `key.path=value` overrides from the command line, applied last.
    pub overrides: Vec<String>,
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `queue.type`; empty for the file as a whole.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// The value given could not be read at all, so the key kept its
    /// default (as opposed to a value read but refused by validation).
    pub fell_back: bool,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            fell_back: false,
        }
    }

    /// Whether this is about the config file as a whole (unreadable, not
    /// YAML, not a mapping) rather than one key.
    #[must_use]
    pub fn is_about_the_file(&self) -> bool {
        self.key.is_empty()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "`{}`: {}", self.key, self.message)
        }
    }
}

const ENV_PREFIX: &str = "OPENHQM_";
/// Names the file; not a config key.
pub const CONFIG_FILE_VAR: &str = "OPENHQM_CONFIG";

/// Loads, merges, deserializes and validates the configuration.
///
/// # Errors
/// Every problem found, each naming its key.
pub fn load(sources: &Sources) -> Result<Config, Vec<ConfigError>> {
    let (config, errors) = load_all(sources);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// Like [`load`], but also returns the configuration as far as it could be
/// built (keys in error keep their defaults), for `check-config`.
pub fn load_all(sources: &Sources) -> (Config, Vec<ConfigError>) {
    let defaults = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
    let mut errors = Vec::new();
    let mut tree = Value::Object(Map::new());
    let mut substituted = Vec::new();
    // Variables the file names (`${OPENHQM_TOKEN}`) are the file's to read,
    // not keys.
    let mut referenced = std::collections::HashSet::new();
    if let Some(path) = &sources.file
        && let Some(file) = read_file(
            path,
            &sources.env,
            &defaults,
            &mut errors,
            (&mut substituted, &mut referenced),
        )
    {
        merge(&mut tree, file);
    }
    // Where each key set from a string came from, for errors found later,
    // when the sections are read.
    let mut origins: Vec<(String, String)> = Vec::new();
    let mut env: Vec<(&String, &String)> = sources.env.iter().collect();
    // In any case, a section (`OPENHQM_WORKER`) before its keys
    // (`OPENHQM_WORKER__COUNT`), which refine it.
    env.sort_by_key(|(name, _)| name.to_ascii_uppercase());
    for (name, raw) in env {
        if referenced.contains(name.as_str()) {
            continue;
        }
        let path = match env_key(name, raw, &defaults) {
            EnvKey::Key(path) => spelt_as_in(&tree, path),
            EnvKey::NotOurs => continue,
            EnvKey::Misspelt(hint) => {
                errors.push(ConfigError::new(
                    name.clone(),
                    format!("not a configuration variable; {hint}"),
                ));
                continue;
            }
        };
        let origin = format!("from environment variable {name}");
        if let Some(set) = layer_string(&mut tree, &defaults, &path, raw, &origin, &mut errors) {
            leaves(&path.join("."), &set, &origin, &mut origins);
        }
    }
    for item in &sources.overrides {
        let Some((key, raw)) = item.split_once('=') else {
            errors.push(ConfigError::new(
                item.clone(),
                "a --set override must look like key.path=value",
            ));
            continue;
        };
        let path: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
        let origin = "from --set";
        if let Some(set) = layer_string(&mut tree, &defaults, &path, raw, origin, &mut errors) {
            leaves(&path.join("."), &set, origin, &mut origins);
        }
    }
    prune_unknown(&mut tree, &defaults, "", &mut errors);
    report_empty_endpoints(&tree, &mut errors);
    let read_from = errors.len();
    let mut config = deserialize_sections(&tree, &mut errors);
    config.from_env = in_effect(substituted, &tree);
    mark_endpoints(&mut config);
    for error in &mut errors[read_from..] {
        // The last layer that set the key, or a section or list holding it.
        let origin = origins.iter().rev().find(|(key, _)| {
            error.key == *key
                || error
                    .key
                    .strip_prefix(key.as_str())
                    // `a.b` holds `a.b.c` and, as a list, `a.b[1]`.
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        });
        if let Some((_, origin)) = origin {
            error.message = format!("{} ({origin})", error.message);
        }
    }
    // So far, every value in error was left out: its key has its default.
    for error in &mut errors {
        error.fell_back = true;
    }
    // A key refused above has its default now, unless another layer set it:
    // that validation finds the default wanting too ("is required") is no
    // news about the file.
    let (layered, read) = errors.split_at(read_from);
    let refused: std::collections::HashSet<String> = layered
        .iter()
        .filter(|e| !is_set(&tree, &e.key))
        .chain(read)
        .map(|e| e.key.clone())
        .collect();
    errors.extend(
        super::validate::validate(&config)
            .into_iter()
            .filter(|e| !refused.contains(&e.key)),
    );
    (config, errors)
}

/// The substitutions whose key no later layer (the environment, `--set`)
/// has set to something else.
fn in_effect(substituted: Vec<Substitution>, tree: &Value) -> Vec<Substitution> {
    substituted
        .into_iter()
        .filter(|s| {
            let at = value_at(tree, s.path.iter().map(String::as_str));
            at.and_then(Value::as_str) == Some(s.expanded.expose())
        })
        .collect()
}

/// Tells each endpoint what its configuration took from the environment.
fn mark_endpoints(config: &mut Config) {
    let note = |from_env: &mut openhqm_upstream::config::FromEnv, s: &Substitution, url: bool| {
        from_env.values.extend(s.values.iter().cloned());
        if url {
            from_env
                .urls_as_written
                .insert(s.expanded.expose().to_owned(), s.written.clone());
        }
    };
    for s in &config.from_env {
        match s.path.as_slice() {
            // A URL used as an endpoint of its own.
            [proxy, default] if proxy == "proxy" && default == "default_endpoint" => {
                note(&mut config.proxy.default_from_env, s, true);
            }
            [proxy, endpoints, name, key @ ..] if proxy == "proxy" && endpoints == "endpoints" => {
                if let Some(endpoint) = config.proxy.endpoints.get_mut(name) {
                    let is_target_url = match key {
                        [url] => url == "url",
                        [targets, _, url] => targets == "targets" && url == "url",
                        _ => false,
                    };
                    note(&mut endpoint.from_env, s, is_target_url);
                }
            }
            _ => {}
        }
    }
}

/// Whether the merged layers set `key` (a dotted path; list items by index).
fn is_set(tree: &Value, key: &str) -> bool {
    value_at(tree, key.split('.')).is_some_and(|v| !v.is_null())
}

/// The value at `path` in the merged tree (list items by index).
fn value_at<'a, 'p>(tree: &'a Value, mut path: impl Iterator<Item = &'p str>) -> Option<&'a Value> {
    path.try_fold(tree, |value, segment| match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn read_file(
    path: &PathBuf,
    env: &HashMap<String, String>,
    defaults: &Value,
    errors: &mut Vec<ConfigError>,
    (substituted, referenced): (
        &mut Vec<Substitution>,
        &mut std::collections::HashSet<String>,
    ),
) -> Option<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(ConfigError::new(
                "",
                format!("cannot read config file {}: {e}", path.display()),
            ));
            return None;
        }
    };
    referenced.extend(names_referenced(&text));
    let yaml: serde_norway::Value = match serde_norway::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            errors.push(ConfigError::new(
                "",
                format!("config file {} is not valid YAML: {e}", path.display()),
            ));
            return None;
        }
    };
    // JSON has no infinity or NaN: converted, `.inf` would become `null`,
    // "not set", and the key would silently keep its default.
    non_finite_numbers(&yaml, "", errors);
    let mut value: Value = match serde_json::to_value(&yaml) {
        Ok(v) => v,
        Err(e) => {
            errors.push(ConfigError::new(
                "",
                format!("config file {}: {e}", path.display()),
            ));
            return None;
        }
    };
    match &value {
        Value::Object(_) => {}
        Value::Null => return None,
        _ => {
            errors.push(ConfigError::new(
                "",
                format!(
                    "config file {} must be a mapping of sections",
                    path.display()
                ),
            ));
            return None;
        }
    }
    let mut expansion = Expansion {
        env,
        defaults,
        errors,
        substituted,
    };
    expansion.tree(&mut value, &mut Vec::new(), None);
    Some(value)
}

/// The variables `text` names in `${NAME}` or `${NAME:-default}` (not in a
/// literal `$${`).
fn names_referenced(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        let escaped = rest[..at].ends_with('$');
        rest = &rest[at + 2..];
        if escaped {
            continue;
        }
        let end = rest.find(['}', ':']).unwrap_or(rest.len());
        names.push(rest[..end].to_owned());
    }
    names
}

/// Reports every `.inf`, `-.inf` and `.nan` in a file's tree by its key.
fn non_finite_numbers(yaml: &serde_norway::Value, path: &str, errors: &mut Vec<ConfigError>) {
    use serde_norway::Value as Yaml;
    match yaml {
        Yaml::Number(n) if n.as_f64().is_some_and(|f| !f.is_finite()) => {
            errors.push(ConfigError::new(
                path,
                format!("`{n}` is not a finite number"),
            ));
        }
        Yaml::Mapping(map) => {
            for (k, v) in map {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    other => serde_norway::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                non_finite_numbers(v, &join(path, &key), errors);
            }
        }
        Yaml::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                non_finite_numbers(v, &format!("{path}[{i}]"), errors);
            }
        }
        Yaml::Tagged(t) => non_finite_numbers(&t.value, path, errors),
        _ => {}
    }
}

/// Expands `${VAR}` and `${VAR:-default}` in every string of a file's tree;
/// `$${` stands for a literal `${`. A string that held a substitution is
/// then read by the type of its key, as an environment variable is: YAML
/// saw `port: ${PORT}` as text, but it is a number.
struct Expansion<'a> {
    env: &'a HashMap<String, String>,
    defaults: &'a Value,
    errors: &'a mut Vec<ConfigError>,
    substituted: &'a mut Vec<Substitution>,
}

/// A string of the file that took text from the environment. Secrets are
/// put in the environment and named in the file (`${API_TOKEN}`), so what
/// came from it is kept out of what OpenHQM prints: `check-config` shows
/// the string as written, a target is named by its URL as written, and
/// backend text quoted in errors has the values masked.
#[derive(Debug, Clone)]
pub struct Substitution {
    /// The key's path from the root (list items by index).
    pub path: Vec<String>,
    /// As written in the file, `${VAR}` in place.
    pub written: String,
    /// As expanded.
    pub expanded: Secret,
    /// The text each `${VAR}` stood for.
    pub values: Vec<Secret>,
}

impl Expansion<'_> {
    /// `hint`: what an array item is read by (its default's first item).
    /// Returns `false` for a value in error, which its parent removes: the
    /// key keeps its default and is reported once.
    fn tree(&mut self, value: &mut Value, path: &mut Vec<String>, hint: Option<Hint>) -> bool {
        match value {
            Value::String(s) => {
                let shown = path.join(".");
                let mut values = Vec::new();
                match expand_noting(s, self.env, &mut values) {
                    Ok(expanded) => {
                        let unchanged = expanded == *s && !s.contains("$${");
                        // A variable set to `null` leaves the key unset, as
                        // `null` does in the file and from the environment.
                        if !unchanged && expanded.trim() == "null" {
                            *value = Value::Null;
                            return true;
                        }
                        let hint = hint.or_else(|| hint_for(self.defaults, path));
                        let read = match hint {
                            // An expanded value is read by its key's type, as
                            // an environment variable is; so is a quoted
                            // number or boolean (`port: "8000"`, as Helm
                            // templates write them), which the earlier
                            // implementation accepted too, and a string
                            // where a list belongs (comma-separated).
                            Some(Hint::Default(d))
                                if !d.is_string()
                                    && !d.is_null()
                                    && (!unchanged
                                        || d.is_number()
                                        || d.is_boolean()
                                        || d.is_array()) =>
                            {
                                typed(&d, &expanded)
                            }
                            _ if unchanged => return true,
                            _ => {
                                if !values.is_empty() {
                                    self.substituted.push(Substitution {
                                        path: path.clone(),
                                        written: s.clone(),
                                        expanded: Secret::from(expanded.as_str()),
                                        values: values
                                            .iter()
                                            .map(|v| Secret::from(v.as_str()))
                                            .collect(),
                                    });
                                }
                                Ok(Value::String(expanded))
                            }
                        };
                        match read {
                            Ok(v) => {
                                *value = v;
                                true
                            }
                            Err(message) => {
                                self.errors.push(ConfigError::new(&shown, message));
                                false
                            }
                        }
                    }
                    Err(message) => {
                        self.errors.push(ConfigError::new(&shown, message));
                        false
                    }
                }
            }
            Value::Array(items) => {
                let item_hint = match hint.or_else(|| hint_for(self.defaults, path)) {
                    Some(Hint::Default(Value::Array(d))) => d.first().cloned(),
                    _ => None,
                };
                let mut ok = true;
                for (i, item) in items.iter_mut().enumerate() {
                    path.push(i.to_string());
                    ok &= self.tree(item, path, item_hint.clone().map(Hint::Default));
                    path.pop();
                }
                ok
            }
            Value::Object(map) => {
                let mut in_error = Vec::new();
                for (k, v) in map.iter_mut() {
                    path.push(k.clone());
                    if !self.tree(v, path, None) {
                        in_error.push(k.clone());
                    }
                    path.pop();
                }
                for k in in_error {
                    map.remove(&k);
                }
                true
            }
            _ => true,
        }
    }
}

#[cfg(test)]
pub(crate) fn expand(input: &str, env: &HashMap<String, String>) -> Result<String, String> {
    expand_noting(input, env, &mut Vec::new())
}

/// [`expand`], noting in `values` the text each `${VAR}` stood for.
fn expand_noting(
    input: &str,
    env: &HashMap<String, String>,
    values: &mut Vec<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                // The value is not quoted: it may be a secret.
                .ok_or_else(|| "unterminated `${` (write `$${` for a literal one)".to_owned())?;
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            // As in the shell: `:-` also stands in for a variable set empty.
            match (
                env.get(name).filter(|v| default.is_none() || !v.is_empty()),
                default,
            ) {
                (Some(v), _) => {
                    out.push_str(v);
                    values.push(v.clone());
                }
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable `{name}` is not set")),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// What an environment variable is to the configuration.
#[derive(Debug, PartialEq, Eq)]
enum EnvKey {
    /// `OPENHQM_<SECTION>__<KEY>`: the key path, lowercased.
    Key(Vec<String>),
    /// Not a configuration variable: another program's, `OPENHQM_CONFIG`,
    /// or a Kubernetes service link (a Service named `openhqm-api` gives
    /// every pod `OPENHQM_API_SERVICE_HOST`, `OPENHQM_API_PORT`, ...).
    NotOurs,
    /// `OPENHQM_SERVER_PORT`: a section and a key joined by one underscore,
    /// with a hint at the right spelling.
    Misspelt(String),
}

/// Sorts an environment variable: the prefix is matched in any case, as
/// the earlier implementation did; `__` separates the levels of a key.
fn env_key(name: &str, value: &str, defaults: &Value) -> EnvKey {
    let upper = name.to_ascii_uppercase();
    let Some(rest) = upper.strip_prefix(ENV_PREFIX) else {
        return EnvKey::NotOurs;
    };
    if upper == CONFIG_FILE_VAR {
        return EnvKey::NotOurs;
    }
    if rest.contains("__") {
        return EnvKey::Key(rest.split("__").map(str::to_ascii_lowercase).collect());
    }
    if is_service_link(rest, value) {
        return EnvKey::NotOurs;
    }
    let lower = rest.to_ascii_lowercase();
    let Some(sections) = defaults.as_object() else {
        return EnvKey::NotOurs;
    };
    // `OPENHQM_PROXY='{...}'`: a whole section, as JSON.
    if sections.contains_key(&lower) {
        return EnvKey::Key(vec![lower]);
    }
    // The earlier implementation's names, which a migrating deployment
    // still sets: ignored, they would leave the defaults running unseen.
    let renamed = match lower.as_str() {
        "redis_url" => Some("QUEUE__REDIS_URL and OPENHQM_CACHE__REDIS_URL"),
        "log_level" => Some("MONITORING__LOG_LEVEL"),
        "log_format" => Some("MONITORING__LOG_FORMAT"),
        _ => None,
    };
    if let Some(now) = renamed {
        return EnvKey::Misspelt(format!("it is now {ENV_PREFIX}{now}"));
    }
    sections
        .keys()
        .find_map(|section| {
            let key = lower.strip_prefix(section.as_str())?.strip_prefix('_')?;
            let upper = section.to_ascii_uppercase();
            Some(if defaults.get(section)?.get(key).is_some() {
                format!(
                    "did you mean {ENV_PREFIX}{upper}__{}?",
                    key.to_ascii_uppercase()
                )
            } else {
                format!("keys are set as {ENV_PREFIX}{upper}__<KEY>")
            })
        })
        .map_or_else(
            || EnvKey::Misspelt(format!("keys are set as {ENV_PREFIX}<SECTION>__<KEY>")),
            EnvKey::Misspelt,
        )
}

/// Whether `rest` (after `OPENHQM_`) is one of the variables Kubernetes
/// sets for a Service: `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORT>]`,
/// `<NAME>_PORT=tcp://...` and `<NAME>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]`.
/// `<NAME>_PORT` is told from a misspelt key (`OPENHQM_SERVER_PORT=9000`)
/// by its value, a URL.
fn is_service_link(rest: &str, value: &str) -> bool {
    // `<NAME>_SERVICE_PORT_<PORT>` for a Service named `openhqm` is
    // `SERVICE_PORT_<PORT>` here.
    let name_then = |marker: &str| {
        let bare = &marker[1..];
        rest == bare
            || rest.strip_prefix(bare).is_some_and(|r| r.starts_with('_'))
            || rest.contains(marker)
    };
    if name_then("_SERVICE_HOST") || name_then("_SERVICE_PORT") {
        return true;
    }
    let url = ["tcp://", "udp://", "sctp://"]
        .iter()
        .any(|scheme| value.starts_with(scheme));
    if (rest == "PORT" || rest.ends_with("_PORT")) && url {
        return true;
    }
    // `..._PORT_8000_TCP`, optionally followed by `_PROTO`, `_PORT` or `_ADDR`.
    let parts: Vec<&str> = rest.split('_').collect();
    parts.windows(3).any(|w| {
        w[0] == "PORT"
            && !w[1].is_empty()
            && w[1].bytes().all(|b| b.is_ascii_digit())
            && matches!(w[2], "TCP" | "UDP" | "SCTP")
    })
}

/// Parses a string from the environment or a flag by the type of the default
/// at `path`, and sets it in `tree`.
/// Sets `path` from the string `raw`; returns the value set, if it was.
fn layer_string(
    tree: &mut Value,
    defaults: &Value,
    path: &[String],
    raw: &str,
    origin: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Value> {
    let key = path.join(".");
    if path.iter().any(String::is_empty) {
        errors.push(ConfigError::new(key, format!("malformed key {origin}")));
        return None;
    }
    let Some(hint) = hint_for(defaults, path) else {
        errors.push(ConfigError::new(key, format!("unknown key ({origin})")));
        return None;
    };
    // `null` means "not set" here as in the file: the layers below decide.
    if raw.trim() == "null" {
        return None;
    }
    let value = match &hint {
        Hint::Default(default) => typed(default, raw),
        Hint::UnsetOption => Ok(loose(raw)),
    };
    match value {
        Ok(value) => {
            set(tree, path, value.clone());
            Some(value)
        }
        Err(message) => {
            errors.push(ConfigError::new(key, format!("{message} ({origin})")));
            None
        }
    }
}

/// Records `origin` for each key `value` sets at `key`: an object merges
/// with the layers below, so only its own leaves came from `origin`.
fn leaves(key: &str, value: &Value, origin: &str, origins: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                leaves(&format!("{key}.{k}"), v, origin, origins);
            }
        }
        // "Not set": what the layers below set stays.
        Value::Null => {}
        _ => origins.push((key.to_owned(), origin.to_owned())),
    }
}

/// An environment variable's key path is lowercased, but an endpoint the
/// file names `MyApi` is still the one `OPENHQM_PROXY__ENDPOINTS__MYAPI__*`
/// means: the name takes the file's spelling when exactly one endpoint
/// matches it regardless of case.
fn spelt_as_in(tree: &Value, mut path: Vec<String>) -> Vec<String> {
    if let [section, map, name, ..] = path.as_mut_slice()
        && section == "proxy"
        && map == "endpoints"
        && let Some(endpoints) = tree.pointer("/proxy/endpoints").and_then(Value::as_object)
        && !endpoints.contains_key(name.as_str())
    {
        let mut same = endpoints.keys().filter(|k| k.eq_ignore_ascii_case(name));
        if let (Some(spelt), None) = (same.next(), same.next()) {
            *name = spelt.clone();
        }
    }
    path
}

/// What `path` holds, to read a string by: the default at that key; inside a
/// named endpoint (`proxy.endpoints.<name>.<key>`, which has no default),
/// an endpoint's defaults, where an unset option is read loosely.
fn hint_for(defaults: &Value, path: &[String]) -> Option<Hint> {
    if let [section, map, _name, rest @ ..] = path
        && section == "proxy"
        && map == "endpoints"
        && !rest.is_empty()
    {
        let mut template = serde_json::to_value(super::EndpointConfig::with_url("")).ok()?;
        if let Value::Object(fields) = &mut template {
            fields.entry("callback_url").or_insert(Value::Null);
        }
        return match rest.iter().try_fold(&template, |v, k| v.get(k))? {
            Value::Null => Some(Hint::UnsetOption),
            other => Some(Hint::Default(other.clone())),
        };
    }
    path.iter()
        .try_fold(defaults, |v, k| v.get(k))
        .map(|v| Hint::Default(v.clone()))
}

/// How to read a string given for a key.
enum Hint {
    /// By the type of the key's default.
    Default(Value),
    /// An endpoint option that is unset by default, so of no known type.
    UnsetOption,
}

/// A value of no known type: JSON if it is an object or an array, text
/// otherwise (a numeric option reads text as a number itself, so a user name
/// of digits stays text).
fn loose(raw: &str) -> Value {
    serde_json::from_str::<Value>(raw.trim())
        .ok()
        .filter(|v| v.is_object() || v.is_array())
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

fn typed(hint: &Value, raw: &str) -> Result<Value, String> {
    let trimmed = raw.trim();
    let json = || serde_json::from_str::<Value>(trimmed).map_err(|e| format!("invalid JSON: {e}"));
    match hint {
        Value::Bool(_) => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, got `{raw}`")),
        },
        Value::Number(_) => trimmed
            .parse::<serde_json::Number>()
            .map(Value::Number)
            .map_err(|_| format!("expected a number, got `{raw}`")),
        Value::Array(_) if trimmed.starts_with('[') => json(),
        Value::Array(items) => {
            // Comma-separated, each item read by the type of the default's.
            let numbers = items.first().is_some_and(Value::is_number);
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| match s.parse::<serde_json::Number>() {
                    Ok(n) if numbers => Ok(Value::Number(n)),
                    Err(_) if numbers => Err(format!("expected numbers, got `{s}` in `{raw}`")),
                    _ => Ok(Value::String(s.to_owned())),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        Value::Object(_) => json(),
        Value::Null if trimmed.starts_with('{') || trimmed.starts_with('[') => json(),
        Value::Null | Value::String(_) => Ok(Value::String(raw.to_owned())),
    }
}

fn set(tree: &mut Value, path: &[String], value: Value) {
    let mut node = tree;
    for key in &path[..path.len() - 1] {
        if !node.get(key).is_some_and(Value::is_object)
            && let Value::Object(map) = node
        {
            map.insert(key.clone(), Value::Object(Map::new()));
        }
        let Some(next) = node.get_mut(key) else {
            return;
        };
        node = next;
    }
    if let (Value::Object(map), Some(last)) = (node, path.last()) {
        // An object (a section or a map given as JSON) merges with what the
        // earlier layers set there, as the file does with the defaults.
        merge_key(map, last.clone(), value);
    }
}

fn merge(base: &mut Value, layer: Value) {
    match (base, layer) {
        (Value::Object(base), Value::Object(layer)) => {
            for (k, v) in layer {
                merge_key(base, k, v);
            }
        }
        // `null` means "not set": what the layers below set stays.
        (_, Value::Null) => {}
        (base, layer) => *base = layer,
    }
}

/// Sets `key` in `map` from a higher layer. A `null` is "not set": it never
/// replaces a value from below, and where there is none it stays in the tree
/// only so that an unknown key is still reported; `section` then drops it
/// and the key keeps its default.
fn merge_key(map: &mut Map<String, Value>, key: String, value: Value) {
    match map.get_mut(&key) {
        Some(existing) if existing.is_object() && value.is_object() => merge(existing, value),
        Some(existing) if value.is_null() && !existing.is_null() => {}
        _ => {
            map.insert(key, value);
        }
    }
}

/// Reports and removes keys that do not exist. Maps whose default is empty
/// (`proxy.endpoints`, static headers) are free-form; their entries are
/// checked by their own types during deserialization.
fn prune_unknown(tree: &mut Value, defaults: &Value, path: &str, errors: &mut Vec<ConfigError>) {
    let (Value::Object(map), Value::Object(known)) = (tree, defaults) else {
        return;
    };
    if known.is_empty() {
        return;
    }
    map.retain(|k, _| {
        let ok = known.contains_key(k);
        if !ok {
            errors.push(ConfigError::new(join(path, k), "unknown key"));
        }
        ok
    });
    for (k, v) in map.iter_mut() {
        if let Some(d) = known.get(k) {
            prune_unknown(v, d, &join(path, k), errors);
        }
    }
}

fn section<T: DeserializeOwned>(
    tree: &Value,
    name: &str,
    slot: &mut T,
    errors: &mut Vec<ConfigError>,
) {
    // A section whose keys are all commented out is `null`: not set.
    let Some(value) = tree.get(name).filter(|v| !v.is_null()) else {
        return;
    };
    // serde would read a list as the section's fields in order, and name
    // an item's type as the error.
    if !value.is_object() {
        let got = match value {
            Value::Array(_) => "a list",
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            _ => "a boolean",
        };
        errors.push(ConfigError::new(
            name,
            format!("expected a mapping of its settings, got {got}"),
        ));
        return;
    }
    // serde stops at a section's first error: the key in error is dropped
    // (it keeps its default) and the section read again, so every error in
    // it is reported and the rest of it still applies. A key whose value is
    // `null` is "not set" and dropped without an error; every drop removes a
    // key, so this ends.
    let mut value = value.clone();
    let mut reported = 0;
    while reported < MAX_ERRORS_PER_SECTION {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => {
                *slot = v;
                return;
            }
            Err(e) => {
                // Not for an unknown key that happens to be `null`.
                let unset = e.inner().to_string().starts_with("invalid type: null")
                    && is_null_key(&value, e.path());
                let dropped = drop_key(&mut value, e.path());
                if unset && dropped {
                    continue;
                }
                let inner = e.path().to_string();
                let key = if inner == "." {
                    name.to_owned()
                } else {
                    join(name, &inner)
                };
                let message = without_credentials(&e.into_inner().to_string());
                errors.push(ConfigError::new(key, message));
                reported += 1;
                if !dropped {
                    return;
                }
            }
        }
    }
}

/// serde quotes a string given where something else was expected
/// (`invalid type: string "https://user:pw@host/", expected struct
/// EndpointConfig`): each such quote is shown with any password, user
/// info and query masked.
fn without_credentials(message: &str) -> String {
    const QUOTE: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(QUOTE) {
        let (before, after) = rest.split_at(at + QUOTE.len());
        out.push_str(before);
        // serde writes the string as Rust's `Debug` does: `\"` inside.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            // Unterminated: show none of it.
            out.push_str("***\"");
            return out;
        };
        out.push_str(&openhqm_upstream::config::quotable(&after[..end]));
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Whether `path` ends at a mapping key whose value is `null`.
fn is_null_key(value: &Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let mut node = value;
    let mut last_is_key = false;
    for segment in path.iter() {
        let next = match segment {
            Segment::Map { key } => node.get(key.as_str()),
            Segment::Seq { index } => node.get(*index),
            _ => None,
        };
        let Some(next) = next else { return false };
        last_is_key = matches!(segment, Segment::Map { .. });
        node = next;
    }
    last_is_key && node.is_null()
}

/// More errors than anyone reads in one section.
const MAX_ERRORS_PER_SECTION: usize = 32;

/// Removes the innermost mapping key on `path`; `false` if there is none.
fn drop_key(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some(last_key) = segments
        .iter()
        .rposition(|s| matches!(s, Segment::Map { .. }))
    else {
        return false;
    };
    let mut node = value;
    for segment in &segments[..last_key] {
        let next = match segment {
            Segment::Map { key } => node.get_mut(key.as_str()),
            Segment::Seq { index } => node.get_mut(*index),
            _ => None,
        };
        let Some(next) = next else { return false };
        node = next;
    }
    match (node, segments[last_key]) {
        (Value::Object(map), Segment::Map { key }) => map.remove(key.as_str()).is_some(),
        _ => false,
    }
}

/// An endpoint named with nothing under it (`api:` and no keys, or
/// `api: null`) is an error, not "not set": a submit naming it would
/// otherwise be refused as unknown, far from the cause.
fn report_empty_endpoints(tree: &Value, errors: &mut Vec<ConfigError>) {
    let Some(Value::Object(endpoints)) = tree.pointer("/proxy/endpoints") else {
        return;
    };
    for (name, value) in endpoints {
        if value.is_null() {
            errors.push(ConfigError::new(
                format!("proxy.endpoints.{name}"),
                "the endpoint has no settings: give it a `url` or `targets`, or remove it",
            ));
        }
    }
}

fn deserialize_sections(tree: &Value, errors: &mut Vec<ConfigError>) -> Config {
    let mut c = Config::default();
    section(tree, "server", &mut c.server, errors);
    section(tree, "queue", &mut c.queue, errors);
    section(tree, "worker", &mut c.worker, errors);
    section(tree, "proxy", &mut c.proxy, errors);
    section(tree, "cache", &mut c.cache, errors);
    section(tree, "monitoring", &mut c.monitoring, errors);
    section(tree, "routing", &mut c.routing, errors);
    section(tree, "partitioning", &mut c.partitioning, errors);
    section(tree, "sidecar", &mut c.sidecar, errors);
    section(tree, "idempotency", &mut c.idempotency, errors);
    section(tree, "callbacks", &mut c.callbacks, errors);
    c
}
