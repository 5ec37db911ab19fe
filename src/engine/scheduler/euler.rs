//! Euler (diffusers `EulerDiscreteScheduler`, A1111 "Euler"): sigma-space ODE steps.

use super::{
    SchedulerConfig, SchedulerError, Spacing, Training, check_steps, interp, karras, sigma_to_t,
};
use crate::engine::noise::Noise;

/// Timesteps and sigmas (with a final 0) shared by Euler and Euler ancestral.
#[derive(Debug, Clone)]
pub(super) struct SigmaSchedule {
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
    pub init_noise_sigma: f32,
}

impl SigmaSchedule {
    pub fn new(
        cfg: &SchedulerConfig,
        steps: usize,
        allow_karras: bool,
    ) -> Result<Self, SchedulerError> {
        let training = Training::new(cfg, Spacing::Linspace, 0)?;
        check_steps(steps, training.len())?;
        let table = training.sigmas();
        let mut timesteps = training.spaced(steps, false);
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t, &table)).collect();
        if allow_karras && cfg.use_karras_sigmas.unwrap_or(false) {
            let log_sigmas: Vec<f64> = table.iter().map(|&s| (s as f64).ln()).collect();
            sigmas = karras(sigmas[0], sigmas[sigmas.len() - 1], steps);
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
        }
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(0.0);
        let max = sigmas.iter().copied().fold(0.0f32, f32::max);
        let init_noise_sigma = match training.spacing {
            Spacing::Linspace | Spacing::Trailing => max,
            Spacing::Leading => (max * max + 1.0).sqrt(),
        };
        Ok(Self {
            timesteps: timesteps.into_iter().map(|t| t as f32).collect(),
            sigmas,
            init_noise_sigma,
        })
    }

    pub fn scale_model_input(&self, sample: &mut [f32], index: usize) {
        let sigma = self.sigmas[index];
        let scale = (sigma * sigma + 1.0).sqrt();
        sample.iter_mut().for_each(|x| *x /= scale);
    }
}

/// Euler.
#[derive(Debug, Clone)]
pub struct Euler {
    schedule: SigmaSchedule,
}

impl Euler {
    /// Euler for `steps` steps.
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        Ok(Self {
            schedule: SigmaSchedule::new(cfg, steps, true)?,
        })
    }
}

impl super::Scheduler for Euler {
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

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], _noise: &mut Noise) {
        // s_churn = 0, so sigma_hat = sigma.
        let sigma = self.schedule.sigmas[index];
        let dt = self.schedule.sigmas[index + 1] - sigma;
        for (x, &eps) in sample.iter_mut().zip(model_output) {
            let x0 = *x - sigma * eps;
            let derivative = (*x - x0) / sigma;
            *x += derivative * dt;
        }
    }
}
