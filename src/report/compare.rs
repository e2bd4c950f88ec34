//! A prediction set against its reference for the gallery's cards: JSON
//! field by field (right, wrong, missing, extra), free text as a diff.

use serde_json::Value;

use crate::metrics::json_fields::{Field, PathSegment, flatten};

/// Fields a card lists at most; the rest are counted.
pub const MAX_FIELDS: usize = 40;
/// Characters of each text a diff compares at most (the rest is cut).
pub const MAX_DIFF_CHARS: usize = 600;

/// How a predicted field compares with the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Right,
    /// Another value than the reference's at the same path.
    Wrong,
    /// A reference field the prediction lacks.
    Missing,
    /// A predicted field with no reference field left at its path.
    Extra,
}

impl Mark {
    /// A sign that reads without colour.
    pub fn sign(self) -> &'static str {
        match self {
            Mark::Right => "✓",
            Mark::Wrong => "✗",
            Mark::Missing => "−",
            Mark::Extra => "+",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mark::Right => "right",
            Mark::Wrong => "wrong",
            Mark::Missing => "missing",
            Mark::Extra => "extra",
        }
    }
}

/// One trial's side of a row: the predicted value (empty when missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldCell {
    pub value: String,
    pub mark: Mark,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRow {
    /// `items[].name`; `$` for a top-level scalar.
    pub path: String,
    /// Empty for an extra field.
    pub reference: String,
    /// One per compared prediction; `None`: this prediction has no field
    /// here (another one's extra field).
    pub predicted: Vec<Option<FieldCell>>,
}

/// Reference and predictions, field by field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldTable {
    pub rows: Vec<FieldRow>,
    /// Rows left out past [`MAX_FIELDS`].
    pub more: usize,
    /// Per prediction: whether it parsed as JSON.
    pub valid: Vec<bool>,
}

fn path_text(path: &[PathSegment]) -> String {
    if path.is_empty() {
        return "$".into();
    }
    let mut out = String::new();
    for (i, segment) in path.iter().enumerate() {
        match segment {
            PathSegment::Key(key) if i == 0 => out.push_str(key),
            PathSegment::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            PathSegment::AnyIndex => out.push_str("[]"),
        }
    }
    out
}

/// The paths in first-seen order, each with its values in order.
fn by_path(fields: Vec<Field>) -> Vec<(String, Vec<Field>)> {
    let mut out: Vec<(String, Vec<Field>)> = Vec::new();
    for field in fields {
        let path = path_text(&field.path);
        match out.iter_mut().find(|(p, _)| *p == path) {
            Some((_, values)) => values.push(field),
            None => out.push((path, vec![field])),
        }
    }
    out
}

/// One prediction's values at a path against the reference's: per
/// reference value its cell, then the extra values. Equal values pair
/// first (arrays match without regard to order, as field F1 does), the
/// rest in order.
fn align(reference: &[Field], predicted: &[Field]) -> (Vec<FieldCell>, Vec<String>) {
    let mut used = vec![false; predicted.len()];
    let mut cells: Vec<Option<FieldCell>> = reference
        .iter()
        .map(|r| {
            let at = (0..predicted.len()).find(|&j| !used[j] && predicted[j] == *r)?;
            used[at] = true;
            Some(FieldCell {
                value: predicted[at].value.to_string(),
                mark: Mark::Right,
            })
        })
        .collect();
    let mut rest = (0..predicted.len()).filter(|&j| !used[j]);
    for cell in &mut cells {
        if cell.is_none() {
            *cell = Some(match rest.next() {
                Some(j) => FieldCell {
                    value: predicted[j].value.to_string(),
                    mark: Mark::Wrong,
                },
                None => FieldCell {
                    value: String::new(),
                    mark: Mark::Missing,
                },
            });
        }
    }
    let extra = rest.map(|j| predicted[j].value.to_string()).collect();
    (cells.into_iter().flatten().collect(), extra)
}

/// `reference` and each of `predictions` as JSON fields, aligned by path.
/// A reference that does not parse is one string field at `$`, as field
/// F1 scores it; a prediction that does not parse has no fields.
pub fn fields(reference: &str, predictions: &[&str]) -> FieldTable {
    let reference = serde_json::from_str::<Value>(reference)
        .unwrap_or_else(|_| Value::String(reference.trim().to_owned()));
    let parsed: Vec<Option<Value>> = predictions
        .iter()
        .map(|p| serde_json::from_str(p).ok())
        .collect();
    let reference = by_path(flatten(&reference));
    let predicted: Vec<Vec<(String, Vec<Field>)>> = parsed
        .iter()
        .map(|p| p.as_ref().map(|v| by_path(flatten(v))).unwrap_or_default())
        .collect();
    let values_at = |k: usize, path: &str| -> Vec<Field> {
        predicted[k]
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut paths: Vec<String> = reference.iter().map(|(p, _)| p.clone()).collect();
    for p in predicted.iter().flatten() {
        if !paths.contains(&p.0) {
            paths.push(p.0.clone());
        }
    }
    let mut rows = Vec::new();
    for path in paths {
        let ref_values: Vec<Field> = reference
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let aligned: Vec<(Vec<FieldCell>, Vec<String>)> = (0..predictions.len())
            .map(|k| align(&ref_values, &values_at(k, &path)))
            .collect();
        for (i, r) in ref_values.iter().enumerate() {
            rows.push(FieldRow {
                path: path.clone(),
                reference: r.value.to_string(),
                predicted: aligned
                    .iter()
                    .map(|(cells, _)| Some(cells[i].clone()))
                    .collect(),
            });
        }
        let extras = aligned.iter().map(|(_, e)| e.len()).max().unwrap_or(0);
        for i in 0..extras {
            rows.push(FieldRow {
                path: path.clone(),
                reference: String::new(),
                predicted: aligned
                    .iter()
                    .map(|(_, e)| {
                        e.get(i).map(|v| FieldCell {
                            value: v.clone(),
                            mark: Mark::Extra,
                        })
                    })
                    .collect(),
            });
        }
    }
    let more = rows.len().saturating_sub(MAX_FIELDS);
    rows.truncate(MAX_FIELDS);
    FieldTable {
        rows,
        more,
        valid: parsed.iter().map(Option::is_some).collect(),
    }
}

/// A piece of a diff from the reference to a prediction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Same(String),
    /// In the reference, not in the prediction.
    Deleted(String),
    /// In the prediction, not in the reference.
    Inserted(String),
}

/// Words and the whitespace between them, or characters when the
/// reference is one word (a code, a number: CER's unit).
fn tokens(text: &str, by_char: bool) -> Vec<&str> {
    if by_char {
        return text
            .char_indices()
            .map(|(i, c)| &text[i..i + c.len_utf8()])
            .collect();
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut space = None;
    for (i, c) in text.char_indices() {
        let is_space = c.is_whitespace();
        if space.is_some_and(|s| s != is_space) {
            out.push(&text[start..i]);
            start = i;
        }
        space = Some(is_space);
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

fn cut(text: &str) -> &str {
    match text.char_indices().nth(MAX_DIFF_CHARS) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// The reference turned into the prediction: a longest-common-subsequence
/// diff over words (characters for a one-word reference), both trimmed and
/// cut to [`MAX_DIFF_CHARS`].
pub fn diff(reference: &str, prediction: &str) -> Vec<Piece> {
    let (reference, prediction) = (cut(reference.trim()), cut(prediction.trim()));
    let by_char = !reference.contains(char::is_whitespace);
    let (a, b) = (tokens(reference, by_char), tokens(prediction, by_char));
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out: Vec<Piece> = Vec::new();
    let mut push = |piece: Piece| match (out.last_mut(), &piece) {
        (Some(Piece::Same(s)), Piece::Same(t))
        | (Some(Piece::Deleted(s)), Piece::Deleted(t))
        | (Some(Piece::Inserted(s)), Piece::Inserted(t)) => s.push_str(t),
        _ => out.push(piece),
    };
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            push(Piece::Same(a[i].to_owned()));
            i += 1;
            j += 1;
        } else if j == b.len() || (i < a.len() && lcs[i + 1][j] >= lcs[i][j + 1]) {
            push(Piece::Deleted(a[i].to_owned()));
            i += 1;
        } else {
            push(Piece::Inserted(b[j].to_owned()));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(row: &FieldRow, k: usize) -> (String, Mark) {
        let c = row.predicted[k].as_ref().unwrap();
        (c.value.clone(), c.mark)
    }

    #[test]
    fn marks_wrong_missing_and_extra_fields() {
        let table = fields(
            r#"{"kind": "pallet", "count": 3, "tags": ["a", "b"]}"#,
            &[
                r#"{"kind": "box", "tags": ["b", "a"], "note": "x"}"#,
                r#"{"kind": "pallet", "count": 3, "tags": ["a", "b"]}"#,
            ],
        );
        let row = |path: &str, reference: &str| {
            table
                .rows
                .iter()
                .find(|r| r.path == path && r.reference == reference)
                .unwrap_or_else(|| panic!("no {path} = {reference} in {table:?}"))
        };
        assert_eq!(
            cell(row("kind", "\"pallet\""), 0),
            ("\"box\"".into(), Mark::Wrong)
        );
        assert_eq!(cell(row("count", "3"), 0), (String::new(), Mark::Missing));
        // Arrays match without regard to order.
        assert_eq!(cell(row("tags[]", "\"a\""), 0).1, Mark::Right);
        assert_eq!(cell(row("tags[]", "\"b\""), 0).1, Mark::Right);
        assert_eq!(cell(row("note", ""), 0), ("\"x\"".into(), Mark::Extra));
        // The second prediction is right everywhere and has no `note`.
        assert!(row("note", "").predicted[1].is_none());
        for r in table.rows.iter().filter(|r| !r.reference.is_empty()) {
            assert_eq!(cell(r, 1).1, Mark::Right, "{r:?}");
        }
        assert_eq!(table.valid, [true, true]);
    }

    #[test]
    fn an_invalid_prediction_misses_every_field() {
        let table = fields(r#"{"a": 1, "b": 2}"#, &["{\"a\": 1"]);
        assert_eq!(table.valid, [false]);
        assert!(
            table
                .rows
                .iter()
                .all(|r| r.predicted[0].as_ref().unwrap().mark == Mark::Missing)
        );
    }

    #[test]
    fn diffs_words_or_the_characters_of_one_word() {
        assert_eq!(
            diff("a red pallet", "a blue pallet"),
            [
                Piece::Same("a ".into()),
                Piece::Deleted("red".into()),
                Piece::Inserted("blue".into()),
                Piece::Same(" pallet".into()),
            ]
        );
        assert_eq!(
            diff("AB12", "AB13"),
            [
                Piece::Same("AB1".into()),
                Piece::Deleted("2".into()),
                Piece::Inserted("3".into()),
            ]
        );
        assert_eq!(diff("same", " same "), [Piece::Same("same".into())]);
        assert_eq!(diff("x", ""), [Piece::Deleted("x".into())]);
    }
}
