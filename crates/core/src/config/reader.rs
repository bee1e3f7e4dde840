//! A reader over toml's spanned document that extracts typed fields and collects *every* error
//! with its field path and line, instead of stopping at the first one as serde would.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::ConfigError;
use crate::time::parse_duration;

/// The parsed document, its line index, and the errors found so far.
pub(crate) struct Doc<'t, 'i> {
    line_starts: Vec<usize>,
    tree: Option<&'t Spanned<DeTable<'i>>>,
    pub(crate) errors: Vec<ConfigError>,
}

impl<'t, 'i> Doc<'t, 'i> {
    pub(crate) fn new(src: &str, tree: Option<&'t Spanned<DeTable<'i>>>) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            line_starts,
            tree,
            errors: Vec::new(),
        }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// Records an error; without a span, the line is found from the field path.
    pub(crate) fn error(&mut self, path: &str, span: Option<Range<usize>>, message: impl Into<String>) {
        let span = span.or_else(|| self.tree.and_then(|tree| locate(tree, path)));
        let line = span.as_ref().map(|s| self.line_of(s.start));
        let column = span
            .as_ref()
            .zip(line)
            .map(|(s, line)| s.start - self.line_starts[line - 1] + 1);
        self.errors.push(ConfigError {
            path: path.to_string(),
            line,
            column,
            message: message.into(),
        });
    }
}

/// The span of the value at a field path such as `pools.web.v2.backends[1].address`. Keys may
/// contain dots, so at each table the longest key that fits the rest of the path wins.
fn locate(tree: &Spanned<DeTable<'_>>, path: &str) -> Option<Range<usize>> {
    let mut span = tree.span();
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    let mut rest = path;
    let mut table = tree.get_ref();
    loop {
        if rest.is_empty() {
            return Some(span);
        }
        if let Some(after) = rest.strip_prefix('[') {
            let (index, after) = after.split_once(']')?;
            let items = value?.get_ref().as_array()?;
            let item = items.get(index.parse::<usize>().ok()?)?;
            span = item.span();
            value = Some(item);
            rest = after.strip_prefix('.').unwrap_or(after);
            if let DeValue::Table(t) = item.get_ref() {
                table = t;
            }
            continue;
        }
        let (key, item) = table
            .iter()
            .filter(|(k, _)| {
                let k = k.get_ref().as_ref();
                rest.starts_with(k) && matches!(rest[k.len()..].chars().next(), None | Some('.') | Some('['))
            })
            .max_by_key(|(k, _)| k.get_ref().len())?;
        span = item.span();
        value = Some(item);
        rest = &rest[key.get_ref().len()..];
        rest = rest.strip_prefix('.').unwrap_or(rest);
        if let DeValue::Table(t) = item.get_ref() {
            table = t;
        }
    }
}

/// Joins a parent path and a key: `pools` + `web` → `pools.web`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A table being read: remembers which keys were used, so unknown keys can be reported.
pub(crate) struct Fields<'a, 'i> {
    pub(crate) path: String,
    pub(crate) span: Range<usize>,
    table: &'a DeTable<'i>,
    used: Vec<String>,
}

/// A value with its path and position.
pub(crate) struct Field<'a, 'i> {
    pub(crate) path: String,
    pub(crate) value: &'a Spanned<DeValue<'i>>,
}

impl<'a, 'i> Field<'a, 'i> {
    pub(crate) fn span(&self) -> Option<Range<usize>> {
        Some(self.value.span())
    }
}

impl<'a, 'i> Fields<'a, 'i> {
    pub(crate) fn new(path: impl Into<String>, table: &'a DeTable<'i>, span: Range<usize>) -> Self {
        Self {
            path: path.into(),
            span,
            table,
            used: Vec::new(),
        }
    }

    /// Opens a field that must be a table; reports an error otherwise.
    pub(crate) fn of(doc: &mut Doc<'_, '_>, field: &Field<'a, 'i>) -> Option<Self> {
        match field.value.get_ref() {
            DeValue::Table(table) => Some(Self::new(field.path.clone(), table, field.value.span())),
            other => {
                doc.error(
                    &field.path,
                    field.span(),
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// The field named `key`, if present.
    pub(crate) fn get(&mut self, key: &str) -> Option<Field<'a, 'i>> {
        self.used.push(key.to_string());
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, value)| Field {
                path: join(&self.path, key),
                value,
            })
    }

    /// Whether the table has `key` (without marking it used).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.iter().any(|(k, _)| k.get_ref().as_ref() == key)
    }

    /// Every key of the table with its value, in file order (for maps such as `pools`).
    pub(crate) fn entries(&mut self) -> Vec<(String, Range<usize>, Field<'a, 'i>)> {
        let path = self.path.clone();
        let entries: Vec<_> = self
            .table
            .iter()
            .map(|(k, value)| {
                let key = k.get_ref().to_string();
                (
                    key.clone(),
                    k.span(),
                    Field {
                        path: join(&path, &key),
                        value,
                    },
                )
            })
            .collect();
        self.used.extend(entries.iter().map(|(k, _, _)| k.clone()));
        entries
    }

    /// A required field; reports `missing field` when absent.
    pub(crate) fn require(&mut self, doc: &mut Doc<'_, '_>, key: &str) -> Option<Field<'a, 'i>> {
        let field = self.get(key);
        if field.is_none() {
            doc.error(
                &join(&self.path, key),
                Some(self.span.clone()),
                "missing required field",
            );
        }
        field
    }

    /// Reports every key that no reader asked for.
    pub(crate) fn finish(self, doc: &mut Doc<'_, '_>) {
        for (key, _) in self.table.iter() {
            let name = key.get_ref().as_ref();
            if !self.used.iter().any(|u| u == name) {
                let mut expected: Vec<&str> = self.used.iter().map(String::as_str).collect();
                expected.sort_unstable();
                expected.dedup();
                doc.error(
                    &join(&self.path, name),
                    Some(key.span()),
                    format!("unknown field; expected one of: {}", expected.join(", ")),
                );
            }
        }
    }
}

/// Typed extraction; each returns `None` after recording an error.
impl<'a, 'i> Field<'a, 'i> {
    pub(crate) fn string(&self, doc: &mut Doc<'_, '_>) -> Option<String> {
        match self.value.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                doc.error(
                    &self.path,
                    self.span(),
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub(crate) fn non_empty_string(&self, doc: &mut Doc<'_, '_>) -> Option<String> {
        let s = self.string(doc)?;
        if s.trim().is_empty() {
            doc.error(&self.path, self.span(), "must not be empty");
            return None;
        }
        Some(s)
    }

    pub(crate) fn integer(&self, doc: &mut Doc<'_, '_>, min: i64, max: i64) -> Option<i64> {
        let value = match self.value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            other => {
                doc.error(
                    &self.path,
                    self.span(),
                    format!("expected an integer, found {}", other.type_str()),
                );
                return None;
            }
        };
        match value {
            Some(v) if (min..=max).contains(&v) => Some(v),
            _ => {
                doc.error(
                    &self.path,
                    self.span(),
                    format!("must be an integer between {min} and {max}"),
                );
                None
            }
        }
    }

    /// A float; integers are accepted too (`target = 0` is as good as `target = 0.0`).
    pub(crate) fn number(&self, doc: &mut Doc<'_, '_>, min: f64, max: f64) -> Option<f64> {
        let value = match self.value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok().map(|v| v as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            other => {
                doc.error(
                    &self.path,
                    self.span(),
                    format!("expected a number, found {}", other.type_str()),
                );
                return None;
            }
        };
        match value {
            Some(v) if v.is_finite() && v >= min && v <= max => Some(v),
            _ => {
                doc.error(
                    &self.path,
                    self.span(),
                    format!("must be a number between {min} and {max}"),
                );
                None
            }
        }
    }

    pub(crate) fn boolean(&self, doc: &mut Doc<'_, '_>) -> Option<bool> {
        match self.value.get_ref().as_bool() {
            Some(b) => Some(b),
            None => {
                doc.error(&self.path, self.span(), "expected true or false");
                None
            }
        }
    }

    pub(crate) fn duration(&self, doc: &mut Doc<'_, '_>) -> Option<Duration> {
        let text = self.string(doc)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                doc.error(&self.path, self.span(), e.to_string());
                None
            }
        }
    }

    pub(crate) fn socket_addr(&self, doc: &mut Doc<'_, '_>) -> Option<SocketAddr> {
        let text = self.string(doc)?;
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                doc.error(
                    &self.path,
                    self.span(),
                    format!("invalid socket address {text:?} (expected IP:PORT, e.g. \"127.0.0.1:9001\")"),
                );
                None
            }
        }
    }

    /// One of a fixed set of strings.
    pub(crate) fn choice<T: Copy>(&self, doc: &mut Doc<'_, '_>, choices: &[(&str, T)]) -> Option<T> {
        let text = self.string(doc)?;
        match choices.iter().find(|(name, _)| *name == text) {
            Some((_, value)) => Some(*value),
            None => {
                let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
                doc.error(
                    &self.path,
                    self.span(),
                    format!("unknown value {text:?}; expected one of {}", names.join(", ")),
                );
                None
            }
        }
    }

    /// An array; each element comes with its indexed path (`backends[2]`).
    pub(crate) fn array(&self, doc: &mut Doc<'_, '_>) -> Option<Vec<Field<'a, 'i>>> {
        match self.value.get_ref() {
            DeValue::Array(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, value)| Field {
                        path: format!("{}[{i}]", self.path),
                        value,
                    })
                    .collect(),
            ),
            other => {
                doc.error(
                    &self.path,
                    self.span(),
                    format!("expected an array, found {}", other.type_str()),
                );
                None
            }
        }
    }
}
