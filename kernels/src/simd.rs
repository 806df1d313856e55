//! The x86 instruction set a CPU kernel's vector paths are built for, chosen at run time. Kernels
//! compile one generic body per level (`#[target_feature]` wrappers around an `#[inline(always)]`
//! function) and pass the level down, so the inner loops need no checks of their own.

/// An instruction-set level. A value other than `Scalar` is only made where the CPU supports it
/// ([`Simd::widest`], [`Simd::available`]), which is what makes the `unsafe` calls on it sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Simd {
    Scalar,
    /// AVX2 and POPCNT.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512F and POPCNT.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Simd {
    /// The widest level this CPU has (the checks are cached by the standard library, so this is
    /// cheap enough to call per batch).
    pub(crate) fn widest() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("popcnt") {
                if has!("avx512f") {
                    return Simd::Avx512;
                }
                if has!("avx2") {
                    return Simd::Avx2;
                }
            }
        }
        Simd::Scalar
    }

    /// Every level this CPU has, narrowest first: for tests that compare the vector paths with
    /// the scalar one.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Simd> {
        let mut levels = vec![Simd::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("popcnt") {
                levels.push(Simd::Avx2);
            }
            if has!("avx512f") && has!("popcnt") {
                levels.push(Simd::Avx512);
            }
        }
        levels
    }
}
