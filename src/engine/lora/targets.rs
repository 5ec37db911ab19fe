//! Where each LoRA-able layer of an exported graph keeps its weight. torch's exporter (which optimum uses) names a
//! node after its module's path (`/down_blocks.0/…/attn1/to_q/MatMul`); a Linear's weight is an initializer fed to
//! `MatMul` transposed (`[in, out]`, often anonymous: `onnx::MatMul_123`) or to `Gemm`; a Conv's keeps its name.
//! Identical tensors may be stored once and reach several nodes through `Identity` nodes: such a shared weight is
//! marked, so a merge gives the changed node a copy instead of changing every user.

use std::collections::HashMap;

use super::ModuleName;
use super::sgm::{self, UnetLayout};
use crate::engine::onnx::OnnxModel;

/// How a weight is stored relative to a LoRA update `[out, in(·kh·kw)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[out, in, …]`: Conv, and Gemm with `transB = 1`.
    AsIs,
    /// `[in, out]`: MatMul, and Gemm with `transB = 0`.
    Transposed,
}

/// A layer's weight in the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The node that uses the weight.
    pub node: usize,
    /// Which of its inputs is the weight.
    pub input: usize,
    /// The initializer holding the weight.
    pub initializer: usize,
    /// How it is stored.
    pub layout: Layout,
    /// Whether other nodes use the same initializer.
    pub shared: bool,
}

/// Every LoRA-able layer of one graph, by module path.
#[derive(Debug, Default)]
pub struct LayerIndex {
    by_path: HashMap<String, Target>,
    /// `path.replace('.', '_')` → path, for kohya names.
    by_underscored: HashMap<String, String>,
    /// Paths that more than one weight node claims.
    ambiguous: Vec<String>,
}

/// The module path a node's name carries (`/a.0/b/MatMul` → `a.0.b`), if any.
fn module_path(node_name: &str) -> Option<String> {
    let scoped = node_name.strip_prefix('/')?;
    let (scope, _) = scoped.rsplit_once('/')?;
    let path = scope.replace('/', ".");
    (!path.is_empty()).then_some(path)
}

impl LayerIndex {
    /// Indexes the MatMul, Gemm and Conv nodes of `model` whose weight is an initializer.
    pub fn build(model: &OnnxModel) -> Self {
        let initializers: HashMap<&str, usize> = model
            .initializers
            .iter()
            .enumerate()
            .map(|(i, init)| (init.name.as_str(), i))
            .collect();
        // Value name → the initializer it is (through Identity) and whether a Transpose sits in between.
        let mut produced_by: HashMap<&str, (&str, bool)> = HashMap::new();
        for node in &model.nodes {
            let transposes = node.op_type == "Transpose";
            if (node.op_type == "Identity" || transposes)
                && let (Some(input), Some(output)) = (node.inputs.first(), node.outputs.first())
            {
                produced_by.insert(output.as_str(), (input.as_str(), transposes));
            }
        }
        let resolve = |value: &str| -> Option<(usize, bool)> {
            let (mut name, mut transposed) = (value, false);
            for _ in 0..8 {
                if let Some(&i) = initializers.get(name) {
                    return Some((i, transposed));
                }
                let (input, t) = produced_by.get(name)?;
                name = input;
                transposed ^= t;
            }
            None
        };
        let mut users = vec![0usize; model.initializers.len()];
        for node in &model.nodes {
            if node.op_type == "Identity" || node.op_type == "Transpose" {
                continue;
            }
            for input in &node.inputs {
                if let Some((i, _)) = resolve(input) {
                    users[i] += 1;
                }
            }
        }
        let mut index = LayerIndex::default();
        for (n, node) in model.nodes.iter().enumerate() {
            let Some(weight) = node.inputs.get(1) else {
                continue;
            };
            let Some((init, transposed)) = resolve(weight) else {
                continue;
            };
            let rank = model.initializers[init].dims.len();
            let layout = match (node.op_type.as_str(), rank) {
                ("MatMul", 2) => Layout::Transposed,
                ("Gemm", 2) if node.int_attributes.get("transB").copied().unwrap_or(0) == 1 => {
                    Layout::AsIs
                }
                ("Gemm", 2) => Layout::Transposed,
                ("Conv", 3..=5) => Layout::AsIs,
                _ => continue,
            };
            let layout = match (layout, transposed) {
                (Layout::AsIs, true) => Layout::Transposed,
                (Layout::Transposed, true) => Layout::AsIs,
                (layout, false) => layout,
            };
            let Some(path) = module_path(&node.name) else {
                continue;
            };
            let target = Target {
                node: n,
                input: 1,
                initializer: init,
                layout,
                shared: users[init] > 1,
            };
            if index.by_path.insert(path.clone(), target).is_some() {
                index.ambiguous.push(path.clone());
            }
            index.by_underscored.insert(path.replace('.', "_"), path);
        }
        index
    }

    /// How many layers it knows.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Whether it knows none.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// The layer a LoRA module names (kohya names may use SGM block names when `layout` is given), with its path.
    pub fn find(
        &self,
        module: &ModuleName,
        layout: Option<&UnetLayout>,
    ) -> Result<(&str, &Target), String> {
        let path = match module {
            ModuleName::Dotted(path) => path.clone(),
            ModuleName::Underscored(name) => {
                let mapped;
                let name = match layout.and_then(|l| sgm::to_diffusers(name, l)) {
                    Some(diffusers) if !self.by_underscored.contains_key(name) => {
                        mapped = diffusers;
                        &mapped
                    }
                    _ => name,
                };
                self.by_underscored
                    .get(name)
                    .cloned()
                    .ok_or_else(|| "names no layer of this model".to_string())?
            }
        };
        if self.ambiguous.contains(&path) {
            return Err(format!(
                "layer {path} has more than one weight in the graph"
            ));
        }
        self.by_path
            .get_key_value(&path)
            .map(|(p, t)| (p.as_str(), t))
            .ok_or_else(|| format!("layer {path} is not in this model"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_come_from_scoped_node_names() {
        assert_eq!(
            module_path("/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul")
                .as_deref(),
            Some("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
        );
        assert_eq!(
            module_path("/text_model/encoder/layers.0/mlp/fc1/MatMul").as_deref(),
            Some("text_model.encoder.layers.0.mlp.fc1")
        );
        assert_eq!(module_path("MatMul_12"), None);
        assert_eq!(module_path("/MatMul"), None);
    }
}
