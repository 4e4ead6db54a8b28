//! Run-time selection of the widest vector instructions the CPU has, for the element-wise
//! kernels. The kernels are plain loops marked `#[inline(always)]`; `dispatch!` calls a copy of
//! one compiled with AVX-512 or AVX2 + FMA enabled when the CPU supports them (the binary
//! itself targets baseline x86-64), so LLVM vectorises the loops (and `mul_add` becomes an FMA
//! instruction instead of a library call).

/// `dispatch!(kernel(args...))`: call `kernel` through the widest variant this CPU supports.
/// `dispatch!(kernel::<Lanes>(name: Type, ...) -> Return)`: the same for a kernel generic over
/// [`super::lanes::Lanes`], given the matching lanes type in each variant; the arguments are the
/// caller's variables of those names. The variants are functions taking them as parameters,
/// not closures capturing them: a captured `&mut [f32]` loses its no-alias guarantee, and the
/// depthwise kernel ran 15% slower that way (`graft bench forward --profile`).
macro_rules! dispatch {
    ($kernel:ident::<Lanes>($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx512($($arg: $ty),*) -> $ret {
                $kernel::<$crate::kernels::lanes::Avx512>($($arg),*)
            }
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx2($($arg: $ty),*) -> $ret {
                $kernel::<$crate::kernels::lanes::Avx2>($($arg),*)
            }
            if $crate::kernels::simd::has_avx512() {
                // SAFETY: the CPU supports the enabled features (checked at run time).
                unsafe { avx512($($arg),*) }
            } else if $crate::kernels::simd::has_avx2_fma() {
                // SAFETY: as above.
                unsafe { avx2($($arg),*) }
            } else {
                $kernel::<$crate::kernels::lanes::Scalar>($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $kernel::<$crate::kernels::lanes::Scalar>($($arg),*)
        }
    }};
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
