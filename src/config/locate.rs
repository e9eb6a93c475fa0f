//! Maps key paths (`pair.secret`, `users[1].name`) to line numbers in the TOML text and back,
//! so that errors can say where to look.
//!
//! This is a line scanner, not a TOML parser: it understands `[table]` and `[[array]]` headers
//! and `key = value` lines, which is how config files are written. For anything it does not
//! understand (inline tables, multi-line values) it falls back to the nearest key above, which
//! is still the right place to look.

use std::collections::HashMap;

/// One `key = value` or header line.
#[derive(Debug)]
struct Entry {
    /// Byte offset of the start of the line.
    start: usize,
    /// 1-based line number.
    line: usize,
    /// The full key path the line defines.
    path: String,
}

/// Key paths found in one TOML text, in file order.
#[derive(Debug)]
pub(super) struct Locator {
    entries: Vec<Entry>,
    /// Byte offset of the start of every line.
    line_starts: Vec<usize>,
}

impl Locator {
    /// Scans `text` once.
    pub(super) fn new(text: &str) -> Self {
        let mut entries = Vec::new();
        let mut section = String::new();
        let mut array_counts: HashMap<String, usize> = HashMap::new();
        let mut start = 0;
        let mut line_starts = Vec::new();
        for (index, raw_line) in text.split_inclusive('\n').enumerate() {
            line_starts.push(start);
            let line = raw_line.trim();
            let path = if let Some(rest) = line.strip_prefix("[[") {
                let name = unquote(rest.split("]]").next().unwrap_or(rest));
                let count = array_counts.entry(name.clone()).or_insert(0);
                section = format!("{name}[{count}]");
                *count += 1;
                Some(section.clone())
            } else if let Some(rest) = line.strip_prefix('[') {
                section = unquote(rest.split(']').next().unwrap_or(rest));
                Some(section.clone())
            } else if line.starts_with('#') {
                None
            } else {
                line.split_once('=').map(|(key, _)| {
                    let key = unquote(key);
                    if section.is_empty() {
                        key
                    } else {
                        format!("{section}.{key}")
                    }
                })
            };
            if let Some(path) = path {
                entries.push(Entry {
                    start,
                    line: index + 1,
                    path,
                });
            }
            start += raw_line.len();
        }
        Self {
            entries,
            line_starts,
        }
    }

    /// The key path and line number at byte `offset` (from a TOML error span): the nearest
    /// key or header line at or above it.
    pub(super) fn at_offset(&self, offset: usize) -> (String, Option<usize>) {
        match self.entries.iter().rev().find(|e| e.start <= offset) {
            Some(entry) => (entry.path.clone(), Some(self.line_of_offset(offset))),
            None => (String::new(), None),
        }
    }

    /// The line number where `key` (or, failing that, its nearest parent) is written.
    pub(super) fn line_of_key(&self, key: &str) -> Option<usize> {
        let mut key = key;
        loop {
            if key.is_empty() {
                return None;
            }
            if let Some(entry) = self.entries.iter().find(|e| e.path == key) {
                return Some(entry.line);
            }
            key = parent_key(key);
        }
    }

    /// The 1-based line containing byte `offset`.
    fn line_of_offset(&self, offset: usize) -> usize {
        self.line_starts
            .partition_point(|&start| start <= offset)
            .max(1)
    }
}

/// `users[1].name` → `users[1]` → `users` → ``.
fn parent_key(key: &str) -> &str {
    key.rsplit_once(['.', '[']).map_or("", |(parent, _)| parent)
}

/// A bare or quoted key segment as written in the file, without quotes and spaces.
fn unquote(key: &str) -> String {
    key.split('.')
        .map(|part| part.trim().trim_matches('"').trim_matches('\''))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_in_tables_and_arrays() {
        let text =
            "# c\n[node]\nname = \"a\"\n\n[[users]]\nname = \"x\"\n[[users]]\nname = \"y\"\n";
        let loc = Locator::new(text);
        assert_eq!(loc.line_of_key("node.name"), Some(3));
        assert_eq!(loc.line_of_key("users[1].name"), Some(8));
        assert_eq!(loc.line_of_key("users[1].password"), Some(7));
        assert_eq!(loc.line_of_key("pair.secret"), None);
        let offset = text.find("\"y\"").unwrap_or(0);
        assert_eq!(loc.at_offset(offset), ("users[1].name".to_owned(), Some(8)));
        let text = "[pair]\nwitnesses = [\n  \"a\",\n  \"b\",\n]\n";
        let loc = Locator::new(text);
        let offset = text.find("\"b\"").unwrap_or(0);
        assert_eq!(
            loc.at_offset(offset),
            ("pair.witnesses".to_owned(), Some(4))
        );
    }
}
