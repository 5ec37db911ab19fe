//! `huabi generate`: paint prompts to labelled PNG or JPEG files from the command line, with a progress bar and
//! per-stage timings.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::engine::encode::{self, WECHAT_JPEG_BUDGET};
use crate::engine::label::{AigcRecord, draw_visible_label};
use crate::engine::photo::{self, PhotoLimits};
use crate::engine::{
    Batch, BatchKey, Engine, EngineConfig, Item, LoraChoice, Picture, Progress, SchedulerKind,
    Strength, npy,
};

/// What to paint and where to write it (the flags of `huabi generate`).
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateOptions {
    /// What to paint.
    #[arg(long)]
    pub prompt: String,
    /// What to avoid.
    #[arg(long, default_value = "")]
    pub negative: String,
    /// Output file: .png or .jpg/.jpeg (with --batch B: <stem>-0 … <stem>-(B-1) beside it).
    #[arg(long)]
    pub out: PathBuf,
    /// Denoising steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Seed of the first picture (picture i uses seed + i); random when omitted.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Width in pixels (a multiple of 8; default: the model's native size, 512 for SD 1.5, 1024 for SDXL).
    #[arg(long)]
    pub width: Option<u32>,
    /// Height in pixels (a multiple of 8; default: the model's native size).
    #[arg(long)]
    pub height: Option<u32>,
    /// Classifier-free guidance scale (1 or less turns guidance off).
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f32,
    /// Scheduler: euler, euler_a, dpmpp_2m_karras, ddim or lcm (default: the model's own, else euler).
    #[arg(long, value_parser = crate::cli::parse_scheduler)]
    pub scheduler: Option<SchedulerKind>,
    /// Pictures painted together in one pass.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Initial latents: float32 .npy of shape [1, 4, H/f, W/f] (diffusers' `latents=`); with --init-image, the
    /// unit noise added to the encoded picture.
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Paint from this picture (img2img; JPEG, PNG, GIF, WebP or BMP): turned upright by its EXIF orientation,
    /// centre-cropped to the painting's shape and resized to it. Needs a model with vae_encoder/.
    #[arg(long, requires = "strength")]
    pub init_image: Option<PathBuf>,
    /// How much of --init-image is repainted, above 0 and at most 1 (the share of the steps run).
    #[arg(long, requires = "init_image")]
    pub strength: Option<f64>,
    /// The model (a folder of HUABI__ENGINE__MODELS_DIR; default: HUABI__ENGINE__MODEL).
    #[arg(long)]
    pub model: Option<String>,
    /// A LoRA merged into the model: a name in models/loras or a .safetensors path, with an optional
    /// `:SCALE` (default 1). Repeat to stack several.
    #[arg(long = "lora", value_parser = parse_lora)]
    pub loras: Vec<LoraChoice>,
    /// Also write the pictures as painted, before the label: float32 .npy of shape [B, H, W, 3] in 0..1 (for
    /// comparing devices and engines pixel by pixel).
    #[arg(long)]
    pub pixels: Option<PathBuf>,
}

/// `NAME_OR_PATH[:SCALE]`.
pub fn parse_lora(s: &str) -> Result<LoraChoice, String> {
    let (name, scale) = match s.rsplit_once(':') {
        Some((name, scale)) if !name.is_empty() => match scale.parse::<f32>() {
            Ok(scale) if scale.is_finite() => (name, scale),
            _ => return Err(format!("{s:?}: the scale after ':' must be a number")),
        },
        _ => (s, 1.0),
    };
    if name.trim().is_empty() {
        return Err("a LoRA needs a name or a path".into());
    }
    Ok(LoraChoice {
        name: name.to_string(),
        scale,
    })
}

/// Output paths for a batch of `n`.
pub fn output_paths(out: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "huabi".into());
    let ext = out
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (0..n)
        .map(|i| out.with_file_name(format!("{stem}-{i}{ext}")))
        .collect()
}

fn is_jpeg(path: &Path) -> anyhow::Result<bool> {
    match path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .as_deref()
    {
        Some("png") => Ok(false),
        Some("jpg" | "jpeg") => Ok(true),
        _ => bail!("--out {} must end in .png, .jpg or .jpeg", path.display()),
    }
}

fn init_latents(path: &Path, batch: usize, per_item: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    let (shape, data) =
        npy::read_f32(path).with_context(|| format!("--init-latents {}", path.display()))?;
    let rows = shape.first().copied().unwrap_or(0);
    if shape.len() != 4 || !(rows == 1 || rows == batch) || data.len() != rows * per_item {
        bail!(
            "--init-latents {}: shape {shape:?} does not fit {batch} item(s) of {per_item} values ([1 or {batch}, 4, H/f, W/f])",
            path.display()
        );
    }
    Ok((0..batch)
        .map(|i| data[(i % rows) * per_item..(i % rows + 1) * per_item].to_vec())
        .collect())
}

/// Loads the engine, paints, labels and writes the files; prints seeds, paths and timings.
pub fn run(config: &EngineConfig, options: &GenerateOptions) -> anyhow::Result<Vec<PathBuf>> {
    let jpeg = is_jpeg(&options.out)?;
    if options.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let load_started = Instant::now();
    let mut engine = Engine::new(config)?;
    let model = options
        .model
        .clone()
        .unwrap_or_else(|| engine.catalog().default_model().to_string());
    let opened = engine.open(&model, &options.loras)?;
    let load_time = load_started.elapsed();
    let pipeline = engine.pipeline(&model, &options.loras)?;
    let folder = pipeline.folder();
    let scheduler = options
        .scheduler
        .or(folder.default_scheduler)
        .unwrap_or(SchedulerKind::Euler);
    let native = folder.native_size.unwrap_or(512);
    let (width, height) = (
        options.width.unwrap_or(native),
        options.height.unwrap_or(native),
    );
    let first_seed = options.seed.unwrap_or_else(rand::random);
    let f = folder.vae_scale_factor as usize;
    let per_item = 4 * (height as usize / f.max(1)) * (width as usize / f.max(1));
    let latents = match &options.init_latents {
        Some(path) => init_latents(path, options.batch, per_item)?
            .into_iter()
            .map(Some)
            .collect(),
        None => vec![None; options.batch],
    };
    let init_image = match &options.init_image {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let limits = PhotoLimits {
                max_bytes: usize::MAX,
                max_pixels: 100_000_000,
            };
            let picture = photo::prepare(&bytes, &limits, (width, height))
                .with_context(|| format!("--init-image {}", path.display()))?;
            Some(std::sync::Arc::new(picture))
        }
        None => None,
    };
    let strength = options.strength.map(Strength::new).transpose()?;
    let batch = Batch {
        key: BatchKey {
            model: model.clone(),
            loras: options.loras.clone(),
            width,
            height,
            steps: options.steps,
            scheduler,
            strength,
        },
        items: latents
            .into_iter()
            .enumerate()
            .map(|(i, init_latents)| Item {
                prompt: options.prompt.clone(),
                negative_prompt: options.negative.clone(),
                seed: first_seed.wrapping_add(i as u64),
                guidance: options.guidance,
                init_latents,
                init_image: init_image.clone(),
            })
            .collect(),
    };
    let show_bar = std::io::stderr().is_terminal();
    let mut on_step = |p: Progress| {
        if show_bar {
            let width = 30;
            let filled = p.done * width / p.total.max(1);
            eprint!(
                "\r{scheduler} [{}{}] step {}/{}",
                "#".repeat(filled),
                " ".repeat(width - filled),
                p.done,
                p.total
            );
            let _ = std::io::stderr().flush();
        }
    };
    let generated = pipeline.generate(&batch, &mut on_step)?;
    if show_bar {
        eprintln!();
    }
    if let Some(path) = &options.pixels {
        write_pixels(&generated.pictures, path)?;
    }
    let encode_started = Instant::now();
    let paths = output_paths(&options.out, options.batch);
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    for (i, (mut picture, path)) in generated.pictures.into_iter().zip(&paths).enumerate() {
        draw_visible_label(&mut picture);
        let record = AigcRecord::new(
            &config.aigc_provider,
            &format!("generate-{stamp}-{}", first_seed.wrapping_add(i as u64)),
        );
        write_picture(&picture, &record, path, jpeg)?;
        println!(
            "{} (seed {})",
            path.display(),
            first_seed.wrapping_add(i as u64)
        );
    }
    let t = generated.timings;
    if opened.merged_layers > 0 {
        println!(
            "LoRAs: {} layers merged in {:.0} ms",
            opened.merged_layers,
            opened.merge_secs * 1e3
        );
    }
    println!(
        "timings: load {:.0} ms, text {:.1} ms, denoise {:.1} ms ({:.1} ms/step), decode {:.1} ms, total {:.1} ms, encode {:.1} ms",
        load_time.as_secs_f64() * 1e3,
        t.text.as_secs_f64() * 1e3,
        t.denoise.as_secs_f64() * 1e3,
        t.denoise.as_secs_f64() * 1e3 / options.steps.max(1) as f64,
        t.decode.as_secs_f64() * 1e3,
        t.total.as_secs_f64() * 1e3,
        encode_started.elapsed().as_secs_f64() * 1e3,
    );
    Ok(paths)
}

/// The pictures' float pixels as one `[B, H, W, 3]` array.
fn write_pixels(pictures: &[Picture], path: &Path) -> anyhow::Result<()> {
    let (width, height) = pictures
        .first()
        .map_or((0, 0), |p| (p.width as usize, p.height as usize));
    let values: Vec<f32> = pictures
        .iter()
        .flat_map(|p| p.rgb.iter().copied())
        .collect();
    let bytes = npy::encode_f32(&[pictures.len(), height, width, 3], &values);
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn write_picture(
    picture: &Picture,
    record: &AigcRecord,
    path: &Path,
    jpeg: bool,
) -> anyhow::Result<()> {
    let bytes = if jpeg {
        encode::jpeg(picture, record, WECHAT_JPEG_BUDGET)?
    } else {
        encode::png(picture, record)?
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_outputs_are_numbered_beside_out() {
        assert_eq!(
            output_paths(Path::new("a/b.png"), 1),
            vec![PathBuf::from("a/b.png")]
        );
        assert_eq!(
            output_paths(Path::new("a/b.png"), 2),
            vec![PathBuf::from("a/b-0.png"), PathBuf::from("a/b-1.png")]
        );
    }

    #[test]
    fn only_png_and_jpeg_are_written() {
        assert!(!is_jpeg(Path::new("x.PNG")).expect("png"));
        assert!(is_jpeg(Path::new("x.jpeg")).expect("jpeg"));
        assert!(is_jpeg(Path::new("x.gif")).is_err());
        assert!(is_jpeg(Path::new("x")).is_err());
    }
}
