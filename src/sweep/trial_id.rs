//! Stable trial ids: a hash of the canonical form of what can change a
//! trial's result (model, data, train, lora, qlora, eval, seed), leaving out
//! keys at their default so that keys added by later releases keep old ids.

use std::fmt::{self, Write as _};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::spec::checkpoint::{self, CheckpointRef};
use crate::spec::load::relative_to;
use crate::spec::schema::{Method, Spec};

/// Hex characters kept from the sha256 of the canonical form.
pub const ID_LEN: usize = 12;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TrialId(String);

impl TrialId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a resolved trial spec. `spec_dir` makes local paths relative,
/// so the same spec gives the same ids wherever it is checked out.
pub fn trial_id(spec: &Spec, defaults: &Spec, spec_dir: &Path) -> TrialId {
    let canonical = canonical_form(spec, defaults, spec_dir);
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    let hex: String = digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    TrialId(hex[..ID_LEN].to_owned())
}

/// What the id hashes: result-relevant sections with default values
/// removed, keys sorted (`serde_json`'s map is ordered), numbers as `f64`/`u64`.
pub fn canonical_form(spec: &Spec, defaults: &Spec, spec_dir: &Path) -> Value {
    let full = relevant(spec, spec_dir);
    let base = relevant(defaults, spec_dir);
    prune_defaults(&full, &base).unwrap_or_else(|| json!({}))
}

fn relevant(spec: &Spec, spec_dir: &Path) -> Value {
    let mut sections = Map::new();
    sections.insert("seed".into(), json!(spec.experiment.seed));
    sections.insert("model".into(), model_identity(spec, spec_dir));
    let mut data = to_value(&spec.data);
    if let Some(path) = data.get_mut("path")
        && let Some(p) = path.as_str().filter(|p| Path::new(p).is_absolute())
    {
        *path = json!(relative_to(Path::new(p), spec_dir).display().to_string());
    }
    sections.insert("data".into(), data);
    sections.insert("train".into(), to_value(&spec.train));
    // Sections the method does not use cannot change the result.
    if matches!(spec.train.method, Method::Lora | Method::Qlora) {
        sections.insert("lora".into(), to_value(&spec.lora));
    }
    if spec.train.method == Method::Qlora {
        sections.insert("qlora".into(), to_value(&spec.qlora));
    }
    if spec.train.method == Method::Synthetic {
        sections.insert("synthetic".into(), to_value(&spec.synthetic));
    }
    sections.insert("eval".into(), to_value(&spec.eval));
    Value::Object(sections)
}

/// The model table with (checkpoint, size, resolution, variant) replaced by
/// the one checkpoint they name, so `size = "10b"` and the equivalent hub id
/// give the same trial.
fn model_identity(spec: &Spec, spec_dir: &Path) -> Value {
    let resolved = checkpoint::resolve(&spec.model);
    let name = match &resolved.reference {
        CheckpointRef::Local(path) => relative_to(path, spec_dir).display().to_string(),
        CheckpointRef::Hub(_) | CheckpointRef::Tiny => resolved.display,
    };
    let Value::Object(mut model) = to_value(&spec.model) else {
        return Value::Null;
    };
    for key in ["checkpoint", "size", "resolution", "variant"] {
        model.remove(key);
    }
    model.insert("checkpoint".into(), json!(name));
    Value::Object(model)
}

/// `value` without the leaves equal to `default`; `None` when all are.
fn prune_defaults(value: &Value, default: &Value) -> Option<Value> {
    match (value, default) {
        (Value::Object(map), Value::Object(base)) => {
            let kept: Map<String, Value> = map
                .iter()
                .filter_map(|(k, v)| match base.get(k) {
                    Some(b) => prune_defaults(v, b).map(|v| (k.clone(), v)),
                    None => Some((k.clone(), v.clone())),
                })
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        (v, b) if values_equal(v, b) => None,
        (v, _) => Some(v.clone()),
    }
}

/// JSON equality where numbers compare by value (1 == 1.0).
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| values_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => a == b,
    }
}

/// A spec section as JSON (sections are plain data: this cannot fail).
fn to_value<T: Serialize>(section: &T) -> Value {
    serde_json::to_value(section).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_drops_default_leaves_only() {
        let v = json!({"a": 1, "b": {"c": 2.0, "d": [1, 2]}, "e": "x"});
        let d = json!({"a": 1.0, "b": {"c": 3, "d": [1, 2]}, "e": "x"});
        assert_eq!(prune_defaults(&v, &d), Some(json!({"b": {"c": 2.0}})));
        assert_eq!(prune_defaults(&d, &d), None);
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(values_equal(&json!(1), &json!(1.0)));
        assert!(values_equal(&json!(1e-5), &json!(0.00001)));
        assert!(!values_equal(&json!(1), &json!("1")));
    }
}
