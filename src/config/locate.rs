//! Maps key paths (`pair.secret`, `users[1].name`) to line numbers in the TOML text and back,
//! so that errors can say where to look. The text is parsed by `toml_edit` (the parser `toml`
//! itself uses), and every key's position comes from its span: tables, arrays of tables,
//! dotted keys, inline tables and values over several lines are all placed where they are
//! written.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Key, Table, Value};

/// One key as written.
#[derive(Debug)]
struct Entry {
    /// Byte offset of the key.
    start: usize,
    /// 1-based line number of the key.
    line: usize,
    /// The full key path (`users[1].name`).
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
    /// Parses `text` once (up to the line of a syntax error, if it has one).
    pub(super) fn new(text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let mut loc = Self {
            entries: Vec::new(),
            line_starts,
        };
        match ImDocument::parse(text) {
            Ok(doc) => loc.table(doc.as_table(), ""),
            // A syntax error: the keys written before its line still say where it is.
            Err(e) => {
                let cut = e
                    .span()
                    .map(|r| loc.line_start(r.start))
                    .and_then(|cut| text.get(..cut))
                    .and_then(|before| ImDocument::parse(before).ok());
                if let Some(doc) = cut {
                    loc.table(doc.as_table(), "");
                }
            }
        }
        loc.entries.sort_by_key(|e| e.start);
        loc
    }

    fn add(&mut self, key: Option<&Key>, span: Option<Range<usize>>, path: String) {
        let Some(start) = key.and_then(Key::span).or(span).map(|r| r.start) else {
            return;
        };
        let line = self.line_of_offset(start);
        self.entries.push(Entry { start, line, path });
    }

    fn table(&mut self, table: &Table, prefix: &str) {
        for (name, item) in table.iter() {
            let path = join(prefix, name);
            let key = table.key(name);
            match item {
                Item::Table(t) => {
                    self.add(key, t.span(), path.clone());
                    self.table(t, &path);
                }
                Item::ArrayOfTables(a) => {
                    for (i, t) in a.iter().enumerate() {
                        let path = format!("{path}[{i}]");
                        self.add(None, t.span(), path.clone());
                        self.table(t, &path);
                    }
                }
                Item::Value(v) => {
                    self.add(key, v.span(), path.clone());
                    self.value(v, &path);
                }
                Item::None => {}
            }
        }
    }

    fn value(&mut self, v: &Value, path: &str) {
        if let Value::InlineTable(t) = v {
            for (name, v) in t.iter() {
                let inner = join(path, name);
                self.add(t.key(name), v.span(), inner.clone());
                self.value(v, &inner);
            }
        }
    }

    /// The key path and line number at byte `offset` (from a TOML error span): the nearest
    /// key at or above it, and the offset's own line.
    pub(super) fn at_offset(&self, offset: usize) -> (String, Option<usize>) {
        let path = self
            .entries
            .iter()
            .rev()
            .find(|e| e.start <= offset)
            .map_or_else(String::new, |e| e.path.clone());
        (path, Some(self.line_of_offset(offset)))
    }

    /// Byte offset of the start of the line holding `offset`.
    fn line_start(&self, offset: usize) -> usize {
        let line = self.line_of_offset(offset);
        self.line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0)
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

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// `users[1].name` → `users[1]` → `users` → ``.
fn parent_key(key: &str) -> &str {
    key.rsplit_once(['.', '[']).map_or("", |(parent, _)| parent)
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

    /// What a line scanner got wrong: keys inside an inline table, dotted keys, and a key
    /// after a multi-line string that contains `=` and `[`.
    #[test]
    fn inline_tables_dotted_keys_and_multi_line_strings() {
        let text = "[node]\nname = \"\"\"\na = [b]\n\"\"\"\ndomain = \"x\"\n\
                    [[trunks]]\nname = \"t\"\nlimits = { max_cps = 5, burst = 9 }\n\
                    media.mode = \"relay\"\n";
        let loc = Locator::new(text);
        assert_eq!(loc.line_of_key("node.domain"), Some(5));
        assert_eq!(
            loc.line_of_key("node.a"),
            Some(1),
            "no key `a`: its parent `node`"
        );
        assert_eq!(loc.line_of_key("trunks[0].limits.burst"), Some(8));
        assert_eq!(loc.line_of_key("trunks[0].media.mode"), Some(9));
        let offset = text.find("9 }").unwrap_or(0);
        assert_eq!(loc.at_offset(offset).0, "trunks[0].limits.burst");
    }
}
