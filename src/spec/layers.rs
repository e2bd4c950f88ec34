//! The configuration layers (defaults, spec files, environment, `--set`) as
//! figment providers that remember their origin, so that any key can be
//! traced back to a file position, a variable or a flag.

use std::path::{Path, PathBuf};

use figment::value::{Dict, Map};
use figment::{Metadata, Profile, Provider};
use toml::de::{DeTable, DeValue};

use super::error::{Location, SpecError};

/// Environment variables `PALISWEEP_<TABLE>__<KEY>` set spec keys; other
/// `PALISWEEP_*` variables (no `__`) belong to the tool, not the spec.
pub const ENV_PREFIX: &str = "PALISWEEP_";
const ENV_SEPARATOR: &str = "__";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Defaults,
    File(PathBuf),
    Env(String),
    Flag(String),
    /// A sweep axis applied to one trial (`sweep.axes."<key>"`).
    Axis(String),
}

/// One layer: its origin, its parsed table, and for files the source text
/// (re-parsed with spans only when an error needs a position).
#[derive(Clone, Debug)]
pub struct Layer {
    pub origin: Origin,
    pub table: toml::Table,
    text: Option<String>,
}

impl Layer {
    pub fn defaults(text: &str) -> Self {
        let table = text
            .parse::<toml::Table>()
            .expect("the embedded defaults are valid TOML (checked by a unit test)");
        Layer {
            origin: Origin::Defaults,
            table,
            text: Some(text.to_owned()),
        }
    }

    /// Parses a spec file, reporting a syntax error with its position.
    pub fn file(path: &Path, text: String) -> Result<Self, SpecError> {
        let table = text.parse::<toml::Table>().map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((1, 1), |span| line_column(&text, span.start));
            SpecError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        Ok(Layer {
            origin: Origin::File(path.to_owned()),
            table,
            text: Some(text),
        })
    }

    /// One `--set key=value` flag. The key uses TOML's dotted-key syntax; a
    /// value that is not valid TOML is taken as a string (`--set model.size=3b`).
    pub fn flag(raw: &str) -> Result<Self, SpecError> {
        let bad = |message: &str| SpecError::BadFlag {
            raw: raw.to_owned(),
            message: message.to_owned(),
        };
        let (key, value) = raw
            .split_once('=')
            .ok_or_else(|| bad("expected key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(bad("the key is empty"));
        }
        let table = parse_assignment(key, value.trim()).map_err(|m| bad(&m))?;
        Ok(Layer {
            origin: Origin::Flag(raw.to_owned()),
            table,
            text: None,
        })
    }

    /// One `PALISWEEP_TABLE__KEY=value` variable.
    pub fn env(var: &str, value: &str) -> Result<Option<Self>, SpecError> {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            return Ok(None);
        };
        if !rest.contains(ENV_SEPARATOR) {
            return Ok(None);
        }
        let key = rest
            .split(ENV_SEPARATOR)
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(".");
        let table = parse_assignment(&key, value.trim()).map_err(|message| SpecError::BadEnv {
            var: var.to_owned(),
            message,
        })?;
        Ok(Some(Layer {
            origin: Origin::Env(var.to_owned()),
            table,
            text: None,
        }))
    }

    /// The value of one sweep axis for one trial.
    pub fn axis(key: &str, value: &serde_json::Value) -> Result<Self, String> {
        let value = toml::Value::try_from(value).map_err(|e| e.to_string())?;
        let mut table = toml::Table::new();
        let segments: Vec<&str> = key.split('.').collect();
        insert_path(&mut table, &segments, value);
        Ok(Layer {
            origin: Origin::Axis(key.to_owned()),
            table,
            text: None,
        })
    }

    /// The source text, for file layers.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    pub fn contains(&self, segments: &[&str]) -> bool {
        lookup(&self.table, segments).is_some()
    }

    pub fn get(&self, segments: &[&str]) -> Option<&toml::Value> {
        lookup(&self.table, segments)
    }

    /// The position of a key in this layer's file, when it is a file.
    pub fn locate(&self, segments: &[&str]) -> Location {
        match &self.origin {
            // Axis layers are located by the loader, at the axis.
            Origin::Defaults | Origin::Axis(_) => Location::Defaults,
            Origin::Env(var) => Location::Env { var: var.clone() },
            Origin::Flag(raw) => Location::Flag { raw: raw.clone() },
            Origin::File(path) => {
                let text = self.text.as_deref().unwrap_or_default();
                match key_offset(text, segments) {
                    Some(offset) => {
                        let (line, column) = line_column(text, offset);
                        Location::File {
                            path: path.clone(),
                            line,
                            column,
                        }
                    }
                    None => Location::FileOnly { path: path.clone() },
                }
            }
        }
    }

    /// The folder relative paths in this layer resolve against: a file's
    /// own folder, otherwise the working directory.
    pub fn base_dir(&self) -> Option<&Path> {
        match &self.origin {
            Origin::File(path) => path.parent(),
            _ => None,
        }
    }

    fn label(&self) -> String {
        match &self.origin {
            Origin::Defaults => "defaults".to_owned(),
            Origin::File(p) => p.display().to_string(),
            Origin::Env(v) => v.clone(),
            Origin::Flag(raw) => format!("--set {raw}"),
            Origin::Axis(k) => format!("sweep axis {k}"),
        }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.label())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        figment::providers::Serialized::defaults(&self.table).data()
    }
}

fn parse_assignment(key: &str, value: &str) -> Result<toml::Table, String> {
    let as_toml = format!("{key} = {value}");
    if let Ok(table) = as_toml.parse::<toml::Table>() {
        return Ok(table);
    }
    // Not a TOML value: a bare string such as `3b` or a path.
    let quoted = toml::Value::String(value.to_owned()).to_string();
    format!("{key} = {quoted}")
        .parse::<toml::Table>()
        .map_err(|e| format!("`{key}` is not a valid key: {}", e.message().trim()))
}

fn insert_path(table: &mut toml::Table, segments: &[&str], value: toml::Value) {
    match segments {
        [] => {}
        [last] => {
            table.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let child = table
                .entry((*first).to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(child) = child {
                insert_path(child, rest, value);
            }
        }
    }
}

fn lookup<'a>(table: &'a toml::Table, segments: &[&str]) -> Option<&'a toml::Value> {
    let (first, rest) = segments.split_first()?;
    let value = table.get(*first)?;
    if rest.is_empty() {
        return Some(value);
    }
    match value {
        toml::Value::Table(child) => lookup(child, rest),
        _ => None,
    }
}

/// Byte offset of the key (or, failing that, of the deepest table on the
/// path) in a TOML text.
fn key_offset(text: &str, segments: &[&str]) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut found = None;
    for (i, segment) in segments.iter().enumerate() {
        let (key, value) = table.iter().find(|(k, _)| k.get_ref() == segment)?;
        found = Some(key.span().start);
        if i + 1 == segments.len() {
            break;
        }
        match value.get_ref() {
            DeValue::Table(child) => table = child,
            _ => break,
        }
    }
    found
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Splits a dotted key into segments, honouring TOML quoting
/// (`sweep.axes."train.lr"` → `["sweep", "axes", "train.lr"]`).
pub fn split_key(key: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in key.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '.') => segments.push(std::mem::take(&mut current)),
            (_, c) => current.push(c),
        }
    }
    segments.push(current);
    segments
}

/// Renders segments as a dotted key, quoting segments that need it.
pub fn join_key<S: AsRef<str>>(segments: &[S]) -> String {
    segments
        .iter()
        .map(|s| {
            let s = s.as_ref();
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                s.to_owned()
            } else {
                format!("\"{s}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_parse_as_toml_or_fall_back_to_strings() {
        let lr = Layer::flag("train.lr=3e-5").unwrap();
        assert_eq!(lr.get(&["train", "lr"]), Some(&toml::Value::Float(3e-5)));
        let size = Layer::flag("model.size=10b").unwrap();
        assert_eq!(
            size.get(&["model", "size"]),
            Some(&toml::Value::String("10b".into()))
        );
        let axis = Layer::flag("sweep.axes.\"train.lr\"=[1e-5, 2e-5]").unwrap();
        assert!(axis.contains(&["sweep", "axes", "train.lr"]));
        assert!(Layer::flag("no-equals").is_err());
        assert!(Layer::flag("=3").is_err());
    }

    #[test]
    fn env_variables_map_double_underscores_to_tables() {
        let layer = Layer::env("PALISWEEP_TRAIN__BATCH_SIZE", "8")
            .unwrap()
            .unwrap();
        assert_eq!(
            layer.get(&["train", "batch_size"]),
            Some(&toml::Value::Integer(8))
        );
        assert!(Layer::env("PALISWEEP_LOG", "debug").unwrap().is_none());
        assert!(Layer::env("HOME", "/root").unwrap().is_none());
    }

    #[test]
    fn locate_finds_keys_in_any_toml_form() {
        let text = "[train]\nepochs = 1\nlr = 0.1\n\n[sweep.axes]\n\"train.lr\" = [1]\n";
        let layer = Layer::file(Path::new("s.toml"), text.to_owned()).unwrap();
        assert_eq!(
            layer.locate(&["train", "lr"]),
            Location::File {
                path: "s.toml".into(),
                line: 3,
                column: 1
            }
        );
        assert_eq!(
            layer.locate(&["sweep", "axes", "train.lr"]),
            Location::File {
                path: "s.toml".into(),
                line: 6,
                column: 1
            }
        );
        let dotted = Layer::file(Path::new("d.toml"), "x = 1\ntrain.lr = 2\n".into()).unwrap();
        assert!(matches!(
            dotted.locate(&["train", "lr"]),
            Location::File { line: 2, .. }
        ));
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = Layer::file(Path::new("bad.toml"), "[train]\nlr = = 1\n".into()).unwrap_err();
        match err {
            SpecError::Syntax { line, .. } => assert_eq!(line, 2),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn keys_split_and_join_with_quotes() {
        assert_eq!(
            split_key("sweep.axes.\"train.lr\""),
            vec!["sweep", "axes", "train.lr"]
        );
        assert_eq!(
            join_key(&["sweep", "axes", "train.lr"]),
            "sweep.axes.\"train.lr\""
        );
    }
}
