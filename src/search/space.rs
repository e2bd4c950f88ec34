//! The search space: a sweep's axes as dimensions that a sampler can draw
//! from and a model can score, each in its own "model coordinate" (an
//! index, a value, or the logarithm of a value).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::rng::SplitMix64;
use crate::spec::schema::{Axis, Distribution};
use crate::sweep::expand::three_significant_digits;
use crate::sweep::trial_id::values_equal;

/// Axis key → value: one configuration (a trial's `params`).
pub type Point = BTreeMap<String, Value>;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpaceError {
    #[error("sweep.axes.\"{0}\" has no values")]
    Empty(String),
    #[error(
        "sweep.axes.\"{key}\": bounds [{low}, {high}] are empty (or not positive for loguniform)"
    )]
    Bounds { key: String, low: f64, high: f64 },
    #[error("the search space has no axes")]
    NoAxes,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    /// Values without an order (strings, booleans, `choice`): modelled by
    /// their index, each equally far from the others.
    Categorical(Vec<Value>),
    /// A list of numbers, sorted: neighbours in the list are neighbours for
    /// the model, whatever their spacing (grids space values evenly on the
    /// scale that matters: 1e-4, 3e-4, 1e-3 on a log scale).
    Ordinal(Vec<Value>),
    Uniform {
        low: f64,
        high: f64,
    },
    LogUniform {
        low: f64,
        high: f64,
    },
}

impl Dim {
    /// The values of a finite dimension.
    pub fn values(&self) -> Option<&[Value]> {
        match self {
            Dim::Categorical(v) | Dim::Ordinal(v) => Some(v),
            Dim::Uniform { .. } | Dim::LogUniform { .. } => None,
        }
    }

    /// The range of the model coordinate, `[start, end)`.
    pub fn range(&self) -> (f64, f64) {
        match self {
            Dim::Categorical(v) | Dim::Ordinal(v) => (0.0, v.len() as f64),
            Dim::Uniform { low, high } => (*low, *high),
            Dim::LogUniform { low, high } => (low.ln(), high.ln()),
        }
    }

    /// A value's model coordinate; `None` when the value is not in this
    /// dimension (a recorded trial from another grid).
    pub fn encode(&self, value: &Value) -> Option<f64> {
        match self {
            Dim::Categorical(v) => v
                .iter()
                .position(|x| values_equal(x, value))
                .map(|i| i as f64),
            // The middle of the index's cell, so a kernel centred on it
            // covers its cell symmetrically.
            Dim::Ordinal(v) => v
                .iter()
                .position(|x| values_equal(x, value))
                .map(|i| i as f64 + 0.5),
            Dim::Uniform { low, high } => value.as_f64().filter(|x| (low..=high).contains(&x)),
            Dim::LogUniform { low, high } => value
                .as_f64()
                .filter(|x| (low..=high).contains(&x))
                .map(f64::ln),
        }
    }

    /// The value at a model coordinate (clamped into the dimension).
    pub fn decode(&self, x: f64) -> Value {
        let index = |n: usize| (x.floor().max(0.0) as usize).min(n - 1);
        match self {
            Dim::Categorical(v) | Dim::Ordinal(v) => v[index(v.len())].clone(),
            Dim::Uniform { low, high } => {
                Value::from(three_significant_digits(x.clamp(*low, *high)))
            }
            Dim::LogUniform { low, high } => {
                Value::from(three_significant_digits(x.exp().clamp(*low, *high)))
            }
        }
    }

    /// The coordinate a decoded value lands on (a finite dimension's cell
    /// centre), so that a candidate is scored where it will be told.
    pub fn snap(&self, x: f64) -> f64 {
        self.encode(&self.decode(x)).unwrap_or(x)
    }

    fn random(&self, rng: &mut SplitMix64) -> Value {
        match self {
            Dim::Categorical(v) | Dim::Ordinal(v) => v[rng.below(v.len())].clone(),
            Dim::Uniform { .. } | Dim::LogUniform { .. } => {
                let (start, end) = self.range();
                self.decode(start + rng.next_f64() * (end - start))
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Space {
    /// Axis key and dimension, in key order.
    pub dims: Vec<(String, Dim)>,
}

impl Space {
    /// The space of a spec's `sweep.axes`: lists of numbers are ordinal,
    /// other lists and `choice` categorical.
    pub fn from_axes(axes: &BTreeMap<String, Axis>) -> Result<Space, SpaceError> {
        let mut dims = Vec::new();
        for (key, axis) in axes {
            let dim = match axis {
                Axis::Values(values) => list(key, values)?,
                Axis::Distribution(Distribution::Choice(values)) => {
                    if values.is_empty() {
                        return Err(SpaceError::Empty(key.clone()));
                    }
                    Dim::Categorical(values.clone())
                }
                Axis::Distribution(Distribution::Uniform([low, high])) => {
                    bounds(key, *low, *high, false)?;
                    Dim::Uniform {
                        low: *low,
                        high: *high,
                    }
                }
                Axis::Distribution(Distribution::Loguniform([low, high])) => {
                    bounds(key, *low, *high, true)?;
                    Dim::LogUniform {
                        low: *low,
                        high: *high,
                    }
                }
            };
            dims.push((key.clone(), dim));
        }
        if dims.is_empty() {
            return Err(SpaceError::NoAxes);
        }
        Ok(Space { dims })
    }

    /// The space a set of recorded configurations spans: each key's
    /// distinct values, as a list axis would declare them.
    pub fn from_points(points: &[Point]) -> Result<Space, SpaceError> {
        let mut values: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for point in points {
            for (key, value) in point {
                let seen = values.entry(key.clone()).or_default();
                if !seen.iter().any(|v| values_equal(v, value)) {
                    seen.push(value.clone());
                }
            }
        }
        let axes = values
            .into_iter()
            .map(|(k, v)| (k, Axis::Values(v)))
            .collect();
        Space::from_axes(&axes)
    }

    /// Whether every dimension is a list (the space can be enumerated).
    pub fn is_finite(&self) -> bool {
        self.dims.iter().all(|(_, d)| d.values().is_some())
    }

    /// A uniformly random configuration.
    pub fn random_point(&self, rng: &mut SplitMix64) -> Point {
        self.dims
            .iter()
            .map(|(key, dim)| (key.clone(), dim.random(rng)))
            .collect()
    }

    /// Whether two configurations are the same (numbers compare by value).
    pub fn same(a: &Point, b: &Point) -> bool {
        a.len() == b.len()
            && a.iter()
                .all(|(k, v)| b.get(k).is_some_and(|w| values_equal(v, w)))
    }
}

fn list(key: &str, values: &[Value]) -> Result<Dim, SpaceError> {
    if values.is_empty() {
        return Err(SpaceError::Empty(key.to_owned()));
    }
    if values.iter().all(Value::is_number) {
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| {
            let (a, b) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            a.total_cmp(&b)
        });
        sorted.dedup_by(|a, b| values_equal(a, b));
        Ok(Dim::Ordinal(sorted))
    } else {
        Ok(Dim::Categorical(values.to_vec()))
    }
}

fn bounds(key: &str, low: f64, high: f64, log: bool) -> Result<(), SpaceError> {
    let ok = low.is_finite() && high.is_finite() && low < high && (!log || low > 0.0);
    if ok {
        Ok(())
    } else {
        Err(SpaceError::Bounds {
            key: key.to_owned(),
            low,
            high,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn axes(text: &str) -> BTreeMap<String, Axis> {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn lists_of_numbers_are_sorted_ordinals_and_other_lists_categorical() {
        let space = Space::from_axes(&axes(
            r#"
            "train.lr" = [1e-2, 1e-4, 1e-3]
            "train.method" = ["lora", "qlora"]
            "train.weight_decay" = { loguniform = [1e-4, 1e-1] }
            "lora.dropout" = { uniform = [0.0, 0.2] }
            "#,
        ))
        .unwrap();
        let dim = |k: &str| &space.dims.iter().find(|(key, _)| key == k).unwrap().1;
        assert_eq!(
            dim("train.lr"),
            &Dim::Ordinal(vec![json!(1e-4), json!(1e-3), json!(1e-2)])
        );
        assert_eq!(dim("train.lr").encode(&json!(0.001)), Some(1.5));
        assert_eq!(dim("train.lr").decode(2.99), json!(1e-2));
        assert_eq!(dim("train.method").encode(&json!("qlora")), Some(1.0));
        assert_eq!(dim("train.method").encode(&json!("full")), None);
        let wd = dim("train.weight_decay");
        assert!((wd.encode(&json!(1e-2)).unwrap() - 1e-2f64.ln()).abs() < 1e-12);
        assert_eq!(wd.decode(1e-2f64.ln()), json!(1e-2));
        assert!(!space.is_finite());

        let mut rng = SplitMix64::new(1);
        for _ in 0..50 {
            let p = space.random_point(&mut rng);
            let d = p["lora.dropout"].as_f64().unwrap();
            assert!((0.0..=0.2).contains(&d));
            assert!(dim("train.lr").encode(&p["train.lr"]).is_some());
        }
    }

    #[test]
    fn bad_axes_are_typed_errors() {
        assert_eq!(
            Space::from_axes(&axes(r#""train.lr" = []"#)),
            Err(SpaceError::Empty("train.lr".into()))
        );
        assert!(matches!(
            Space::from_axes(&axes(r#""train.lr" = { loguniform = [0.0, 1.0] }"#)),
            Err(SpaceError::Bounds { .. })
        ));
        assert_eq!(Space::from_axes(&BTreeMap::new()), Err(SpaceError::NoAxes));
    }

    #[test]
    fn recorded_points_span_their_distinct_values() {
        let points: Vec<Point> = [(1e-3, "lora"), (1e-3, "qlora"), (0.001, "lora")]
            .iter()
            .map(|(lr, m)| Point::from([("lr".into(), json!(lr)), ("m".into(), json!(m))]))
            .collect();
        let space = Space::from_points(&points).unwrap();
        assert_eq!(space.dims[0].1, Dim::Ordinal(vec![json!(1e-3)]));
        assert_eq!(space.dims[1].1.values().unwrap().len(), 2);
        assert!(space.is_finite());
        assert!(Space::same(&points[0], &points[2]));
        assert!(!Space::same(&points[0], &points[1]));
    }
}
