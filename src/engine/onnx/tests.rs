use std::path::{Path, PathBuf};

use super::*;
use crate::engine::lora::targets::{LayerIndex, Layout};
use crate::engine::lora::{ModuleName, sgm::UnetLayout};

fn tiny(component: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/tiny-sd/{component}/model.onnx"))
}

#[test]
fn reads_the_graph_of_an_optimum_export() {
    let model = OnnxModel::open(&tiny("unet")).expect("unet");
    assert!(model.nodes.len() > 500, "{}", model.nodes.len());
    let conv = model
        .initializers
        .iter()
        .find(|i| i.name == "down_blocks.0.resnets.0.conv1.weight")
        .expect("conv weights keep their names");
    assert_eq!(conv.dims, vec![32, 32, 3, 3]);
    assert_eq!(conv.dtype, DataType::F32);
    assert_eq!(model.read_f32(conv).expect("values").len(), 32 * 32 * 9);
    assert_eq!(model.weight_dtype(), Some(DataType::F32));
    assert!(!model.has_external_data());
    assert!(model.total_bytes() > 1_000_000);
}

#[test]
fn layers_are_found_by_module_path_and_shared_weights_are_marked() {
    let model = OnnxModel::open(&tiny("unet")).expect("unet");
    let index = LayerIndex::build(&model);
    let find = |path: &str| {
        index
            .find(&ModuleName::Dotted(path.into()), None)
            .map(|(_, t)| t.clone())
            .expect(path)
    };
    let q = find("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q");
    assert_eq!(q.layout, Layout::Transposed);
    assert!(!q.shared);
    // scripts/make_models.py gives this block's to_k and to_v identical weights: the export stores them once.
    let k = find("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k");
    let v = find("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v");
    assert!(k.shared && v.shared);
    assert_eq!(k.initializer, v.initializer);
    let gemm = find("down_blocks.0.resnets.0.time_emb_proj");
    assert_eq!(gemm.layout, Layout::AsIs, "Gemm with transB = 1");
    let conv = find("down_blocks.0.resnets.0.conv1");
    assert_eq!(model.initializers[conv.initializer].dims.len(), 4);
    // kohya names, in diffusers' naming and in the original SD blocks' naming.
    let underscored = |name: &str, layout| {
        index
            .find(&ModuleName::Underscored(name.into()), layout)
            .map(|(p, _)| p.to_string())
    };
    assert_eq!(
        underscored("down_blocks_0_resnets_0_conv1", None).as_deref(),
        Ok("down_blocks.0.resnets.0.conv1")
    );
    let layout = UnetLayout {
        layers_per_block: 2,
        down_attention: vec![false, true],
        up_attention: vec![true, false],
    };
    assert_eq!(
        underscored(
            "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            Some(&layout)
        )
        .as_deref(),
        Ok("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
    );
    assert!(underscored("down_blocks_9_resnets_0_conv1", None).is_err());
}

#[test]
fn an_edit_revalues_copies_and_rewires_and_keeps_the_rest() {
    let model = OnnxModel::open(&tiny("unet")).expect("unet");
    let index = LayerIndex::build(&model);
    let (_, k) = index
        .find(
            &ModuleName::Dotted(
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k".into(),
            ),
            None,
        )
        .expect("to_k");
    let conv = model
        .initializers
        .iter()
        .position(|i| i.name == "conv_in.weight")
        .expect("conv_in");
    let data = |offset| ExternalData {
        location: "merged.bin".into(),
        offset,
        length: 64,
    };
    let edit = GraphEdit {
        rewire: vec![(k.node, 1, "copy-of-k".into())],
        revalue: vec![(conv, data(0))],
        copies: vec![("copy-of-k".into(), k.initializer, data(64))],
        outputs: vec!["/extra".into()],
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edited.onnx");
    std::fs::write(&path, model.edited(&edit).expect("edited")).expect("write");
    let edited = OnnxModel::open(&path).expect("the edited graph reads back");
    assert_eq!(edited.nodes.len(), model.nodes.len());
    assert_eq!(edited.initializers.len(), model.initializers.len() + 1);
    assert_eq!(edited.nodes[k.node].inputs[1], "copy-of-k");
    assert_eq!(edited.nodes[k.node].name, model.nodes[k.node].name);
    let copy = edited
        .initializers
        .iter()
        .find(|i| i.name == "copy-of-k")
        .expect("copy");
    assert_eq!(copy.dims, model.initializers[k.initializer].dims);
    assert_eq!(
        copy.data,
        TensorData::External {
            location: "merged.bin".into(),
            offset: 64,
            length: Some(64)
        }
    );
    let conv_in = &edited.initializers[conv];
    assert_eq!(conv_in.name, "conv_in.weight");
    assert!(matches!(
        conv_in.data,
        TensorData::External { offset: 0, .. }
    ));
    // Everything else is as it was, values included.
    let other = edited
        .initializers
        .iter()
        .position(|i| i.name == "conv_out.weight")
        .expect("conv_out");
    assert_eq!(
        edited
            .read_f32(&edited.initializers[other])
            .expect("values"),
        model.read_f32(&model.initializers[other]).expect("values")
    );
    assert!(edited.has_external_data());
    // The external file does not exist, so reading those values is an error, not a panic.
    assert!(edited.read_f32(conv_in).is_err());
}

#[test]
fn hostile_model_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    };
    let real = std::fs::read(tiny("text_encoder")).expect("read");
    for (name, bytes) in [
        ("empty", Vec::new()),
        ("text", b"not a model at all".to_vec()),
        ("truncated", real[..real.len() / 2].to_vec()),
        ("no-graph", vec![0x08, 0x07]), // ir_version only
    ] {
        let err = OnnxModel::open(&write(name, &bytes))
            .expect_err(name)
            .to_string();
        assert!(err.contains(name), "names the file: {err}");
    }
    assert!(OnnxModel::open(&dir.path().join("missing.onnx")).is_err());

    // An initializer pointing outside the folder, or past its file's end, is refused when read.
    let model = OnnxModel::open(&tiny("text_encoder")).expect("te");
    let float = model
        .initializers
        .iter()
        .position(|i| i.dtype == DataType::F32 && i.len() >= 4)
        .expect("a float initializer");
    let edit = |location: &str, offset, length| GraphEdit {
        revalue: vec![(
            float,
            ExternalData {
                location: location.into(),
                offset,
                length,
            },
        )],
        ..GraphEdit::default()
    };
    std::fs::write(dir.path().join("small.bin"), [0u8; 16]).expect("write");
    for (location, offset, length) in [
        ("../../etc/passwd", 0, 4),
        ("/etc/passwd", 0, 4),
        ("small.bin", 8, 64),
        ("small.bin", u64::MAX, 4),
    ] {
        let path = write(
            "hostile.onnx",
            &model.edited(&edit(location, offset, length)).expect("edit"),
        );
        let hostile = OnnxModel::open(&path).expect("opens");
        assert!(
            hostile.read_f32(&hostile.initializers[float]).is_err(),
            "{location} {offset} {length}"
        );
    }
}

/// A small valid model: one MatMul node and its 2×2 weight.
fn small_model() -> Vec<u8> {
    use super::proto::{put_bytes, put_varint};
    let mut node = Vec::new();
    for input in ["x", "w"] {
        put_bytes(&mut node, 1, input.as_bytes());
    }
    put_bytes(&mut node, 2, b"y");
    put_bytes(&mut node, 3, b"/a/MatMul");
    put_bytes(&mut node, 4, b"MatMul");
    let mut tensor = Vec::new();
    put_varint(&mut tensor, 1 << 3);
    put_varint(&mut tensor, 2);
    put_varint(&mut tensor, 1 << 3);
    put_varint(&mut tensor, 2);
    put_varint(&mut tensor, 2 << 3);
    put_varint(&mut tensor, 1);
    put_bytes(&mut tensor, 8, b"w");
    put_bytes(&mut tensor, 9, &[0u8; 16]);
    let mut graph = Vec::new();
    put_bytes(&mut graph, 1, &node);
    put_bytes(&mut graph, 5, &tensor);
    let mut model = Vec::new();
    put_varint(&mut model, 1 << 3);
    put_varint(&mut model, 8);
    put_bytes(&mut model, 7, &graph);
    model
}

#[test]
fn the_small_model_reads() {
    let graph = read_graph(&small_model()).expect("valid");
    assert_eq!(graph.nodes[0].name, "/a/MatMul");
    assert_eq!(graph.initializers[0].dims, vec![2, 2]);
    assert!(matches!(&graph.initializers[0].data, TensorData::Raw(r) if r.len() == 16));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_models_are_read_or_refused_never_a_panic(
        flips in proptest::collection::vec((0usize..10_000, proptest::prelude::any::<u8>()), 1..8),
        cut in 0usize..10_000,
    ) {
        let mut bytes = small_model();
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        let _ = read_graph(&bytes);
        bytes.truncate(cut % (bytes.len() + 1));
        let _ = read_graph(&bytes);
    }

    #[test]
    fn random_bytes_are_refused_or_read_never_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        let _ = read_graph(&bytes);
    }
}
