//! Text-to-image: tokenize → text encoder(s) (conditional and unconditional rows in one batch) → seeded latents →
//! one batched UNet call per step with classifier-free guidance → VAE decode. SD 1.x/2.x and SDXL (two encoders,
//! pooled embeddings, size conditioning).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType};

use super::conditioning::{Conditioning, Encoder, TextConditioner};
use super::model::{Architecture, ModelFolder, ModelIo, Port};
use super::noise::Noise;
use super::runtime::{self, Device};
use super::safety::{self, SafetyChecker, Verdict};
use super::scheduler::{self, Scheduler};
use super::tokenizer::PromptTokenizer;
use super::{Batch, EngineConfig, EngineError, Picture};

/// Latent channels of SD 1.x/2.x and SDXL.
const LATENT_CHANNELS: usize = 4;
/// Most output pixels one VAE call decodes (256² × 4).
const VAE_PIXELS_PER_CALL: usize = 262_144;

/// A session several pipelines may share (a VAE or text encoder no LoRA changes).
pub type SharedSession = Arc<Mutex<Session>>;

/// Locks a session (the engine runs on one thread, so this never waits).
pub(crate) fn lock(session: &SharedSession) -> Result<MutexGuard<'_, Session>, EngineError> {
    session
        .lock()
        .map_err(|_| EngineError::Runtime("a session lock was poisoned".into()))
}

/// The sessions of one pipeline.
#[derive(Clone)]
pub struct Sessions {
    /// `text_encoder` (and SDXL's `text_encoder_2`).
    pub text_encoders: Vec<SharedSession>,
    /// `unet`.
    pub unet: SharedSession,
    /// `vae_decoder`.
    pub vae: SharedSession,
    /// `vae_encoder`, when the folder has one.
    pub vae_encoder: Option<SharedSession>,
    /// `safety_checker` (opened by [`safety::open_session`]), when pictures are checked.
    pub safety_checker: Option<SharedSession>,
}

impl Sessions {
    /// The sessions of `folder`'s components, each given by `session(component)`.
    pub fn gather(
        folder: &ModelFolder,
        mut session: impl FnMut(&'static str) -> Result<SharedSession, EngineError>,
    ) -> Result<Self, EngineError> {
        Ok(Self {
            text_encoders: folder
                .text_encoders()
                .iter()
                .map(|c| session(c))
                .collect::<Result<_, _>>()?,
            unet: session("unet")?,
            vae: session("vae_decoder")?,
            vae_encoder: folder
                .has_vae_encoder
                .then(|| session("vae_encoder"))
                .transpose()?,
            safety_checker: None,
        })
    }
}

/// Where the time of one batch went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Tokenizing and the text encoder.
    pub text: Duration,
    /// All UNet steps, scheduler included.
    pub denoise: Duration,
    /// VAE decoding.
    pub decode: Duration,
    /// The safety check.
    pub safety: Duration,
    /// The whole batch.
    pub total: Duration,
}

/// Progress reported after each denoising step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Steps done.
    pub done: usize,
    /// Steps in all.
    pub total: usize,
}

/// The pictures of one batch, in item order, and where the time went.
#[derive(Debug, Clone)]
pub struct Generated {
    /// One picture per item.
    pub pictures: Vec<Picture>,
    /// The safety checker's verdict on each picture (`None` when the model's pictures are not checked).
    pub verdicts: Vec<Option<Verdict>>,
    /// Stage timings.
    pub timings: StageTimings,
}

/// A loaded Stable Diffusion pipeline: its sessions, tokenizers and the folder's configuration.
pub struct StableDiffusion {
    folder: ModelFolder,
    io: ModelIo,
    text: TextConditioner,
    unet: SharedSession,
    vae: SharedSession,
    vae_encoder: Option<SharedSession>,
    safety: Option<SafetyChecker>,
    config: EngineConfig,
}

impl std::fmt::Debug for StableDiffusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableDiffusion")
            .field("folder", &self.folder.root)
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::Invalid(msg.into())
}

/// A tensor of `port`'s element type from float values.
fn float_tensor(
    dtype: TensorElementType,
    shape: Vec<i64>,
    data: &[f32],
) -> Result<DynValue, EngineError> {
    Ok(match dtype {
        TensorElementType::Float16 => {
            let half: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
            Tensor::from_array((shape, half))?.into_dyn()
        }
        _ => Tensor::from_array((shape, data.to_vec()))?.into_dyn(),
    })
}

/// Float values (f32 or f16) and the shape of an output.
pub(crate) fn float_values(value: &DynValue) -> Result<(Vec<i64>, Vec<f32>), EngineError> {
    if let Ok((shape, data)) = value.try_extract_tensor::<f32>() {
        return Ok((shape.iter().copied().collect(), data.to_vec()));
    }
    let (shape, data) = value.try_extract_tensor::<half::f16>()?;
    Ok((
        shape.iter().copied().collect(),
        data.iter().map(|v| v.to_f32()).collect(),
    ))
}

/// What the VAE encoder says of one picture.
enum Posterior {
    /// The latent distribution: its mean and log-variance (diffusers' `DiagonalGaussianDistribution`).
    Gaussian {
        mean: Vec<f32>,
        log_variance: Vec<f32>,
    },
    /// A sample the encoder drew itself.
    Drawn(Vec<f32>),
}

impl Posterior {
    /// A sample, as diffusers' `latent_dist.sample()` draws it: mean + exp(½·clamp(logvar, −30, 20))·ε, with ε the
    /// next values of the item's noise stream.
    fn sample(&self, noise: &mut Noise) -> Vec<f32> {
        match self {
            Posterior::Gaussian { mean, log_variance } => {
                let eps = noise.normals(mean.len());
                mean.iter()
                    .zip(log_variance)
                    .zip(eps)
                    .map(|((m, lv), e)| m + (0.5 * lv.clamp(-30.0, 20.0)).exp() * e)
                    .collect()
            }
            Posterior::Drawn(sample) => sample.clone(),
        }
    }
}

fn timestep_tensor(port: &Port, t: f32, rows: usize) -> Result<DynValue, EngineError> {
    let (shape, count): (Vec<i64>, usize) = match port.dims.as_slice() {
        [] => (vec![], 1),
        [1] => (vec![1], 1),
        _ => (vec![rows as i64], rows),
    };
    Ok(match port.dtype {
        TensorElementType::Int64 => Tensor::from_array((shape, vec![t as i64; count]))?.into_dyn(),
        TensorElementType::Int32 => Tensor::from_array((shape, vec![t as i32; count]))?.into_dyn(),
        dtype => float_tensor(dtype, shape, &vec![t; count])?,
    })
}

impl StableDiffusion {
    /// Loads ONNX Runtime, checks the configured default model's folder and opens its sessions (no LoRAs).
    pub fn load(config: &EngineConfig) -> Result<Self, EngineError> {
        let device: Device = config.device.parse()?;
        let folder = ModelFolder::inspect(&config.default_model_dir())?;
        let env = runtime::environment(config, device)?;
        let open = |component: &str| -> Result<SharedSession, EngineError> {
            Ok(Arc::new(Mutex::new(runtime::open_session(
                &env,
                &folder.onnx(component),
                device,
            )?)))
        };
        let mut sessions = Sessions::gather(&folder, open)?;
        sessions.safety_checker = safety::wanted(config, &folder)?
            .then(|| {
                safety::open_session(&env, &folder.root, device).map(|s| Arc::new(Mutex::new(s)))
            })
            .transpose()?;
        Self::new(folder, sessions, config)
    }

    /// A pipeline over sessions already open for `folder` (maybe shared with other pipelines, maybe with LoRAs).
    pub fn new(
        folder: ModelFolder,
        sessions: Sessions,
        config: &EngineConfig,
    ) -> Result<Self, EngineError> {
        let io = {
            let encoders = sessions
                .text_encoders
                .iter()
                .map(lock)
                .collect::<Result<Vec<_>, _>>()?;
            let encoder_refs: Vec<&Session> = encoders.iter().map(|g| &**g).collect();
            let vae_encoder = sessions.vae_encoder.as_ref().map(lock).transpose()?;
            ModelIo::read(
                &folder,
                &encoder_refs,
                &*lock(&sessions.unet)?,
                &*lock(&sessions.vae)?,
                vae_encoder.as_deref(),
            )?
        };
        let tokenizers: &[&str] = match folder.architecture {
            Architecture::Sd => &["tokenizer"],
            Architecture::Sdxl => &["tokenizer", "tokenizer_2"],
        };
        let encoders = tokenizers
            .iter()
            .zip(&sessions.text_encoders)
            .zip(&io.text_encoders)
            .map(|((dir, session), io)| {
                Ok(Encoder {
                    tokenizer: PromptTokenizer::from_dir(&folder.root.join(dir))?,
                    session: session.clone(),
                    io: io.clone(),
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(Self {
            text: TextConditioner::new(encoders, folder.zero_empty_negative)?,
            io,
            unet: sessions.unet,
            vae: sessions.vae,
            vae_encoder: sessions.vae_encoder,
            safety: sessions
                .safety_checker
                .map(|session| SafetyChecker::new(session, &folder.root))
                .transpose()?,
            folder,
            config: config.clone(),
        })
    }

    /// The model folder's configuration.
    pub fn folder(&self) -> &ModelFolder {
        &self.folder
    }

    /// The sessions' inputs and outputs.
    pub fn io(&self) -> &ModelIo {
        &self.io
    }

    /// Latent height and width for a picture size.
    fn latent_size(&self, width: u32, height: u32) -> (usize, usize) {
        let f = self.folder.vae_scale_factor;
        ((height / f) as usize, (width / f) as usize)
    }

    /// Refuses what cannot be generated, with a message that says why.
    pub fn validate(&self, batch: &Batch) -> Result<(), EngineError> {
        let key = &batch.key;
        let f = self.folder.vae_scale_factor;
        let multiple = f.max(8);
        if batch.items.is_empty() {
            return Err(invalid("the batch has no items"));
        }
        if batch.items.len() > self.config.max_batch {
            return Err(invalid(format!(
                "batch of {} exceeds engine.max_batch {}",
                batch.items.len(),
                self.config.max_batch
            )));
        }
        for (name, value, max) in [
            ("width", key.width, self.config.max_width),
            ("height", key.height, self.config.max_height),
        ] {
            if value == 0 || value % multiple != 0 {
                return Err(invalid(format!(
                    "{name} {value} must be a positive multiple of {multiple}"
                )));
            }
            if value > max {
                return Err(invalid(format!("{name} {value} exceeds the maximum {max}")));
            }
        }
        let (h, w) = self.latent_size(key.width, key.height);
        for (i, item) in batch.items.iter().enumerate() {
            for (what, text) in [
                ("prompt", &item.prompt),
                ("negative prompt", &item.negative_prompt),
            ] {
                let chars = text.chars().count();
                if chars > self.config.max_prompt_chars {
                    return Err(invalid(format!(
                        "item {i}: {what} has {chars} characters; the most is {}",
                        self.config.max_prompt_chars
                    )));
                }
            }
            if item.prompt.trim().is_empty() {
                return Err(invalid(format!("item {i}: the prompt is empty")));
            }
            if !item.guidance.is_finite() || !(0.0..=50.0).contains(&item.guidance) {
                return Err(invalid(format!(
                    "item {i}: guidance {} must be between 0 and 50",
                    item.guidance
                )));
            }
            if let Some(latents) = &item.init_latents {
                let want = LATENT_CHANNELS * h * w;
                if latents.len() != want {
                    return Err(invalid(format!(
                        "item {i}: initial latents have {} values; {width}x{height} needs [1, 4, {h}, {w}] = {want}",
                        latents.len(),
                        width = key.width,
                        height = key.height
                    )));
                }
                if latents.iter().any(|v| !v.is_finite()) {
                    return Err(invalid(format!(
                        "item {i}: initial latents contain NaN or infinity"
                    )));
                }
            }
        }
        let steps = scheduler::build(key.scheduler, &self.folder.scheduler, key.steps)?
            .timesteps()
            .len();
        match key.strength {
            Some(strength) => {
                if self.vae_encoder.is_none() {
                    return Err(invalid(format!(
                        "{} has no vae_encoder/, so it cannot paint from pictures",
                        self.folder.root.display()
                    )));
                }
                strength.first_step(steps)?;
                for (i, item) in batch.items.iter().enumerate() {
                    match &item.init_image {
                        Some(p) if (p.width, p.height) == (key.width, key.height) => {}
                        Some(p) => {
                            return Err(invalid(format!(
                                "item {i}: its starting picture is {}x{}, the batch paints {}x{}",
                                p.width, p.height, key.width, key.height
                            )));
                        }
                        None => {
                            return Err(invalid(format!(
                                "item {i}: a strength needs a starting picture"
                            )));
                        }
                    }
                }
            }
            None => {
                if batch.items.iter().any(|i| i.init_image.is_some()) {
                    return Err(invalid("a starting picture needs a strength"));
                }
            }
        }
        Ok(())
    }

    /// Paints every item of the batch in one pass; `on_step` is told after each denoising step.
    pub fn generate(
        &mut self,
        batch: &Batch,
        on_step: &mut dyn FnMut(Progress),
    ) -> Result<Generated, EngineError> {
        self.validate(batch)?;
        let started = Instant::now();
        let key = &batch.key;
        let items = &batch.items;
        let b = items.len();
        let guided = items.iter().any(|i| i.guidance > 1.0);
        let rows = if guided { 2 * b } else { b };

        // Text: [negatives…, prompts…] when guided (diffusers' order), else prompts.
        let negatives: Vec<&str> = if guided {
            items.iter().map(|i| i.negative_prompt.as_str()).collect()
        } else {
            Vec::new()
        };
        let prompts: Vec<&str> = items.iter().map(|i| i.prompt.as_str()).collect();
        let embeddings = self.text.condition(&negatives, &prompts)?;
        let text_done = started.elapsed();

        // Latents and one scheduler per item; img2img starts from the encoded pictures, noised to its first step.
        let (h, w) = self.latent_size(key.width, key.height);
        let per_item = LATENT_CHANNELS * h * w;
        let encoded = match key.strength {
            Some(_) => Some(self.encode(items, h, w)?),
            None => None,
        };
        let mut noises: Vec<Noise> = Vec::with_capacity(b);
        let mut latents: Vec<Vec<f32>> = Vec::with_capacity(b);
        let mut schedulers: Vec<Box<dyn Scheduler>> = Vec::with_capacity(b);
        let mut start = 0;
        for (i, item) in items.iter().enumerate() {
            // The stream always yields the latents first, so given latents equal to the seed's change nothing.
            let mut noise = Noise::new(item.seed);
            let mut x = noise.normals(per_item);
            if let Some(given) = &item.init_latents {
                x.copy_from_slice(given);
            }
            let s = scheduler::build(key.scheduler, &self.folder.scheduler, key.steps)?;
            match (&encoded, key.strength) {
                (Some(encoded), Some(strength)) => {
                    start = strength.first_step(s.timesteps().len())?;
                    let mut init = encoded[i].sample(&mut noise);
                    let scaling = self.folder.latent_scaling;
                    init.iter_mut().for_each(|v| *v *= scaling);
                    s.add_noise(&mut init, &x, start);
                    x = init;
                }
                _ => {
                    let sigma = s.init_noise_sigma();
                    x.iter_mut().for_each(|v| *v *= sigma);
                }
            }
            noises.push(noise);
            latents.push(x);
            schedulers.push(s);
        }

        let timesteps: Vec<f32> = schedulers[0].timesteps().to_vec();
        let sample_shape = vec![rows as i64, LATENT_CHANNELS as i64, h as i64, w as i64];
        let mut model_input = vec![0.0f32; rows * per_item];
        for (index, &t) in timesteps.iter().enumerate().skip(start) {
            for (i, (x, s)) in latents.iter().zip(&schedulers).enumerate() {
                let mut scaled = x.clone();
                s.scale_model_input(&mut scaled, index);
                model_input[i * per_item..(i + 1) * per_item].copy_from_slice(&scaled);
                if guided {
                    model_input[(b + i) * per_item..(b + i + 1) * per_item]
                        .copy_from_slice(&scaled);
                }
            }
            let noise_pred = self.run_unet(
                &model_input,
                sample_shape.clone(),
                t,
                &embeddings,
                rows,
                (key.width, key.height),
            )?;
            for (i, item) in items.iter().enumerate() {
                let eps: Vec<f32> = if guided {
                    let uncond = &noise_pred[i * per_item..(i + 1) * per_item];
                    let cond = &noise_pred[(b + i) * per_item..(b + i + 1) * per_item];
                    if item.guidance > 1.0 {
                        uncond
                            .iter()
                            .zip(cond)
                            .map(|(&u, &c)| u + item.guidance * (c - u))
                            .collect()
                    } else {
                        cond.to_vec()
                    }
                } else {
                    noise_pred[i * per_item..(i + 1) * per_item].to_vec()
                };
                schedulers[i].step(index, &eps, &mut latents[i], &mut noises[i]);
            }
            on_step(Progress {
                done: index + 1 - start,
                total: timesteps.len() - start,
            });
        }
        let denoise_done = started.elapsed();

        let pictures = self.decode(&latents, h, w)?;
        let decode_done = started.elapsed();
        let verdicts = match &self.safety {
            Some(checker) => checker.check(&pictures)?.into_iter().map(Some).collect(),
            None => vec![None; pictures.len()],
        };
        let total = started.elapsed();
        Ok(Generated {
            pictures,
            verdicts,
            timings: StageTimings {
                text: text_done,
                denoise: denoise_done - text_done,
                decode: decode_done - denoise_done,
                safety: total - decode_done,
                total,
            },
        })
    }

    /// One UNet call: `rows` samples at timestep `t`; SDXL also gets the pooled embeddings and the size
    /// conditioning `[height, width, 0, 0, height, width]` (original size = target size, no crop).
    fn run_unet(
        &mut self,
        sample: &[f32],
        shape: Vec<i64>,
        t: f32,
        embeddings: &Conditioning,
        rows: usize,
        (width, height): (u32, u32),
    ) -> Result<Vec<f32>, EngineError> {
        let io = &self.io;
        let mut inputs = vec![
            (
                io.sample.name.as_str(),
                float_tensor(io.sample.dtype, shape, sample)?,
            ),
            (
                io.timestep.name.as_str(),
                timestep_tensor(&io.timestep, t, rows)?,
            ),
            (
                io.encoder_hidden_states.name.as_str(),
                float_tensor(
                    io.encoder_hidden_states.dtype,
                    embeddings.tokens.0.clone(),
                    &embeddings.tokens.1,
                )?,
            ),
        ];
        if let (Some(text_embeds), Some(time_ids)) = (&io.text_embeds, &io.time_ids) {
            inputs.push((
                text_embeds.name.as_str(),
                float_tensor(
                    text_embeds.dtype,
                    embeddings.pooled.0.clone(),
                    &embeddings.pooled.1,
                )?,
            ));
            let (h, w) = (height as f32, width as f32);
            let ids: Vec<f32> = (0..rows).flat_map(|_| [h, w, 0.0, 0.0, h, w]).collect();
            inputs.push((
                time_ids.name.as_str(),
                float_tensor(time_ids.dtype, vec![rows as i64, 6], &ids)?,
            ));
        }
        let mut unet = lock(&self.unet)?;
        let outputs = unet.run(inputs)?;
        let value = outputs
            .get(&io.noise_pred)
            .ok_or_else(|| EngineError::Inference(format!("unet returned no {}", io.noise_pred)))?;
        let (_, values) = float_values(value)?;
        if values.len() != sample.len() {
            return Err(EngineError::Inference(format!(
                "unet returned {} values for {} inputs",
                values.len(),
                sample.len()
            )));
        }
        Ok(values)
    }

    /// Encodes the items' starting pictures with the VAE encoder, several per call like [`Self::decode`].
    fn encode(
        &mut self,
        items: &[super::Item],
        h: usize,
        w: usize,
    ) -> Result<Vec<Posterior>, EngineError> {
        let io = self
            .io
            .vae_encoder
            .clone()
            .ok_or_else(|| invalid("this model has no vae_encoder"))?;
        let session = self
            .vae_encoder
            .clone()
            .ok_or_else(|| invalid("this model has no vae_encoder"))?;
        let f = self.folder.vae_scale_factor as usize;
        let pixels = (h * f * w * f).max(1);
        let per_call = if io.sample.dtype == TensorElementType::Float16 {
            1
        } else {
            (VAE_PIXELS_PER_CALL / pixels).clamp(1, items.len().max(1))
        };
        let per_item = LATENT_CHANNELS * h * w;
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(per_call) {
            let mut nchw = Vec::with_capacity(chunk.len() * 3 * pixels);
            for item in chunk {
                let picture = item
                    .init_image
                    .as_ref()
                    .ok_or_else(|| invalid("an item has no starting picture"))?;
                let plane = picture.rgb.len() / 3;
                for c in 0..3 {
                    nchw.extend((0..plane).map(|p| 2.0 * picture.rgb[p * 3 + c] - 1.0));
                }
            }
            let shape = vec![chunk.len() as i64, 3, (h * f) as i64, (w * f) as i64];
            let input = float_tensor(io.sample.dtype, shape, &nchw)?;
            let mut vae = lock(&session)?;
            let outputs = vae.run(vec![(io.sample.name.as_str(), input)])?;
            let value = outputs.get(&io.output).ok_or_else(|| {
                EngineError::Inference(format!("vae encoder returned no {}", io.output))
            })?;
            let (shape, values) = float_values(value)?;
            let channels = if io.parameters {
                2 * LATENT_CHANNELS
            } else {
                LATENT_CHANNELS
            };
            if shape != [chunk.len() as i64, channels as i64, h as i64, w as i64] {
                return Err(EngineError::Inference(format!(
                    "vae encoder returned shape {shape:?}, expected [{}, {channels}, {h}, {w}]",
                    chunk.len()
                )));
            }
            for item in values.chunks_exact(channels * h * w) {
                out.push(if io.parameters {
                    Posterior::Gaussian {
                        mean: item[..per_item].to_vec(),
                        log_variance: item[per_item..].to_vec(),
                    }
                } else {
                    Posterior::Drawn(item.to_vec())
                });
            }
        }
        Ok(out)
    }

    /// Decodes the items' latents into pictures, several per call for float32 VAEs up to a pixel budget (the VAE's
    /// activations are large: four 512² pictures at once took over 10 GB), one at a time for float16 ones
    /// (diffusers reports wrong results from half-precision VAEs at batch > 1).
    fn decode(
        &mut self,
        latents: &[Vec<f32>],
        h: usize,
        w: usize,
    ) -> Result<Vec<Picture>, EngineError> {
        let f = self.folder.vae_scale_factor as usize;
        let pixels = (h * f * w * f).max(1);
        let per_call = if self.io.latent_sample.dtype == TensorElementType::Float16 {
            1
        } else {
            (VAE_PIXELS_PER_CALL / pixels).clamp(1, latents.len().max(1))
        };
        let inv = (1.0 / self.folder.latent_scaling as f64) as f32;
        let mut pictures = Vec::with_capacity(latents.len());
        for chunk in latents.chunks(per_call) {
            let scaled: Vec<f32> = chunk.iter().flatten().map(|v| v * inv).collect();
            let shape = vec![
                chunk.len() as i64,
                LATENT_CHANNELS as i64,
                h as i64,
                w as i64,
            ];
            let input = float_tensor(self.io.latent_sample.dtype, shape, &scaled)?;
            let mut vae = lock(&self.vae)?;
            let outputs = vae.run(vec![(self.io.latent_sample.name.as_str(), input)])?;
            let value = outputs.get(&self.io.image).ok_or_else(|| {
                EngineError::Inference(format!("vae decoder returned no {}", self.io.image))
            })?;
            let (shape, nchw) = float_values(value)?;
            let [n, 3, height, width] = shape[..] else {
                return Err(EngineError::Inference(format!(
                    "vae decoder returned shape {shape:?}, expected [N, 3, H, W]"
                )));
            };
            if n as usize != chunk.len() {
                return Err(EngineError::Inference(format!(
                    "vae decoder returned {n} pictures for {}",
                    chunk.len()
                )));
            }
            let (height, width) = (height as usize, width as usize);
            let plane = height * width;
            for chw in nchw.chunks_exact(3 * plane) {
                let mut rgb = vec![0.0f32; plane * 3];
                for c in 0..3 {
                    for p in 0..plane {
                        rgb[p * 3 + c] = (chw[c * plane + p] / 2.0 + 0.5).clamp(0.0, 1.0);
                    }
                }
                pictures.push(Picture {
                    width: width as u32,
                    height: height as u32,
                    rgb,
                });
            }
        }
        Ok(pictures)
    }
}
