//! The one linear layer every tower uses: `y = x·Wᵀ + b` with `W` stored
//! `[out, in]` (`PyTorch` layout), plus what fine-tuning adds to it.
//!
//! [`Linear::new`] has the constructor shape of a plain `nn.Linear` loaded
//! through a [`LayerPath`]; when the path carries an
//! [`AdaptContext`](crate::model::adapt::plan::AdaptContext), the plan decides for this
//! module:
//! * a frozen dense base (a plain tensor without grad), or a frozen NF4 base
//!   quantised while loading and dequantised per forward to the input dtype
//!   (the full-precision weight is dropped right away);
//! * an optional [`LoraBranch`] (PEFT's `LoRA`, in f32);
//! * or fully trainable weights (the tensors are then variables of the
//!   trainable store).

use tch::{Kind, TchError, Tensor};

use crate::model::adapt::lora::LoraBranch;
use crate::model::adapt::nf4::{Nf4Inputs, Nf4Tensor};
use crate::model::checkpoint::weights::WeightError;
use crate::model::network::kernels;
use crate::model::network::layer_path::LayerPath;

/// The frozen (or fully trained) weight.
#[derive(Debug)]
enum Base {
    /// In the compute dtype.
    Dense(Tensor),
    /// NF4 blocks, dequantised to the input dtype on every forward (by the
    /// kernel, which keeps only the packed weight for the backward pass, from
    /// `kernel`, its inputs prepared once at load).
    Nf4 {
        weight: Nf4Tensor,
        kernel: Nf4Inputs,
    },
}

/// `nn.Linear` with an optional `LoRA` branch; see the module docs.
#[derive(Debug)]
pub struct Linear {
    /// Internal module name, for error messages.
    name: String,
    base: Base,
    bias: Option<Tensor>,
    lora: Option<LoraBranch>,
}

impl Linear {
    /// Loads `weight` `[out, in]` (and `bias` `[out]`) under `path` and
    /// applies the path's adaptation plan, if any.
    pub fn new(
        path: &LayerPath,
        in_features: i64,
        out_features: i64,
        bias: bool,
    ) -> Result<Self, WeightError> {
        let name = path.prefix().to_owned();
        let weight = path.get("weight", &[out_features, in_features])?;
        let bias = if bias {
            Some(path.get("bias", &[out_features])?)
        } else {
            None
        };
        let Some(ctx) = path.adapt() else {
            return Ok(Self {
                name,
                base: Base::Dense(weight),
                bias,
                lora: None,
            });
        };
        let plan = ctx.plan().linear(&name);
        let base = match plan.quantize {
            Some(quant) => {
                let nf4 = Nf4Tensor::quantize(&weight, quant.block_size, quant.double_quant)
                    .map_err(|source| WeightError::Quantize {
                        name: path.name("weight"),
                        source: Box::new(source),
                    })?;
                drop(weight);
                ctx.record_quantized(nf4.numel().unsigned_abs(), nf4.storage_bytes());
                let kernel = nf4
                    .kernel_inputs()
                    .map_err(|source| WeightError::Quantize {
                        name: path.name("weight"),
                        source: Box::new(source),
                    })?;
                Base::Nf4 {
                    weight: nf4,
                    kernel,
                }
            }
            None => Base::Dense(weight),
        };
        let lora = plan
            .lora
            .map(|rank| ctx.lora_branch(&name, in_features, out_features, rank, path.kind()))
            .transpose()
            .map_err(|source| WeightError::Tch {
                name: format!("{name}.lora_A"),
                source,
            })?;
        Ok(Self {
            name,
            base,
            bias,
            lora,
        })
    }

    /// `x·Wᵀ + b`, plus the `LoRA` branch when there is one.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let base = match &self.base {
            Base::Dense(w) => x.f_linear(w, self.bias.as_ref())?,
            Base::Nf4 { kernel, .. } => {
                let bias = match &self.bias {
                    Some(b) => Some(b.f_to_kind(x.kind())?),
                    None => None,
                };
                if kernels::available() {
                    kernels::nf4_linear(x, kernel, bias.as_ref())?
                } else {
                    x.f_linear(&self.base_weight(x.kind())?, bias.as_ref())?
                }
            }
        };
        let Some(lora) = &self.lora else {
            return Ok(base);
        };
        if base.kind() == lora.kind() {
            // One GEMM adds the branch to the base output (PEFT adds and
            // casts in two more passes over `[tokens, out]`).
            return lora.add_to(&base, x);
        }
        let delta = lora.forward(x)?;
        match self.base {
            // PEFT `lora.Linear`: result + f32 term (promoting), then cast back.
            Base::Dense(_) => base.f_add(&delta)?.f_to_kind(base.kind()),
            // PEFT `lora.Linear4bit`: the term is cast to the result's dtype first.
            Base::Nf4 { .. } => base.f_add(&delta.f_to_kind(base.kind())?),
        }
    }

    /// The dense weight (`None` when it is stored as NF4).
    pub fn weight(&self) -> Option<&Tensor> {
        match &self.base {
            Base::Dense(w) => Some(w),
            Base::Nf4 { .. } => None,
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The NF4 weight, when quantised.
    pub fn nf4(&self) -> Option<&Nf4Tensor> {
        match &self.base {
            Base::Nf4 { weight, .. } => Some(weight),
            Base::Dense(_) => None,
        }
    }

    pub fn lora(&self) -> Option<&LoraBranch> {
        self.lora.as_ref()
    }

    /// The internal module name (`language_model.model.layers.0.mlp.up_proj`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The weight in `kind` as the forward pass sees it (dequantised NF4).
    pub fn base_weight(&self, kind: Kind) -> Result<Tensor, TchError> {
        match &self.base {
            Base::Dense(w) => w.f_to_kind(kind),
            Base::Nf4 { weight, .. } => weight
                .dequantize(kind)
                .map_err(|e| TchError::Torch(format!("NF4 weight of `{}`: {e}", self.name))),
        }
    }
}
