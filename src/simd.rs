//! Elementwise host loops over CPU `f32` data, compiled for the vector units the CPU has.
//!
//! [`with_cpu_f32`] lends the data of contiguous CPU `f32` tensors as slices, in place (other
//! tensors keep their tensor-op path).
//! The crate is built for baseline x86-64 (SSE2), where an elementwise pass over a batch runs
//! four lanes wide. [`multiversion!`] compiles one loop body three times — for AVX-512F, for
//! AVX2 and as written — and picks the widest the CPU reports at run time. The three copies do
//! the same IEEE operations in the same order (Rust never fuses a multiply and an add on its
//! own), so they give the same bits; only the speed differs.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, DType, Storage, Tensor};

/// `fn name(args) -> ret { body }`, dispatched at run time to a copy of `body` compiled with
/// AVX-512F or AVX2 enabled where the CPU has them. Arguments must be plain bindings.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}

pub(crate) use multiversion;

/// A vector of `n` floats, every one written by `write`, without zeroing them first (for a
/// pass over a 100k-pixel batch, zeroing is a fifth of its time). `write` gets exactly `n`
/// slots and returns how many of them, from the first on, it initialised; the function panics
/// unless that is all `n`.
///
/// # Safety
/// `write` must have initialised the first `k` slots when it returns `k` (a kernel that writes
/// every slot of a `zip` over its output and inputs returns the `zip`'s length).
pub(crate) unsafe fn written(
    n: usize,
    write: impl FnOnce(&mut [MaybeUninit<f32>]) -> usize,
) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    let covered = write(&mut v.spare_capacity_mut()[..n]);
    assert_eq!(covered, n, "a kernel left slots of its output unwritten");
    // SAFETY: the capacity is at least `n`, and `write` initialised the first `n` slots (the
    // caller's promise for the count it returned, checked to be `n`).
    unsafe { v.set_len(n) };
    v
}

/// `f` on the data of `N` tensors, or `None` unless each is a contiguous `f32` tensor on the CPU.
pub(crate) fn with_cpu_f32<const N: usize, R>(
    tensors: &[&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> R,
) -> Option<R> {
    if tensors
        .iter()
        .any(|t| !t.device().is_cpu() || t.dtype() != DType::F32)
    {
        return None;
    }
    let guards = tensors.map(|t| t.storage_and_layout());
    let mut slices: [&[f32]; N] = [&[]; N];
    for ((storage, layout), slice) in guards.iter().zip(&mut slices) {
        let (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) =
            (&**storage, layout.contiguous_offsets())
        else {
            return None;
        };
        *slice = &v[start..end];
    }
    Some(f(slices))
}
