//! `report.html`: one self-contained page (inline CSS and SVG; no script,
//! font or image is fetched when it is viewed).

use std::fmt::Write as _;

use super::content::{Block, sections, title};
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
pre{background:#f3f5f8;padding:.6em .8em;overflow-x:auto}";

/// The HTML report; fails only when a plot cannot be drawn.
pub fn render_html(report: &Report) -> Result<String, ReportError> {
    let title = title(report);
    let mut out =
        String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n");
    let _ = writeln!(out, "<title>{}</title>", escape(&title));
    let _ = writeln!(out, "<style>\n{STYLE}\n</style>\n</head>\n<body>");
    let _ = writeln!(out, "<h1>{}</h1>", escape(&title));
    for section in sections(report, true)? {
        let _ = writeln!(out, "<section>\n<h2>{}</h2>", escape(&section.title));
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
            }
        }
        out.push_str("</section>\n");
    }
    out.push_str("</body>\n</html>\n");
    Ok(out)
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
