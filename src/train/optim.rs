//! AdamW with decoupled weight decay (Loshchilov & Hutter; `torch.optim.AdamW`
//! arithmetic), written here rather than taken from tch because tch cannot
//! save or restore an optimiser's state, and resume must be exact.
//!
//! A parameter held in a lower precision (a bf16 tensor trained in full on
//! CUDA) gets an f32 master copy: the update runs on the master, which is
//! then cast into the model's tensor — explicit casts, since tch's autocast
//! cannot select bf16.

use std::path::Path;

use tch::{Kind, TchError, Tensor};

use super::multi_tensor::{self, AdamWStep, StepTensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// `torch.optim.AdamW` defaults, except weight decay (the spec sets it).
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One trained tensor and its optimiser state.
#[derive(Debug)]
pub struct Param {
    pub name: String,
    /// The model's tensor (requires grad).
    pub value: Tensor,
    /// The f32 master copy when `value` is not f32.
    master: Option<Tensor>,
    /// Biases and norm weights get no weight decay.
    pub decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

#[derive(Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    params: Vec<Param>,
    /// Updates applied so far (bias correction uses it).
    step: u64,
}

impl AdamW {
    /// `params`: (name, master tensor, whether it decays).
    pub fn new(config: AdamWConfig, params: Vec<(String, Tensor, bool)>) -> Result<Self, TchError> {
        let params = params
            .into_iter()
            .map(|(name, value, decay)| {
                let master = if value.kind() == Kind::Float {
                    None
                } else {
                    Some(value.f_detach()?.f_to_kind(Kind::Float)?)
                };
                Ok(Param {
                    master,
                    exp_avg: value.f_zeros_like()?.f_to_kind(Kind::Float)?,
                    exp_avg_sq: value.f_zeros_like()?.f_to_kind(Kind::Float)?,
                    name,
                    value,
                    decay,
                })
            })
            .collect::<Result<_, TchError>>()?;
        Ok(AdamW {
            config,
            params,
            step: 0,
        })
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Drops every gradient (`set_to_none`).
    pub fn zero_grad(&mut self) -> Result<(), TchError> {
        let values: Vec<&Tensor> = self.params.iter().map(|p| &p.value).collect();
        multi_tensor::zero_grad(&values)
    }

    /// The global L2 norm of the gradients, after clipping them to
    /// `max_norm` when it is positive (`clip_grad_norm_` semantics: the
    /// returned norm is the one before clipping). Each tensor's sum of
    /// squares is taken in f64; the total is read once per step.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64, TchError> {
        let values: Vec<&Tensor> = self.params.iter().map(|p| &p.value).collect();
        multi_tensor::clip_grad_norm(&values, max_norm)
    }

    /// One update at learning rate `lr`, over every tensor at once
    /// ([`multi_tensor::adamw_step`]): `w ← w·(1 − lr·wd)` (decaying tensors),
    /// `m ← β₁m + (1 − β₁)g`, `v ← β₂v + (1 − β₂)g²`,
    /// `w ← w − (lr/(1 − β₁ᵗ))·m/(√(v/(1 − β₂ᵗ)) + ε)`, on the f32 master of
    /// a lower-precision tensor, then cast into it.
    pub fn step(&mut self, lr: f64) -> Result<(), TchError> {
        self.step += 1;
        let c = self.config;
        let tensors: Vec<StepTensor> = self
            .params
            .iter()
            .map(|p| StepTensor {
                value: &p.value,
                master: p.master.as_ref(),
                exp_avg: &p.exp_avg,
                exp_avg_sq: &p.exp_avg_sq,
                decay: p.decay,
            })
            .collect();
        multi_tensor::adamw_step(
            &tensors,
            AdamWStep {
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: c.weight_decay,
                bias1: 1.0 - c.beta1.powi(self.step as i32),
                bias2: 1.0 - c.beta2.powi(self.step as i32),
            },
        )
    }

    /// Saves the moments and the step count (safetensors; names
    /// `<param>.exp_avg`, `<param>.exp_avg_sq`, and `step`).
    pub fn save(&self, path: &Path) -> Result<(), TchError> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for p in &self.params {
            tensors.push((format!("{}.exp_avg", p.name), p.exp_avg.shallow_clone()));
            tensors.push((
                format!("{}.exp_avg_sq", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
            if let Some(master) = &p.master {
                tensors.push((format!("{}.master", p.name), master.shallow_clone()));
            }
        }
        tensors.push((
            "step".into(),
            Tensor::from_slice(&[i64::try_from(self.step).unwrap_or(i64::MAX)]),
        ));
        Tensor::write_safetensors(&tensors, path)
    }

    /// Restores what [`save`](Self::save) wrote; every parameter must be there.
    pub fn load(&mut self, path: &Path) -> Result<(), TchError> {
        let stored = Tensor::read_safetensors(path)?;
        let find = |name: &str| {
            stored
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| TchError::FileFormat(format!("optimiser state lacks {name}")))
        };
        for p in &mut self.params {
            let device = p.value.device();
            p.exp_avg = find(&format!("{}.exp_avg", p.name))?.f_to_device(device)?;
            p.exp_avg_sq = find(&format!("{}.exp_avg_sq", p.name))?.f_to_device(device)?;
            if p.master.is_some() {
                p.master = Some(find(&format!("{}.master", p.name))?.f_to_device(device)?);
            }
        }
        self.step = u64::try_from(find("step")?.int64_value(&[0])).unwrap_or(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two AdamW steps on f(w) = sum(w²), against the update rule written
    /// out by hand (what `torch.optim.AdamW` computes).
    #[test]
    fn matches_the_adamw_update_rule() {
        let w = Tensor::from_slice(&[1.0_f32, -2.0]).set_requires_grad(true);
        let config = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(config, vec![("w".into(), w.shallow_clone(), true)]).unwrap();
        let (lr, b1, b2, eps, wd) = (0.01, 0.9, 0.999, 1e-8, 0.1);
        let mut expected = [1.0_f64, -2.0];
        let (mut m, mut v) = ([0.0_f64; 2], [0.0_f64; 2]);
        for t in 1..=2 {
            opt.zero_grad().unwrap();
            w.square().sum(Kind::Float).backward();
            opt.step(lr).unwrap();
            for i in 0..2 {
                let g = 2.0 * expected[i];
                expected[i] *= 1.0 - lr * wd;
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let m_hat = m[i] / (1.0 - b1.powi(t));
                let v_hat = v[i] / (1.0 - b2.powi(t));
                expected[i] -= lr * m_hat / (v_hat.sqrt() + eps);
            }
        }
        for (i, e) in expected.iter().enumerate() {
            let got = w.double_value(&[i64::try_from(i).unwrap()]);
            assert!((got - e).abs() < 1e-6, "w[{i}] = {got}, expected {e}");
        }
    }

    /// A bf16 parameter is updated through an f32 master: many updates too
    /// small for bf16's 8-bit mantissa still add up.
    #[test]
    fn bf16_params_accumulate_small_updates_in_an_f32_master() {
        let w = Tensor::from_slice(&[1.0_f32])
            .to_kind(Kind::BFloat16)
            .set_requires_grad(true);
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            vec![("w".into(), w.shallow_clone(), true)],
        )
        .unwrap();
        for _ in 0..100 {
            opt.zero_grad().unwrap();
            w.to_kind(Kind::Float).sum(Kind::Float).backward(); // gradient 1
            opt.step(1e-4).unwrap(); // each update is below bf16's spacing at 1.0
        }
        let value = w.to_kind(Kind::Float).double_value(&[0]);
        assert!((value - 0.99).abs() < 4e-3, "bf16 weight {value}");
    }

    #[test]
    fn no_decay_params_are_not_decayed() {
        let w = Tensor::from_slice(&[1.0_f32]).set_requires_grad(true);
        let config = AdamWConfig {
            weight_decay: 0.5,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(config, vec![("bias".into(), w.shallow_clone(), false)]).unwrap();
        // A zero gradient: only decay could move the weight.
        (w.shallow_clone() * 0.0).sum(Kind::Float).backward();
        opt.step(0.1).unwrap();
        assert!((w.double_value(&[0]) - 1.0).abs() < 1e-7);
    }

    #[test]
    fn clipping_scales_the_global_norm() {
        let w = Tensor::from_slice(&[3.0_f32, 4.0]).set_requires_grad(true);
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            vec![("w".into(), w.shallow_clone(), true)],
        )
        .unwrap();
        (w.shallow_clone() * w.shallow_clone())
            .sum(Kind::Float)
            .backward(); // grad = (6, 8), norm 10
        let norm = opt.clip_grad_norm(1.0).unwrap();
        assert!((norm - 10.0).abs() < 1e-5);
        let clipped = w.grad().square().sum(Kind::Float).sqrt().double_value(&[]);
        assert!((clipped - 1.0).abs() < 1e-5);
    }

    #[test]
    fn state_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let make = || Tensor::from_slice(&[0.5_f32, 1.5]).set_requires_grad(true);
        let (a, mut b) = (make(), make());
        let mut first = AdamW::new(
            AdamWConfig::default(),
            vec![("p".into(), a.shallow_clone(), true)],
        )
        .unwrap();
        let mut second = AdamW::new(
            AdamWConfig::default(),
            vec![("p".into(), b.shallow_clone(), true)],
        )
        .unwrap();
        a.square().sum(Kind::Float).backward();
        first.step(0.1).unwrap();
        first.save(&dir.path().join("optim.safetensors")).unwrap();
        tch::no_grad(|| b.copy_(&a));
        second.load(&dir.path().join("optim.safetensors")).unwrap();
        assert_eq!(second.step_count(), 1);
        // One more identical step on both must agree exactly.
        for (opt, w) in [(&mut first, &a), (&mut second, &b)] {
            opt.zero_grad().unwrap();
            w.square().sum(Kind::Float).backward();
            opt.step(0.1).unwrap();
        }
        assert!(a.equal(&b));
    }

    /// The per-tensor loop the multi-tensor step replaced, written out: the
    /// reference it must equal bit for bit.
    fn reference_step(params: &[(Tensor, Tensor, Tensor, bool)], step: i32, lr: f64, wd: f64) {
        let (b1, b2, eps) = (0.9_f64, 0.999_f64, 1e-8);
        let (bias1, bias2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
        tch::no_grad(|| {
            for (w, m, v, decay) in params {
                let grad = w.grad();
                let mut w = w.shallow_clone();
                if *decay {
                    let _ = w.f_mul_scalar_(1.0 - lr * wd).unwrap();
                }
                let (mut m, mut v) = (m.shallow_clone(), v.shallow_clone());
                let _ = m
                    .f_mul_scalar_(b1)
                    .unwrap()
                    .f_add_(&grad.f_mul_scalar(1.0 - b1).unwrap());
                let g2 = grad.f_square().unwrap().f_mul_scalar(1.0 - b2).unwrap();
                let _ = v.f_mul_scalar_(b2).unwrap().f_add_(&g2);
                let denom = v
                    .f_div_scalar(bias2)
                    .unwrap()
                    .f_sqrt()
                    .unwrap()
                    .f_add_scalar(eps)
                    .unwrap();
                let update = m.f_div(&denom).unwrap().f_mul_scalar(lr / bias1).unwrap();
                let _ = w.f_sub_(&update).unwrap();
            }
        });
    }

    fn tensors(count: usize, seed: i64) -> Vec<Tensor> {
        tch::manual_seed(seed);
        (0..count)
            .map(|i| {
                let len = 3 + i64::try_from(i % 5).unwrap();
                Tensor::randn([len, 2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true)
            })
            .collect()
    }

    /// Three steps with decaying and non-decaying tensors, gradients
    /// accumulated over two micro-batches: weights equal the per-tensor
    /// loop's bit for bit (resume and rerun stay exact).
    #[test]
    fn the_multi_tensor_step_equals_the_per_tensor_loop_bit_for_bit() {
        let (ours, theirs) = (tensors(7, 1), tensors(7, 1));
        let config = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let named = |ts: &[Tensor]| {
            ts.iter()
                .enumerate()
                .map(|(i, t)| (format!("p{i}"), t.shallow_clone(), i % 3 != 0))
                .collect()
        };
        let mut opt = AdamW::new(config, named(&ours)).unwrap();
        let state: Vec<_> = theirs
            .iter()
            .enumerate()
            .map(|(i, w)| {
                (
                    w.shallow_clone(),
                    w.zeros_like(),
                    w.zeros_like(),
                    i % 3 != 0,
                )
            })
            .collect();
        let loss = |ts: &[Tensor], k: f64| {
            ts.iter()
                .map(|t| (t * t * k).sin().sum(Kind::Float))
                .fold(Tensor::from(0f32), |a, b| a + b)
        };
        for step in 1..=3 {
            opt.zero_grad().unwrap();
            for w in &theirs {
                w.shallow_clone().zero_grad();
            }
            for k in [1.0, 0.5] {
                loss(&ours, k).backward();
                loss(&theirs, k).backward();
            }
            let norm = opt.clip_grad_norm(1e9).unwrap();
            assert!(norm > 0.0);
            opt.step(0.01).unwrap();
            reference_step(&state, step, 0.01, 0.1);
            for (a, b) in ours.iter().zip(&theirs) {
                assert!(a.equal(b), "step {step}: {a} vs {b}");
            }
        }
    }

    /// The operations one step issues (zero-grad, clipping, update) do not
    /// grow with the number of trained tensors.
    #[test]
    fn a_step_issues_a_fixed_number_of_operations() {
        let count = |n: usize| {
            let ts = tensors(n, 2);
            let named = ts
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("p{i}"), t.shallow_clone(), i % 2 == 0))
                .collect();
            let config = AdamWConfig {
                weight_decay: 0.1,
                ..AdamWConfig::default()
            };
            let mut opt = AdamW::new(config, named).unwrap();
            for t in &ts {
                (t * 3.0).sum(Kind::Float).backward();
            }
            let ((), ops) = multi_tensor::count_ops(|| {
                opt.clip_grad_norm(1e-3).unwrap();
                opt.step(0.01).unwrap();
                opt.zero_grad().unwrap();
            });
            assert!(
                ts.iter().all(|t| !t.grad().defined()),
                "zero_grad left a gradient"
            );
            ops
        };
        let (few, many) = (count(4), count(64));
        // The per-tensor loop it replaced, for the record: its update alone
        // grows with the number of tensors.
        let loop_ops = |n: usize| {
            let ts = tensors(n, 3);
            let state: Vec<_> = ts
                .iter()
                .map(|w| (w.shallow_clone(), w.zeros_like(), w.zeros_like(), true))
                .collect();
            for t in &ts {
                (t * 3.0).sum(Kind::Float).backward();
            }
            multi_tensor::count_ops(|| reference_step(&state, 1, 0.01, 0.1)).1
        };
        let (loop_few, loop_many) = (loop_ops(4), loop_ops(64));
        eprintln!(
            "operations per step: {few} (4 tensors), {many} (64 tensors); \
             the per-tensor update: {loop_few} and {loop_many}"
        );
        assert!(
            loop_many > loop_few,
            "the counter sees no per-tensor operation"
        );
        assert!(few > 0, "no operation counted");
        assert_eq!(few, many, "4 tensors: {few} operations; 64 tensors: {many}");
    }
}
