//! `LoRA` as PEFT computes it (docs/model-reference.md §9): the low-rank branch a
//! [`Linear`](crate::model::network::linear::Linear) adds to its frozen base,
//! `y = base(x) + (dropout(x)·Aᵀ·Bᵀ)·scaling`.
//!
//! * A `[r, in]` starts as kaiming-uniform with `a = √5`, i.e.
//!   `U(−1/√in, 1/√in)`, B `[out, r]` as zeros, so a fresh adapter is a no-op;
//! * `scaling = alpha / r`, or `alpha / √r` with rsLoRA;
//! * the branch runs in the adapter's dtype (f32, as PEFT keeps adapters when
//!   the base is bf16): the input is cast to it, the result cast back;
//! * dropout acts on the branch's input, and only while training.
//!
//! Which modules get a branch is PEFT's rule: a module is targeted when its
//! name equals a target or ends with `.` + target ([`peft_suffix_match`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Device, Kind, TchError, Tensor};

/// PEFT's list matching (`target_modules`, `modules_to_save`): `name`
/// equals `target` or ends with `.` + `target`.
pub fn peft_suffix_match(name: &str, target: &str) -> bool {
    name == target
        || name
            .strip_suffix(target)
            .is_some_and(|head| head.ends_with('.'))
}

/// `alpha / r`, or `alpha / √r` with rsLoRA (PEFT's `use_rslora`).
pub fn lora_scaling(alpha: f64, r: i64, rslora: bool) -> f64 {
    if rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}

/// The dtype `LoRA` matrices are kept in over a base of dtype `compute`.
pub fn adapter_kind(compute: Kind) -> Kind {
    if compute == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// Rank and alpha of one adapted module.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraRank {
    pub r: i64,
    pub alpha: f64,
}

/// Which modules get a `LoRA` branch.
#[derive(Clone, Debug, PartialEq)]
pub enum LoraTargets {
    /// PEFT `target_modules` as a list: suffix matching on module names.
    Names(Vec<String>),
    /// Exactly these modules (internal names, see
    /// [`peft::internal_module`](crate::model::adapt::peft::internal_module)), each with
    /// its own rank and alpha: what a stored adapter holds.
    Modules(BTreeMap<String, LoraRank>),
}

/// The `[lora]` part of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank of every [`LoraTargets::Names`] module.
    pub r: i64,
    /// `lora_alpha` of every [`LoraTargets::Names`] module.
    pub alpha: f64,
    /// Dropout probability on the branch input while training.
    pub dropout: f64,
    /// `scaling = alpha / √r` instead of `alpha / r`.
    pub rslora: bool,
    pub targets: LoraTargets,
}

/// The seven projection names of the usual `PaliGemma` recipes (maestro, the
/// HF blog); they also hit `SigLIP`'s `q_proj`/`k_proj`/`v_proj`.
pub const DEFAULT_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl LoraConfig {
    /// Rank `r`, `alpha`, no dropout, the seven default targets.
    pub fn new(r: i64, alpha: f64) -> Self {
        Self {
            r,
            alpha,
            dropout: 0.0,
            rslora: false,
            targets: LoraTargets::Names(DEFAULT_TARGETS.iter().map(|&t| t.to_owned()).collect()),
        }
    }

    /// The rank and alpha of module `name` if it is targeted. `peft_name` is
    /// its transformers-5 in-memory name; list targets match either form.
    pub fn rank_of(&self, name: &str, peft_name: &str) -> Option<LoraRank> {
        match &self.targets {
            LoraTargets::Names(targets) => targets
                .iter()
                .any(|t| peft_suffix_match(peft_name, t) || peft_suffix_match(name, t))
                .then_some(LoraRank {
                    r: self.r,
                    alpha: self.alpha,
                }),
            LoraTargets::Modules(modules) => modules.get(name).copied(),
        }
    }
}

/// The trainable low-rank branch of one linear layer.
#[derive(Debug)]
pub struct LoraBranch {
    /// `lora_A.weight` `[r, in]`, f32.
    a: Tensor,
    /// `lora_B.weight` `[out, r]`, f32.
    b: Tensor,
    scaling: f64,
    dropout: f64,
    /// Shared with the model: dropout is active only while it is set.
    training: Arc<AtomicBool>,
}

impl LoraBranch {
    /// A fresh branch `in → r → out` on `device`, in PEFT's initialisation:
    /// A drawn on the CPU from torch's global generator (so the values do
    /// not depend on the device), B zeros. The tensors are not yet trainable
    /// variables: the caller registers [`a`](Self::a) and [`b`](Self::b).
    /// `compute` is the base's dtype: the adapter is f32 (f64 on an f64
    /// base), as PEFT's `autocast_adapter_dtype` makes it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_features: i64,
        out_features: i64,
        rank: LoraRank,
        rslora: bool,
        dropout: f64,
        training: Arc<AtomicBool>,
        device: Device,
        compute: Kind,
    ) -> Result<Self, TchError> {
        let kind = adapter_kind(compute);
        let bound = 1.0 / (in_features as f64).sqrt();
        let a = Tensor::f_empty([rank.r, in_features], (Kind::Float, Device::Cpu))?
            .f_uniform_(-bound, bound)?
            .f_to_kind(kind)?
            .f_to_device(device)?;
        let b = Tensor::f_zeros([out_features, rank.r], (kind, device))?;
        Ok(Self {
            a,
            b,
            scaling: lora_scaling(rank.alpha, rank.r, rslora),
            dropout,
            training,
        })
    }

    /// Replaces A and B by the registered (trainable) variables, or by
    /// loaded values of the same shapes.
    pub fn set_weights(&mut self, a: Tensor, b: Tensor) {
        self.a = a;
        self.b = b;
    }

    pub fn a(&self) -> &Tensor {
        &self.a
    }

    pub fn b(&self) -> &Tensor {
        &self.b
    }

    pub fn rank(&self) -> i64 {
        self.a.size().first().copied().unwrap_or(0)
    }

    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// `(dropout(x)·Aᵀ·Bᵀ)·scaling` in the adapter dtype (not cast back).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        self.input(x)?
            .f_linear(&self.a, None::<Tensor>)?
            .f_linear(&self.b, None::<Tensor>)?
            .f_mul_scalar(self.scaling)
    }

    /// `base + branch(x)` for a `base` `[…, out]` in the adapter dtype, the
    /// sum taken by the second GEMM (`addmm`, β = 1) and the scaling applied
    /// to the rank-`r` intermediate: the same value as `base +
    /// forward(x)` up to rounding, with two fewer passes over `[…, out]`
    /// forward and one fewer backward.
    ///
    /// Bᵀ goes in as a row-major copy (`r·out` values): autograd then
    /// computes B's gradient as `midᵀ·g` rather than `gᵀ·mid`, and MKL runs
    /// the latter ~9× slower at `[1116, 1024]` (a rank-8 output with the
    /// token dimension as the reduction); the input side gets ~2× faster
    /// too. On the CPU `small` preset this is about a tenth of a `LoRA`
    /// training step.
    pub fn add_to(&self, base: &Tensor, x: &Tensor) -> Result<Tensor, TchError> {
        let size = base.size();
        let out = size.last().copied().unwrap_or(0);
        let r = self.a.size()[0];
        let mid = self
            .input(x)?
            .f_linear(&self.a, None::<Tensor>)?
            .f_mul_scalar(self.scaling)?
            .f_reshape([-1, r])?;
        base.f_reshape([-1, out])?
            .f_addmm(&mid, &self.b.f_transpose(0, 1)?.f_contiguous()?)?
            .f_view(size.as_slice())
    }

    /// The branch's dtype.
    pub fn kind(&self) -> Kind {
        self.a.kind()
    }

    /// `dropout(x)` in the adapter dtype: what A reads.
    fn input(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let x = x.f_to_kind(self.a.kind())?;
        if self.dropout > 0.0 && self.training.load(Ordering::Relaxed) {
            x.f_dropout(self.dropout, true)
        } else {
            Ok(x)
        }
    }

    /// `scaling · B·A`, `[out, in]` in the adapter dtype: what merging adds
    /// to the base weight.
    pub fn delta_weight(&self) -> Result<Tensor, TchError> {
        self.b.f_matmul(&self.a)?.f_mul_scalar(self.scaling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_matching_is_peft_s() {
        let name = "model.language_model.layers.0.self_attn.q_proj";
        assert!(peft_suffix_match(name, "q_proj"));
        assert!(peft_suffix_match(name, "self_attn.q_proj"));
        assert!(peft_suffix_match(name, name));
        assert!(!peft_suffix_match(name, "proj"));
        assert!(!peft_suffix_match(name, "_proj"));
        assert!(!peft_suffix_match("q_proj", "model.q_proj"));
    }

    #[test]
    fn scaling_plain_and_rslora() {
        assert!((lora_scaling(16.0, 8, false) - 2.0).abs() < 1e-12);
        assert!((lora_scaling(16.0, 4, true) - 8.0).abs() < 1e-12);
    }

    #[test]
    fn fresh_branch_is_a_no_op_with_peft_init() {
        tch::manual_seed(3);
        let training = Arc::new(AtomicBool::new(true));
        let rank = LoraRank { r: 4, alpha: 8.0 };
        let branch = LoraBranch::new(
            100,
            7,
            rank,
            false,
            0.5,
            training,
            Device::Cpu,
            Kind::BFloat16,
        )
        .unwrap();
        assert_eq!(branch.a().size(), [4, 100]);
        assert_eq!(branch.b().size(), [7, 4]);
        let bound = branch.a().abs().max().double_value(&[]);
        assert!(bound <= 0.1 && bound > 0.08, "{bound}");
        let x = Tensor::randn([2, 3, 100], (Kind::BFloat16, Device::Cpu));
        let y = branch.forward(&x).unwrap();
        assert_eq!(y.kind(), Kind::Float);
        assert_eq!(y.size(), [2, 3, 7]);
        assert_eq!(y.count_nonzero(None::<i64>).int64_value(&[]), 0);
    }

    #[test]
    fn dropout_only_while_training() {
        let training = Arc::new(AtomicBool::new(false));
        let rank = LoraRank { r: 2, alpha: 2.0 };
        let mut branch = LoraBranch::new(
            16,
            3,
            rank,
            false,
            0.5,
            training.clone(),
            Device::Cpu,
            Kind::Float,
        )
        .unwrap();
        let (a, b) = (
            Tensor::ones([2, 16], (Kind::Float, Device::Cpu)),
            Tensor::ones([3, 2], (Kind::Float, Device::Cpu)),
        );
        branch.set_weights(a, b);
        let x = Tensor::ones([1, 16], (Kind::Float, Device::Cpu));
        // scaling 1: each output = 2 · 16.
        let eval = branch.forward(&x).unwrap();
        assert!((eval.double_value(&[0, 0]) - 32.0).abs() < 1e-6);
        training.store(true, Ordering::Relaxed);
        tch::manual_seed(0);
        let train = branch.forward(&x).unwrap();
        assert!((train.double_value(&[0, 0]) - 32.0).abs() > 1e-3);
        let delta = branch.delta_weight().unwrap();
        assert_eq!(delta.size(), [3, 16]);
        assert!((delta.double_value(&[1, 5]) - 2.0).abs() < 1e-6);
    }

    /// The fused sum is the PEFT sum, value and gradients, for 2- and 3-d
    /// inputs.
    #[test]
    fn add_to_is_base_plus_forward_with_the_same_gradients() {
        tch::manual_seed(5);
        let training = Arc::new(AtomicBool::new(false));
        let rank = LoraRank { r: 4, alpha: 8.0 };
        let mut branch = LoraBranch::new(
            24,
            40,
            rank,
            false,
            0.0,
            training,
            Device::Cpu,
            Kind::Double,
        )
        .unwrap();
        let options = (Kind::Double, Device::Cpu);
        let lora_a = Tensor::randn([4, 24], options).set_requires_grad(true);
        let lora_b = Tensor::randn([40, 4], options).set_requires_grad(true);
        branch.set_weights(lora_a.shallow_clone(), lora_b.shallow_clone());
        let weight = Tensor::randn([40, 24], options);
        for shape in [vec![6, 24], vec![2, 5, 24]] {
            let x = Tensor::randn(shape.as_slice(), options).set_requires_grad(true);
            let upstream = Tensor::randn_like(&x.linear(&weight, None::<Tensor>));
            let mut gradients = Vec::new();
            let mut outputs = Vec::new();
            for fused in [false, true] {
                let base = x.linear(&weight, None::<Tensor>);
                let y = if fused {
                    branch.add_to(&base, &x).unwrap()
                } else {
                    &base + branch.forward(&x).unwrap()
                };
                assert_eq!(y.size(), base.size());
                (&y * &upstream).sum(None).backward();
                let grads: Vec<Tensor> = [&lora_a, &lora_b, &x]
                    .iter()
                    .map(|t| t.grad().copy())
                    .collect();
                for t in [&lora_a, &lora_b, &x] {
                    t.shallow_clone().zero_grad();
                }
                outputs.push(y.detach());
                gradients.push(grads);
            }
            assert!(outputs[0].allclose(&outputs[1], 1e-12, 1e-12, false));
            for (plain, fused) in gradients[0].iter().zip(&gradients[1]) {
                assert!(plain.abs().max().double_value(&[]) > 0.0);
                assert!(plain.allclose(fused, 1e-12, 1e-12, false));
            }
        }
    }
}
