//! The parsed TOML tree with the span of every key, and the lenient deserialization of it.
//!
//! serde stops at the first error; to report every problem at once, `deserialize_all` removes
//! the entry each error points at and tries again, collecting one problem per removed entry.
//! Every field of the file shape is optional, so a removal never causes a new error. Semantic
//! problems find their line through `line_of`, by key path.

use std::fmt;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue, Deserializer};

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The path of a key in the file, shown as `watch[2].headers.skip_header`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct KeyPath(Vec<Step>);

impl KeyPath {
    /// The document itself.
    pub(super) fn root() -> KeyPath {
        KeyPath::default()
    }

    /// This path followed by table key `key`.
    pub(super) fn key(&self, key: &str) -> KeyPath {
        let mut steps = self.0.clone();
        steps.push(Step::Key(key.to_owned()));
        KeyPath(steps)
    }

    /// This path followed by array index `index`.
    pub(super) fn index(&self, index: usize) -> KeyPath {
        let mut steps = self.0.clone();
        steps.push(Step::Index(index));
        KeyPath(steps)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Index(index) => write!(f, "[{index}]")?,
                Step::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(key) {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether TOML lets `key` stand without quotes.
fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A syntactically valid TOML document with its spans.
pub(super) struct Document<'t> {
    root: Spanned<DeTable<'t>>,
    /// Byte offset of the start of each line, for turning spans into line numbers.
    line_starts: Vec<usize>,
}

/// A problem found by the TOML parser or by serde, before any rule of ours ran.
#[derive(Debug)]
pub(super) struct Found {
    pub(super) path: KeyPath,
    pub(super) line: Option<usize>,
    pub(super) message: String,
}

impl<'t> Document<'t> {
    /// Parses `text`.
    ///
    /// # Errors
    ///
    /// Every syntax error the parser could recover from, each with its line and no key.
    pub(super) fn parse(text: &'t str) -> Result<Document<'t>, Vec<Found>> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let (root, errors) = DeTable::parse_recoverable(text);
        let document = Document { root, line_starts };
        if errors.is_empty() {
            return Ok(document);
        }
        Err(errors
            .iter()
            .map(|err| Found {
                path: KeyPath::root(),
                line: err.span().map(|span| document.line_at(span.start)),
                message: err.message().to_owned(),
            })
            .collect())
    }

    /// Deserializes the document into `T`, dropping every entry serde refuses.
    ///
    /// Returns the value built from what was left and one problem per dropped entry. `T` must
    /// have only optional fields; when serde refuses the document as a whole, the value is
    /// `T::default()`.
    pub(super) fn deserialize_all<T: DeserializeOwned + Default>(&self) -> (T, Vec<Found>) {
        let mut root = self.root.clone();
        let mut found = Vec::new();
        loop {
            let err = match T::deserialize(Deserializer::from(root.clone())) {
                Ok(value) => return (value, found),
                Err(err) => err,
            };
            let removed = err
                .span()
                .and_then(|span| remove_entry_at(root.get_mut(), &KeyPath::root(), span.start));
            match removed {
                Some((path, key_span)) => found.push(Found {
                    path,
                    line: Some(self.line_at(key_span.start)),
                    message: tidy_message(err.message()),
                }),
                // Nothing left to remove: report it and give up on the shape (cannot loop).
                None => {
                    found.push(Found {
                        path: KeyPath::root(),
                        line: err.span().map(|span| self.line_at(span.start)),
                        message: tidy_message(err.message()),
                    });
                    return (T::default(), found);
                }
            }
        }
    }

    /// The line of the key at `path`, or of its nearest enclosing table when it is absent.
    pub(super) fn line_of(&self, path: &KeyPath) -> Option<usize> {
        let mut span = None;
        let mut table = Some(self.root.get_ref());
        let mut array = None;
        for step in &path.0 {
            let next = match step {
                Step::Key(key) => table.and_then(|table| {
                    table
                        .iter()
                        .find(|(name, _)| name.get_ref().as_ref() == key.as_str())
                        .map(|(name, entry)| (name.span(), entry))
                }),
                Step::Index(index) => array
                    .and_then(|array: &DeArray<'_>| array.get(*index))
                    .map(|entry| (entry.span(), entry)),
            };
            let Some((step_span, entry)) = next else {
                break;
            };
            span = Some(step_span);
            (table, array) = match entry.get_ref() {
                DeValue::Table(inner) => (Some(inner), None),
                DeValue::Array(inner) => (None, Some(inner)),
                _ => (None, None),
            };
        }
        span.map(|span| self.line_at(span.start))
    }

    fn line_at(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }
}

/// serde's message with the names of our private types (`expected struct ClusterFile`) put in
/// the file's terms.
fn tidy_message(message: &str) -> String {
    let Some(start) = message.find("struct ") else {
        return message.to_owned();
    };
    let name_end = message[start + "struct ".len()..]
        .find(|c: char| !c.is_ascii_alphanumeric())
        .map_or(message.len(), |end| start + "struct ".len() + end);
    format!("{}a table{}", &message[..start], &message[name_end..])
}

/// Removes the innermost table entry whose key or value holds `offset`; returns its path and
/// key span.
///
/// Only table entries are removed, never array elements, so the indices of `[[watch]]` tables
/// in later messages stay those of the file.
fn remove_entry_at(
    table: &mut DeTable<'_>,
    path: &KeyPath,
    offset: usize,
) -> Option<(KeyPath, Range<usize>)> {
    for (name, entry) in table.iter_mut() {
        let entry_path = path.key(name.get_ref());
        match entry.get_mut() {
            DeValue::Table(inner) => {
                if let Some(found) = remove_entry_at(inner, &entry_path, offset) {
                    return Some(found);
                }
            }
            DeValue::Array(array) => {
                for (index, element) in array.iter_mut().enumerate() {
                    if let DeValue::Table(inner) = element.get_mut() {
                        let element_path = entry_path.index(index);
                        if let Some(found) = remove_entry_at(inner, &element_path, offset) {
                            return Some(found);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    let holds = |span: Range<usize>| span.contains(&offset) || span.start == offset;
    let target = table.iter().find_map(|(name, entry)| {
        let in_elements = match entry.get_ref() {
            DeValue::Array(array) => array.iter().any(|element| holds(element.span())),
            _ => false,
        };
        (holds(name.span()) || holds(entry.span()) || in_elements).then(|| name.clone())
    })?;
    table.remove(&target);
    Some((path.key(target.get_ref()), target.span()))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Shape {
        a: Option<Inner>,
        list: Option<Vec<Inner>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        n: Option<u32>,
        s: Option<String>,
    }

    #[test]
    fn every_refused_entry_is_reported_with_its_line() {
        let text = "[a]\nn = \"x\"\nbogus = 1\ns = \"ok\"\n\n[[list]]\nn = 1\n\n[[list]]\ns = 5\n";
        let document = Document::parse(text).unwrap();
        let (shape, found) = document.deserialize_all::<Shape>();
        let seen: Vec<_> = found.iter().map(|f| (f.path.to_string(), f.line)).collect();
        assert_eq!(
            seen,
            vec![
                ("a.bogus".to_owned(), Some(3)),
                ("a.n".to_owned(), Some(2)),
                ("list[1].s".to_owned(), Some(10)),
            ]
        );
        assert_eq!(shape.a.unwrap().s.as_deref(), Some("ok"));
        let list = shape.list.unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].n, Some(1));
    }

    #[test]
    fn line_of_falls_back_to_the_enclosing_table() {
        let text = "[a]\nn = 1\n\n[[list]]\n\n[[list]]\ns = \"x\"\n";
        let document = Document::parse(text).unwrap();
        let root = KeyPath::root();
        assert_eq!(document.line_of(&root.key("a").key("n")), Some(2));
        assert_eq!(document.line_of(&root.key("a").key("s")), Some(1));
        assert_eq!(
            document.line_of(&root.key("list").index(1).key("s")),
            Some(7)
        );
        assert_eq!(
            document.line_of(&root.key("list").index(1).key("n")),
            Some(6)
        );
        assert_eq!(document.line_of(&root.key("list").index(0)), Some(4));
        assert_eq!(document.line_of(&root.key("missing")), None);
    }

    #[test]
    fn syntax_errors_carry_lines() {
        let errors = Document::parse("a = 1\nb = = 2\n").err().unwrap();
        assert_eq!(errors[0].line, Some(2));
    }

    #[test]
    fn messages_do_not_name_private_types() {
        let text = "a = 5\n";
        let (_, found) = Document::parse(text).unwrap().deserialize_all::<Shape>();
        assert_eq!(
            found[0].message,
            "invalid type: integer `5`, expected a table"
        );
    }

    #[test]
    fn key_paths_quote_keys_that_need_it() {
        let path = KeyPath::root()
            .key("cluster")
            .key("redirect_map")
            .key("be:8040");
        assert_eq!(path.to_string(), "cluster.redirect_map.\"be:8040\"");
        assert_eq!(
            KeyPath::root().key("watch").index(2).key("dir").to_string(),
            "watch[2].dir"
        );
    }
}
