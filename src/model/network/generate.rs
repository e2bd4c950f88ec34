//! Greedy decoding with a key/value cache, as transformers' `generate`
//! does it for `PaliGemma` (docs/model-reference.md §7):
//!
//! 1. prefill: one pass over the prompts (images, `<bos>`, prompt, `\n`;
//!    token type 0, so the prompt is one bidirectional block), storing every
//!    layer's keys (after `RoPE`) and values;
//! 2. decode: one token per step at the next position, token type 1 (plain
//!    causal attention over the cache; sliding layers hide keys at sequence
//!    index ≤ q − window), appending to the cache.
//!
//! Prompts are left-padded: positions are `cumsum(attention_mask)` so every
//! row starts at 1, and padding keys stay hidden. A row that emitted an
//! end-of-sequence id is finished: it is fed the pad id from then on and its
//! output is not extended.

use tch::{Kind, Tensor};

use crate::model::network::gemma2::AttentionMasks;
use crate::model::network::paligemma::{ModelError, PaliGemma};
use crate::model::preprocess::input::ModelInput;

/// Greedy generation of up to `max_new_tokens` ids per prompt row. Stops a
/// row at the first id in `eos_ids` (not included in its output) and the
/// batch when every row stopped. Returns only the new ids of each row.
pub fn generate(
    model: &PaliGemma,
    input: &ModelInput,
    max_new_tokens: usize,
    eos_ids: &[i64],
    pad_id: i64,
) -> Result<Vec<Vec<i64>>, ModelError> {
    // Decoding runs in evaluation mode (no `LoRA` dropout), whatever mode
    // the caller (a training loop) left the model in.
    let training = model.is_training();
    model.set_training(false);
    let out = tch::no_grad(|| generate_inner(model, input, max_new_tokens, eos_ids, pad_id));
    model.set_training(training);
    out
}

fn generate_inner(
    model: &PaliGemma,
    input: &ModelInput,
    max_new_tokens: usize,
    eos_ids: &[i64],
    pad_id: i64,
) -> Result<Vec<Vec<i64>>, ModelError> {
    let size = input.input_ids.size();
    let [batch, prompt_len] = size[..] else {
        return Err(ModelError::Input(format!(
            "input_ids must be [B, L], got {size:?}"
        )));
    };
    let rows = batch as usize;
    let mut outputs = vec![Vec::new(); rows];
    if max_new_tokens == 0 || rows == 0 {
        return Ok(outputs);
    }
    if prompt_len == 0 {
        return Err(ModelError::Input("empty prompts".into()));
    }
    // The next token of every row is predicted at the last column, so
    // prompts must end there: left padding.
    let last_real = input
        .attention_mask
        .f_select(1, prompt_len - 1)?
        .f_ne(0)?
        .f_all()?
        .int64_value(&[]);
    if last_real == 0 {
        return Err(ModelError::Input(
            "generation needs left-padded prompts (attention_mask must end in 1 on every row)"
                .into(),
        ));
    }
    let device = input.input_ids.device();
    let lm = model.language_model();
    let new_tokens = i64::try_from(max_new_tokens)
        .map_err(|_| ModelError::Input(format!("max_new_tokens {max_new_tokens} is too large")))?;
    let capacity = prompt_len + new_tokens;
    let mut cache = lm.new_cache(batch, capacity)?;

    // Prefill.
    let hidden = model.hidden_states(input, Some(&mut cache))?;
    let mut logits = lm.logits(&hidden.f_select(1, prompt_len - 1)?)?;

    // Every key's mask for the whole run: the prompt's, then ones.
    let key_mask = Tensor::f_cat(
        &[
            input.attention_mask.f_to_kind(Kind::Int64)?,
            Tensor::f_ones([batch, new_tokens], (Kind::Int64, device))?,
        ],
        1,
    )?;
    // Position of the last prompt token of each row = its real length.
    let mut positions = input
        .attention_mask
        .f_ne(0)?
        .f_sum_dim_intlist(1, true, Kind::Int64)?;

    let mut finished = vec![false; rows];
    for step in 0..new_tokens {
        let next = Vec::<i64>::try_from(&logits.f_argmax(-1, false)?)?;
        let mut feed = Vec::with_capacity(rows);
        for (row, &id) in next.iter().enumerate() {
            if finished[row] {
                feed.push(pad_id);
            } else if eos_ids.contains(&id) {
                finished[row] = true;
                feed.push(id);
            } else {
                outputs[row].push(id);
                feed.push(id);
            }
        }
        if step + 1 == new_tokens || finished.iter().all(|&f| f) {
            break;
        }
        // Decode one token per row at sequence index prompt_len + step.
        let index = cache.len();
        let ids = Tensor::f_from_slice(&feed)?
            .f_view([batch, 1])?
            .f_to_device(device)?;
        positions = positions.f_add_scalar(1)?;
        let embeds = lm.embed(&ids)?;
        let masks = AttentionMasks::new(
            &key_mask.f_narrow(1, 0, index + 1)?,
            None,
            index,
            1,
            lm.sliding_window(),
            model.kind(),
        )?;
        let hidden = lm.forward_embeds(&embeds, &positions, &masks, Some(&mut cache), None)?;
        logits = lm.logits(&hidden.f_select(1, 0)?)?;
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::network::paligemma::test_util::{
        batch, golden_dir, golden_input, golden_valid_pixels, golden_values, random_checkpoint,
    };
    use tch::Device;

    /// Greedy decoding by re-running the whole sequence each step (no
    /// cache): prompt with token type 0, generated tokens type 1.
    fn uncached(model: &PaliGemma, prompt: &ModelInput, steps: usize, eos: i64) -> Vec<i64> {
        let mut ids = prompt.input_ids.shallow_clone();
        let mut tt = prompt.token_type_ids.shallow_clone();
        let mut mask = prompt.attention_mask.shallow_clone();
        let mut out = Vec::new();
        for _ in 0..steps {
            let input = ModelInput {
                input_ids: ids.shallow_clone(),
                attention_mask: mask.shallow_clone(),
                token_type_ids: tt.shallow_clone(),
                labels: None,
                pixel_values: prompt.pixel_values.shallow_clone(),
            };
            let logits = tch::no_grad(|| model.forward(&input)).unwrap();
            let next = logits.get(0).get(-1).argmax(-1, false).int64_value(&[]);
            if next == eos {
                break;
            }
            out.push(next);
            let one = Tensor::from_slice(&[1i64]).view([1, 1]);
            ids = Tensor::cat(&[ids, Tensor::from_slice(&[next]).view([1, 1])], 1);
            tt = Tensor::cat(&[&tt, &one], 1);
            mask = Tensor::cat(&[&mask, &one], 1);
        }
        out
    }

    /// The prompt part of a tiny batch row (type-0 tokens only).
    fn prompt_of(input: &ModelInput, row: i64) -> ModelInput {
        let real = input
            .token_type_ids
            .get(row)
            .eq(0)
            .logical_and(&input.attention_mask.get(row).ne(0))
            .sum(Kind::Int64)
            .int64_value(&[]);
        ModelInput {
            input_ids: input.input_ids.narrow(0, row, 1).narrow(1, 0, real),
            attention_mask: input.attention_mask.narrow(0, row, 1).narrow(1, 0, real),
            token_type_ids: input.token_type_ids.narrow(0, row, 1).narrow(1, 0, real),
            labels: None,
            pixel_values: input.pixel_values.narrow(0, row, 1),
        }
    }

    #[test]
    fn cached_decoding_equals_rerunning_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = random_checkpoint(dir.path(), 23);
        let model = PaliGemma::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        // 16 image tokens + 12 prompt tokens + 10 new > window 16.
        let input = batch(&cfg, &[(10, 1)], 4);
        let prompt = prompt_of(&input, 0);
        let cached = generate(&model, &prompt, 10, &[], 0).unwrap();
        assert_eq!(cached[0].len(), 10);
        assert_eq!(cached[0], uncached(&model, &prompt, 10, -1));
    }

    #[test]
    fn left_padded_batch_equals_each_row_alone() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = random_checkpoint(dir.path(), 29);
        let model = PaliGemma::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        let input = batch(&cfg, &[(2, 1), (9, 1)], 8);
        let (short, long) = (prompt_of(&input, 0), prompt_of(&input, 1));
        let (ls, ll) = (short.input_ids.size()[1], long.input_ids.size()[1]);
        let pad = ll - ls;
        let left = |t: &Tensor| {
            Tensor::cat(
                &[
                    Tensor::zeros([1, pad], (Kind::Int64, Device::Cpu)),
                    t.shallow_clone(),
                ],
                1,
            )
        };
        let both = ModelInput {
            input_ids: Tensor::cat(&[left(&short.input_ids), long.input_ids.shallow_clone()], 0),
            attention_mask: Tensor::cat(
                &[
                    left(&short.attention_mask),
                    long.attention_mask.shallow_clone(),
                ],
                0,
            ),
            token_type_ids: Tensor::cat(
                &[
                    left(&short.token_type_ids),
                    long.token_type_ids.shallow_clone(),
                ],
                0,
            ),
            labels: None,
            pixel_values: Tensor::cat(&[&short.pixel_values, &long.pixel_values], 0),
        };
        let together = generate(&model, &both, 8, &[], 0).unwrap();
        let alone_short = generate(&model, &short, 8, &[], 0).unwrap();
        let alone_long = generate(&model, &long, 8, &[], 0).unwrap();
        assert_eq!(together, [alone_short[0].clone(), alone_long[0].clone()]);

        // A row that hits eos stops, the other goes on.
        let eos = together[0][2];
        let stopped = generate(&model, &both, 8, &[eos], 0).unwrap();
        let cut = together[0].iter().position(|&t| t == eos).unwrap();
        assert_eq!(stopped[0], together[0][..cut]);
        if let Some(p) = together[1].iter().position(|&t| t == eos) {
            assert_eq!(stopped[1], together[1][..p]);
        } else {
            assert_eq!(stopped[1], together[1]);
        }

        // Right padding is refused.
        let err = generate(&model, &batch(&cfg, &[(2, 1), (5, 1)], 1), 3, &[], 0).unwrap_err();
        assert!(matches!(err, ModelError::Input(_)), "{err}");
        assert_eq!(
            generate(&model, &both, 0, &[], 0).unwrap(),
            [Vec::<i64>::new(), Vec::new()]
        );
    }

    fn golden_generation(case: &str) -> (ModelInput, Vec<Vec<i64>>, i64) {
        let g = &golden_values()["generation"];
        let record = &g[case];
        let images: Vec<&serde_json::Value> = record["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| golden_valid_pixels(n.as_str().unwrap()))
            .collect();
        let eos = g["eos_token_id"].as_i64().unwrap();
        let expected = record["new_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .filter(|&x| x != eos)
                    .collect()
            })
            .collect();
        (golden_input(record, &images), expected, eos)
    }

    #[test]
    fn golden_generation_ids_match() {
        let model = PaliGemma::load(
            &golden_dir().join("checkpoints/f32"),
            Device::Cpu,
            Kind::Float,
        )
        .unwrap();
        let max_new = golden_values()["generation"]["max_new_tokens"]
            .as_u64()
            .unwrap() as usize;
        for case in ["single", "batch"] {
            let (input, expected, eos) = golden_generation(case);
            let ids = generate(&model, &input, max_new, &[eos], 0).unwrap();
            assert_eq!(ids, expected, "{case}");
        }
    }
}
