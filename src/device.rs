//! Choosing a candle device by name, as command lines and configuration files spell it.

use candle_core::Device;

use crate::error::{Error, Result};

/// The device named `cpu`, `cuda` (GPU 0) or `cuda:i`.
///
/// ```
/// let cpu = perturb::device::parse("cpu")?;
/// assert!(cpu.is_cpu());
/// assert!(perturb::device::parse("tpu").is_err());
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// [`Error::Device`] for an unknown name, a malformed GPU index, CUDA requested from a build
/// without the `cuda` feature, or a GPU that cannot be opened.
pub fn parse(spec: &str) -> Result<Device> {
    let err = |reason: &str| Error::Device {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let lower = spec.trim().to_ascii_lowercase();
    if lower == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match lower.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|i| i.parse::<usize>().ok())
            .ok_or_else(|| err("expected cuda or cuda:<index>"))?,
        None => return Err(err("expected cpu, cuda or cuda:<index>")),
    };
    if !cfg!(feature = "cuda") {
        return Err(err(
            "CUDA requested, but perturb was built without the `cuda` feature \
             (rebuild with --features cuda)",
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| err(&e.to_string()))
}
