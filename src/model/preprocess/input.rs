//! The tensors one forward pass takes, as `PaliGemmaProcessor` builds them.

use tch::Tensor;

/// A batch laid out as transformers' processor lays it out: per row,
/// `<image>`×N, `<bos>`, prompt, `"\n"` (token type 0), then for training
/// `suffix <eos>` (token type 1), then padding (token type 0, mask 0).
#[derive(Debug)]
pub struct ModelInput {
    /// `[B, L]` int64 token ids.
    pub input_ids: Tensor,
    /// `[B, L]` int64, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor,
    /// `[B, L]` int64, 0 for the prefix (and padding), 1 for the suffix.
    pub token_type_ids: Tensor,
    /// `[B, L]` int64 targets, −100 wherever the token type is 0; `None` for
    /// prompts (generation).
    pub labels: Option<Tensor>,
    /// `[B, 3, S, S]` float, normalised to [−1, 1].
    pub pixel_values: Tensor,
}

impl ModelInput {
    /// Moves every tensor to a device (pixel values also to a dtype).
    #[must_use]
    pub fn to(&self, device: tch::Device, pixel_dtype: tch::Kind) -> ModelInput {
        ModelInput {
            input_ids: self.input_ids.to_device(device),
            attention_mask: self.attention_mask.to_device(device),
            token_type_ids: self.token_type_ids.to_device(device),
            labels: self.labels.as_ref().map(|l| l.to_device(device)),
            pixel_values: self.pixel_values.to_device(device).to_kind(pixel_dtype),
        }
    }
}
