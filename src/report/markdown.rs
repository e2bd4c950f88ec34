//! `report.md`: the report's sections as plain Markdown (tables aligned
//! for reading as text too; plots are only in `report.html`).

use std::fmt::Write as _;

use super::Report;
use super::content::{Block, sections, title};
use super::format::number;
use super::gallery::Cards;

/// Characters of a prediction or reference a gallery row shows.
const GALLERY_CHARS: usize = 60;

/// The Markdown report.
pub fn render_markdown(report: &Report) -> String {
    let mut out = format!("# {}\n", title(report));
    // Without plots, drawing cannot fail.
    for section in sections(report, false).unwrap_or_default() {
        let _ = write!(out, "\n## {}\n", section.title);
        for block in &section.blocks {
            out.push('\n');
            match block {
                Block::Para(text) => {
                    out.push_str(&one_line(text));
                    out.push('\n');
                }
                Block::Warning(text) => {
                    let _ = writeln!(out, "> **Warning:** {}", one_line(text));
                }
                Block::Table { headers, rows } => out.push_str(&table(headers, rows)),
                Block::Code(text) => {
                    let _ = writeln!(out, "```sh\n{}\n```", text.trim_end());
                }
                Block::Plot { title, .. } => {
                    let _ = writeln!(out, "_Plot: {} (see report.html)._", one_line(title));
                }
                Block::Gallery(cards) => out.push_str(&gallery(cards)),
            }
        }
    }
    out
}

/// The cards as one compact row each; the pictures are in the HTML.
fn gallery(cards: &Cards) -> String {
    let mut headers = vec!["example".to_owned(), "chosen".to_owned()];
    headers.extend(
        cards
            .trials
            .iter()
            .map(|t| format!("{} {}", cards.metric, t.role)),
    );
    headers.push("reference".into());
    headers.extend(cards.trials.iter().map(|t| t.role.to_owned()));
    let rows: Vec<Vec<String>> = cards
        .cards
        .iter()
        .map(|card| {
            let mut row = vec![card.index.to_string(), card.chosen.name().to_owned()];
            row.extend(
                card.answers
                    .iter()
                    .map(|a| a.as_ref().and_then(|a| a.score).map_or("-".into(), number)),
            );
            row.push(truncate(&card.reference));
            row.extend(card.answers.iter().map(|a| {
                a.as_ref()
                    .map_or("(none)".into(), |a| truncate(&a.prediction))
            }));
            row
        })
        .collect();
    let mut out = table(&headers, &rows);
    out.push_str(
        "\n_Images with their boxes, fields side by side and marked differences: see report.html._\n",
    );
    out
}

/// One line of at most [`GALLERY_CHARS`] characters, `…` where cut.
fn truncate(text: &str) -> String {
    let text = one_line(text);
    if text.chars().count() <= GALLERY_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(GALLERY_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

/// A pipe table with padded columns.
fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let headers: Vec<String> = headers.iter().map(|h| cell(h)).collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cell(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count().max(3)).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::from("|");
        for (c, &w) in cells.iter().zip(&widths) {
            let pad = w - c.chars().count();
            let _ = write!(text, " {c}{} |", " ".repeat(pad));
        }
        text.push('\n');
        text
    };
    let mut out = line(&headers);
    out.push('|');
    for &w in &widths {
        let _ = write!(out, " {} |", "-".repeat(w));
    }
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_padded_and_escaped() {
        let t = table(
            &["a".into(), "bb".into()],
            &[vec!["x|y".into(), "1\n2".into()]],
        );
        assert_eq!(t, "| a    | bb  |\n| ---- | --- |\n| x\\|y | 1 2 |\n");
    }
}
