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

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut grad = p.value.grad();
            if grad.defined() {
                let _ = grad.f_zero_();
            }
        }
    }

    /// The global L2 norm of the gradients, after clipping them to
    /// `max_norm` when it is positive (`clip_grad_norm_` semantics: the
    /// returned norm is the one before clipping).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64, TchError> {
        // Summed on the device, read once: one sync per step, not per tensor.
        let mut sum_sq: Option<Tensor> = None;
        for p in &self.params {
            let grad = p.value.grad();
            if grad.defined() {
                let sq = grad
                    .f_to_kind(Kind::Double)?
                    .f_square()?
                    .f_sum(Kind::Double)?;
                sum_sq = Some(match sum_sq.take() {
                    Some(total) => total.f_add(&sq)?,
                    None => sq,
                });
            }
        }
        let norm = match sum_sq {
            Some(total) => total.f_double_value(&[])?.sqrt(),
            None => 0.0,
        };
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for p in &self.params {
                let mut grad = p.value.grad();
                if grad.defined() {
                    let _ = grad.f_mul_scalar_(scale)?;
                }
            }
        }
        Ok(norm)
    }

    /// One update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) -> Result<(), TchError> {
        self.step += 1;
        let c = self.config;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2 = 1.0 - c.beta2.powi(self.step as i32);
        tch::no_grad(|| -> Result<(), TchError> {
            for p in &mut self.params {
                let grad = p.value.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = grad.f_to_kind(Kind::Float)?;
                let mut weight = p
                    .master
                    .as_ref()
                    .map_or_else(|| p.value.shallow_clone(), Tensor::shallow_clone);
                if p.decay && c.weight_decay > 0.0 {
                    let _ = weight.f_mul_scalar_(1.0 - lr * c.weight_decay)?;
                }
                let _ = p
                    .exp_avg
                    .f_mul_scalar_(c.beta1)?
                    .f_add_(&grad.f_mul_scalar(1.0 - c.beta1)?)?;
                let _ = p
                    .exp_avg_sq
                    .f_mul_scalar_(c.beta2)?
                    .f_add_(&grad.f_square()?.f_mul_scalar(1.0 - c.beta2)?)?;
                let denom = p
                    .exp_avg_sq
                    .f_div_scalar(bias2)?
                    .f_sqrt()?
                    .f_add_scalar(c.eps)?;
                let update = p.exp_avg.f_div(&denom)?.f_mul_scalar(lr / bias1)?;
                let _ = weight.f_sub_(&update)?;
                if p.master.is_some() {
                    p.value.f_copy_(&weight)?;
                }
            }
            Ok(())
        })
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
            opt.zero_grad();
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
            opt.zero_grad();
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
            opt.zero_grad();
            w.square().sum(Kind::Float).backward();
            opt.step(0.1).unwrap();
        }
        assert!(a.equal(&b));
    }
}
