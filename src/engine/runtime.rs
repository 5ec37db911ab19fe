//! Loading ONNX Runtime (ort's `load-dynamic`) once per process, and the device sessions run on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::lora::merge::{MERGED_FILE, MergePlan};
use super::onnx::{GraphEdit, OnnxModel};
use super::{EngineConfig, EngineError};
use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

/// The ONNX Runtime version huabi is built against (ort 2.0.0-rc.15, API 31).
pub const ORT_VERSION: &str = "1.31.1";

/// Where sessions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// The CUDA provider on GPU `N` (requires the `cuda` feature and onnxruntime-gpu).
    Cuda(i32),
}

impl std::str::FromStr for Device {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| *n >= 0)
                .map(Device::Cuda)
                .ok_or_else(|| {
                    EngineError::Invalid(format!("device {s:?}: use cpu, cuda or cuda:N"))
                }),
        }
    }
}

/// Library paths tried when none is configured: what `scripts/fetch-ort` fetched, relative to the working
/// directory and to the executable (target/{debug,release}/huabi and target/debug/deps/<test> → the project root).
pub fn default_library_candidates(device: Device) -> Vec<PathBuf> {
    let flavour = if matches!(device, Device::Cuda(_)) {
        "gpu"
    } else {
        "cpu"
    };
    let rel = PathBuf::from(".ort")
        .join(flavour)
        .join(format!("libonnxruntime.so.{ORT_VERSION}"));
    let mut out = vec![rel.clone()];
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            out.push(up.join(&rel));
        }
    }
    out
}

/// What one process loaded: ONNX Runtime can be loaded only once per process, and its CUDA options come with it.
struct Loaded {
    library: PathBuf,
    env: Environment,
    cuda_options: Vec<(String, String)>,
}

/// The process-wide environment.
static ENVIRONMENT: Mutex<Option<Loaded>> = Mutex::new(None);

/// Reads `engine.cuda_options`: `key=value` pairs separated by commas, handed to ONNX Runtime's CUDA provider as they
/// are (it refuses keys it does not know when the first session opens on the GPU).
pub fn cuda_options(text: &str) -> Result<Vec<(String, String)>, EngineError> {
    let mut options: Vec<(String, String)> = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let invalid = |why: &str| {
            EngineError::Invalid(format!(
                "engine.cuda_options {pair:?}: {why} (write key=value pairs separated by commas, e.g. prefer_nhwc=1)"
            ))
        };
        let (key, value) = pair.split_once('=').ok_or_else(|| invalid("no '='"))?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || value.is_empty() {
            return Err(invalid("an empty key or value"));
        }
        if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid("a key is letters, digits and '_'"));
        }
        if options.iter().any(|(k, _)| k == key) {
            return Err(invalid("this key was given twice"));
        }
        options.push((key.to_string(), value.to_string()));
    }
    Ok(options)
}

/// Loads ONNX Runtime from the configured path (or the defaults) and returns the environment, whose one intra-op
/// thread pool all sessions share (per-session pools spin against each other on few cores).
pub fn environment(config: &EngineConfig, device: Device) -> Result<Environment, EngineError> {
    let path = resolve_library(config, device)?;
    let cuda_options = cuda_options(&config.cuda_options)?;
    let mut slot = ENVIRONMENT
        .lock()
        .map_err(|_| EngineError::Runtime("environment lock poisoned".into()))?;
    if let Some(loaded) = slot.as_ref() {
        if loaded.library != path || loaded.cuda_options != cuda_options {
            tracing::warn!(loaded = %loaded.library.display(), asked = %path.display(), "ONNX Runtime and its CUDA options load once per process; keeping the first");
        }
        return Ok(loaded.env.clone());
    }
    let gpu_hint = if matches!(device, Device::Cuda(_)) {
        " --gpu"
    } else {
        ""
    };
    let builder = ort::init_from(&path).map_err(|e| {
        EngineError::Runtime(format!(
            "cannot load {} ({e}); huabi needs ONNX Runtime {ORT_VERSION}: run scripts/fetch-ort{gpu_hint}",
            path.display()
        ))
    })?;
    let pool = GlobalThreadPoolOptions::default()
        .with_intra_threads(thread_count(config.threads))
        .and_then(|p| p.with_inter_threads(1))
        .map_err(|e| EngineError::Runtime(e.to_string()))?;
    let env = builder
        .with_name("huabi")
        .with_global_thread_pool(pool)
        .build()
        .map_err(|e| EngineError::Runtime(e.to_string()))?;
    tracing::info!(library = %path.display(), threads = thread_count(config.threads), ?cuda_options, "ONNX Runtime loaded");
    *slot = Some(Loaded {
        library: path,
        env: env.clone(),
        cuda_options,
    });
    Ok(env)
}

/// `threads`, or all cores for 0.
fn thread_count(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        threads
    }
}

fn resolve_library(config: &EngineConfig, device: Device) -> Result<PathBuf, EngineError> {
    if !config.ort_dylib_path.is_empty() {
        let path = PathBuf::from(&config.ort_dylib_path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(EngineError::Runtime(format!(
                "{} (engine.ort_dylib_path / ORT_DYLIB_PATH) does not exist",
                path.display()
            )))
        };
    }
    let candidates = default_library_candidates(device);
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        EngineError::Runtime(format!(
            "no ONNX Runtime library found (tried {}); run scripts/fetch-ort or set ORT_DYLIB_PATH",
            tried.join(", ")
        ))
    })
}

/// Opens one model file as a session on `device`, running on the environment's shared thread pool.
pub fn open_session(
    env: &Environment,
    path: &Path,
    device: Device,
) -> Result<Session, EngineError> {
    session_builder(env, path, device)?
        .commit_from_file(path)
        .map_err(|e| model_error(path, e))
}

/// Opens one model file as a session, with LoRA-merged weights when a plan is given: the session is created from
/// the edited graph, which reads the merged weights from [`MERGED_FILE`], handed over in memory.
pub fn open_merged_session(
    env: &Environment,
    path: &Path,
    device: Device,
    merged: Option<(&OnnxModel, &MergePlan)>,
) -> Result<Session, EngineError> {
    match merged.filter(|(_, plan)| !plan.edit.is_empty()) {
        Some((model, plan)) => open_edited_session(
            env,
            path,
            device,
            model,
            &plan.edit,
            Some(plan.data.clone()),
        ),
        None => open_session(env, path, device),
    }
}

fn model_error(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Model {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A session builder for `device` with every graph optimisation.
fn session_builder(
    env: &Environment,
    path: &Path,
    device: Device,
) -> Result<ort::session::builder::SessionBuilder, EngineError> {
    let fail = |e: ort::Error| model_error(path, e);
    #[allow(unused_mut)]
    let mut builder = Session::builder(env)
        .map_err(fail)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| fail(e.into()))?;
    match device {
        Device::Cpu => {}
        #[cfg(feature = "cuda")]
        Device::Cuda(id) => {
            use ort::ep::ArbitrarilyConfigurableExecutionProvider;
            let mut cuda = ort::ep::CUDA::default().with_device_id(id);
            let options = ENVIRONMENT
                .lock()
                .map_err(|_| EngineError::Runtime("environment lock poisoned".into()))?
                .as_ref()
                .map(|loaded| loaded.cuda_options.clone())
                .unwrap_or_default();
            for (key, value) in options {
                cuda = cuda.with_arbitrary_config(key, value);
            }
            builder = builder
                .with_execution_providers([cuda.build().error_on_failure()])
                .map_err(|e| {
                    EngineError::Runtime(format!("CUDA execution provider on GPU {id}: {e}"))
                })?;
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => {
            return Err(EngineError::Runtime(
                "this huabi was built without the `cuda` feature".into(),
            ));
        }
    }
    Ok(builder)
}

/// Opens `model` (read from `path`) with `edit` applied; `merged` is the content of [`MERGED_FILE`] when the edit
/// reads values from it.
pub fn open_edited_session(
    env: &Environment,
    path: &Path,
    device: Device,
    model: &OnnxModel,
    edit: &GraphEdit,
    merged: Option<Arc<[u8]>>,
) -> Result<Session, EngineError> {
    let fail = |e: ort::Error| model_error(path, e);
    let mut builder = session_builder(env, path, device)?;
    // Once some external data is handed over in memory, ONNX Runtime looks for all of it there: the model's own
    // external data files are read and handed over too.
    let mut files: Vec<(String, Arc<[u8]>)> = Vec::new();
    if let Some(data) = merged {
        files.push((MERGED_FILE.to_string(), data));
    }
    for location in model.external_locations() {
        let bytes = model
            .read_external_file(&location)
            .map_err(|e| model_error(path, e))?;
        files.push((location, bytes));
    }
    for (name, bytes) in files {
        builder = builder
            .with_external_initializer_file_in_memory(name, bytes)
            .map_err(|e| fail(e.into()))?;
    }
    let bytes = model.edited(edit).map_err(|e| model_error(path, e))?;
    builder.commit_from_memory(&bytes).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_options_are_key_value_pairs() {
        assert_eq!(cuda_options("").expect("empty"), vec![]);
        assert_eq!(
            cuda_options(" prefer_nhwc = 1 ,, cudnn_conv_algo_search=HEURISTIC,").expect("valid"),
            vec![
                ("prefer_nhwc".to_string(), "1".to_string()),
                (
                    "cudnn_conv_algo_search".to_string(),
                    "HEURISTIC".to_string()
                )
            ]
        );
    }

    #[test]
    fn malformed_cuda_options_are_refused_with_the_piece_at_fault() {
        for (text, why) in [
            ("prefer_nhwc", "no '='"),
            ("=1", "empty key"),
            ("prefer_nhwc=", "empty key or value"),
            ("a=1,a=2", "twice"),
            ("gpu mem=1", "letters, digits"),
            ("a=1\n,b\u{0}=2", "letters, digits"),
        ] {
            let err = cuda_options(text).expect_err(text).to_string();
            assert!(
                err.contains(why) && err.contains("key=value"),
                "{text:?}: {err}"
            );
        }
        let long = format!("{}=1", "k".repeat(100_000));
        assert_eq!(cuda_options(&long).expect("long key").len(), 1);
    }
}
