//! Host-memory tuning for attack loops on the CPU.
//!
//! Every attack step allocates and frees the same large buffers (activations, gradients). glibc's
//! `malloc` serves each block above its mmap threshold (at most 32 MiB) by a fresh `mmap` and
//! unmaps it at `free`, so the kernel page-faults and zeroes every such buffer again on every
//! step, and shoots down TLBs when it is unmapped. EfficientNet-Lite0's activations at batch 32
//! are tens to hundreds of MiB: on two cores that churn made its loss gradient 2.3 times slower
//! at batch 32 (2.40 s against 1.05 s) and 3.2 times at batch 128 (12.6 s against 3.97 s).
//! [`tune_allocator`] keeps freed memory in the process for reuse instead.

/// Make glibc's `malloc` serve large blocks from its heap and keep freed memory for reuse
/// (no `mmap` per block, no trimming of the heap's free top), so that an attack's buffers are
/// reused from step to step instead of being page-faulted in again. Returns whether it applied:
/// `true` on Linux with glibc, `false` elsewhere (other allocators already keep memory, or cannot
/// be tuned this way).
///
/// Process-wide, hence opt-in: call it once at the start of a program, before it spawns
/// threads (the `perturb` CLI, the examples and the benches do). Peak memory can be somewhat
/// higher (EfficientNet-Lite0's gradient: 2.06 instead of 1.77 GB at batch 32, 7.97 instead of
/// 6.76 GB at batch 128), and memory freed after the attack is not returned to the system
/// before the process exits. Results do not change.
///
/// ```
/// let tuned = perturb::tune_allocator();
/// assert_eq!(tuned, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only sets glibc's malloc parameters; both are valid options with
        // valid values (a trim threshold of -1 disables trimming; a finite one, even 2 GiB,
        // let batch 128 re-fault gigabytes each step), and the call takes the allocator's lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
