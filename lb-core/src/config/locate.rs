//! Where things are in the config text: byte spans become 1-based
//! `line:col`, and the errors serde reports (unknown keys, wrong types),
//! which carry a span but no key path, get their path
//! (`services[0].backend[1].weight`) back from a spanned tree of the document.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;

/// A problem found in the text, located by its byte span; becomes a
/// [`ConfigError`] through [`Source::error`].
#[derive(Debug)]
pub(super) struct Invalid {
    pub span: Option<Range<usize>>,
    /// Already prefixed with the key path.
    pub message: String,
}

impl Invalid {
    /// A problem at `span`, about the key at `path`.
    pub(super) fn at(
        span: Range<usize>,
        path: impl fmt::Display,
        what: impl fmt::Display,
    ) -> Invalid {
        Invalid {
            span: Some(span),
            message: format!("{path}: {what}"),
        }
    }

    /// A problem about the whole file, with no place to point at.
    pub(super) fn whole_file(what: impl fmt::Display) -> Invalid {
        Invalid {
            span: None,
            message: what.to_string(),
        }
    }
}

/// Longest config error message, in characters.
const MAX_MESSAGE_CHARS: usize = 512;

/// The text being loaded, and the file it came from.
pub(super) struct Source<'a> {
    pub text: &'a str,
    pub file: Option<&'a Path>,
}

impl Source<'_> {
    /// Turns a located problem into the public error.
    pub(super) fn error(&self, invalid: Invalid) -> ConfigError {
        let (line, col) = match invalid.span {
            Some(span) => {
                let (line, col) = line_col(self.text.as_bytes(), span.start);
                (Some(line), Some(col))
            }
            None => (None, None),
        };
        ConfigError {
            file: self.file.map(Path::to_path_buf),
            line,
            col,
            // A value is quoted whole in some messages; line:col locates
            // it, so a long one is cut.
            message: crate::excerpt::cut_middle(&invalid.message, MAX_MESSAGE_CHARS),
        }
    }

    /// Translates an error of the TOML parser or of serde into a located
    /// problem with its key path.
    pub(super) fn toml_error(&self, error: &toml::de::Error) -> Invalid {
        if let Some((span, header)) = orphan_service_table(self.text) {
            return Invalid {
                span: Some(span),
                message: format!(
                    "{header} comes before any [[service]]: a [[service.backend]] or \
                     [service.…] table must follow the [[service]] it belongs to \
                     (write [[service]] with its name and listen first, then its tables)"
                ),
            };
        }
        let span = error.span();
        // One line per error: the parser's messages may hold several.
        let message = error.message().trim().replace('\n', "; ");
        // The tree only fails to build where the TOML itself is malformed,
        // so this also tells syntax errors from errors about the content.
        match toml::from_str::<Spanned<Node>>(self.text) {
            Err(_) => Invalid {
                span,
                message: format!("invalid TOML: {message}"),
            },
            Ok(tree) => {
                let message = reword(&message);
                // An unknown key's span is the key itself: report the table
                // it is in, not the key as if it were expected there.
                let unknown_key = message
                    .strip_prefix("unknown key `")
                    .and_then(|rest| rest.split_once('`'))
                    .map(|(key, _)| key);
                let path = span
                    .as_ref()
                    .map(|span| key_path(&tree, span, unknown_key))
                    .unwrap_or_default();
                let message = match (path.is_empty(), hint_for(&path, &message)) {
                    (true, hint) => format!("{message}{hint}"),
                    (false, hint) => format!("{path}: {message}{hint}"),
                };
                Invalid { span, message }
            }
        }
    }
}

/// 1-based line and column (in characters) of a byte offset; offsets past
/// the end point just after the last character.
pub(super) fn line_col(text: &[u8], offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    // Count characters, not bytes: skip UTF-8 continuation bytes.
    let col = 1 + before
        .get(line_start..)
        .unwrap_or_default()
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count();
    (line, col)
}

/// Makes serde's wording speak TOML: keys, tables, arrays, integers.
fn reword(message: &str) -> String {
    let mut message = message
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
        .replace("expected i64", "expected an integer")
        .replace("expected f64", "expected a number")
        .replace("expected a sequence", "expected an array")
        .replace("invalid type: map", "invalid type: table")
        .replace("invalid type: sequence", "invalid type: array");
    if let Some(at) = message.find("expected struct Raw") {
        message.truncate(at);
        message.push_str("expected a table");
    }
    message
}

/// The classic mix-up of `[service]` for `[[service]]`.
fn hint_for(path: &str, message: &str) -> &'static str {
    if !message.contains("expected an array") {
        ""
    } else if path == "services" {
        " (write [[service]], with double brackets)"
    } else if path.ends_with(".backend") {
        " (write [[service.backend]], with double brackets)"
    } else {
        ""
    }
}

/// Span of the value at a key path of the document (`["service", 0,
/// "health", "kind"]` as [`PathStep`]s), if the text is TOML and the key is
/// written: to point a warning about a valid file at its line.
pub(super) fn value_span(text: &str, path: &[PathStep<'_>]) -> Option<Range<usize>> {
    let tree: Spanned<Node> = toml::from_str(text).ok()?;
    let mut node = &tree;
    for step in path {
        node = match (step, node.get_ref()) {
            (PathStep::Key(want), Node::Table(entries)) => {
                &entries.iter().find(|(key, _)| key == want)?.1
            }
            (PathStep::Index(i), Node::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(node.span())
}

/// One step of a path given to [`value_span`].
#[derive(Debug, Clone, Copy)]
pub(super) enum PathStep<'a> {
    Key(&'a str),
    Index(usize),
}

/// A `[service.…]` or `[[service.…]]` header written before the first
/// `[[service]]`: TOML then makes `service` a table, and the parser's own
/// words ("duplicate key `service`", "invalid type: map, expected a
/// sequence") hide the mistake. Returns the header's span and text. Only
/// asked once the file failed to load, so a header-like line inside a
/// multi-line string can at worst reword an error that is there anyway.
fn orphan_service_table(text: &str) -> Option<(Range<usize>, &str)> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim();
        let header = trimmed
            .split_once('#')
            .map_or(trimmed, |(before, _)| before)
            .trim_end();
        let name = match header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
            Some(name) => name,
            None => match header.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                Some(name) => name,
                None => continue,
            },
        };
        let name: String = name.chars().filter(|c| !c.is_whitespace()).collect();
        if name == "service" {
            return None;
        }
        if name.starts_with("service.") {
            let lead = line.len() - line.trim_start().len();
            return Some((start + lead..start + lead + header.len(), header));
        }
    }
    None
}

/// One step of a key path.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// The document as a tree of spans: just enough to find which key a span
/// belongs to.
#[derive(Debug)]
enum Node {
    Leaf,
    Array(Vec<Spanned<Node>>),
    Table(Vec<(String, Spanned<Node>)>),
}

/// Key path of the smallest node whose span holds `span`, rendered as the
/// messages write it: the top-level `service` array is `services`, as in
/// [`super::Config::services`]. With `unknown_key`, the path stops at the
/// table holding that key.
fn key_path(tree: &Spanned<Node>, span: &Range<usize>, unknown_key: Option<&str>) -> String {
    let mut best: Option<(usize, Vec<Step>)> = None;
    let mut path = Vec::new();
    smallest_holder(tree, span, &mut path, &mut best);
    let mut steps = best.map(|(_, steps)| steps).unwrap_or_default();
    if let Some(unknown) = unknown_key {
        let own = steps
            .iter()
            .rposition(|step| matches!(step, Step::Key(key) if key == unknown));
        if let Some(own) = own {
            steps.truncate(own);
        }
    }
    let mut out = String::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Key(key) if i == 0 && key == "service" => out.push_str("services"),
            Step::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Step::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// Walks the whole tree: a table's span does not hold its sub-tables (each
/// `[header]` has its own), so no branch can be skipped.
fn smallest_holder(
    node: &Spanned<Node>,
    span: &Range<usize>,
    path: &mut Vec<Step>,
    best: &mut Option<(usize, Vec<Step>)>,
) {
    let here = node.span();
    let holds = here.start <= span.start && span.end <= here.end && !here.is_empty();
    // `<=`: on a tie the deeper node, visited later, wins.
    if holds && best.as_ref().is_none_or(|(len, _)| here.len() <= *len) {
        *best = Some((here.len(), path.clone()));
    }
    match node.get_ref() {
        Node::Leaf => {}
        Node::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Step::Index(i));
                smallest_holder(item, span, path, best);
                path.pop();
            }
        }
        Node::Table(entries) => {
            for (key, value) in entries {
                path.push(Step::Key(key.clone()));
                smallest_holder(value, span, path, best);
                path.pop();
            }
        }
    }
}

/// How the `toml` crate hands a datetime to serde: a one-key table. A
/// datetime is a leaf here; if the crate ever changes this name, a datetime
/// in the file makes the tree fail and messages lose their path, nothing
/// worse.
const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == TOML_DATETIME_KEY {
                map.next_value::<IgnoredAny>()?;
                return Ok(Node::Leaf);
            }
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Table(entries))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_from_one() {
        let text = "ab\ncé = 1\n";
        assert_eq!(line_col(text.as_bytes(), 0), (1, 1));
        assert_eq!(line_col(text.as_bytes(), 1), (1, 2));
        assert_eq!(line_col(text.as_bytes(), 3), (2, 1));
        // 'é' is two bytes, one column.
        assert_eq!(line_col(text.as_bytes(), 6), (2, 3));
        assert_eq!(line_col(text.as_bytes(), 999), (3, 1));
    }

    #[test]
    fn key_paths_name_array_elements() {
        let text = "[[service]]\nname = \"a\"\n[[service.backend]]\nname = \"b\"\n\
                    [[service.backend]]\nweight = 5\n[service.health]\nrise = 1\n";
        let tree: Spanned<Node> = toml::from_str(text).unwrap();
        let at = |needle: &str| {
            let start = text.find(needle).unwrap();
            key_path(&tree, &(start..start + needle.len()), None)
        };
        assert_eq!(at("5"), "services[0].backend[1].weight");
        assert_eq!(at("\"b\""), "services[0].backend[0].name");
        let rise = text.find("rise = 1").unwrap() + "rise = ".len();
        assert_eq!(
            key_path(&tree, &(rise..rise + 1), None),
            "services[0].health.rise"
        );
        assert_eq!(at("name = \"a\""), "services[0]");
    }

    #[test]
    fn datetimes_do_not_break_the_tree() {
        let text = "[global]\nwhen = 1979-05-27T07:32:00Z\nx = 1\n";
        let tree: Spanned<Node> = toml::from_str(text).unwrap();
        let start = text.find('1').unwrap();
        assert_eq!(key_path(&tree, &(start..start + 1), None), "global.when");
    }
}
