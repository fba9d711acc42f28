//! `docs/configuration.md`, the configuration reference, generated from the two example config
//! files and checked against the config structs.
//!
//! The example files are the source. Their comment conventions, which this reader follows:
//!
//! - a comment block directly above a `[section]` header (or after it on the same line)
//!   describes the section; one directly above a `key = value` line, or after it on the same
//!   line, describes the key; a blank line ends a block;
//! - `# key = value` is an optional key, unset by default; `# [section]` is an optional section,
//!   its keys commented out with it;
//! - a value is the key's default unless the key's comment (or its section's) says "example",
//!   or the key's comment says "required".
//!
//! The `the_example_config_documents_every_field` unit tests of `parallax-proxy` and
//! `parallax-origin` check that the examples name every field of the structs. This test renders
//! them as tables whose default column is read from the structs themselves (deserialized from
//! nothing but the section headers), so it cannot drift; it also checks that every key has a
//! comment and that a value differing from its default is labelled as the convention says.
//!
//! `PARALLAX_UPDATE_DOCS=1 cargo test -p parallax-e2e --test docs` rewrites the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/example_config.rs"]
mod example_config;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One `[section]` or `[[list]]` of an example file, its repeats merged.
#[derive(Debug)]
struct Section {
    /// As in the header (`upstreams.primary`); empty for the top level.
    name: String,
    /// A `[[list]]` header.
    list: bool,
    /// Commented out: the whole section is optional.
    optional: bool,
    /// Where its defaults are: `upstreams[].primary` (`[]`: the first element of a list).
    path: String,
    comment: String,
    keys: Vec<Key>,
}

/// One key of a section.
#[derive(Debug)]
struct Key {
    name: String,
    /// Every value the example gives it (one per repeat of a list section), as written.
    values: Vec<String>,
    comment: String,
    /// `# key = value` in a section that is not commented out: unset unless given.
    optional: bool,
}

/// One binary's example file.
struct Example {
    /// `proxy/proxy.example.toml`, relative to the workspace.
    file: &'static str,
    binary: &'static str,
    /// What the reference says before the tables.
    intro: &'static str,
    /// The defaults: the file's section headers alone, deserialized into the binary's config
    /// struct and serialized back.
    defaults: fn(&str) -> toml::Value,
}

const EXAMPLES: [Example; 2] = [
    Example {
        file: "proxy/proxy.example.toml",
        binary: "proxy",
        intro: "`proxy --config /etc/parallax/proxy.toml`. Flags override the file: `--listen`, \
                `--upstream`/`--backup` (replace every upstream group with one), \
                `--admin-token`, `--admin-addr`, `--threads`, `--player`. `proxy -t --config …` \
                checks a file (policy modules included) without starting.",
        defaults: |skeleton| {
            let config: parallax_proxy::Config = toml::from_str(skeleton).unwrap();
            toml::Value::try_from(&config).unwrap()
        },
    },
    Example {
        file: "origin/origin.example.toml",
        binary: "origin",
        intro: "`origin --config /etc/parallax/origin.toml`. An empty file is a valid \
                configuration.",
        defaults: |skeleton| {
            let config: parallax_origin::config::Config = toml::from_str(skeleton).unwrap();
            toml::Value::try_from(&config).unwrap()
        },
    },
];

const OUTPUT: &str = "docs/configuration.md";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Splits TOML code from a trailing comment (a `#` outside strings), and counts the brackets
/// the code leaves open (a value continuing on the next line).
fn split_comment(line: &str) -> (&str, Option<(usize, &str)>, i32) {
    let (mut quote, mut escaped, mut depth) = (None, false, 0);
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (Some('"'), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, '#') => {
                let comment = line[i + 1..].trim();
                return (line[..i].trim_end(), Some((i, comment)), depth);
            }
            (None, _) => {}
        }
        escaped = false;
    }
    (line.trim_end(), None, depth)
}

/// Reads an example file into its sections, in file order, list repeats merged (the first
/// comment written for a key is its description).
fn parse(file: &str, text: &str) -> Vec<Section> {
    let mut sections = vec![Section {
        name: String::new(),
        list: false,
        optional: false,
        path: String::new(),
        comment: String::new(),
        keys: Vec::new(),
    }];
    let mut current = 0;
    let mut lists: Vec<String> = Vec::new();
    let mut pending: Vec<&str> = Vec::new();
    // (column of the key's trailing `#`, section, key): an indented comment at that column
    // continues it.
    let mut trailing: Option<(usize, usize, usize)> = None;
    let mut lines = text.lines().enumerate();
    while let Some((number, raw)) = lines.next() {
        let at = || format!("{file}:{}", number + 1);
        if raw.trim().is_empty() {
            pending.clear();
            trailing = None;
            continue;
        }
        let (line, commented) = match example_config::commented_out(raw) {
            Some(rest) => (rest, true),
            None => (raw.trim_start(), false),
        };
        // Byte offset of `line` in `raw` (it is a suffix of it).
        let offset = raw.len() - line.len();
        if !commented && line.starts_with('#') {
            let text = line.trim_start_matches('#').trim();
            match trailing {
                Some((column, s, k)) if column == offset => {
                    let key = &mut sections[s].keys[k];
                    key.comment = format!("{} {text}", key.comment);
                }
                _ => {
                    trailing = None;
                    pending.push(text);
                }
            }
            continue;
        }
        let (code, comment, mut depth) = split_comment(line);
        let comment_text = comment.map_or("", |(_, text)| text);
        let mut comment_lines = std::mem::take(&mut pending);
        if !comment_text.is_empty() {
            comment_lines.push(comment_text);
        }
        let description = comment_lines.join(" ");

        if let Some(header) = code.strip_prefix('[') {
            let list = header.starts_with('[');
            let name = header
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            if list && !lists.contains(&name) {
                lists.push(name.clone());
            }
            // `upstreams.primary` → `upstreams[].primary`: a list's sub-table belongs to its
            // last element.
            let (mut prefix, mut path) = (String::new(), String::new());
            for segment in name.split('.') {
                if !prefix.is_empty() {
                    prefix.push('.');
                    path.push('.');
                }
                prefix.push_str(segment);
                path.push_str(segment);
                if lists.contains(&prefix) {
                    path.push_str("[]");
                }
            }
            current = match sections.iter().position(|s| s.name == name) {
                Some(i) => i,
                None => {
                    sections.push(Section {
                        name,
                        list,
                        optional: commented,
                        path,
                        comment: String::new(),
                        keys: Vec::new(),
                    });
                    sections.len() - 1
                }
            };
            let section = &mut sections[current];
            if section.comment.is_empty() {
                section.comment = description;
            }
            trailing = None;
            continue;
        }

        let Some((name, value)) = code.split_once('=') else {
            panic!(
                "{}: neither a comment, a [section] nor a key = value line",
                at()
            );
        };
        let section = &mut sections[current];
        assert!(
            commented || !section.optional,
            "{}: a key under a commented-out section must be commented out too",
            at()
        );
        let mut value = value.trim().to_owned();
        // A value continuing on the following lines (a long array).
        while depth > 0 {
            let (_, next) = lines
                .next()
                .unwrap_or_else(|| panic!("{}: unclosed value", at()));
            let (more, _, open) = split_comment(next.trim());
            value = format!("{value} {more}");
            depth += open;
        }
        let name = name.trim().to_owned();
        let k = match section.keys.iter().position(|k| k.name == name) {
            Some(k) => k,
            None => {
                section.keys.push(Key {
                    name,
                    values: Vec::new(),
                    comment: String::new(),
                    optional: commented && !section.optional,
                });
                section.keys.len() - 1
            }
        };
        let key = &mut section.keys[k];
        key.values.push(value);
        if key.comment.is_empty() {
            key.comment = description;
        }
        trailing = comment.map(|(column, _)| (offset + column, current, k));
    }
    sections
}

/// The file's section headers, each once, uncommented: every list gets one element and every
/// optional section is present, so deserializing it gives the default of every key.
fn skeleton(sections: &[Section]) -> String {
    sections
        .iter()
        .filter(|s| !s.name.is_empty())
        .map(|s| {
            if s.list {
                format!("[[{}]]\n", s.name)
            } else {
                format!("[{}]\n", s.name)
            }
        })
        .collect()
}

/// The value at `path` (`upstreams[].primary.address`); `None` for an unset `Option`.
fn lookup<'a>(defaults: &'a toml::Value, path: &str) -> Option<&'a toml::Value> {
    path.split('.').try_fold(defaults, |value, segment| {
        match segment.strip_suffix("[]") {
            Some(list) => value.get(list)?.get(0),
            None => value.get(segment),
        }
    })
}

fn parse_value(text: &str) -> toml::Value {
    let table: toml::Table = toml::from_str(&format!("v = {text}")).unwrap();
    table["v"].clone()
}

/// Markdown-safe table cell text: `|` escaped everywhere, `<` and `>` outside code spans (where
/// they would be read as HTML).
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_code = false;
    for c in text.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '|' => out.push_str("\\|"),
            '<' if !in_code => out.push_str("&lt;"),
            '>' if !in_code => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

fn code(text: &str) -> String {
    format!("`{}`", text.replace('|', "\\|"))
}

/// Renders one example file; `problems` collects what breaks the file's conventions.
fn render(example: &Example, out: &mut String, problems: &mut Vec<String>) {
    let text = std::fs::read_to_string(workspace().join(example.file)).unwrap();
    let sections = parse(example.file, &text);
    let defaults = (example.defaults)(&skeleton(&sections));

    let _ = writeln!(out, "## {}\n", example.binary);
    let _ = writeln!(
        out,
        "{} Source: [`{}`](../{}).\n",
        example.intro, example.file, example.file
    );
    for section in sections.iter().filter(|s| !s.keys.is_empty()) {
        let heading = match (section.name.as_str(), section.list) {
            ("", _) => "Top level".to_owned(),
            (name, true) => format!("`[[{name}]]`"),
            (name, false) => format!("`[{name}]`"),
        };
        let optional = if section.optional { " (optional)" } else { "" };
        let _ = writeln!(out, "### {heading}{optional}\n");
        if !section.comment.is_empty() {
            let _ = writeln!(out, "{}\n", cell(&section.comment));
        }
        let _ = writeln!(out, "| key | default | meaning |\n|---|---|---|");
        for key in &section.keys {
            let path = match section.path.as_str() {
                "" => key.name.clone(),
                prefix => format!("{prefix}.{}", key.name),
            };
            let default = lookup(&defaults, &path);
            let mut shown = default.map_or_else(|| "unset".to_owned(), |d| code(&d.to_string()));
            let example_value = &key.values[0];
            if default != Some(&parse_value(example_value)) {
                let _ = write!(shown, "<br>example: {}", code(example_value));
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                code(&key.name),
                shown,
                cell(&key.comment)
            );

            if key.comment.is_empty() {
                problems.push(format!("{}: `{path}` has no comment", example.file));
            }
            // The file's promise: a value shown is the default unless labelled otherwise.
            let says = |text: &str, word: &str| text.to_lowercase().contains(word);
            let labelled = says(&key.comment, "required")
                || says(&key.comment, "example")
                || sections
                    .iter()
                    .filter(|s| {
                        s.name == section.name || section.name.starts_with(&format!("{}.", s.name))
                    })
                    .any(|s| says(&s.comment, "example"));
            let differs = key.values.iter().any(|v| default != Some(&parse_value(v)));
            if !key.optional && differs && !labelled {
                problems.push(format!(
                    "{}: `{path}` is not its default ({}) but neither its comment nor its \
                     section's says \"example\" (or \"required\")",
                    example.file,
                    default.map_or_else(|| "unset".to_owned(), ToString::to_string)
                ));
            }
        }
        out.push('\n');
    }
}

/// The whole reference.
fn reference() -> (String, Vec<String>) {
    let mut out = String::from(
        "# Configuration reference\n\n\
         <!-- Generated by tests/docs.rs from the example config files and the config structs; \
         do not edit. Change the example file, then run \
         `PARALLAX_UPDATE_DOCS=1 cargo test -p parallax-e2e --test docs`. -->\n\n\
         Each binary reads one TOML file. Every key is optional (unless its meaning says \
         \"required\"); unknown keys are errors, so a typo stops the program instead of \
         silently changing its behaviour. The **default** is what the program uses when the \
         key is absent, read from the config structs; *example* is the value the example file \
         shows where it differs; *unset* means the feature is off or derived as the meaning \
         says. The example files are the same reference with comments, ready to copy.\n\n",
    );
    let mut problems = Vec::new();
    for example in &EXAMPLES {
        render(example, &mut out, &mut problems);
    }
    (out.trim_end().to_owned() + "\n", problems)
}

#[test]
fn the_configuration_reference_is_generated_from_the_example_files() {
    let (rendered, problems) = reference();
    assert!(
        problems.is_empty(),
        "the example config files break their own conventions:\n{}",
        problems.join("\n")
    );
    let path = workspace().join(OUTPUT);
    if std::env::var_os("PARALLAX_UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != rendered {
        let same = committed
            .lines()
            .zip(rendered.lines())
            .take_while(|(a, b)| a == b)
            .count();
        panic!(
            "{OUTPUT} is out of date with the example config files (first difference at line \
             {}); regenerate it with\n  PARALLAX_UPDATE_DOCS=1 cargo test -p parallax-e2e --test docs",
            same + 1
        );
    }
}

#[test]
fn comments_attach_to_the_next_key_or_header_and_repeats_merge() {
    let text = "\
# preamble, ends at the blank line

# the section
[[groups]]
name = \"a\"            # required
# about timeout
timeout_ms = 5          # in ms
                        # and continued
# sni = \"x\"           # optional key
list = [\"a\",          # long value
        \"b\"]

[[groups]]
name = \"b\"

# hook section
# [groups.hook]
# what to run (required)
# command = \"/bin/true\"
";
    let sections = parse("inline", text);
    let groups = &sections[1];
    assert_eq!((groups.name.as_str(), groups.list), ("groups", true));
    assert_eq!(groups.comment, "the section");
    let keys: Vec<_> = groups
        .keys
        .iter()
        .map(|k| {
            (
                k.name.as_str(),
                k.values.join(" / "),
                k.comment.as_str(),
                k.optional,
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("name", "\"a\" / \"b\"".to_owned(), "required", false),
            (
                "timeout_ms",
                "5".to_owned(),
                "about timeout in ms and continued",
                false
            ),
            ("sni", "\"x\"".to_owned(), "optional key", true),
            ("list", "[\"a\", \"b\"]".to_owned(), "long value", false),
        ]
    );
    let hook = &sections[2];
    assert_eq!(
        (hook.path.as_str(), hook.optional, hook.comment.as_str()),
        ("groups[].hook", true, "hook section")
    );
    assert_eq!(hook.keys[0].comment, "what to run (required)");
    assert!(!hook.keys[0].optional);
    assert_eq!(skeleton(&sections), "[[groups]]\n[groups.hook]\n");
}
