//! Diffusion schedulers, numerically following diffusers (one file each). A scheduler instance serves one batch
//! item: multistep state and ancestral noise are per item, so batch neighbours never influence each other.

mod ddim;
mod dpmpp_2m;
mod euler;
mod euler_ancestral;
mod lcm;

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::noise::Noise;

/// The schedulers huabi offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// Euler (diffusers `EulerDiscreteScheduler`).
    Euler,
    /// Euler ancestral (`EulerAncestralDiscreteScheduler`).
    EulerA,
    /// DPM++ 2M Karras (`DPMSolverMultistepScheduler`, `use_karras_sigmas`).
    Dpmpp2mKarras,
    /// DDIM (`DDIMScheduler`, eta 0).
    Ddim,
    /// Latent consistency (`LCMScheduler`).
    Lcm,
}

impl SchedulerKind {
    /// Every scheduler, in the order `--help` lists them.
    pub const ALL: [SchedulerKind; 5] = [
        Self::Euler,
        Self::EulerA,
        Self::Dpmpp2mKarras,
        Self::Ddim,
        Self::Lcm,
    ];

    /// The name used in configuration, the CLI and storage.
    pub fn name(self) -> &'static str {
        match self {
            Self::Euler => "euler",
            Self::EulerA => "euler_a",
            Self::Dpmpp2mKarras => "dpmpp_2m_karras",
            Self::Ddim => "ddim",
            Self::Lcm => "lcm",
        }
    }

    /// The kind named by a diffusers `_class_name`, if huabi implements it.
    pub fn from_class_name(class: &str) -> Option<Self> {
        match class {
            "EulerDiscreteScheduler" => Some(Self::Euler),
            "EulerAncestralDiscreteScheduler" => Some(Self::EulerA),
            "DPMSolverMultistepScheduler" => Some(Self::Dpmpp2mKarras),
            "DDIMScheduler" => Some(Self::Ddim),
            "LCMScheduler" => Some(Self::Lcm),
            _ => None,
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = SchedulerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lowered = s
            .trim()
            .to_ascii_lowercase()
            .replace("++", "pp")
            .replace(['-', ' '], "_");
        let alias = match lowered.as_str() {
            "euler_ancestral" => "euler_a",
            "dpmpp_2m" | "dpmpp2m_karras" => "dpmpp_2m_karras",
            other => other,
        };
        Self::ALL
            .into_iter()
            .find(|k| k.name() == alias)
            .ok_or_else(|| SchedulerError::Unknown(s.chars().take(40).collect()))
    }
}

/// Scheduler failures.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    /// Not a scheduler huabi knows.
    #[error("unknown scheduler {0:?}; choose one of euler, euler_a, dpmpp_2m_karras, ddim, lcm")]
    Unknown(String),
    /// A configuration value huabi does not implement.
    #[error("unsupported scheduler setting {key} = {value}")]
    Unsupported {
        /// The setting.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// The step count does not fit the scheduler.
    #[error("{0}")]
    Steps(String),
}

/// `scheduler/scheduler_config.json`, as diffusers writes it. Absent keys take each scheduler's own default, as
/// diffusers' `from_config` does.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SchedulerConfig {
    /// diffusers class name.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// Training timesteps (1000).
    pub num_train_timesteps: Option<usize>,
    /// First beta.
    pub beta_start: Option<f64>,
    /// Last beta.
    pub beta_end: Option<f64>,
    /// `scaled_linear` or `linear`.
    pub beta_schedule: Option<String>,
    /// Only `epsilon` is supported.
    pub prediction_type: Option<String>,
    /// `leading`, `linspace` or `trailing`.
    pub timestep_spacing: Option<String>,
    /// Added to `leading` timesteps.
    pub steps_offset: Option<usize>,
    /// DDIM/LCM: ᾱ before the first step is 1.
    pub set_alpha_to_one: Option<bool>,
    /// DDIM/LCM: clamp the predicted sample.
    pub clip_sample: Option<bool>,
    /// Clamp range.
    pub clip_sample_range: Option<f32>,
    /// Euler: Karras sigmas.
    pub use_karras_sigmas: Option<bool>,
    /// LCM: the distillation schedule length.
    pub original_inference_steps: Option<usize>,
    /// LCM: boundary-condition timestep scaling.
    pub timestep_scaling: Option<f32>,
}

/// How a scheduler's timesteps are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spacing {
    Linspace,
    Leading,
    Trailing,
}

/// The training noise schedule shared by every scheduler.
#[derive(Debug, Clone)]
struct Training {
    /// ᾱ_t, float32 as torch computes it.
    alphas_cumprod: Vec<f32>,
    steps_offset: usize,
    spacing: Spacing,
}

impl Training {
    fn new(
        cfg: &SchedulerConfig,
        default_spacing: Spacing,
        default_offset: usize,
    ) -> Result<Self, SchedulerError> {
        if let Some(p) = cfg.prediction_type.as_deref().filter(|p| *p != "epsilon") {
            return Err(SchedulerError::Unsupported {
                key: "prediction_type",
                value: p.into(),
            });
        }
        let n = cfg.num_train_timesteps.unwrap_or(1000);
        if !(2..=100_000).contains(&n) {
            return Err(SchedulerError::Unsupported {
                key: "num_train_timesteps",
                value: n.to_string(),
            });
        }
        // diffusers' defaults differ per class (0.0001/0.02 linear); SD configs always set these keys.
        let start = cfg.beta_start.unwrap_or(0.0001);
        let end = cfg.beta_end.unwrap_or(0.02);
        let betas: Vec<f32> = match cfg.beta_schedule.as_deref().unwrap_or("linear") {
            "scaled_linear" => torch_linspace(start.sqrt(), end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            "linear" => torch_linspace(start, end, n),
            other => {
                return Err(SchedulerError::Unsupported {
                    key: "beta_schedule",
                    value: other.into(),
                });
            }
        };
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut product = 1.0f32;
        for beta in betas {
            product *= 1.0 - beta;
            alphas_cumprod.push(product);
        }
        let spacing = match cfg.timestep_spacing.as_deref() {
            None => default_spacing,
            Some("linspace") => Spacing::Linspace,
            Some("leading") => Spacing::Leading,
            Some("trailing") => Spacing::Trailing,
            Some(other) => {
                return Err(SchedulerError::Unsupported {
                    key: "timestep_spacing",
                    value: other.into(),
                });
            }
        };
        Ok(Self {
            alphas_cumprod,
            steps_offset: cfg.steps_offset.unwrap_or(default_offset),
            spacing,
        })
    }

    fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) for every training step, in float32 as diffusers computes it.
    fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect()
    }

    /// Timesteps (descending) for `steps` inference steps, before any offset rounding to integers.
    fn spaced(&self, steps: usize, round_linspace: bool) -> Vec<f64> {
        let t = self.len();
        match self.spacing {
            Spacing::Linspace => linspace(0.0, (t - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(|v| {
                    if round_linspace {
                        v.round_ties_even()
                    } else {
                        v as f32 as f64
                    }
                })
                .collect(),
            Spacing::Leading => {
                let ratio = t / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio + self.steps_offset) as f64)
                    .collect()
            }
            Spacing::Trailing => {
                // np.arange(T, 0, -T/N).round() - 1
                let ratio = t as f64 / steps as f64;
                let count = (t as f64 / ratio).ceil() as usize;
                (0..count)
                    .map(|i| (t as f64 - i as f64 * ratio).round_ties_even() - 1.0)
                    .collect()
            }
        }
    }
}

fn check_steps(steps: usize, training: usize) -> Result<(), SchedulerError> {
    if steps == 0 || steps > training {
        return Err(SchedulerError::Steps(format!(
            "steps must be between 1 and {training}, not {steps}"
        )));
    }
    Ok(())
}

/// `np.linspace` (float64, endpoint included).
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                end
            } else {
                start + step * i as f64
            }
        })
        .collect()
}

/// `torch.linspace(…, dtype=float32)`: the step is applied from both ends towards the middle.
fn torch_linspace(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// `np.interp(x, arange(len(table)), table)`.
fn interp(x: f64, table: &[f32]) -> f64 {
    if x <= 0.0 {
        return table[0] as f64;
    }
    let last = table.len() - 1;
    if x >= last as f64 {
        return table[last] as f64;
    }
    let i = x.floor() as usize;
    let w = x - i as f64;
    table[i] as f64 + (table[i + 1] as f64 - table[i] as f64) * w
}

/// Karras et al. (2022) sigmas between the table's extremes, ρ = 7.
fn karras(sigma_max: f64, sigma_min: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// diffusers' `_sigma_to_t`: the fractional training step whose log-sigma interpolates to `sigma`.
fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let last_le = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l >= 0.0)
        .unwrap_or(0);
    let low = last_le.min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// One item's scheduler: the timesteps to run and how to advance the latents.
pub trait Scheduler: Send {
    /// The timesteps, one per step, as the UNet receives them.
    fn timesteps(&self) -> &[f32];
    /// Scale of the initial noise.
    fn init_noise_sigma(&self) -> f32;
    /// The sigmas (with the final 0), for schedulers that work in sigma space.
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }
    /// Scales the UNet input at step `index` (in place).
    fn scale_model_input(&self, sample: &mut [f32], index: usize);
    /// Advances `sample` (in place) with the model's noise prediction at step `index`; `noise` supplies fresh
    /// Gaussian noise for ancestral schedulers.
    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], noise: &mut Noise);
    /// Noises clean latents (in place) to the level of step `index`, as img2img starts there (diffusers'
    /// `add_noise` with the scheduler's begin index).
    fn add_noise(&self, latents: &mut [f32], noise: &[f32], index: usize);
}

/// `add_noise` of the schedulers that work with ᾱ (DDPM's): √ᾱ_t·x + √(1 − ᾱ_t)·ε at timestep `t`.
fn add_noise_alpha(alphas_cumprod: &[f32], t: f32, latents: &mut [f32], noise: &[f32]) {
    let a = alphas_cumprod
        .get(t.max(0.0) as usize)
        .copied()
        .unwrap_or(1.0);
    let (signal, spread) = (a.sqrt(), (1.0 - a).sqrt());
    for (x, n) in latents.iter_mut().zip(noise) {
        *x = signal * *x + spread * n;
    }
}

/// `add_noise` of the schedulers that work with σ: x + σ·ε.
fn add_noise_sigma(sigma: f32, latents: &mut [f32], noise: &[f32]) {
    for (x, n) in latents.iter_mut().zip(noise) {
        *x += n * sigma;
    }
}

/// Builds a scheduler of `kind` from the model's configuration for `steps` steps.
pub fn build(
    kind: SchedulerKind,
    cfg: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Scheduler>, SchedulerError> {
    Ok(match kind {
        SchedulerKind::Euler => Box::new(euler::Euler::new(cfg, steps)?),
        SchedulerKind::EulerA => Box::new(euler_ancestral::EulerAncestral::new(cfg, steps)?),
        SchedulerKind::Dpmpp2mKarras => Box::new(dpmpp_2m::DpmPp2m::new(cfg, steps)?),
        SchedulerKind::Ddim => Box::new(ddim::Ddim::new(cfg, steps)?),
        SchedulerKind::Lcm => Box::new(lcm::Lcm::new(cfg, steps)?),
    })
}

#[cfg(test)]
mod tests;
