//! `report.html`: one self-contained page (inline CSS and SVG; no script,
//! font or image is fetched when it is viewed).

use std::fmt::Write as _;

use super::compare::{FieldTable, Mark, Piece};
use super::content::{Block, sections, title};
use super::format::{bytes, number};
use super::gallery::{Cards, View};
use super::overlay::{PREDICTION_COLOUR, REFERENCE_COLOUR};
use super::{Report, ReportError};

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f5f8}
tr:nth-child(even) td{background:#fafbfc}
.warning{border-left:4px solid #d62728;background:#fff4f4;padding:.5em .8em}
figure{margin:1em 0}
figure svg{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}
pre{background:#f3f5f8;padding:.6em .8em;overflow-x:auto}
table{display:block;max-width:100%;overflow-x:auto}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,260px),1fr));gap:.8em;margin:.8em 0}
.card{border:1px solid #ccc;border-radius:4px;padding:.5em .6em;min-width:0;overflow-wrap:anywhere;font-size:.9em}
.card h3{font-size:1em;margin:0 0 .3em}
.card svg{display:block;width:100%;height:auto;margin:.2em 0}
.card table{display:table;width:100%;font-size:.92em;margin:.3em 0}
.card th,.card td{padding:.15em .3em}
.card p{margin:.3em 0}
.file{font-size:.85em;color:#555}
.who{font-weight:600}
.wrong,.missing{background:#fde8e8}
.extra{background:#fff3d6}
del{background:#fdd;text-decoration:line-through}
ins{background:#dfd;text-decoration:none}
.swatch{display:inline-block;width:1.6em;height:.7em;margin:0 .3em 0 .8em;vertical-align:middle}
footer{margin-top:2em;font-size:.85em;color:#555}";

/// The HTML report; fails only when a plot cannot be drawn.
pub fn render_html(report: &Report) -> Result<String, ReportError> {
    let title = title(report);
    let mut out =
        String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n");
    let _ = writeln!(out, "<title>{}</title>", escape(&title));
    let _ = writeln!(out, "<style>\n{STYLE}\n</style>\n</head>\n<body>");
    let _ = writeln!(out, "<h1>{}</h1>", escape(&title));
    for section in sections(report, true)? {
        let _ = writeln!(
            out,
            "<section id=\"{}\">\n<h2>{}</h2>",
            anchor(&section.title),
            escape(&section.title)
        );
        for block in &section.blocks {
            match block {
                Block::Para(text) => {
                    let _ = writeln!(out, "<p>{}</p>", escape(text));
                }
                Block::Warning(text) => {
                    let _ = writeln!(
                        out,
                        "<p class=\"warning\"><strong>Warning:</strong> {}</p>",
                        escape(text)
                    );
                }
                Block::Table { headers, rows } => table(&mut out, headers, rows),
                Block::Code(text) => {
                    let _ = writeln!(out, "<pre><code>{}</code></pre>", escape(text.trim_end()));
                }
                Block::Plot { title, svg } => {
                    let _ = writeln!(
                        out,
                        "<figure>\n{}\n<figcaption>{}</figcaption>\n</figure>",
                        inline_svg(svg),
                        escape(title)
                    );
                }
                Block::Gallery(cards) => gallery(&mut out, cards),
            }
        }
        out.push_str("</section>\n");
    }
    Ok(with_size(out))
}

/// Closes the page with a footer that states the page's own size.
fn with_size(mut page: String) -> String {
    let footer = |size: usize| {
        format!(
            "<footer><p>This file: {size} bytes ({}), self-contained.</p></footer>\n</body>\n</html>\n",
            bytes(size as u64)
        )
    };
    // The footer's length depends on the number it states: settle it.
    let mut size = page.len();
    for _ in 0..4 {
        let next = page.len() + footer(size).len();
        if next == size {
            break;
        }
        size = next;
    }
    page.push_str(&footer(size));
    page
}

/// A card's text, cut where a diff stops comparing.
fn clip(text: &str) -> &str {
    let text = text.trim();
    match text.char_indices().nth(super::compare::MAX_DIFF_CHARS) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

fn score(value: Option<f64>) -> String {
    value.map_or("-".into(), number)
}

/// The cards as a grid that wraps to the page's width.
fn gallery(out: &mut String, cards: &Cards) {
    match cards.cards.first().map(|c| &c.view) {
        Some(View::Boxes(_)) => {
            let _ = writeln!(
                out,
                "<p>Boxes:<span class=\"swatch\" style=\"border-top:2px dashed {REFERENCE_COLOUR}\"></span>reference (labels at the top)<span class=\"swatch\" style=\"border-top:2px solid {PREDICTION_COLOUR}\"></span>prediction (labels at the bottom)</p>"
            );
        }
        Some(View::Fields(_)) => {
            let _ = writeln!(
                out,
                "<p>Predicted fields: {} right · <span class=\"wrong\">{} wrong</span> (another value) · <span class=\"missing\">{} missing</span> · <span class=\"extra\">{} extra</span> (not in the reference).</p>",
                Mark::Right.sign(),
                Mark::Wrong.sign(),
                Mark::Missing.sign(),
                Mark::Extra.sign()
            );
        }
        Some(View::Diff(_)) => out.push_str(
            "<p>From the reference to each prediction: <del>left out</del>, <ins>added</ins>.</p>\n",
        ),
        None => {}
    }
    out.push_str("<div class=\"gallery\">\n");
    for card in &cards.cards {
        let _ = write!(
            out,
            "<div class=\"card\">\n<h3>Example {} · {}</h3>\n<p class=\"file\">{}</p>\n<table><thead><tr><th></th><th>{}</th></tr></thead><tbody>",
            card.index,
            card.chosen.name(),
            escape(&card.image.display().to_string()),
            escape(&cards.metric)
        );
        for (side, answer) in cards.trials.iter().zip(&card.answers) {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(&side.label()),
                score(answer.as_ref().and_then(|a| a.score))
            );
        }
        out.push_str("</tbody></table>\n");
        match &card.view {
            View::Boxes(Ok(panels)) => {
                for (side, svg) in cards.trials.iter().zip(panels) {
                    let _ = writeln!(out, "<p class=\"who\">{}</p>\n{svg}", side.role);
                }
            }
            View::Boxes(Err(why)) => {
                let _ = writeln!(out, "<p class=\"warning\">{}</p>", escape(why));
                texts(out, cards, card);
            }
            View::Fields(table) => fields(out, cards, table),
            View::Diff(diffs) => {
                let _ = writeln!(
                    out,
                    "<p><span class=\"who\">reference</span> {}</p>",
                    escape(clip(&card.reference))
                );
                for (side, pieces) in cards.trials.iter().zip(diffs) {
                    let _ = writeln!(
                        out,
                        "<p><span class=\"who\">{}</span> {}</p>",
                        side.role,
                        diff(pieces)
                    );
                }
            }
        }
        out.push_str("</div>\n");
    }
    out.push_str("</div>\n");
}

/// The reference and each prediction as text.
fn texts(out: &mut String, cards: &Cards, card: &super::gallery::Card) {
    let _ = writeln!(
        out,
        "<p><span class=\"who\">reference</span> {}</p>",
        escape(clip(&card.reference))
    );
    for (side, answer) in cards.trials.iter().zip(&card.answers) {
        let _ = writeln!(
            out,
            "<p><span class=\"who\">{}</span> {}</p>",
            side.role,
            answer
                .as_ref()
                .map_or("(no prediction)".into(), |a| escape(clip(&a.prediction)))
        );
    }
}

fn fields(out: &mut String, cards: &Cards, table: &FieldTable) {
    out.push_str("<table><thead><tr><th>field</th><th>reference</th>");
    for side in &cards.trials {
        let _ = write!(out, "<th>{}</th>", side.role);
    }
    out.push_str("</tr></thead><tbody>\n");
    for row in &table.rows {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td>",
            escape(&row.path),
            escape(&row.reference)
        );
        for cell in &row.predicted {
            match cell {
                Some(c) => {
                    let _ = write!(
                        out,
                        "<td class=\"{}\" title=\"{}\">{} {}</td>",
                        c.mark.name(),
                        c.mark.name(),
                        c.mark.sign(),
                        escape(&c.value)
                    );
                }
                None => out.push_str("<td></td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
    if table.more > 0 {
        let _ = writeln!(out, "<p>… {} more field(s).</p>", table.more);
    }
    for (side, valid) in cards.trials.iter().zip(&table.valid) {
        if !valid {
            let _ = writeln!(out, "<p>The {}'s answer is not valid JSON.</p>", side.role);
        }
    }
}

fn diff(pieces: &[Piece]) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Same(t) => out.push_str(&escape(t)),
            Piece::Deleted(t) => {
                let _ = write!(out, "<del>{}</del>", escape(t));
            }
            Piece::Inserted(t) => {
                let _ = write!(out, "<ins>{}</ins>", escape(t));
            }
        }
    }
    out
}

fn table(out: &mut String, headers: &[String], rows: &[Vec<String>]) {
    out.push_str("<table>\n<thead><tr>");
    for h in headers {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for c in row {
            let _ = write!(out, "<td>{}</td>", escape(c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
}

/// An SVG document as an inline element: without its XML declaration.
fn inline_svg(svg: &str) -> &str {
    let svg = svg.trim();
    match (svg.starts_with("<?xml"), svg.find("?>")) {
        (true, Some(end)) => svg[end + 2..].trim_start(),
        _ => svg,
    }
}

/// A section's id, for links into the page (`report.html#decision`):
/// its title in lowercase, words joined by `-`.
fn anchor(title: &str) -> String {
    title
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// Text as HTML character data or attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_anchors_are_lowercase_words_joined_by_dashes() {
        assert_eq!(anchor("Prediction gallery"), "prediction-gallery");
        assert_eq!(
            anchor("LoRA vs QLoRA (per checkpoint)"),
            "lora-vs-qlora-per-checkpoint"
        );
    }

    #[test]
    fn escapes_markup_and_strips_the_xml_declaration() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(
            inline_svg("<?xml version=\"1.0\"?>\n<svg></svg>"),
            "<svg></svg>"
        );
        assert_eq!(inline_svg("<svg></svg>"), "<svg></svg>");
    }
}
