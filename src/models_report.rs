//! `huabi models`: the model catalogue for operators — every model (architecture, precision, sizes, whether it
//! loads), every LoRA (format, rank, layers, which models it fits) and the campaigns that use each.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::campaign::Campaign;
use crate::engine::{Engine, EngineConfig, LoraInfo, ModelCatalog, ModelInfo};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelsFormat {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
}

/// A model and the campaigns that paint with it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    /// The model.
    #[serde(flatten)]
    pub info: ModelInfo,
    /// Seconds its sessions took to open, when they were opened.
    pub load_secs: Option<f64>,
    /// Campaigns painting with it.
    pub campaigns: Vec<String>,
}

/// A LoRA and the campaigns that use it.
#[derive(Debug, Clone, Serialize)]
pub struct LoraRow {
    /// The LoRA.
    #[serde(flatten)]
    pub info: LoraInfo,
    /// Campaigns using it.
    pub campaigns: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct ModelsReport {
    /// The catalogue folder.
    pub models_dir: String,
    /// Every model.
    pub models: Vec<ModelRow>,
    /// Every LoRA.
    pub loras: Vec<LoraRow>,
    /// Why campaigns could not be read, if they could not.
    pub campaigns_error: Option<String>,
}

/// Builds the report; with `load`, each model's sessions are opened (and closed) to see that it loads.
pub fn report(
    config: &EngineConfig,
    campaigns: Result<Vec<Campaign>, String>,
    load: bool,
) -> ModelsReport {
    let catalog = ModelCatalog::new(config);
    let (campaigns, campaigns_error) = match campaigns {
        Ok(c) => (c, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let mut by_model: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut by_lora: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &campaigns {
        let model = if c.model.is_empty() {
            catalog.default_model().to_string()
        } else {
            c.model.clone()
        };
        by_model.entry(model).or_default().push(c.name.clone());
        for lora in &c.loras {
            by_lora
                .entry(lora.name.clone())
                .or_default()
                .push(c.name.clone());
        }
    }
    let mut engine = if load {
        Engine::new(config).map_err(|e| e.to_string())
    } else {
        Err(String::new())
    };
    let models = catalog
        .describe_models()
        .into_iter()
        .map(|mut info| {
            let mut load_secs = None;
            if info.problem.is_none() {
                match &mut engine {
                    Ok(engine) => match engine.try_load(&info.name) {
                        Ok(report) => load_secs = Some(report.load_secs),
                        Err(e) => info.problem = Some(e.to_string()),
                    },
                    Err(e) if !e.is_empty() => info.problem = Some(e.clone()),
                    Err(_) => {}
                }
            }
            ModelRow {
                campaigns: by_model.remove(&info.name).unwrap_or_default(),
                info,
                load_secs,
            }
        })
        .collect();
    let loras = catalog
        .describe_loras()
        .into_iter()
        .map(|info| LoraRow {
            campaigns: by_lora.remove(&info.name).unwrap_or_default(),
            info,
        })
        .collect();
    ModelsReport {
        models_dir: config.models_dir.display().to_string(),
        models,
        loras,
        campaigns_error,
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn or_dash(list: &[String]) -> String {
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// The report in `format`.
pub fn render(report: &ModelsReport, format: ModelsFormat) -> String {
    if format == ModelsFormat::Json {
        return serde_json::to_string_pretty(report).unwrap_or_default() + "\n";
    }
    let mut out = format!("Models in {}:\n", report.models_dir);
    let rows: Vec<Vec<String>> = report
        .models
        .iter()
        .map(|m| {
            let i = &m.info;
            vec![
                i.name.clone() + if i.default { " (default)" } else { "" },
                i.architecture.map_or("-".into(), |a| a.to_string()),
                i.precision.clone().unwrap_or_else(|| "-".into()),
                megabytes(i.files.iter().map(|(_, b)| b).sum()),
                if i.painted_here { "yes" } else { "no" }.into(),
                if i.img2img { "yes" } else { "no" }.into(),
                i.safety.into(),
                if i.reads_chinese { "yes" } else { "no" }.into(),
                match (&i.problem, m.load_secs) {
                    (Some(problem), _) => format!("NO: {problem}"),
                    (None, Some(secs)) => format!("yes ({secs:.1} s)"),
                    (None, None) => "not tried".into(),
                },
                or_dash(&m.campaigns),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "name",
            "arch",
            "precision",
            "size",
            "paints here",
            "photos",
            "safety",
            "reads Chinese",
            "loads",
            "campaigns",
        ],
        &rows,
    ));
    out.push_str("\nLoRAs:\n");
    let rows: Vec<Vec<String>> = report
        .loras
        .iter()
        .map(|l| {
            let i = &l.info;
            match &i.problem {
                Some(problem) => vec![
                    i.name.clone(),
                    format!("NO: {problem}"),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    or_dash(&l.campaigns),
                ],
                None => vec![
                    i.name.clone(),
                    i.format.map_or("-".into(), |f| f.to_string()),
                    i.rank.to_string(),
                    i.layers.to_string(),
                    or_dash(&i.parts),
                    or_dash(&i.fits),
                    or_dash(&l.campaigns),
                ],
            }
        })
        .collect();
    out.push_str(&table(
        &[
            "name",
            "format",
            "rank",
            "layers",
            "parts",
            "fits",
            "campaigns",
        ],
        &rows,
    ));
    if let Some(e) = &report.campaigns_error {
        out.push_str(&format!("\n(campaigns not read: {e})\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = table(
            &["a", "bb"],
            &[
                vec!["xxx".into(), "y".into()],
                vec!["中秋".into(), "zz".into()],
            ],
        );
        assert_eq!(t, "a    bb\nxxx  y\n中秋   zz\n");
    }
}
