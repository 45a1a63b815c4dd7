//! Tensor-name tables from original (Wan-AI / ComfyUI) checkpoints to diffusers names.
//!
//! Applied once at the loading boundary so model code only knows diffusers keys.

/// Prefix of ComfyUI single-file checkpoints, stripped like diffusers' single-file loader does.
const COMFY_PREFIX: &str = "model.diffusion_model.";

/// diffusers `scripts/convert_wan_to_diffusers.py` `TRANSFORMER_KEYS_RENAME_DICT`: substring
/// replacements applied in this order (later entries see the output of earlier ones).
const TRANSFORMER_RENAMES: &[(&str, &str)] = &[
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    // original order is norm1, norm3 (affine, cross-attn), norm2 (FFN); diffusers numbers them in use order
    ("norm2", "norm__placeholder"),
    ("norm3", "norm2"),
    ("norm__placeholder", "norm3"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
    ("self_attn.q", "attn1.to_q"),
    ("self_attn.k", "attn1.to_k"),
    ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("self_attn.norm_q", "attn1.norm_q"),
    ("self_attn.norm_k", "attn1.norm_k"),
    ("cross_attn.q", "attn2.to_q"),
    ("cross_attn.k", "attn2.to_k"),
    ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("cross_attn.norm_q", "attn2.norm_q"),
    ("cross_attn.norm_k", "attn2.norm_k"),
    ("attn2.to_k_img", "attn2.add_k_proj"),
    ("attn2.to_v_img", "attn2.add_v_proj"),
    ("attn2.norm_k_img", "attn2.norm_added_k"),
];

/// Maps an original Wan2.1 transformer tensor name (optionally `model.diffusion_model.`-prefixed)
/// to its diffusers `WanTransformer3DModel` name. Only for original names: diffusers names are
/// not fixed points (their `norm2`/`norm3` would be swapped).
pub fn original_to_diffusers_transformer(key: &str) -> String {
    let mut name = key.replace(COMFY_PREFIX, "");
    for (from, to) in TRANSFORMER_RENAMES {
        name = name.replace(from, to);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::original_to_diffusers_transformer as rename;

    #[test]
    fn embedders_and_head() {
        let cases = [
            ("patch_embedding.weight", "patch_embedding.weight"),
            ("time_embedding.0.weight", "condition_embedder.time_embedder.linear_1.weight"),
            ("time_embedding.2.bias", "condition_embedder.time_embedder.linear_2.bias"),
            ("text_embedding.0.weight", "condition_embedder.text_embedder.linear_1.weight"),
            ("text_embedding.2.bias", "condition_embedder.text_embedder.linear_2.bias"),
            ("time_projection.1.weight", "condition_embedder.time_proj.weight"),
            ("head.modulation", "scale_shift_table"),
            ("head.head.weight", "proj_out.weight"),
            ("head.head.bias", "proj_out.bias"),
        ];
        for (from, want) in cases {
            assert_eq!(rename(from), want, "{from}");
        }
    }

    #[test]
    fn block_keys_and_norm_swap() {
        let cases = [
            ("blocks.0.modulation", "blocks.0.scale_shift_table"),
            ("blocks.3.self_attn.q.weight", "blocks.3.attn1.to_q.weight"),
            ("blocks.3.self_attn.k.bias", "blocks.3.attn1.to_k.bias"),
            ("blocks.3.self_attn.v.weight", "blocks.3.attn1.to_v.weight"),
            ("blocks.3.self_attn.o.weight", "blocks.3.attn1.to_out.0.weight"),
            ("blocks.3.self_attn.norm_q.weight", "blocks.3.attn1.norm_q.weight"),
            ("blocks.3.self_attn.norm_k.weight", "blocks.3.attn1.norm_k.weight"),
            ("blocks.29.cross_attn.q.weight", "blocks.29.attn2.to_q.weight"),
            ("blocks.29.cross_attn.o.bias", "blocks.29.attn2.to_out.0.bias"),
            ("blocks.29.cross_attn.norm_k.weight", "blocks.29.attn2.norm_k.weight"),
            // the affine cross-attention norm is norm3 in the original, norm2 in diffusers
            ("blocks.7.norm3.weight", "blocks.7.norm2.weight"),
            ("blocks.7.norm3.bias", "blocks.7.norm2.bias"),
            ("blocks.7.norm2.weight", "blocks.7.norm3.weight"),
            ("blocks.7.ffn.0.weight", "blocks.7.ffn.net.0.proj.weight"),
            ("blocks.7.ffn.2.bias", "blocks.7.ffn.net.2.bias"),
        ];
        for (from, want) in cases {
            assert_eq!(rename(from), want, "{from}");
        }
    }

    #[test]
    fn i2v_keys() {
        let cases = [
            ("blocks.0.cross_attn.k_img.weight", "blocks.0.attn2.add_k_proj.weight"),
            ("blocks.0.cross_attn.v_img.bias", "blocks.0.attn2.add_v_proj.bias"),
            ("blocks.0.cross_attn.norm_k_img.weight", "blocks.0.attn2.norm_added_k.weight"),
            ("img_emb.proj.0.weight", "condition_embedder.image_embedder.norm1.weight"),
            ("img_emb.proj.1.weight", "condition_embedder.image_embedder.ff.net.0.proj.weight"),
            ("img_emb.proj.3.bias", "condition_embedder.image_embedder.ff.net.2.bias"),
            ("img_emb.proj.4.bias", "condition_embedder.image_embedder.norm2.bias"),
            ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
        ];
        for (from, want) in cases {
            assert_eq!(rename(from), want, "{from}");
        }
    }

    #[test]
    fn comfy_prefix_is_stripped() {
        assert_eq!(rename("model.diffusion_model.blocks.1.norm3.weight"), "blocks.1.norm2.weight");
        assert_eq!(rename("model.diffusion_model.head.modulation"), "scale_shift_table");
    }
}
