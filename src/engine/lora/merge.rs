//! Merging LoRAs into a graph's weights: for every layer, `W' = W + Σ scale · alpha/rank · up @ down`, laid out as
//! the graph stores `W`. The merged weights become the graph's own values before ONNX Runtime optimises it: the
//! edited graph reads them from an external data file held in memory ([`MERGED_FILE`]), so optimisations that
//! rewrite weights (the CPU's NCHWc convolution layout, fusions) see the merged values. Where a changed weight is
//! shared with other nodes, the changed node gets a copy under a new name instead.

use std::collections::BTreeMap;
use std::sync::Arc;

use ndarray::Array2;

use super::sgm::UnetLayout;
use super::targets::{LayerIndex, Layout, Target};
use super::{Lora, LoraError, LoraLayer, Part};
use crate::engine::onnx::{DataType, ExternalData, GraphEdit, OnnxModel};

/// The external data file (never on disk: handed to ONNX Runtime in memory) the merged weights are read from.
pub const MERGED_FILE: &str = "huabi-lora-merged.bin";

/// Each merged weight starts at a multiple of this in [`MERGED_FILE`].
const ALIGN: usize = 64;

/// What a session of one component needs to paint with LoRAs merged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergePlan {
    /// Changed weights and copies of shared ones, read from [`MERGED_FILE`]; nodes rewired to the copies.
    pub edit: GraphEdit,
    /// The contents of [`MERGED_FILE`].
    pub data: Arc<[u8]>,
    /// Layers changed.
    pub layers: usize,
}

/// Appends `values` in the element type `dtype` (little-endian) at an aligned offset; returns where they are.
fn append(data: &mut Vec<u8>, values: &[f32], dtype: DataType) -> Option<ExternalData> {
    data.resize(data.len().div_ceil(ALIGN) * ALIGN, 0);
    let offset = data.len();
    match dtype {
        DataType::F32 => values
            .iter()
            .for_each(|v| data.extend_from_slice(&v.to_le_bytes())),
        DataType::F16 => values
            .iter()
            .for_each(|&v| data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes())),
        DataType::Bf16 => values
            .iter()
            .for_each(|&v| data.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes())),
        DataType::Other(_) => return None,
    }
    Some(ExternalData {
        location: MERGED_FILE.to_string(),
        offset: offset as u64,
        length: (data.len() - offset) as u64,
    })
}

/// One LoRA layer placed onto its target.
struct Placed<'a> {
    lora: &'a Lora,
    layer: &'a LoraLayer,
    target: &'a Target,
    scale: f32,
}

fn fit_error(lora: &Lora, layer: &LoraLayer, reason: String) -> LoraError {
    LoraError::Fit {
        path: lora.file.path().to_path_buf(),
        key: layer.key.clone(),
        reason,
    }
}

/// Places every layer of `loras` that changes `part` onto `index`, checking shapes; an unplaceable layer is an
/// error naming its file and key.
fn place<'a>(
    model: &OnnxModel,
    index: &'a LayerIndex,
    part: Part,
    loras: &[(&'a Lora, f32)],
    layout: Option<&UnetLayout>,
) -> Result<Vec<Placed<'a>>, LoraError> {
    let mut placed = Vec::new();
    for &(lora, scale) in loras {
        for layer in lora.layers.iter().filter(|l| l.part == part) {
            let (path, target) = index.find(&layer.module, layout).map_err(|reason| {
                fit_error(lora, layer, format!("{reason} ({})", part.component()))
            })?;
            let weight = &model.initializers[target.initializer];
            let out = layer.up_shape[0];
            let inner: usize = layer.down_shape[1..].iter().product();
            let dims: Vec<usize> = weight.dims.iter().map(|&d| d.max(0) as usize).collect();
            let fits = match target.layout {
                Layout::AsIs => {
                    dims.first() == Some(&out) && dims[1..].iter().product::<usize>() == inner
                }
                Layout::Transposed => dims == [inner, out],
            };
            if !fits {
                return Err(fit_error(
                    lora,
                    layer,
                    format!(
                        "update [{out}, {inner}] does not fit {path}'s weight {:?} ({})",
                        weight.dims,
                        part.component()
                    ),
                ));
            }
            placed.push(Placed {
                lora,
                layer,
                target,
                scale,
            });
        }
    }
    Ok(placed)
}

/// Checks that every layer of `lora` touching `part` fits `model`; returns how many do.
pub fn check_fit(
    model: &OnnxModel,
    index: &LayerIndex,
    part: Part,
    lora: &Lora,
    layout: Option<&UnetLayout>,
) -> Result<usize, LoraError> {
    Ok(place(model, index, part, &[(lora, 1.0)], layout)?.len())
}

/// The merged weights of `part` for `loras` (each with its scale).
pub fn plan(
    model: &OnnxModel,
    index: &LayerIndex,
    part: Part,
    loras: &[(&Lora, f32)],
    layout: Option<&UnetLayout>,
) -> Result<MergePlan, LoraError> {
    let placed = place(model, index, part, loras, layout)?;
    let mut by_node: BTreeMap<usize, Vec<&Placed<'_>>> = BTreeMap::new();
    for p in &placed {
        by_node.entry(p.target.node).or_default().push(p);
    }
    let mut plan = MergePlan {
        layers: placed.len(),
        ..MergePlan::default()
    };
    let mut data = Vec::new();
    for (node, updates) in by_node {
        let target = updates[0].target;
        let init = &model.initializers[target.initializer];
        let mut values = model.read_f32(init)?;
        for update in &updates {
            add_update(&mut values, update)?;
        }
        let external = append(&mut data, &values, init.dtype).ok_or_else(|| {
            fit_error(
                updates[0].lora,
                updates[0].layer,
                format!(
                    "weight {} is not a float tensor ({:?})",
                    init.name, init.dtype
                ),
            )
        })?;
        if target.shared {
            let copy = format!("huabi_lora:{}", model.nodes[node].name);
            plan.edit
                .copies
                .push((copy.clone(), target.initializer, external));
            plan.edit.rewire.push((node, target.input, copy));
        } else {
            plan.edit.revalue.push((target.initializer, external));
        }
    }
    plan.data = data.into();
    Ok(plan)
}

/// Adds `scale · alpha/rank · up @ down` to `weight`, laid out as the target stores it.
fn add_update(weight: &mut [f32], p: &Placed<'_>) -> Result<(), LoraError> {
    let layer = p.layer;
    let read = |name: &str| {
        p.lora
            .file
            .f32(name)
            .ok_or_else(|| fit_error(p.lora, layer, format!("tensor {name} vanished")))
    };
    let (out, rank) = (layer.up_shape[0], layer.rank());
    let inner: usize = layer.down_shape[1..].iter().product();
    let shape_error = |e: ndarray::ShapeError| fit_error(p.lora, layer, e.to_string());
    let up = Array2::from_shape_vec((out, rank), read(&layer.up)?).map_err(shape_error)?;
    let down = Array2::from_shape_vec((rank, inner), read(&layer.down)?).map_err(shape_error)?;
    let factor = p.scale * layer.alpha / rank as f32;
    let delta = up.dot(&down);
    match p.target.layout {
        Layout::AsIs => {
            for (w, d) in weight.iter_mut().zip(delta.iter()) {
                *w += factor * d;
            }
        }
        Layout::Transposed => {
            for ((o, i), d) in delta.indexed_iter() {
                weight[i * out + o] += factor * d;
            }
        }
    }
    Ok(())
}
