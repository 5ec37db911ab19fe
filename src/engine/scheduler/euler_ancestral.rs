//! Euler ancestral (diffusers `EulerAncestralDiscreteScheduler`, A1111 "Euler a"): an Euler step to σ_down, then
//! fresh noise of size σ_up.

use super::euler::SigmaSchedule;
use super::{SchedulerConfig, SchedulerError};
use crate::engine::noise::Noise;

/// Euler ancestral.
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    schedule: SigmaSchedule,
    fresh: Vec<f32>,
}

impl EulerAncestral {
    /// Euler ancestral for `steps` steps (no Karras option, as in diffusers).
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        Ok(Self {
            schedule: SigmaSchedule::new(cfg, steps, false)?,
            fresh: Vec::new(),
        })
    }
}

impl super::Scheduler for EulerAncestral {
    fn add_noise(&self, latents: &mut [f32], noise: &[f32], index: usize) {
        super::add_noise_sigma(self.schedule.sigmas[index], latents, noise);
    }

    fn timesteps(&self) -> &[f32] {
        &self.schedule.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.schedule.sigmas)
    }

    fn init_noise_sigma(&self) -> f32 {
        self.schedule.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &mut [f32], index: usize) {
        self.schedule.scale_model_input(sample, index);
    }

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], noise: &mut Noise) {
        let sigma_from = self.schedule.sigmas[index];
        let sigma_to = self.schedule.sigmas[index + 1];
        let sigma_up = (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
            / (sigma_from * sigma_from))
            .sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma_from;
        // diffusers draws noise on every step, the last included (where σ_up = 0).
        self.fresh.resize(sample.len(), 0.0);
        noise.fill(&mut self.fresh);
        for ((x, &eps), &n) in sample.iter_mut().zip(model_output).zip(&self.fresh) {
            let x0 = *x - sigma_from * eps;
            let derivative = (*x - x0) / sigma_from;
            *x = *x + derivative * dt + n * sigma_up;
        }
    }
}
