// Shared by hwquant's kernels: exact rounding that vectorizes, and per-ISA clones.
#pragma once

#include <cmath>
#include <cstdint>

namespace hwq {

// 2^(mantissa bits): every float at or above it is an integer.
template <typename T>
constexpr T kIntegral = T(0);
template <> constexpr float kIntegral<float> = 8388608.0f;             // 2^23
template <> constexpr double kIntegral<double> = 4503599627370496.0;  // 2^52

// Nearest integer, ties to even: for 0 ≤ a < 2^m, a + 2^m has unit spacing, so the
// addition itself rounds (IEEE round-to-nearest-even); sign restored by copysign
// (−0.3 → −0, as torch.round).
template <typename T, int64_t R>
inline T round_code(T c) {
  const T big = kIntegral<T>;
  T a = std::fabs(c);
  T t = (a + big) - big;
  if constexpr (R == 1) t = t > a ? t - T(1) : t;  // toward zero: never above |c|
  T r = a < big ? t : a;                             // NaN stays NaN
  return std::copysign(r, c);
}

// x86-64: one copy of each loop per instruction set, chosen when the library loads
// (GCC / Clang function multi-versioning); IEEE add / sub / mul / div and compares
// give the same results in every one (no FMA contraction: -ffp-contract=off).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__APPLE__)
#define HWQ_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define HWQ_CLONES
#endif

}  // namespace hwq
