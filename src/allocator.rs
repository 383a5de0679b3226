//! Host-memory tuning for attack loops on the CPU.
//!
//! Every attack step allocates and frees the same large buffers (activations, gradients). glibc's
//! `malloc` serves each block above its mmap threshold (at most 32 MiB) by a fresh `mmap` and
//! unmaps it at `free`, so the kernel page-faults and zeroes every such buffer again on every
//! step, and shoots down TLBs when it is unmapped. EfficientNet-Lite0's activations at batch 32
//! are tens to hundreds of MiB: that churn was about half of its gradient's time on two cores.
//! [`tune_allocator`] keeps freed memory in the process for reuse instead.

/// Make glibc's `malloc` serve large blocks from its heap and keep freed memory for reuse
/// (no `mmap` per block, no trimming below 2 GiB), so that an attack's buffers are reused from
/// step to step instead of being page-faulted in again. Returns whether it applied: `true` on
/// Linux with glibc, `false` elsewhere (other allocators already keep memory, or cannot be tuned
/// this way).
///
/// Process-wide, hence opt-in: call it once at the start of a program, before it spawns
/// threads (the `perturb` CLI, the examples and the benches do). Peak memory can be somewhat
/// higher (EfficientNet-Lite0, batch 32: 2.06 instead of 1.77 GB), and memory freed after the
/// attack is not returned to the system before the process exits. Results do not change.
///
/// ```
/// let tuned = perturb::tune_allocator();
/// assert_eq!(tuned, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only sets glibc's malloc parameters; both are valid options with
        // valid values, and the call takes the allocator's own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
