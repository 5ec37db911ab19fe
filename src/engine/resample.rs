//! Resizing 8-bit RGB pictures exactly as Pillow's `Image.resize` does (its `Resample.c`: a separable convolution,
//! horizontal pass first, fixed-point coefficients with 22 fractional bits, each pass rounded back to 8 bits), so
//! photos prepared for img2img and pictures prepared for the safety checker equal what diffusers and transformers
//! feed their models.

/// Pillow's resampling filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BILINEAR` (2).
    Bilinear,
    /// `Image.BICUBIC` (3).
    Bicubic,
    /// `Image.LANCZOS` (1).
    Lanczos,
}

impl Filter {
    /// The filter of a Pillow resample number (`PILImageResampling`), if huabi has it.
    pub fn from_pil(number: u64) -> Option<Self> {
        match number {
            1 => Some(Filter::Lanczos),
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output pixel: the first input pixel, how many it reads, and their fixed-point weights.
struct Coefficients {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    size: usize,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for `input` pixels → `output` pixels.
fn coefficients(input: usize, output: usize, filter: Filter) -> Coefficients {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let size = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(output);
    let mut weights = vec![0i32; output * size];
    let mut k = vec![0.0f64; size];
    for xx in 0..output {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize - xmin;
        let mut total = 0.0;
        for (x, slot) in k.iter_mut().enumerate().take(xmax) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *slot = w;
            total += w;
        }
        for x in 0..xmax {
            let w = if total != 0.0 { k[x] / total } else { k[x] };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * size + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coefficients {
        bounds,
        weights,
        size,
    }
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The horizontal pass over rows `rows` of `rgb` (`width` pixels a row).
fn horizontal(rgb: &[u8], width: usize, rows: std::ops::Range<usize>, c: &Coefficients) -> Vec<u8> {
    let mut out = Vec::with_capacity(c.bounds.len() * rows.len() * 3);
    for y in rows {
        let row = &rgb[y * width * 3..(y + 1) * width * 3];
        for (xx, &(xmin, count)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.size..xx * c.size + count];
            for channel in 0..3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (x, &w) in k.iter().enumerate() {
                    ss += i64::from(row[(xmin + x) * 3 + channel]) * i64::from(w);
                }
                out.push(clip8(ss));
            }
        }
    }
    out
}

/// The vertical pass over `rgb` (`width` pixels a row).
fn vertical(rgb: &[u8], width: usize, c: &Coefficients) -> Vec<u8> {
    let mut out = Vec::with_capacity(width * c.bounds.len() * 3);
    for (yy, &(ymin, count)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.size..yy * c.size + count];
        for x in 0..width {
            for channel in 0..3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (y, &w) in k.iter().enumerate() {
                    ss += i64::from(rgb[((ymin + y) * width + x) * 3 + channel]) * i64::from(w);
                }
                out.push(clip8(ss));
            }
        }
    }
    out
}

/// `rgb` (8-bit, `width` × `height`, 3 bytes a pixel) resized to `to_width` × `to_height` as Pillow resizes it.
pub fn resize(
    rgb: &[u8],
    (width, height): (usize, usize),
    (to_width, to_height): (usize, usize),
    filter: Filter,
) -> Vec<u8> {
    debug_assert_eq!(rgb.len(), width * height * 3);
    if (width, height) == (to_width, to_height) || width == 0 || height == 0 {
        return rgb.to_vec();
    }
    let across = coefficients(width, to_width, filter);
    let mut down = coefficients(height, to_height, filter);
    let mut data = std::borrow::Cow::Borrowed(rgb);
    let mut row_width = width;
    if to_width != width {
        // Only the rows the vertical pass reads are resized.
        let first = down.bounds.first().map_or(0, |b| b.0);
        let last = down.bounds.last().map_or(height, |b| b.0 + b.1);
        for bound in &mut down.bounds {
            bound.0 -= first;
        }
        data = horizontal(&data, width, first..last, &across).into();
        row_width = to_width;
    }
    if to_height != height {
        data = vertical(&data, row_width, &down).into();
    }
    data.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_size_is_a_copy_and_flat_pictures_stay_flat() {
        let flat = vec![77u8; 10 * 7 * 3];
        assert_eq!(resize(&flat, (10, 7), (10, 7), Filter::Lanczos), flat);
        for filter in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
            for to in [(3, 2), (31, 17), (10, 30)] {
                let out = resize(&flat, (10, 7), to, filter);
                assert_eq!(out.len(), to.0 * to.1 * 3);
                assert!(out.iter().all(|&v| v == 77), "{filter:?} {to:?}");
            }
        }
    }

    #[test]
    fn weights_of_each_pixel_sum_to_one() {
        for filter in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
            let c = coefficients(50, 13, filter);
            for (i, &(_, n)) in c.bounds.iter().enumerate() {
                let sum: i64 = c.weights[i * c.size..i * c.size + n]
                    .iter()
                    .map(|&w| i64::from(w))
                    .sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= n as i64,
                    "{filter:?} {sum}"
                );
            }
        }
    }
}
