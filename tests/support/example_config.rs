//! The example config files as references: which lines are commented-out TOML, and the check
//! that an example documents every field of its config structs.
//!
//! Shared by the origin's and the proxy's config unit tests (through `#[path]`) and by
//! `tests/docs.rs`, which renders docs/configuration.md from the same files.
#![allow(dead_code)]

use std::collections::BTreeSet;

/// The text after `# ` when a comment line is commented-out TOML (`# key = value`,
/// `# [section]`) rather than prose.
pub fn commented_out(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix("# ")?;
    let key = rest.split_once(" = ").map_or("", |(key, _)| key);
    let is_key = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    (is_key || rest.starts_with('[')).then_some(rest)
}

/// `text` with its commented-out keys and sections switched on, so optional keys count too.
pub fn with_optional_keys(text: &str) -> String {
    text.lines()
        .map(|line| commented_out(line).unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every key path under `value`: `cache.max_bytes`, and `upstreams[].primary.address` for the
/// keys of an array of tables (the union over its elements). Tables named in `free_form` hold
/// the user's keys, not fields, and are not descended into.
pub fn key_paths(
    value: &serde_json::Value,
    prefix: &str,
    free_form: &[&str],
    out: &mut BTreeSet<String>,
) {
    let serde_json::Value::Object(table) = value else {
        return;
    };
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            serde_json::Value::Object(_) if !free_form.contains(&path.as_str()) => {
                key_paths(value, &path, free_form, out);
            }
            serde_json::Value::Array(items) if items.iter().all(serde_json::Value::is_object) => {
                for item in items {
                    key_paths(item, &format!("{path}[]"), free_form, out);
                }
            }
            _ => {}
        }
        out.insert(path);
    }
}

/// Panics unless the example (`text`, optional keys switched on) and `fields` (the config
/// parsed from it, serialized to JSON, which keeps a `None` as `null` where TOML would drop
/// it) have the same key paths: no field undocumented, no key that no field takes.
pub fn assert_documents_every_field(
    file: &str,
    text: &str,
    fields: &serde_json::Value,
    free_form: &[&str],
) {
    let example = serde_json::to_value(toml::from_str::<toml::Value>(text).unwrap()).unwrap();
    let (mut in_structs, mut in_example) = (BTreeSet::new(), BTreeSet::new());
    key_paths(fields, "", free_form, &mut in_structs);
    key_paths(&example, "", free_form, &mut in_example);
    let undocumented: Vec<_> = in_structs.difference(&in_example).collect();
    assert!(
        undocumented.is_empty(),
        "fields missing from {file} (add each with its default and a comment): {undocumented:?}"
    );
    let unknown: Vec<_> = in_example.difference(&in_structs).collect();
    assert!(
        unknown.is_empty(),
        "keys of {file} no field takes: {unknown:?}"
    );
}
