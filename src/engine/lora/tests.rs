use std::path::{Path, PathBuf};

use super::*;

/// Writes a safetensors file of f32 tensors (and metadata) into `dir`.
fn write(
    dir: &Path,
    name: &str,
    tensors: &[(&str, &[usize])],
    metadata: &[(&str, &str)],
) -> PathBuf {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (key, shape) in tensors {
        let n: usize = shape.iter().product();
        let start = data.len();
        for i in 0..n {
            data.extend_from_slice(&(0.01 * i as f32).to_le_bytes());
        }
        header.insert(
            key.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    }
    let header = serde_json::to_string(&header).expect("json");
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

fn parsed(key: &str) -> Result<(LoraFormat, Part, String, bool, Role), String> {
    parse_key(key).map(|p| (p.format, p.part, p.module, p.underscored, p.role))
}

#[test]
fn keys_of_every_format_are_read() {
    use LoraFormat::*;
    use Part::*;
    for (key, format, part, module, underscored, role) in [
        (
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
            Kohya,
            Unet,
            "down_blocks_0_attentions_0_proj_in",
            true,
            Role::Down,
        ),
        (
            "lora_unet_input_blocks_4_1_proj_in.lora_up.weight",
            Kohya,
            Unet,
            "input_blocks_4_1_proj_in",
            true,
            Role::Up,
        ),
        (
            "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha",
            Kohya,
            TextEncoder,
            "text_model_encoder_layers_0_mlp_fc1",
            true,
            Role::Alpha,
        ),
        (
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
            Kohya,
            TextEncoder,
            "text_model_encoder_layers_0_self_attn_q_proj",
            true,
            Role::Down,
        ),
        (
            "lora_te2_text_model_encoder_layers_9_self_attn_q_proj.lora_down.weight",
            Kohya,
            TextEncoder2,
            "text_model_encoder_layers_9_self_attn_q_proj",
            true,
            Role::Down,
        ),
        (
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
            Peft,
            Unet,
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            false,
            Role::Down,
        ),
        (
            "text_encoder_2.text_model.encoder.layers.0.mlp.fc2.lora_B.weight",
            Peft,
            TextEncoder2,
            "text_model.encoder.layers.0.mlp.fc2",
            false,
            Role::Up,
        ),
        (
            "text_encoder.text_model.encoder.layers.0.mlp.fc2.lora_A.default.weight",
            Peft,
            TextEncoder,
            "text_model.encoder.layers.0.mlp.fc2",
            false,
            Role::Down,
        ),
        (
            "unet.mid_block.attentions.0.proj_out.lora.up.weight",
            Diffusers,
            Unet,
            "mid_block.attentions.0.proj_out",
            false,
            Role::Up,
        ),
        (
            "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight",
            Diffusers,
            Unet,
            "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0",
            false,
            Role::Down,
        ),
        (
            "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_linear_layer.down.weight",
            Diffusers,
            Unet,
            "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
            false,
            Role::Down,
        ),
    ] {
        assert_eq!(
            parsed(key),
            Ok((format, part, module.to_string(), underscored, role)),
            "{key}"
        );
    }
}

#[test]
fn variants_huabi_does_not_merge_are_named() {
    for (key, kind) in [
        ("lora_unet_x_to_q.dora_scale", "DoRA"),
        ("lora_unet_x_conv1.hada_w1_a", "LoHa"),
        ("lora_unet_x_conv1.lokr_w1", "LoKr"),
        ("lora_unet_x_conv1.lora_mid.weight", "Tucker"),
        ("lora_unet_x_conv1.diff", "full weight difference"),
    ] {
        let err = parsed(key).expect_err(key);
        assert!(err.contains(kind), "{key}: {err}");
    }
    for key in [
        "model.diffusion_model.input_blocks.0.weight",
        "lora_vae_decoder_conv.lora_down.weight",
        "lora_unet_down_blocks_0",
        "unet.down_blocks.0.weird.weight",
        "",
    ] {
        assert!(parsed(key).is_err(), "{key}");
    }
}

#[test]
fn kohya_files_give_rank_alpha_and_layers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "k.safetensors",
        &[
            ("lora_unet_a_to_q.lora_down.weight", &[4, 8]),
            ("lora_unet_a_to_q.lora_up.weight", &[16, 4]),
            ("lora_unet_a_to_q.alpha", &[]),
            ("lora_te_b_fc1.lora_down.weight", &[2, 8, 3, 3]),
            ("lora_te_b_fc1.lora_up.weight", &[5, 2, 1, 1]),
        ],
        &[],
    );
    let lora = Lora::open("k", &path).expect("kohya");
    assert_eq!(lora.format, LoraFormat::Kohya);
    assert_eq!(lora.rank(), 4);
    assert_eq!(lora.parts(), vec![Part::Unet, Part::TextEncoder]);
    let q = lora
        .layers
        .iter()
        .find(|l| l.part == Part::Unet)
        .expect("unet layer");
    assert_eq!(q.key, "lora_unet_a_to_q");
    assert_eq!(
        q.alpha, 0.0,
        "alpha is the stored value (the writer filled 0.0)"
    );
    let fc1 = lora
        .layers
        .iter()
        .find(|l| l.part == Part::TextEncoder)
        .expect("te layer");
    assert_eq!(fc1.alpha, 2.0, "no alpha key: alpha = rank");
}

#[test]
fn peft_files_take_alpha_from_the_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = r#"{"unet.lora_alpha": 8, "unet.r": 4, "unet.alpha_pattern": {"to_k": 2}, "text_encoder.lora_alpha": 6}"#;
    let path = write(
        dir.path(),
        "p.safetensors",
        &[
            ("unet.a.to_q.lora_A.weight", &[4, 8]),
            ("unet.a.to_q.lora_B.weight", &[8, 4]),
            ("unet.a.to_k.lora_A.weight", &[4, 8]),
            ("unet.a.to_k.lora_B.weight", &[8, 4]),
            ("text_encoder.b.q_proj.lora_A.weight", &[4, 8]),
            ("text_encoder.b.q_proj.lora_B.weight", &[8, 4]),
        ],
        &[("lora_adapter_metadata", meta)],
    );
    let lora = Lora::open("p", &path).expect("peft");
    assert_eq!(lora.format, LoraFormat::Peft);
    let alpha = |module: &str| {
        lora.layers
            .iter()
            .find(|l| l.module == ModuleName::Dotted(module.into()))
            .map(|l| l.alpha)
    };
    assert_eq!(alpha("a.to_q"), Some(8.0));
    assert_eq!(alpha("a.to_k"), Some(2.0), "alpha_pattern wins");
    assert_eq!(alpha("b.q_proj"), Some(6.0));
    // Without metadata alpha is the rank (diffusers' default), so the update is at full strength.
    let bare = write(
        dir.path(),
        "bare.safetensors",
        &[
            ("unet.a.to_q.lora_A.weight", &[4, 8]),
            ("unet.a.to_q.lora_B.weight", &[8, 4]),
        ],
        &[],
    );
    assert_eq!(
        Lora::open("bare", &bare).expect("bare").layers[0].alpha,
        4.0
    );
}

#[test]
fn broken_files_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a [usize])>,
        Vec<(&'a str, &'a str)>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "only-down",
            vec![("lora_unet_a.lora_down.weight", &[4, 8])],
            vec![],
            "lora_unet_a.lora_down.weight",
        ),
        (
            "mixed",
            vec![
                ("lora_unet_a.lora_down.weight", &[4, 8]),
                ("lora_unet_a.lora_up.weight", &[8, 4]),
                ("unet.b.lora_A.weight", &[4, 8]),
                ("unet.b.lora_B.weight", &[8, 4]),
            ],
            vec![],
            "mixes key formats",
        ),
        (
            "ranks",
            vec![
                ("unet.b.lora_A.weight", &[4, 8]),
                ("unet.b.lora_B.weight", &[8, 3]),
            ],
            vec![],
            "not a LoRA pair",
        ),
        (
            "alpha",
            vec![
                ("lora_unet_a.lora_down.weight", &[4, 8]),
                ("lora_unet_a.lora_up.weight", &[8, 4]),
                ("lora_unet_a.alpha", &[2]),
            ],
            vec![],
            "one value",
        ),
        (
            "metadata",
            vec![
                ("unet.b.lora_A.weight", &[4, 8]),
                ("unet.b.lora_B.weight", &[8, 4]),
            ],
            vec![("lora_adapter_metadata", "{not json")],
            "lora_adapter_metadata",
        ),
        (
            "foreign",
            vec![("model.diffusion_model.out.0.weight", &[4])],
            vec![],
            "model.diffusion_model",
        ),
    ];
    for (name, tensors, metadata, want) in cases {
        let path = write(
            dir.path(),
            &format!("{name}.safetensors"),
            &tensors,
            &metadata,
        );
        let err = Lora::open(name, &path).expect_err(name).to_string();
        assert!(err.contains(want), "{name}: {err}");
        assert!(
            err.contains(&format!("{name}.safetensors")),
            "{name} names the file: {err}"
        );
    }
    let empty = write(dir.path(), "empty.safetensors", &[], &[]);
    assert!(matches!(
        Lora::open("empty", &empty),
        Err(LoraError::Empty(_))
    ));
    std::fs::write(
        dir.path().join("junk.safetensors"),
        b"not a safetensors file",
    )
    .expect("write");
    assert!(Lora::open("junk", &dir.path().join("junk.safetensors")).is_err());
}

#[test]
fn the_shipped_fixtures_read_as_written() {
    let loras = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/loras");
    let kohya = Lora::open("k", &loras.join("tiny-sd-kohya.safetensors")).expect("kohya");
    assert_eq!(kohya.format, LoraFormat::Kohya);
    assert!(kohya.layers.iter().all(|l| l.alpha == 2.0 && l.rank() == 4));
    assert_eq!(kohya.parts(), vec![Part::Unet, Part::TextEncoder]);
    let peft = Lora::open("p", &loras.join("tiny-sd-peft.safetensors")).expect("peft");
    assert_eq!(peft.format, LoraFormat::Peft);
    assert!(peft.layers.iter().all(|l| l.alpha == 8.0 && l.rank() == 4));
    let xl = Lora::open("x", &loras.join("tiny-sdxl-kohya.safetensors")).expect("sdxl kohya");
    assert_eq!(
        xl.parts(),
        vec![Part::Unet, Part::TextEncoder, Part::TextEncoder2]
    );
    assert!(
        xl.layers.iter().any(
            |l| matches!(&l.module, ModuleName::Underscored(m) if m.starts_with("input_blocks_"))
        ),
        "SGM block names"
    );
}
