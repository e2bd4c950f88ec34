//! The tensors a `PaliGemma` checkpoint holds, named and shaped from its
//! config alone: what the tiny checkpoints are written with, and what the
//! trainable-parameter counts are summed over.

use crate::model::config::PaliGemmaConfig;

/// Every tensor of a `PaliGemma` checkpoint (internal names) with its shape,
/// from the config alone (the tied head excluded).
#[allow(clippy::many_single_char_names)] // the usual dimension names
pub fn tensor_shapes(cfg: &PaliGemmaConfig) -> Vec<(String, Vec<i64>)> {
    let v = &cfg.vision_config;
    let t = &cfg.text_config;
    let (vh, vi) = (i64::from(v.hidden_size), i64::from(v.intermediate_size));
    let (p, c) = (i64::from(v.patch_size), i64::from(v.num_channels));
    let n = i64::from(cfg.num_image_tokens());
    let (h, i) = (i64::from(t.hidden_size), i64::from(t.intermediate_size));
    let (q, kv) = (
        i64::from(t.num_attention_heads * t.head_dim),
        i64::from(t.num_key_value_heads * t.head_dim),
    );
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<i64>| out.push((name, shape));
    let vp = "vision_tower.vision_model";
    add(
        format!("{vp}.embeddings.patch_embedding.weight"),
        vec![vh, c, p, p],
    );
    add(format!("{vp}.embeddings.patch_embedding.bias"), vec![vh]);
    add(
        format!("{vp}.embeddings.position_embedding.weight"),
        vec![n, vh],
    );
    for layer in 0..v.num_hidden_layers {
        let lp = format!("{vp}.encoder.layers.{layer}");
        for ln in ["layer_norm1", "layer_norm2"] {
            add(format!("{lp}.{ln}.weight"), vec![vh]);
            add(format!("{lp}.{ln}.bias"), vec![vh]);
        }
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{lp}.self_attn.{proj}.weight"), vec![vh, vh]);
            add(format!("{lp}.self_attn.{proj}.bias"), vec![vh]);
        }
        add(format!("{lp}.mlp.fc1.weight"), vec![vi, vh]);
        add(format!("{lp}.mlp.fc1.bias"), vec![vi]);
        add(format!("{lp}.mlp.fc2.weight"), vec![vh, vi]);
        add(format!("{lp}.mlp.fc2.bias"), vec![vh]);
    }
    add(format!("{vp}.post_layernorm.weight"), vec![vh]);
    add(format!("{vp}.post_layernorm.bias"), vec![vh]);
    let proj = i64::from(cfg.projection_dim);
    add("multi_modal_projector.linear.weight".into(), vec![proj, vh]);
    add("multi_modal_projector.linear.bias".into(), vec![proj]);
    let lm = "language_model.model";
    add(
        format!("{lm}.embed_tokens.weight"),
        vec![i64::from(t.vocab_size), h],
    );
    for layer in 0..t.num_hidden_layers {
        let lp = format!("{lm}.layers.{layer}");
        let attn = [
            ("q_proj", vec![q, h], q),
            ("k_proj", vec![kv, h], kv),
            ("v_proj", vec![kv, h], kv),
            ("o_proj", vec![h, q], h),
        ];
        for (proj, shape, out_features) in attn {
            add(format!("{lp}.self_attn.{proj}.weight"), shape);
            if t.attention_bias {
                add(format!("{lp}.self_attn.{proj}.bias"), vec![out_features]);
            }
        }
        add(format!("{lp}.mlp.gate_proj.weight"), vec![i, h]);
        add(format!("{lp}.mlp.up_proj.weight"), vec![i, h]);
        add(format!("{lp}.mlp.down_proj.weight"), vec![h, i]);
        for norm in [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ] {
            add(format!("{lp}.{norm}.weight"), vec![h]);
        }
    }
    add(format!("{lm}.norm.weight"), vec![h]);
    out
}
