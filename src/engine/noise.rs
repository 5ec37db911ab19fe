//! The engine's seeded Gaussian noise: SplitMix64 → uniform (0, 1) → Box-Muller pairs. One stream per batch item,
//! seeded by the item's seed, so an item's picture never depends on its neighbours. `scripts/diffusers_reference.py`
//! re-implements this generator, which is how the reference values share huabi's random draws.

/// A stream of standard normal `f32` values.
#[derive(Debug, Clone)]
pub struct Noise {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl Noise {
    /// A stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Fills `out` with standard normal values (pairs are drawn whole; an odd tail discards its partner).
    pub fn fill(&mut self, out: &mut [f32]) {
        for pair in out.chunks_mut(2) {
            let u1 = self.uniform();
            let u2 = self.uniform();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * u2;
            pair[0] = (r * theta.cos()) as f32;
            if let Some(second) = pair.get_mut(1) {
                *second = (r * theta.sin()) as f32;
            }
        }
    }

    /// `n` standard normal values.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut v = vec![0.0; n];
        self.fill(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_different_seeds_differ() {
        assert_eq!(Noise::new(42).normals(100), Noise::new(42).normals(100));
        assert_ne!(Noise::new(42).normals(100), Noise::new(43).normals(100));
    }

    #[test]
    fn draws_look_standard_normal() {
        let v = Noise::new(1).normals(200_000);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn odd_lengths_consume_whole_pairs() {
        let mut a = Noise::new(5);
        let first = a.normals(3);
        let mut b = Noise::new(5);
        let four = b.normals(4);
        assert_eq!(first[..], four[..3]);
        assert_eq!(a.normals(2), b.normals(2));
    }
}
