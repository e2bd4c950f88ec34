//! Keeps secrets out of everything palisweep writes (the store, the
//! results tree, error messages): the values of keys that name a secret
//! (`hf_token`, `HF_TOKEN`, `*_api_key`, `*secret*`, `password`, …) in TOML,
//! env-style or JSON text, and anything shaped like a Hugging Face token
//! (`hf_` and 30+ letters or digits) wherever it appears, become
//! [`REDACTED`].
//!
//! [`redact_text`] is the one entry point for text: TOML stays TOML (each
//! string is redacted inside its quotes and written back quoted, comments
//! are redacted as free text), anything else is redacted line by line.

use std::ops::Range;

use serde_json::Value;
use toml::de::{DeTable, DeValue};

/// What a secret value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Whether a key (a dotted path's last segment, any case, quotes allowed)
/// names a secret. `max_suffix_tokens` or `tokens_per_s` do not: only a
/// key that *ends* in `token` does.
///
/// In free text the key is the last word before the `=` or `:`
/// (`export OPENAI_API_KEY=…`, `flag --set data.hf_token=…`), so that prose
/// (`keep secrets out: …`) is not taken for a key.
fn is_secret_key(key: &str) -> bool {
    let key = key.split_whitespace().last().unwrap_or_default();
    let key = key.trim_matches(|c| c == '"' || c == '\'');
    let key = key.rsplit('.').next().unwrap_or(key).to_ascii_lowercase();
    let key = key.as_str();
    key == "token"
        || key.ends_with("_token")
        || key.ends_with("-token")
        || key.ends_with("api_key")
        || key.ends_with("apikey")
        || key.ends_with("api-key")
        || key.ends_with("access_key")
        || key.ends_with("private_key")
        || key.contains("secret")
        || key.contains("password")
        || key.contains("passwd")
        || key == "authorization"
        || key == "credentials"
}

/// `text` with its secrets redacted. Valid TOML stays valid TOML with the
/// same layout; other text (messages, env-style lines, command lines) is
/// redacted line by line: `key = value`, `key: value`, `KEY=value` (and
/// `{ hf_token = "…" }` inline tables) keep their key and lose their value.
pub fn redact_text(text: &str) -> String {
    redact_toml(text).unwrap_or_else(|| redact_free_text(text))
}

/// Line-by-line redaction of text that is not TOML.
fn redact_free_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&redact_tokens(&redact_line(line)));
    }
    out
}

/// TOML text with secrets redacted value by value, or `None` when `text`
/// is not TOML (or the result would not parse, which is then a bug here
/// that the line-by-line redaction covers for).
fn redact_toml(text: &str) -> Option<String> {
    let root = DeTable::parse(text).ok()?;
    let mut edits = Vec::new();
    table_edits(root.get_ref(), false, &mut edits);
    for range in comments(text) {
        let comment = &text[range.clone()];
        let redacted = redact_free_text(comment);
        if redacted != comment {
            edits.push((range, redacted));
        }
    }
    if edits.is_empty() {
        return Some(text.to_owned());
    }
    edits.sort_by_key(|(range, _)| range.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (range, replacement) in edits {
        if range.start < at {
            return None;
        }
        out.push_str(&text[at..range.start]);
        out.push_str(&replacement);
        at = range.end;
    }
    out.push_str(&text[at..]);
    DeTable::parse(&out).is_ok().then_some(out)
}

/// Replacements for the values of a table: every scalar under a secret key
/// becomes the quoted [`REDACTED`]; other strings are redacted as free text
/// (`"--export=HF_TOKEN=hf_…"`) and written back as TOML strings.
fn table_edits(table: &DeTable<'_>, secret: bool, edits: &mut Vec<(Range<usize>, String)>) {
    for (key, value) in table {
        let secret = secret || is_secret_key(key.get_ref());
        value_edits(value, secret, edits);
    }
}

fn value_edits(
    value: &toml::Spanned<DeValue<'_>>,
    secret: bool,
    edits: &mut Vec<(Range<usize>, String)>,
) {
    let quoted_redacted = || toml::Value::String(REDACTED.to_owned()).to_string();
    match value.get_ref() {
        DeValue::Table(table) => table_edits(table, secret, edits),
        DeValue::Array(items) => {
            for item in items {
                value_edits(item, secret, edits);
            }
        }
        DeValue::String(_)
        | DeValue::Integer(_)
        | DeValue::Float(_)
        | DeValue::Boolean(_)
        | DeValue::Datetime(_)
            if secret =>
        {
            edits.push((value.span(), quoted_redacted()));
        }
        DeValue::String(text) => {
            let redacted = redact_free_text(text);
            if redacted != text.as_ref() {
                edits.push((value.span(), toml::Value::String(redacted).to_string()));
            }
        }
        DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => {}
    }
}

/// The byte ranges of the comments of a TOML text (`#` to the end of its
/// line, outside strings), without the line break.
fn comments(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                let end = text[i..].find(['\n', '\r']).map_or(text.len(), |n| i + n);
                ranges.push(i..end);
                i = end;
            }
            quote @ (b'"' | b'\'') => {
                let triple = bytes[i..].starts_with(&[quote; 3]);
                let open = if triple { 3 } else { 1 };
                i += open;
                // A basic string's backslash escapes the next byte.
                while i < bytes.len() {
                    if quote == b'"' && bytes[i] == b'\\' {
                        i += 2;
                    } else if bytes[i..].starts_with(&[quote; 3][..open]) {
                        i += open;
                        // `""""` closes a triple-quoted string one late.
                        while triple && bytes.get(i) == Some(&quote) {
                            i += 1;
                        }
                        break;
                    } else {
                        i += 1;
                    }
                }
            }
            _ => i += 1,
        }
    }
    ranges
}

fn redact_line(line: &str) -> String {
    // Scan for `key <sep> value` pairs separated by `=` or `:`; the value
    // runs to the next `,` / `}` outside quotes, or the end of the line.
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(pos) = rest.find(['=', ':']) {
        let (head, tail) = rest.split_at(pos);
        let key_start = head
            .rfind(|c: char| !(c.is_alphanumeric() || "_-.\"' ".contains(c)))
            .map_or(0, |i| i + 1);
        let key = &head[key_start..];
        out.push_str(head);
        out.push_str(&tail[..1]);
        let value = &tail[1..];
        if is_secret_key(key) && !key.trim().is_empty() {
            let end = value_end(value);
            if value[..end].trim().is_empty() {
                rest = value;
                continue;
            }
            let lead = &value[..value.len() - value.trim_start().len()];
            out.push_str(lead);
            let quoted = value.trim_start().starts_with('"');
            if quoted {
                out.push('"');
                out.push_str(REDACTED);
                out.push('"');
            } else {
                out.push_str(REDACTED);
            }
            rest = &value[end..];
        } else {
            rest = value;
        }
    }
    out.push_str(rest);
    out
}

/// Where an unquoted or quoted value ends: its closing quote; or the first
/// `,` / `}` / `#`, whitespace or quote; or the end.
fn value_end(value: &str) -> usize {
    let trimmed = value.trim_start();
    let offset = value.len() - trimmed.len();
    let mut chars = trimmed.char_indices();
    if let Some((_, q @ ('"' | '\''))) = chars.next() {
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                return offset + i + 1;
            }
        }
        return value.len();
    }
    // Unquoted: up to a separator, whitespace or a quote (the value of
    // `'--export=HF_TOKEN=…'` ends before the shell's closing quote), and a
    // colon that ends it is punctuation (`--set k=v: message`).
    let end = trimmed
        .find(|c: char| ",}#\"'".contains(c) || c.is_whitespace())
        .unwrap_or(trimmed.len());
    let end = if end > 1 && trimmed[..end].ends_with(':') {
        end - 1
    } else {
        end
    };
    offset + end
}

/// Replaces Hugging Face tokens (`hf_` + 30 or more alphanumerics) anywhere.
fn redact_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("hf_") {
        let before_ok = rest[..pos]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_');
        let tail = &rest[pos + 3..];
        let len = tail
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(tail.len());
        out.push_str(&rest[..pos]);
        if before_ok && len >= 30 {
            out.push_str(REDACTED);
            rest = &tail[len..];
        } else {
            out.push_str("hf_");
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// `value` with the values of secret keys redacted, recursively, and
/// strings redacted by [`redact_text`] (a `--set` flag stays a valid one).
pub fn redact_json(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) {
                        Value::String(REDACTED.to_owned())
                    } else {
                        redact_json(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_json).collect()),
        Value::String(s) => Value::String(redact_text(s)),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TOKEN: &str = "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH12";

    #[test]
    fn secret_keys_lose_their_values_in_toml_and_env_text() {
        let text = format!(
            "[model]\nhf_token = \"{TOKEN}\"\ncheckpoint = \"google/paligemma2-3b-pt-224\"\n\
             max_suffix_tokens = 128 # tokens\nHF_TOKEN={TOKEN}\nexport OPENAI_API_KEY=sk-live-123\n\
             auth = {{ password = 'hunter2', user = \"me\" }}\nclient_secret: s3cr3t\n\
             note = \"see {TOKEN} here\"\n"
        );
        let out = redact_text(&text);
        for secret in [TOKEN, "sk-live-123", "hunter2", "s3cr3t"] {
            assert!(!out.contains(secret), "{secret} survived:\n{out}");
        }
        assert!(out.contains("hf_token = \"<redacted>\""), "{out}");
        assert!(out.contains("HF_TOKEN=<redacted>"), "{out}");
        assert!(out.contains("user = \"me\""), "{out}");
        assert!(out.contains("max_suffix_tokens = 128 # tokens"), "{out}");
        assert!(out.contains("checkpoint = \"google/paligemma2-3b-pt-224\""));
        assert_eq!(redact_text("lr = 1e-4\n[train]\n"), "lr = 1e-4\n[train]\n");
    }

    #[test]
    fn secret_keys_lose_their_values_in_json() {
        let value = json!({
            "model.hf_token": TOKEN,
            "train.lr": 1e-4,
            "env": {"WANDB_API_KEY": "abc", "PATH": "/usr/bin"},
            "msg": format!("401 for token {TOKEN}")
        });
        let out = redact_json(&value).to_string();
        assert!(!out.contains(TOKEN) && !out.contains("abc"), "{out}");
        assert!(out.contains("/usr/bin") && out.contains("0.0001"), "{out}");
    }

    fn parses(text: &str) -> toml::Table {
        text.parse()
            .unwrap_or_else(|e| panic!("redacted TOML does not parse ({e}):\n{text}"))
    }

    #[test]
    fn toml_stays_toml_with_its_secrets_redacted() {
        let text = format!(
            "# a token in a comment: {TOKEN}\n[model]\ncheckpoint = \"tiny\" # hf_token={TOKEN}\n\
             [slurm]\nextra_args = [\"--export=HF_TOKEN={TOKEN}\", \"--exclusive\"]\n\
             [auth]\npassword = 1234\napi_key = [\"a-key\", \"b-key\"]\n\
             note = \"a # is no comment in {TOKEN}\"\nmulti = \"\"\"\nline # {TOKEN}\n\"\"\"\n"
        );
        let out = redact_text(&text);
        for secret in [TOKEN, "1234", "a-key", "b-key"] {
            assert!(!out.contains(secret), "{secret} survived:\n{out}");
        }
        let table = parses(&out);
        assert_eq!(
            table["slurm"]["extra_args"],
            toml::Value::Array(vec![
                "--export=HF_TOKEN=<redacted>".into(),
                "--exclusive".into()
            ])
        );
        assert_eq!(table["auth"]["password"].as_str(), Some(REDACTED));
        assert_eq!(table["model"]["checkpoint"].as_str(), Some("tiny"));
        assert_eq!(
            table["auth"]["note"].as_str(),
            Some("a # is no comment in <redacted>")
        );
        // The layout and the comments stay; only the values change.
        assert!(
            out.starts_with("# a token in a comment: <redacted>\n[model]\n"),
            "{out}"
        );
        assert!(
            out.contains("checkpoint = \"tiny\" # hf_token=<redacted>\n"),
            "{out}"
        );
    }

    #[test]
    fn the_defaults_and_a_set_flag_keep_their_meaning() {
        let defaults = crate::spec::DEFAULTS_TOML;
        assert_eq!(redact_text(defaults), defaults);
        let flag = format!("slurm.extra_args=[\"--export=HF_TOKEN={TOKEN}\"]");
        assert_eq!(
            redact_text(&flag),
            "slurm.extra_args=[\"--export=HF_TOKEN=<redacted>\"]"
        );
    }

    #[test]
    fn messages_and_command_lines_lose_their_secrets_but_not_their_shape() {
        let message =
            format!("flag --set data.hf_token={TOKEN}: `data.hf_token`: unknown key in [data]");
        assert_eq!(
            redact_text(&message),
            "flag --set data.hf_token=<redacted>: `data.hf_token`: unknown key in [data]"
        );
        let prose = "help: keep secrets out of flags: export HF_TOKEN in the shell";
        assert_eq!(redact_text(prose), prose);
        let line = "sbatch '--export=HF_TOKEN=abc123' '--exclusive' script.sh";
        assert_eq!(
            redact_text(line),
            "sbatch '--export=HF_TOKEN=<redacted>' '--exclusive' script.sh"
        );
    }
}
