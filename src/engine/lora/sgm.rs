//! The original Stable Diffusion (SGM/LDM) UNet block names kohya's SDXL LoRAs use (`input_blocks_4_1_…`), mapped
//! onto diffusers' (`down_blocks_1_attentions_0_…`) from the UNet's block layout, as diffusers'
//! `_maybe_map_sgm_blocks_to_diffusers` does.

use serde_json::Value;

/// The block layout of a UNet, from its `config.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnetLayout {
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: usize,
    /// Whether each down block has attentions.
    pub down_attention: Vec<bool>,
    /// Whether each up block has attentions.
    pub up_attention: Vec<bool>,
}

impl UnetLayout {
    /// Reads `layers_per_block`, `down_block_types` and `up_block_types` from a diffusers UNet config.
    pub fn from_config(config: &Value) -> Option<Self> {
        let types = |key: &str| -> Option<Vec<bool>> {
            config
                .get(key)?
                .as_array()?
                .iter()
                .map(|t| t.as_str().map(|t| t.contains("Attn")))
                .collect()
        };
        Some(Self {
            layers_per_block: usize::try_from(config.get("layers_per_block")?.as_u64()?).ok()?,
            down_attention: types("down_block_types")?,
            up_attention: types("up_block_types")?,
        })
    }
}

/// A resnet's inner layer in SGM names → diffusers names.
fn resnet_layer(rest: &str) -> Option<String> {
    for (sgm, diffusers) in [
        ("in_layers_2", "conv1"),
        ("out_layers_3", "conv2"),
        ("emb_layers_1", "time_emb_proj"),
        ("skip_connection", "conv_shortcut"),
    ] {
        if rest == sgm {
            return Some(diffusers.to_string());
        }
    }
    None
}

/// Splits `{n}_{m}_{rest}` (rest may be empty).
fn two_indices(s: &str) -> Option<(usize, usize, &str)> {
    let (n, s) = s.split_once('_')?;
    let (m, rest) = s.split_once('_').unwrap_or((s, ""));
    Some((n.parse().ok()?, m.parse().ok()?, rest))
}

/// The diffusers name (underscored) of an SGM-named underscored UNet module, or `None` when it is not one.
pub fn to_diffusers(module: &str, layout: &UnetLayout) -> Option<String> {
    let l = layout.layers_per_block;
    if let Some(s) = module.strip_prefix("input_blocks_") {
        let (n, m, rest) = two_indices(s)?;
        if n == 0 {
            return (m == 0 && rest.is_empty()).then(|| "conv_in".to_string());
        }
        let (block, layer) = ((n - 1) / (l + 1), (n - 1) % (l + 1));
        if block >= layout.down_attention.len() {
            return None;
        }
        return match (layer == l, m) {
            (true, 0) if rest == "op" => Some(format!("down_blocks_{block}_downsamplers_0_conv")),
            (false, 0) => Some(format!(
                "down_blocks_{block}_resnets_{layer}_{}",
                resnet_layer(rest)?
            )),
            (false, 1) if layout.down_attention[block] => {
                Some(format!("down_blocks_{block}_attentions_{layer}_{rest}"))
            }
            _ => None,
        };
    }
    if let Some(s) = module.strip_prefix("middle_block_") {
        let (m, rest) = s.split_once('_')?;
        return match m.parse::<usize>().ok()? {
            0 => Some(format!("mid_block_resnets_0_{}", resnet_layer(rest)?)),
            1 => Some(format!("mid_block_attentions_0_{rest}")),
            2 => Some(format!("mid_block_resnets_1_{}", resnet_layer(rest)?)),
            _ => None,
        };
    }
    if let Some(s) = module.strip_prefix("output_blocks_") {
        let (n, m, rest) = two_indices(s)?;
        let (block, layer) = (n / (l + 1), n % (l + 1));
        let attention = *layout.up_attention.get(block)?;
        return match m {
            0 => Some(format!(
                "up_blocks_{block}_resnets_{layer}_{}",
                resnet_layer(rest)?
            )),
            1 if attention => Some(format!("up_blocks_{block}_attentions_{layer}_{rest}")),
            1 | 2 if layer == l && rest == "conv" => {
                Some(format!("up_blocks_{block}_upsamplers_0_conv"))
            }
            _ => None,
        };
    }
    let fixed = match module {
        "time_embed_0" => "time_embedding_linear_1",
        "time_embed_2" => "time_embedding_linear_2",
        "label_emb_0_0" => "add_embedding_linear_1",
        "label_emb_0_2" => "add_embedding_linear_2",
        "out_2" => "conv_out",
        _ => return None,
    };
    Some(fixed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdxl() -> UnetLayout {
        UnetLayout {
            layers_per_block: 2,
            down_attention: vec![false, true, true],
            up_attention: vec![true, true, false],
        }
    }

    #[test]
    fn sdxl_block_names_map_like_diffusers() {
        let layout = sdxl();
        for (sgm, diffusers) in [
            ("input_blocks_0_0", "conv_in"),
            (
                "input_blocks_1_0_in_layers_2",
                "down_blocks_0_resnets_0_conv1",
            ),
            (
                "input_blocks_2_0_emb_layers_1",
                "down_blocks_0_resnets_1_time_emb_proj",
            ),
            ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
            (
                "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
            ),
            (
                "input_blocks_4_0_skip_connection",
                "down_blocks_1_resnets_0_conv_shortcut",
            ),
            (
                "input_blocks_8_1_proj_out",
                "down_blocks_2_attentions_1_proj_out",
            ),
            ("middle_block_0_out_layers_3", "mid_block_resnets_0_conv2"),
            (
                "middle_block_1_transformer_blocks_9_ff_net_2",
                "mid_block_attentions_0_transformer_blocks_9_ff_net_2",
            ),
            ("middle_block_2_in_layers_2", "mid_block_resnets_1_conv1"),
            (
                "output_blocks_0_0_skip_connection",
                "up_blocks_0_resnets_0_conv_shortcut",
            ),
            (
                "output_blocks_2_1_transformer_blocks_0_attn2_to_k",
                "up_blocks_0_attentions_2_transformer_blocks_0_attn2_to_k",
            ),
            ("output_blocks_2_2_conv", "up_blocks_0_upsamplers_0_conv"),
            (
                "output_blocks_8_0_out_layers_3",
                "up_blocks_2_resnets_2_conv2",
            ),
            ("time_embed_0", "time_embedding_linear_1"),
            ("label_emb_0_2", "add_embedding_linear_2"),
            ("out_2", "conv_out"),
        ] {
            assert_eq!(
                to_diffusers(sgm, &layout).as_deref(),
                Some(diffusers),
                "{sgm}"
            );
        }
    }

    #[test]
    fn an_up_block_without_attention_has_its_upsampler_second() {
        let sd15 = UnetLayout {
            layers_per_block: 2,
            down_attention: vec![true, true, true, false],
            up_attention: vec![false, true, true, true],
        };
        assert_eq!(
            to_diffusers("output_blocks_2_1_conv", &sd15).as_deref(),
            Some("up_blocks_0_upsamplers_0_conv")
        );
    }

    #[test]
    fn names_that_are_not_sgm_or_out_of_range_map_to_nothing() {
        let layout = sdxl();
        for name in [
            "down_blocks_0_resnets_0_conv1",
            "input_blocks_1_1_proj_in", // down block 0 has no attention in SDXL
            "input_blocks_99_0_in_layers_2",
            "middle_block_3_in_layers_2",
            "output_blocks_x_0_conv",
            "input_blocks_1_0_in_layers_0",
            "",
        ] {
            assert_eq!(to_diffusers(name, &layout), None, "{name}");
        }
    }

    #[test]
    fn layout_comes_from_the_unet_config() {
        let config = serde_json::json!({
            "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        });
        assert_eq!(
            UnetLayout::from_config(&config),
            Some(UnetLayout {
                layers_per_block: 2,
                down_attention: vec![false, true],
                up_attention: vec![true, false],
            })
        );
        assert_eq!(UnetLayout::from_config(&serde_json::json!({})), None);
    }
}
