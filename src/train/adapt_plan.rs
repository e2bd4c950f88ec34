//! The adaptation plan of a resolved spec (`train.method`, `[lora]`,
//! `[qlora]`, `model.freeze_vision` and `model.train_projector`) and its
//! attention (`model.attention`), in the model's own terms (the model knows
//! nothing of specs).

use std::collections::BTreeSet;

use crate::model::adapt::lora::{LoraConfig, LoraTargets};
use crate::model::adapt::plan::{AdaptMethod, AdaptPlan, PROJECTOR_MODULE, QuantConfig};
use crate::model::network::attention::AttentionMode;
use crate::spec::schema::{Attention, Method, Spec};

/// The plan of a resolved experiment spec.
pub fn adapt_plan(spec: &Spec) -> AdaptPlan {
    let lora = LoraConfig {
        r: i64::from(spec.lora.r),
        alpha: spec.lora.alpha,
        dropout: spec.lora.dropout,
        rslora: spec.lora.rslora,
        targets: LoraTargets::Names(spec.lora.targets.clone()),
    };
    let quant = QuantConfig {
        block_size: i64::from(spec.qlora.block_size),
        double_quant: spec.qlora.double_quant,
    };
    AdaptPlan {
        method: adapt_method(spec.train.method),
        lora,
        quant,
        freeze_vision: spec.model.freeze_vision,
        modules_to_save: if spec.model.train_projector {
            vec![PROJECTOR_MODULE.to_owned()]
        } else {
            Vec::new()
        },
        saved_tensors: BTreeSet::new(),
    }
}

/// The model's attention for `model.attention`.
pub fn attention_mode(spec: &Spec) -> AttentionMode {
    match spec.model.attention {
        Attention::MemoryEfficient => AttentionMode::MemoryEfficient,
        Attention::Eager => AttentionMode::Eager,
    }
}

/// The model's method for the spec's. A synthetic trial builds no model;
/// it is planned as `LoRA` so that its estimates stay those of one.
pub fn adapt_method(method: Method) -> AdaptMethod {
    match method {
        Method::Lora | Method::Synthetic => AdaptMethod::Lora,
        Method::Qlora => AdaptMethod::Qlora,
        Method::Full => AdaptMethod::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_decides_method_freezing_and_the_projector() {
        let mut spec: Spec = toml::from_str(crate::spec::DEFAULTS_TOML).unwrap();
        spec.train.method = Method::Qlora;
        spec.model.freeze_vision = true;
        spec.model.train_projector = true;
        spec.lora.r = 4;
        spec.qlora.block_size = 32;
        let plan = adapt_plan(&spec);
        assert_eq!(plan.method, AdaptMethod::Qlora);
        assert!(plan.freeze_vision);
        assert_eq!(plan.modules_to_save, [PROJECTOR_MODULE]);
        assert_eq!(plan.lora.r, 4);
        assert_eq!(plan.quant.block_size, 32);
        spec.model.train_projector = false;
        assert!(adapt_plan(&spec).modules_to_save.is_empty());
        assert_eq!(attention_mode(&spec), AttentionMode::MemoryEfficient);
        spec.model.attention = Attention::Eager;
        assert_eq!(attention_mode(&spec), AttentionMode::Eager);
    }
}
