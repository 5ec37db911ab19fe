//! DDIM (diffusers `DDIMScheduler`) with eta 0: deterministic.

use super::{SchedulerConfig, SchedulerError, Spacing, Training, check_steps};
use crate::engine::noise::Noise;

/// DDIM.
#[derive(Debug, Clone)]
pub struct Ddim {
    timesteps: Vec<f32>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    step_ratio: usize,
    clip: Option<f32>,
}

impl Ddim {
    /// DDIM for `steps` steps.
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let training = Training::new(cfg, Spacing::Leading, 0)?;
        check_steps(steps, training.len())?;
        let timesteps = training
            .spaced(steps, true)
            .into_iter()
            .map(|t| t as f32)
            .collect();
        let final_alpha_cumprod = if cfg.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            training.alphas_cumprod[0]
        };
        let clip = cfg
            .clip_sample
            .unwrap_or(true)
            .then(|| cfg.clip_sample_range.unwrap_or(1.0));
        Ok(Self {
            timesteps,
            step_ratio: training.len() / steps,
            alphas_cumprod: training.alphas_cumprod,
            final_alpha_cumprod,
            clip,
        })
    }
}

impl super::Scheduler for Ddim {
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

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], _noise: &mut Noise) {
        let t = self.timesteps[index] as usize;
        let alpha_t = self.alphas_cumprod[t];
        // diffusers steps back by T/N, not to the next scheduled timestep.
        let alpha_prev = match t.checked_sub(self.step_ratio) {
            Some(prev) => self.alphas_cumprod[prev],
            None => self.final_alpha_cumprod,
        };
        let beta_t = 1.0 - alpha_t;
        for (x, &eps) in sample.iter_mut().zip(model_output) {
            let mut x0 = (*x - beta_t.sqrt() * eps) / alpha_t.sqrt();
            if let Some(range) = self.clip {
                x0 = x0.clamp(-range, range);
            }
            let direction = (1.0 - alpha_prev).sqrt() * eps;
            *x = alpha_prev.sqrt() * x0 + direction;
        }
    }
}
