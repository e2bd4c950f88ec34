//! Where a layer's tensors come from while the network is built: a position
//! in the checkpoint's weight tree, and the adaptation plan (if any) that
//! makes some tensors trainable, stores some weights as NF4 and adds `LoRA`
//! branches. Like candle's `VarBuilder`; kept apart from
//! `checkpoint::weights`, which only reads files and knows no adaptation.

use std::fmt;

use tch::{Device, Kind, Tensor};

use crate::model::adapt::plan::AdaptContext;
use crate::model::checkpoint::weights::{WeightError, WeightPath};

/// A position in the weight tree, with the plan every layer under it follows.
#[derive(Clone, Debug)]
pub struct LayerPath<'a> {
    weights: WeightPath<'a>,
    adapt: Option<&'a AdaptContext>,
}

impl<'a> LayerPath<'a> {
    /// The checkpoint's tensors as stored (inference, `eval`).
    pub fn plain(weights: WeightPath<'a>) -> Self {
        Self {
            weights,
            adapt: None,
        }
    }

    /// A model built for fine-tuning: every layer under it follows `ctx`'s
    /// plan (trainable tensors, `LoRA`, NF4).
    pub fn adapted(weights: WeightPath<'a>, ctx: &'a AdaptContext) -> Self {
        Self {
            weights,
            adapt: Some(ctx),
        }
    }

    /// The path one segment further down (`layers` then `0`, ...).
    #[must_use]
    pub fn pp(&self, segment: impl fmt::Display) -> Self {
        Self {
            weights: self.weights.pp(segment),
            adapt: self.adapt,
        }
    }

    /// The full internal name of this path (the module name).
    pub fn prefix(&self) -> &str {
        self.weights.prefix()
    }

    /// The adaptation plan the model is built with, if any.
    pub fn adapt(&self) -> Option<&'a AdaptContext> {
        self.adapt
    }

    /// The full internal name of `name` under this path.
    pub fn name(&self, name: &str) -> String {
        self.weights.name(name)
    }

    /// Loads `name` under this path, checking its shape, as the compute
    /// dtype on the target device. With an adaptation plan that trains this
    /// tensor, it comes back as a trainable variable.
    pub fn get(&self, name: &str, expected_shape: &[i64]) -> Result<Tensor, WeightError> {
        let tensor = self.weights.get(name, expected_shape)?;
        match self.adapt {
            Some(ctx) => {
                let full = self.name(name);
                ctx.tensor(&full, tensor)
                    .map_err(|source| WeightError::Tch { name: full, source })
            }
            None => Ok(tensor),
        }
    }

    /// The stored shape of `name`, for sizes the config does not fix (the
    /// vocabulary).
    pub fn shape(&self, name: &str) -> Result<Vec<i64>, WeightError> {
        self.weights.shape(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(name)
    }

    pub fn device(&self) -> Device {
        self.weights.device()
    }

    pub fn kind(&self) -> Kind {
        self.weights.kind()
    }
}
