//! Keeps secrets out of the store: the values of keys that name a secret
//! (`hf_token`, `HF_TOKEN`, `*_api_key`, `*secret*`, `password`, …) in TOML,
//! env-style or JSON text, and anything shaped like a Hugging Face token
//! (`hf_` and 30+ letters or digits) wherever it appears, become
//! [`REDACTED`].

use serde_json::Value;

/// What a secret value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Whether a key (a dotted path's last segment, any case, quotes allowed)
/// names a secret. `max_suffix_tokens` or `tokens_per_s` do not: only a
/// key that *ends* in `token` does.
fn is_secret_key(key: &str) -> bool {
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    let key = key.rsplit('.').next().unwrap_or(key).to_ascii_lowercase();
    let key = key.trim_start_matches("export ").trim();
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

/// `text` with secret values redacted, line by line: `key = value`,
/// `key: value`, `KEY=value` (and `{ hf_token = "…" }` inline tables) keep
/// their key and lose their value.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&redact_tokens(&redact_line(line)));
    }
    out
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

/// Where an unquoted or quoted value ends: its closing quote, or the first
/// `,` / `}` / `#` outside quotes, or the end.
fn value_end(value: &str) -> usize {
    let trimmed = value.trim_start();
    let offset = value.len() - trimmed.len();
    let mut chars = trimmed.char_indices();
    match chars.next() {
        Some((_, q @ ('"' | '\''))) => {
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
            value.len()
        }
        _ => trimmed
            .find([',', '}', '#', ' '])
            .map_or(value.len(), |i| offset + i),
    }
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
/// strings scanned as in [`redact_text`].
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
}
