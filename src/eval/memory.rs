//! Memory planning: an evaluation whose data set or batch cannot fit in this machine's memory is
//! refused before anything is allocated, with the figure, instead of being killed by the kernel
//! half-way (or swapping a shared CI runner to a halt).
//!
//! The estimate is the data set (images, the adversarial points and the best-so-far copies an
//! attack keeps: [`DATA_COPIES`] × the images' bytes) plus one batch's working set (the
//! activations a forward and backward pass of the model keep, measured per architecture; see
//! [`crate::zoo::Arch::bytes_per_sample`]). It is compared with the memory available to this
//! process: the smallest of `PERTURB_MEMORY_LIMIT`, the cgroup's limit (containers, Kubernetes,
//! Slurm) and the kernel's `MemAvailable`.

use crate::error::{Error, Result};

/// Copies of the data set an evaluation holds at once: the images, the adversarial points of
/// the current attack, an ensemble's worst case so far and one conversion on the way out.
pub const DATA_COPIES: u64 = 4;

/// The environment variable that caps the memory perturb plans for (bytes, or with a unit:
/// `512MiB`, `2G`, `1.5GiB`). Set it lower than the machine's memory to share a runner.
pub const MEMORY_LIMIT_VAR: &str = "PERTURB_MEMORY_LIMIT";

/// What an evaluation will hold in memory at once.
///
/// ```
/// use perturb::eval::MemoryPlan;
/// // 10,000 MNIST digits in batches of 250 on a model that keeps 1 MiB per sample
/// let plan = MemoryPlan { samples: 10_000, sample_bytes: 784 * 4, batch: 250, batch_bytes_per_sample: 1 << 20 };
/// // four copies of the data, and each sample of a batch: its working set and its input
/// assert_eq!(plan.needed(), 4 * 10_000 * 784 * 4 + 250 * ((1 << 20) + 784 * 4));
/// assert!(plan.check(1 << 30).is_ok());
/// assert!(plan.check(100 << 20).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Samples in the data set.
    pub samples: usize,
    /// Bytes of one input (C × H × W × 4 for f32).
    pub sample_bytes: u64,
    /// Samples per batch (the batch actually run: at most `samples`).
    pub batch: usize,
    /// Bytes one sample of a batch needs during a forward and backward pass of the model.
    pub batch_bytes_per_sample: u64,
}

impl MemoryPlan {
    /// Bytes needed at once: [`DATA_COPIES`] copies of the data set plus one batch's working set
    /// (saturating: a request too large to count is too large to run).
    pub fn needed(&self) -> u64 {
        let data = (self.samples as u64)
            .saturating_mul(self.sample_bytes)
            .saturating_mul(DATA_COPIES);
        let batch = (self.batch.min(self.samples.max(1)) as u64).saturating_mul(
            self.batch_bytes_per_sample
                .saturating_add(self.sample_bytes),
        );
        data.saturating_add(batch)
    }

    /// Refuses a plan that needs more than `available` bytes.
    ///
    /// # Errors
    /// [`Error::InsufficientMemory`] with both figures.
    pub fn check(&self, available: u64) -> Result<()> {
        let needed = self.needed();
        if needed > available {
            return Err(Error::InsufficientMemory {
                what: format!(
                    "{} samples in batches of {}",
                    self.samples,
                    self.batch.min(self.samples.max(1))
                ),
                needed,
                available,
            });
        }
        Ok(())
    }

    /// [`MemoryPlan::check`] against [`available`], when this system says how much it has.
    ///
    /// # Errors
    /// [`Error::InsufficientMemory`]; [`Error::InvalidParameter`] for an unreadable
    /// `PERTURB_MEMORY_LIMIT`.
    pub fn check_available(&self) -> Result<()> {
        match available()? {
            Some(bytes) => self.check(bytes),
            None => Ok(()),
        }
    }
}

/// Bytes of memory this process may still use: the smallest of `PERTURB_MEMORY_LIMIT`, the
/// cgroup v2 limit less its current use, and `MemAvailable` of `/proc/meminfo`; `None` where
/// none of them is known (not Linux, no limit set).
///
/// # Errors
/// [`Error::InvalidParameter`] when `PERTURB_MEMORY_LIMIT` is set but not a size.
pub fn available() -> Result<Option<u64>> {
    let mut limits = Vec::new();
    if let Ok(v) = std::env::var(MEMORY_LIMIT_VAR) {
        limits.push(parse_bytes(&v).ok_or_else(|| Error::InvalidParameter {
            name: MEMORY_LIMIT_VAR,
            value: v.clone(),
            reason: "expected a size in bytes, e.g. 1073741824, 512MiB or 2G",
        })?);
    }
    limits.extend(cgroup_available());
    limits.extend(mem_available());
    Ok(limits.into_iter().min())
}

/// A size in bytes: a number with an optional unit (`K`, `M`, `G`, `T` powers of 1000 with or
/// without a trailing `B`; `KiB`, `MiB`, `GiB`, `TiB` powers of 1024), case-insensitive.
///
/// ```
/// use perturb::eval::parse_bytes;
/// assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
/// assert_eq!(parse_bytes("2G"), Some(2_000_000_000));
/// assert_eq!(parse_bytes("1.5 GiB"), Some(3 << 29));
/// assert_eq!(parse_bytes("lots"), None);
/// ```
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * scale;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then(|| bytes.round() as u64)
}

/// A byte count for people: `312.5 GiB`, `48.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    let units = [
        (1u64 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (size, unit) in units {
        if bytes >= size {
            return format!("{:.1} {unit}", b / size as f64);
        }
    }
    format!("{bytes} B")
}

/// cgroup v2: `memory.max` less `memory.current`, for this process's group.
fn cgroup_available() -> Option<u64> {
    let group = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // "0::/path" on the unified hierarchy
    let path = group.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
    let max: u64 = max.trim().parse().ok()?; // "max": no limit
    let current: u64 = std::fs::read_to_string(dir.join("memory.current"))
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(0);
    Some(max.saturating_sub(current))
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}
