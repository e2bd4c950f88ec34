//! `report.md`: the report's sections as plain Markdown (tables aligned
//! for reading as text too; plots are only in `report.html`).

use std::fmt::Write as _;

use super::Report;
use super::content::{Block, sections, title};

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
            }
        }
    }
    out
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
