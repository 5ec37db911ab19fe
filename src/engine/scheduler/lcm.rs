//! Latent consistency (diffusers `LCMScheduler`): timesteps drawn from the distillation schedule; each step predicts
//! the denoised sample and re-noises it to the next timestep (not on the last step).

use super::{SchedulerConfig, SchedulerError, Spacing, Training, check_steps};
use crate::engine::noise::Noise;

/// LCM.
#[derive(Debug, Clone)]
pub struct Lcm {
    timesteps: Vec<f32>,
    alphas_cumprod: Vec<f32>,
    timestep_scaling: f32,
    clip: Option<f32>,
    fresh: Vec<f32>,
}

impl Lcm {
    /// LCM for `steps` steps (at most `original_inference_steps`, 50 by default).
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let training = Training::new(cfg, Spacing::Leading, 0)?;
        check_steps(steps, training.len())?;
        let original = cfg
            .original_inference_steps
            .unwrap_or(50)
            .clamp(1, training.len());
        if steps > original {
            return Err(SchedulerError::Steps(format!(
                "LCM runs at most {original} steps (original_inference_steps), not {steps}"
            )));
        }
        let k = training.len() / original;
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        let timesteps = (0..steps)
            .map(|i| {
                origin[(i as f64 * origin.len() as f64 / steps as f64).floor() as usize] as f32
            })
            .collect();
        Ok(Self {
            timesteps,
            alphas_cumprod: training.alphas_cumprod,
            timestep_scaling: cfg.timestep_scaling.unwrap_or(10.0),
            clip: cfg
                .clip_sample
                .unwrap_or(false)
                .then(|| cfg.clip_sample_range.unwrap_or(1.0)),
            fresh: Vec::new(),
        })
    }
}

impl super::Scheduler for Lcm {
    fn add_noise(&self, latents: &mut [f32], noise: &[f32], index: usize) {
        super::add_noise_alpha(&self.alphas_cumprod, self.timesteps[index], latents, noise);
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn scale_model_input(&self, _sample: &mut [f32], _index: usize) {}

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], noise: &mut Noise) {
        let t = self.timesteps[index] as usize;
        let last = index + 1 == self.timesteps.len();
        let prev_t = if last {
            t
        } else {
            self.timesteps[index + 1] as usize
        };
        let alpha_t = self.alphas_cumprod[t];
        let alpha_prev = self.alphas_cumprod[prev_t];
        let scaled = t as f32 * self.timestep_scaling;
        let c_skip = 0.25 / (scaled * scaled + 0.25);
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();
        if !last {
            self.fresh.resize(sample.len(), 0.0);
            noise.fill(&mut self.fresh);
        }
        for (i, (x, &eps)) in sample.iter_mut().zip(model_output).enumerate() {
            let mut x0 = (*x - (1.0 - alpha_t).sqrt() * eps) / alpha_t.sqrt();
            if let Some(range) = self.clip {
                x0 = x0.clamp(-range, range);
            }
            let denoised = c_out * x0 + c_skip * *x;
            *x = if last {
                denoised
            } else {
                alpha_prev.sqrt() * denoised + (1.0 - alpha_prev).sqrt() * self.fresh[i]
            };
        }
    }
}
