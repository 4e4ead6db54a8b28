//! Run-time selection of the widest vector instructions the CPU has, for the element-wise
//! kernels. The kernels are plain loops marked `#[inline(always)]`; `dispatch!` calls a copy of
//! one compiled with AVX-512 or AVX2 + FMA enabled when the CPU supports them (the binary
//! itself targets baseline x86-64), so LLVM vectorises the loops (and `mul_add` becomes an FMA
//! instruction instead of a library call).

/// `dispatch!(kernel(args...))`: call `kernel` through the widest variant this CPU supports.
macro_rules! dispatch {
    ($kernel:ident($($arg:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512<F: FnOnce() -> R, R>(f: F) -> R {
                f()
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<F: FnOnce() -> R, R>(f: F) -> R {
                f()
            }
            if $crate::kernels::simd::has_avx512() {
                // SAFETY: the CPU supports the enabled features (checked at run time).
                unsafe { avx512(#[inline(always)] || $kernel($($arg),*)) }
            } else if $crate::kernels::simd::has_avx2_fma() {
                // SAFETY: as above.
                unsafe { avx2(#[inline(always)] || $kernel($($arg),*)) }
            } else {
                $kernel($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $kernel($($arg),*)
        }
    }};
}
pub(crate) use dispatch;

#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

#[cfg(target_arch = "x86_64")]
pub fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}
