//! The Stable Diffusion engine on ONNX Runtime. Knows nothing of users, jobs or channels.

pub mod noise;
pub mod scheduler;
