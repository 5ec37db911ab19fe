//! DPM++ 2M Karras (diffusers `DPMSolverMultistepScheduler` with `use_karras_sigmas`, `dpmsolver++`, midpoint,
//! solver order 2, `lower_order_final`, final sigma 0). Works in VP space: no input scaling, unit initial noise.

use super::{SchedulerConfig, SchedulerError, Spacing, Training, check_steps, karras, sigma_to_t};
use crate::engine::noise::Noise;

/// DPM++ 2M with Karras sigmas.
#[derive(Debug, Clone)]
pub struct DpmPp2m {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    /// The previous step's predicted sample (the second-order term needs it).
    previous_x0: Option<Vec<f32>>,
}

/// α_t and σ_t of a sigma: α = 1/sqrt(σ²+1), σ_t = σ·α.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl DpmPp2m {
    /// DPM++ 2M Karras for `steps` steps.
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let training = Training::new(cfg, Spacing::Linspace, 0)?;
        check_steps(steps, training.len())?;
        let table = training.sigmas();
        let log_sigmas: Vec<f64> = table.iter().map(|&s| (s as f64).ln()).collect();
        let (max, min) = (table[table.len() - 1] as f64, table[0] as f64);
        let sigmas = karras(max, min, steps);
        let timesteps = sigmas
            .iter()
            .map(|&s| sigma_to_t(s, &log_sigmas).round_ties_even() as f32)
            .collect();
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(0.0);
        Ok(Self {
            timesteps,
            sigmas,
            previous_x0: None,
        })
    }
}

impl super::Scheduler for DpmPp2m {
    fn add_noise(&self, latents: &mut [f32], noise: &[f32], index: usize) {
        let (alpha, sigma) = alpha_sigma(self.sigmas[index]);
        for (x, n) in latents.iter_mut().zip(noise) {
            *x = alpha * *x + sigma * n;
        }
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn scale_model_input(&self, _sample: &mut [f32], _index: usize) {}

    fn step(&mut self, index: usize, model_output: &[f32], sample: &mut [f32], _noise: &mut Noise) {
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[index]);
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[index + 1]);
        let x0: Vec<f32> = sample
            .iter()
            .zip(model_output)
            .map(|(&x, &eps)| (x - sigma_s0 * eps) / alpha_s0)
            .collect();
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let ratio = sigma_t / sigma_s0;
        let coefficient = alpha_t * ((-h).exp() - 1.0);
        // First order on the first step and (final sigma 0) on the last; second order in between.
        let last = index + 1 == self.timesteps.len();
        match (&self.previous_x0, last) {
            (Some(m1), false) => {
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[index - 1]);
                let h0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
                let r0 = h0 / h;
                for ((x, &m0), &m1) in sample.iter_mut().zip(&x0).zip(m1) {
                    let d1 = (1.0 / r0) * (m0 - m1);
                    *x = ratio * *x - coefficient * m0 - 0.5 * coefficient * d1;
                }
            }
            _ => {
                for (x, &m0) in sample.iter_mut().zip(&x0) {
                    *x = ratio * *x - coefficient * m0;
                }
            }
        }
        self.previous_x0 = Some(x0);
    }
}
