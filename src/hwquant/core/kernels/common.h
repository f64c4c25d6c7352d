// Shared by hwquant's kernels: the functions bindings.cpp exposes to Python, exact
// rounding that vectorizes, and per-ISA clones.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>

namespace hwq {

// ---- the kernels (each returns None to Python where it does not serve its inputs)
std::optional<at::Tensor> fake_quant(const at::Tensor& x, const at::Tensor& p, double lo,
                                     double hi, int64_t rounding, int64_t kind);
std::optional<std::tuple<at::Tensor, at::Tensor>> fake_quant_tangent(const at::Tensor& x,
                                                                     const at::Tensor& s,
                                                                     double lo, double hi,
                                                                     int64_t rounding);
std::optional<at::Tensor> a2q_fake_quant(const at::Tensor& v, const at::Tensor& gamma,
                                         const at::Tensor& p, int64_t kind, double bound,
                                         bool zero_centre, double lo, double hi);
std::optional<std::tuple<at::Tensor, at::Tensor>> a2q_bias_range(const at::Tensor& w_hat,
                                                                 const at::Tensor& s,
                                                                 int64_t x_min, int64_t x_max,
                                                                 int64_t bits);
std::optional<at::Tensor> accumulator_bias(const at::Tensor& bias, const at::Tensor& p_in,
                                           int64_t kind_in, const at::Tensor& p_w,
                                           int64_t kind_w, double lo, double hi,
                                           int64_t rounding,
                                           const std::optional<at::Tensor>& w_rows,
                                           int64_t x_min, int64_t x_max, int64_t bits);

// x on the CPU, float32 or float64
inline bool cpu_float(const at::Tensor& x) {
  const auto t = x.scalar_type();
  return x.device().is_cpu() && (t == at::kFloat || t == at::kDouble);
}

// x and y: cpu_float, of one dtype
inline bool same_cpu_float(const at::Tensor& x, const at::Tensor& y) {
  return cpu_float(x) && y.device().is_cpu() && y.scalar_type() == x.scalar_type();
}

// s from its parameter p (scale codes: 0 s = p, 1 s = |p|, 2 s = 2^p), by the ATen
// ops the PyTorch formula runs (the same values)
inline at::Tensor scale_of(const at::Tensor& p, int64_t kind) {
  TORCH_CHECK(kind >= 0 && kind <= 2, "hwquant: unknown scale code");
  return kind == 0 ? p : (kind == 1 ? at::abs(p) : at::exp2(p));
}

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
