//! The checkpoint's tensor names translated to graft's: the image tower to timm's ViT names
//! (what [`Vit::visit_keys`](crate::backbone::vit::Vit::visit_keys) reads in its timm layout),
//! the text tower to the same block names under its own embedding names. timm does the same
//! when it loads these weights (`_convert_openai_clip`, `_convert_siglip`): q, k and v
//! projections stacked into one, OpenCLIP's `x @ W` projections transposed to PyTorch's Linear
//! convention, a class embedding reshaped to a token.

use std::collections::BTreeMap;

use crate::weights::{Checkpoint, StoredTensor};

use super::config::Layout;

/// One checkpoint split into its parts, under graft's names.
pub struct Translated {
    pub vision: Checkpoint,
    pub text: Checkpoint,
    /// `logit_scale` (a log), `logit_bias` (SigLIP), as stored.
    pub scalars: BTreeMap<String, f32>,
}

enum Tower {
    Vision,
    Text,
}

/// Block-internal names: transformers' (`layer_norm1`, `self_attn.out_proj`, `mlp.fc1`) and
/// OpenCLIP's (`ln_1`, `attn.out_proj`, `mlp.c_fc`) to timm's.
fn block_part(rest: &str) -> Option<String> {
    const RENAMES: &[(&str, &str)] = &[
        ("layer_norm1.", "norm1."),
        ("layer_norm2.", "norm2."),
        ("self_attn.out_proj.", "attn.proj."),
        ("mlp.fc1.", "mlp.fc1."),
        ("mlp.fc2.", "mlp.fc2."),
        ("ln_1.", "norm1."),
        ("ln_2.", "norm2."),
        ("attn.out_proj.", "attn.proj."),
        ("attn.in_proj_weight", "attn.qkv.weight"),
        ("attn.in_proj_bias", "attn.qkv.bias"),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ];
    RENAMES
        .iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|tail| format!("{to}{tail}")))
}

/// `(tower, graft name)` of a transformers key, or the pieces of a q / k / v projection
/// (`blocks.N.attn.qkv.weight`, index 0..3) to be stacked.
fn transformers_name(key: &str) -> Option<(Tower, String, Option<usize>)> {
    let (tower, rest) = if let Some(rest) = key.strip_prefix("vision_model.") {
        (Tower::Vision, rest)
    } else if let Some(rest) = key.strip_prefix("text_model.") {
        (Tower::Text, rest)
    } else {
        return match key {
            "visual_projection.weight" => Some((Tower::Vision, "proj.weight".into(), None)),
            "text_projection.weight" => Some((Tower::Text, "proj.weight".into(), None)),
            _ => None,
        };
    };
    if let Some(layer) = rest.strip_prefix("encoder.layers.") {
        let (n, part) = layer.split_once('.')?;
        for (i, qkv) in ["q_proj.", "k_proj.", "v_proj."].iter().enumerate() {
            if let Some(tail) = part
                .strip_prefix("self_attn.")
                .and_then(|p| p.strip_prefix(qkv))
            {
                return Some((tower, format!("blocks.{n}.attn.qkv.{tail}"), Some(i)));
            }
        }
        return Some((tower, format!("blocks.{n}.{}", block_part(part)?), None));
    }
    let name = match (&tower, rest) {
        (Tower::Vision, "embeddings.patch_embedding.weight") => "patch_embed.proj.weight",
        (Tower::Vision, "embeddings.patch_embedding.bias") => "patch_embed.proj.bias",
        (Tower::Vision, "embeddings.class_embedding") => "cls_token",
        (Tower::Vision, "embeddings.position_embedding.weight") => "pos_embed",
        (Tower::Vision, "pre_layrnorm.weight") => "norm_pre.weight",
        (Tower::Vision, "pre_layrnorm.bias") => "norm_pre.bias",
        (Tower::Vision, "post_layernorm.weight") => "norm.weight",
        (Tower::Vision, "post_layernorm.bias") => "norm.bias",
        (Tower::Vision, "head.probe") => "attn_pool.latent",
        (Tower::Vision, "head.attention.in_proj_weight") => "attn_pool.in_proj.weight",
        (Tower::Vision, "head.attention.in_proj_bias") => "attn_pool.in_proj.bias",
        (Tower::Vision, "head.attention.out_proj.weight") => "attn_pool.proj.weight",
        (Tower::Vision, "head.attention.out_proj.bias") => "attn_pool.proj.bias",
        (Tower::Vision, "head.layernorm.weight") => "attn_pool.norm.weight",
        (Tower::Vision, "head.layernorm.bias") => "attn_pool.norm.bias",
        (Tower::Vision, "head.mlp.fc1.weight") => "attn_pool.mlp.fc1.weight",
        (Tower::Vision, "head.mlp.fc1.bias") => "attn_pool.mlp.fc1.bias",
        (Tower::Vision, "head.mlp.fc2.weight") => "attn_pool.mlp.fc2.weight",
        (Tower::Vision, "head.mlp.fc2.bias") => "attn_pool.mlp.fc2.bias",
        (Tower::Text, "embeddings.token_embedding.weight") => "token_embedding",
        (Tower::Text, "embeddings.position_embedding.weight") => "pos_embed",
        (Tower::Text, "final_layer_norm.weight") => "norm.weight",
        (Tower::Text, "final_layer_norm.bias") => "norm.bias",
        (Tower::Text, "head.weight") => "proj.weight",
        (Tower::Text, "head.bias") => "proj.bias",
        _ => return None,
    };
    Some((tower, name.into(), None))
}

/// `(tower, graft name, transpose)` of an OpenCLIP key.
fn open_clip_name(key: &str) -> Option<(Tower, String, bool)> {
    let (tower, rest) = match key.strip_prefix("visual.") {
        Some(rest) => (Tower::Vision, rest),
        None => (Tower::Text, key),
    };
    if let Some(block) = rest.strip_prefix("transformer.resblocks.") {
        let (n, part) = block.split_once('.')?;
        return Some((tower, format!("blocks.{n}.{}", block_part(part)?), false));
    }
    let (name, transpose) = match (&tower, rest) {
        (Tower::Vision, "conv1.weight") => ("patch_embed.proj.weight", false),
        (Tower::Vision, "class_embedding") => ("cls_token", false),
        (Tower::Vision, "positional_embedding") => ("pos_embed", false),
        (Tower::Vision, "ln_pre.weight") => ("norm_pre.weight", false),
        (Tower::Vision, "ln_pre.bias") => ("norm_pre.bias", false),
        (Tower::Vision, "ln_post.weight") => ("norm.weight", false),
        (Tower::Vision, "ln_post.bias") => ("norm.bias", false),
        (Tower::Vision, "proj") => ("proj.weight", true),
        (Tower::Text, "token_embedding.weight") => ("token_embedding", false),
        (Tower::Text, "positional_embedding") => ("pos_embed", false),
        (Tower::Text, "ln_final.weight") => ("norm.weight", false),
        (Tower::Text, "ln_final.bias") => ("norm.bias", false),
        (Tower::Text, "text_projection") => ("proj.weight", true),
        _ => return None,
    };
    Some((tower, name.into(), transpose))
}

fn transposed(t: StoredTensor) -> StoredTensor {
    let [rows, cols] = t.shape[..] else {
        return t;
    };
    let values = t.values.map(|v| {
        let mut out = vec![0.0; v.len()];
        for r in 0..rows {
            for c in 0..cols {
                out[c * rows + r] = v[r * cols + c];
            }
        }
        out
    });
    StoredTensor {
        shape: vec![cols, rows],
        values,
    }
}

/// Rows `from..to` of a `[rows, ...]` tensor.
fn rows(t: &StoredTensor, from: usize, to: usize) -> StoredTensor {
    let per: usize = t.shape[1..].iter().product();
    let mut shape = t.shape.clone();
    shape[0] = to - from;
    StoredTensor {
        shape,
        values: t.values.as_ref().map(|v| v[from * per..to * per].to_vec()),
    }
}

/// Translate `checkpoint` (in `layout`'s names) to graft's. Keys graft does not know stay
/// under their own names in the vision part, where the loader reports them as unexpected.
pub fn translate(checkpoint: Checkpoint, layout: Layout) -> Translated {
    let mut vision = BTreeMap::new();
    let mut text = BTreeMap::new();
    let mut scalars = BTreeMap::new();
    // q, k, v pieces by (tower is text, graft name), stacked once all three are in.
    let mut pieces: BTreeMap<(bool, String), [Option<StoredTensor>; 3]> = BTreeMap::new();
    for (key, t) in checkpoint.tensors {
        if matches!(key.as_str(), "logit_scale" | "logit_bias") {
            if let Some(v) = t.values.as_ref().and_then(|v| v.first()) {
                scalars.insert(key, *v);
            }
            continue;
        }
        // transformers' old checkpoints carry integer `position_ids` buffers; OpenCLIP's an
        // `attn_mask`: neither is a weight.
        if key.ends_with("position_ids") || key == "attn_mask" {
            continue;
        }
        let translated = match layout {
            Layout::Transformers => {
                transformers_name(&key).map(|(tower, name, qkv)| (tower, name, qkv, false))
            }
            Layout::OpenClip => {
                open_clip_name(&key).map(|(tower, name, tr)| (tower, name, None, tr))
            }
        };
        let Some((tower, name, qkv, transpose)) = translated else {
            vision.insert(key, t);
            continue;
        };
        let t = if transpose { transposed(t) } else { t };
        let t = match name.as_str() {
            // `[dim]` to a `[1, 1, dim]` token; `[L, dim]` to `[1, L, dim]`.
            "cls_token" => StoredTensor {
                shape: vec![1, 1, t.shape.iter().product()],
                values: t.values,
            },
            "pos_embed" if matches!(tower, Tower::Vision) => StoredTensor {
                shape: std::iter::once(1).chain(t.shape.iter().copied()).collect(),
                values: t.values,
            },
            _ => t,
        };
        let target = match tower {
            Tower::Vision => &mut vision,
            Tower::Text => &mut text,
        };
        match qkv {
            None if name.starts_with("attn_pool.in_proj.") => {
                // SigLIP's pooling attention: the query row block apart from keys and values.
                let d = t.shape[0] / 3;
                let tail = &name["attn_pool.in_proj.".len()..];
                target.insert(format!("attn_pool.q.{tail}"), rows(&t, 0, d));
                target.insert(format!("attn_pool.kv.{tail}"), rows(&t, d, 3 * d));
            }
            None => {
                target.insert(name, t);
            }
            Some(i) => {
                let is_text = matches!(tower, Tower::Text);
                let slot = pieces.entry((is_text, name)).or_default();
                slot[i] = Some(t);
            }
        }
    }
    for ((is_text, name), parts) in pieces {
        let target = if is_text { &mut text } else { &mut vision };
        // One of the three missing: left out, so the loader reports the key as missing.
        if let [Some(q), Some(k), Some(v)] = parts {
            let mut shape = q.shape.clone();
            shape[0] += k.shape[0] + v.shape[0];
            let values = match (q.values, k.values, v.values) {
                (Some(q), Some(k), Some(v)) => Some([q, k, v].concat()),
                _ => None,
            };
            target.insert(name, StoredTensor { shape, values });
        }
    }
    let part = |tensors| Checkpoint {
        path: checkpoint.path.clone(),
        format: checkpoint.format,
        tensors,
    };
    Translated {
        vision: part(vision),
        text: part(text),
        scalars,
    }
}
