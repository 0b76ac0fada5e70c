//! `GUILD_*` environment variables over the file: `GUILD_QUEUE__DEPTH_MAX=64` sets
//! `queue.depth_max`; list elements are named by index or by `name`.

use super::ConfigError;
use std::path::Path;

/// Environment variables that belong to the CLI rather than to this file.
const ENV_NOT_CONFIG: &[&str] = &["GUILD_HOME", "GUILD_TOKEN", "GUILD_CONFIG", "GUILD_LOG", "GUILD_URL", "GUILD_GPU"];
/// Keys holding lists whose elements the environment can override but not create.
const LIST_KEYS: &[&str] = &["tools", "tenants", "mounts"];
/// Top-level keys the environment may override.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "store",
    "state",
    "request_bytes_max",
    "component_bytes_max",
    "log_format",
    "queue",
    "tools",
    "tenants",
    "secrets",
    "mcp",
    "redis",
    "http",
    "signing",
    "schema_check",
    "egress_connections_max",
    "cache",
    "oauth",
    "pricing",
    "telemetry",
];

/// Apply every `GUILD_*` variable of `env` that names a field to `table`; returns the names of
/// those that name none (the caller warns about them).
///
/// # Errors
/// A variable whose value cannot go where it points, naming the variable.
pub(super) fn apply(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let mut ignored = Vec::new();
    let mut overrides: Vec<(String, String)> =
        env.into_iter().filter(|(k, _)| k.starts_with("GUILD_") && !ENV_NOT_CONFIG.contains(&k.as_str())).collect();
    overrides.sort();
    for (name, value) in overrides {
        let path: Vec<String> = name["GUILD_".len()..].split("__").map(str::to_string).collect();
        if !path.first().is_some_and(|k| TOP_LEVEL_KEYS.contains(&k.to_lowercase().as_str())) {
            ignored.push(name);
            continue;
        }
        apply_override(table, &path, &value).map_err(|message| ConfigError::new(name.clone(), message))?;
    }
    Ok(ignored)
}

/// Set the value at `path` (the variable's name split on `__`) in `table`. Keys match
/// case-insensitively; an array element is named by its index or its `name` (tools: also the
/// file stem of its `path`).
fn apply_override(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty variable name")?;
    let mut current = table;
    let mut segments = parents.iter();
    while let Some(segment) = segments.next() {
        let key = matching_key(current, segment);
        if LIST_KEYS.contains(&key.as_str()) && !current.contains_key(&key) {
            return Err(format!("the config defines no {key}; define them in the file, then override their fields"));
        }
        let entry = current.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                let name = segments.next().ok_or_else(|| format!("name an element of {key} (by index or name)"))?;
                element(items, name)?
            }
            _ => return Err(format!("{key} is not a table")),
        };
    }
    let key = matching_key(current, last);
    let value = parse_value(raw, current.get(&key));
    current.insert(key, value);
    Ok(())
}

fn matching_key(table: &toml::Table, segment: &str) -> String {
    table.keys().find(|k| k.eq_ignore_ascii_case(segment)).cloned().unwrap_or_else(|| segment.to_lowercase())
}

fn element<'a>(items: &'a mut [toml::Value], segment: &str) -> Result<&'a mut toml::Table, String> {
    let wanted = segment.to_lowercase();
    let position = match segment.parse::<usize>() {
        Ok(index) => Some(index),
        Err(_) => items.iter().position(|item| {
            let name = item.get("name").and_then(|v| v.as_str()).map(str::to_lowercase);
            let stem = item
                .get("path")
                .and_then(|v| v.as_str())
                .and_then(|p| Path::new(p).file_stem())
                .map(|s| s.to_string_lossy().to_lowercase());
            name.as_deref() == Some(wanted.as_str()) || stem.as_deref() == Some(wanted.as_str())
        }),
    };
    match position.and_then(|i| items.get_mut(i)) {
        Some(toml::Value::Table(t)) => Ok(t),
        _ => Err(format!("no element {segment:?} in the list (name it by index or by its name)")),
    }
}

/// A variable's value as TOML (numbers, booleans, arrays), else as a string; a field that is a
/// string in the file stays a string.
fn parse_value(raw: &str, existing: Option<&toml::Value>) -> toml::Value {
    if matches!(existing, Some(toml::Value::String(_))) {
        return toml::Value::String(raw.to_string());
    }
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}
