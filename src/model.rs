//! Domain types every layer shares. (The rest of them — `Inbound`, `Reply`, `NewJob` — still live in `channel` and
//! `store`; they move here as the layers are separated.)

use serde::{Deserialize, Serialize};

/// A LoRA and the strength it is merged at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraChoice {
    /// The LoRA's name (`models/loras/NAME.safetensors`) or a path to a file.
    pub name: String,
    /// Its scale (1 = as trained).
    #[serde(default = "one")]
    pub scale: f32,
}

fn one() -> f32 {
    1.0
}

impl Eq for LoraChoice {}

impl std::hash::Hash for LoraChoice {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.scale.to_bits().hash(state);
    }
}

/// A LoRA set in its canonical order (by name, then scale), so equal sets compare equal.
pub fn canonical_loras(loras: &[LoraChoice]) -> Vec<LoraChoice> {
    let mut sorted = loras.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name).then(a.scale.total_cmp(&b.scale)));
    sorted
}

/// The stored form of a LoRA set (`jobs.loras`): canonical JSON, so equal sets are equal strings.
pub fn loras_json(loras: &[LoraChoice]) -> String {
    serde_json::to_string(&canonical_loras(loras)).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_sets_store_alike() {
        let a = LoraChoice {
            name: "b".into(),
            scale: 0.5,
        };
        let b = LoraChoice {
            name: "a".into(),
            scale: 1.0,
        };
        assert_eq!(
            loras_json(&[a.clone(), b.clone()]),
            loras_json(&[b.clone(), a.clone()])
        );
        assert_eq!(loras_json(&[]), "[]");
        let back: Vec<LoraChoice> = serde_json::from_str(&loras_json(&[a, b])).expect("json");
        assert_eq!(back[0].name, "a");
        assert!(serde_json::from_str::<Vec<LoraChoice>>(r#"[{"name":"x","weight":1}]"#).is_err());
    }
}
