//! 16 f32 lanes in vector registers, the unit the depthwise kernel accumulates in: one AVX-512
//! register, two AVX registers, or a plain array. The kernel is generic over [`Lanes`] and is
//! compiled once per variant inside a function with the matching `#[target_feature]`, chosen at
//! run time (the binary itself targets baseline x86-64); the `#[inline(always)]` operations
//! then become single instructions.

/// 16 f32 values; `load` / `store` take slices of exactly 16 (checked).
pub trait Lanes: Copy {
    fn load(values: &[f32]) -> Self;
    /// `self + x * w`, fused.
    fn mul_add(self, x: Self, w: Self) -> Self;
    fn relu6(self) -> Self;
    fn store(self, out: &mut [f32]);
    /// # Safety
    /// `values` points to 16 readable f32.
    unsafe fn load_ptr(values: *const f32) -> Self;
    /// All 16 lanes set to `value`.
    fn splat(value: f32) -> Self;
}

fn array(values: &[f32]) -> &[f32; 16] {
    // cannot fail for callers: kernels slice exactly 16 values
    values.try_into().expect("16 lanes")
}

/// Portable fallback.
#[derive(Clone, Copy)]
pub struct Scalar([f32; 16]);

impl Lanes for Scalar {
    #[inline(always)]
    fn load(values: &[f32]) -> Self {
        Self(*array(values))
    }
    #[inline(always)]
    fn mul_add(mut self, x: Self, w: Self) -> Self {
        for l in 0..16 {
            self.0[l] = x.0[l].mul_add(w.0[l], self.0[l]);
        }
        self
    }
    #[inline(always)]
    fn relu6(mut self) -> Self {
        for v in &mut self.0 {
            *v = v.clamp(0.0, 6.0);
        }
        self
    }
    #[inline(always)]
    fn store(self, out: &mut [f32]) {
        out[..16].copy_from_slice(&self.0);
    }
    #[inline(always)]
    unsafe fn load_ptr(values: *const f32) -> Self {
        // SAFETY: the caller guarantees 16 readable values.
        Self(unsafe { *(values as *const [f32; 16]) })
    }
    #[inline(always)]
    fn splat(value: f32) -> Self {
        Self([value; 16])
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Lanes, array};
    use std::arch::x86_64::*;

    /// One AVX-512 register. Only inside `#[target_feature(enable = "avx512f")]` code.
    #[derive(Clone, Copy)]
    pub struct Avx512(__m512);

    // SAFETY (all four impls): these types are only used by kernels compiled with the
    // features they need and called after a run-time check (`kernels::simd`); the pointers
    // come from slices of 16 f32 (checked by `array`).
    impl Lanes for Avx512 {
        #[inline(always)]
        fn load(values: &[f32]) -> Self {
            Self(unsafe { _mm512_loadu_ps(array(values).as_ptr()) })
        }
        #[inline(always)]
        fn mul_add(self, x: Self, w: Self) -> Self {
            Self(unsafe { _mm512_fmadd_ps(x.0, w.0, self.0) })
        }
        #[inline(always)]
        fn relu6(self) -> Self {
            unsafe {
                let zero = _mm512_setzero_ps();
                let six = _mm512_set1_ps(6.0);
                Self(_mm512_min_ps(_mm512_max_ps(self.0, zero), six))
            }
        }
        #[inline(always)]
        fn store(self, out: &mut [f32]) {
            let out: &mut [f32; 16] = (&mut out[..16]).try_into().expect("16 lanes");
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        unsafe fn load_ptr(values: *const f32) -> Self {
            Self(unsafe { _mm512_loadu_ps(values) })
        }
        #[inline(always)]
        fn splat(value: f32) -> Self {
            Self(unsafe { _mm512_set1_ps(value) })
        }
    }

    /// Two AVX registers. Only inside `#[target_feature(enable = "avx2,fma")]` code.
    #[derive(Clone, Copy)]
    pub struct Avx2(__m256, __m256);

    impl Lanes for Avx2 {
        #[inline(always)]
        fn load(values: &[f32]) -> Self {
            let p = array(values).as_ptr();
            unsafe { Self(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
        }
        #[inline(always)]
        fn mul_add(self, x: Self, w: Self) -> Self {
            unsafe {
                Self(
                    _mm256_fmadd_ps(x.0, w.0, self.0),
                    _mm256_fmadd_ps(x.1, w.1, self.1),
                )
            }
        }
        #[inline(always)]
        fn relu6(self) -> Self {
            unsafe {
                let zero = _mm256_setzero_ps();
                let six = _mm256_set1_ps(6.0);
                Self(
                    _mm256_min_ps(_mm256_max_ps(self.0, zero), six),
                    _mm256_min_ps(_mm256_max_ps(self.1, zero), six),
                )
            }
        }
        #[inline(always)]
        fn store(self, out: &mut [f32]) {
            let out: &mut [f32; 16] = (&mut out[..16]).try_into().expect("16 lanes");
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), self.0);
                _mm256_storeu_ps(out.as_mut_ptr().add(8), self.1);
            }
        }
        #[inline(always)]
        unsafe fn load_ptr(values: *const f32) -> Self {
            unsafe { Self(_mm256_loadu_ps(values), _mm256_loadu_ps(values.add(8))) }
        }
        #[inline(always)]
        fn splat(value: f32) -> Self {
            unsafe { Self(_mm256_set1_ps(value), _mm256_set1_ps(value)) }
        }
    }
}
