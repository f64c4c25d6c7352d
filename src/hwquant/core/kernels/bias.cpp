// hwquant's compiled bias on the accumulator scale: the accumulator scale, the A2Q
// clip and the quantization of the bias in one pass and one C++ autograd node.
//
// The PyTorch reference is QuantWeightLayer._bias_on_accumulator_scale in
// hwquant/nn/layer.py (with A2QWeightQuantizer.clip_bias for A2Q layers; the tests
// compare the two bit for bit). Per output channel c:
//
//     s_c   = s_in · s_w,c                    the accumulator scale (no gradient)
//     [lo_c, hi_c]                            A2Q only: the bias codes that keep
//                                             b + Σ x·q within P bits (bias_range_rows)
//     b'_c  = clamp(b_c, inward(lo_c)·s_c, inward(hi_c)·s_c)      (A2Q only)
//     b̂_c  = s_c · round(clamp(b'_c / s_c, qlo, qhi))
//     ∂b̂/∂b = 1 where neither clamp moved its input, else 0 (straight-through)
//
// The scales arrive as their parameters (s = p, |p| or 2^p, as in fake_quant.cpp).
// What it saves: the dozen small ops (and their Python) that the formula costs per
// layer and step, most of them for a vector of a few dozen values.

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "common.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The bias codes [lo, hi] per row that keep b + Σ x·q within a P-bit signed register
// for every input x ∈ [x_min, x_max], q = round(ŵ / s) the codes of the fake-quantized
// weight rows ŵ [C, K] (hwquant.core.accumulator.worst_case_range and bias_code_range;
// integer sums, exact in any order): lo = −2^(P−1) − min Σ x·q, hi = 2^(P−1) − 1 − max Σ x·q.
template <typename T>
HWQ_CLONES void bias_range_rows(const T* __restrict w, const T* __restrict s, bool scalar_scale,
                                int64_t rows, int64_t k, int64_t x_min, int64_t x_max,
                                int64_t bits, int64_t* __restrict lo, int64_t* __restrict hi) {
  const int64_t top = (int64_t(1) << (bits - 1)) - 1, bottom = -(int64_t(1) << (bits - 1));
  for (int64_t c = 0; c < rows; ++c) {
    const T sc = scalar_scale ? s[0] : s[c];
    // integer-valued terms summed in float64: exact below 2^53 in any order, so the
    // loop may be vectorized (reassociated) without changing the sums
    double pos = 0.0, neg = 0.0;
#pragma omp simd reduction(+ : pos, neg)
    for (int64_t i = 0; i < k; ++i) {
      const double q = hwq::round_code<T, 0>(w[c * k + i] / sc);  // half to even
      pos += q > 0.0 ? q : 0.0;
      neg += q < 0.0 ? q : 0.0;
    }
    const auto p = static_cast<int64_t>(pos), n = static_cast<int64_t>(neg);
    lo[c] = bottom - (p * x_min + n * x_max);
    hi[c] = top - (p * x_max + n * x_min);
  }
}

// An integer bound in T, moved toward 0 by a few ulps of its magnitude where T cannot
// hold it exactly (hwquant.nn.a2q._inward: the same double arithmetic).
template <typename T>
inline T inward(int64_t bound, int64_t bits) {
  const double eps = std::numeric_limits<T>::epsilon();
  if (std::ldexp(1.0, int(bits - 1)) * 8 * eps < 1) return static_cast<T>(bound);
  const double b = static_cast<double>(bound);
  const double slack = std::floor(std::fabs(b) * (8 * eps));
  const double sign = b > 0 ? 1.0 : (b < 0 ? -1.0 : 0.0);
  return static_cast<T>(b - sign * slack);
}

// b̂ and the gradient mask; lo / hi null: no clip
template <typename T, int64_t R>
void bias_rows(const T* __restrict b, T s_in, const T* __restrict s_w, bool scalar_w,
               const int64_t* lo, const int64_t* hi, int64_t bits, T qlo, T qhi, int64_t n,
               T* __restrict out, bool* __restrict keep) {
  for (int64_t c = 0; c < n; ++c) {
    const T s = s_in * (scalar_w ? s_w[0] : s_w[c]);
    T v = b[c];
    bool inside = true;
    if (lo != nullptr) {
      const T l = inward<T>(lo[c], bits) * s, h = inward<T>(hi[c], bits) * s;
      inside = (v >= l) & (v <= h);
      v = v < l ? l : v;
      v = v > h ? h : v;
    }
    const T u = v / s;
    T cl = u < qlo ? qlo : u;
    cl = cl > qhi ? qhi : cl;
    out[c] = hwq::round_code<T, R>(cl) * s;
    keep[c] = inside & (u >= qlo) & (u <= qhi);
  }
}

// (b̂, mask) for the arguments of hwq::accumulator_bias, given the scales s_in, s_w
std::tuple<at::Tensor, at::Tensor> bias_forward(const at::Tensor& bias, const at::Tensor& s_in_t,
                                                const at::Tensor& s_w_t, double qlo, double qhi,
                                                int64_t rounding, const at::Tensor& w_rows,
                                                int64_t x_min, int64_t x_max, int64_t bits) {
  const at::Tensor b = bias.contiguous();
  const at::Tensor s_in = s_in_t.contiguous(), s_w = s_w_t.contiguous();
  const int64_t n = b.numel();
  at::Tensor lo, hi;
  at::Tensor out = at::empty_like(b);
  at::Tensor keep = at::empty(b.sizes(), b.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "hwquant_accumulator_bias", [&] {
    const scalar_t* sw = s_w.const_data_ptr<scalar_t>();
    const bool scalar_w = s_w.numel() == 1;
    if (w_rows.defined()) {
      const at::Tensor w = w_rows.contiguous();
      lo = at::empty({n}, b.options().dtype(at::kLong));
      hi = at::empty({n}, b.options().dtype(at::kLong));
      bias_range_rows<scalar_t>(w.const_data_ptr<scalar_t>(), sw, scalar_w, n, w.size(1), x_min,
                                x_max, bits, lo.data_ptr<int64_t>(), hi.data_ptr<int64_t>());
    }
    const int64_t* l = lo.defined() ? lo.const_data_ptr<int64_t>() : nullptr;
    const int64_t* h = hi.defined() ? hi.const_data_ptr<int64_t>() : nullptr;
    const scalar_t si = s_in.const_data_ptr<scalar_t>()[0];
    auto run = rounding == 0 ? bias_rows<scalar_t, 0> : bias_rows<scalar_t, 1>;
    run(b.const_data_ptr<scalar_t>(), si, sw, scalar_w, l, h, bits, scalar_t(qlo), scalar_t(qhi),
        n, out.data_ptr<scalar_t>(), keep.data_ptr<bool>());
  });
  return {out, keep};
}

struct AccumulatorBias : public torch::autograd::Function<AccumulatorBias> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& bias, const at::Tensor& s_in,
                            const at::Tensor& s_w, double qlo, double qhi, int64_t rounding,
                            const std::optional<at::Tensor>& w_rows, int64_t x_min,
                            int64_t x_max, int64_t bits) {
    const at::Tensor rows = w_rows.has_value() ? *w_rows : at::Tensor();
    auto [out, keep] =
        bias_forward(bias, s_in, s_w, qlo, qhi, rounding, rows, x_min, x_max, bits);
    ctx->save_for_backward({keep});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor keep = ctx->get_saved_variables()[0];
    variable_list none(10);  // one per forward argument; only the bias has a gradient
    none[0] = at::where(keep, grads[0], 0.0);
    return none;
  }
};

}  // namespace

namespace hwq {

std::optional<std::tuple<at::Tensor, at::Tensor>> a2q_bias_range(const at::Tensor& w_hat,
                                                                 const at::Tensor& s,
                                                                 int64_t x_min, int64_t x_max,
                                                                 int64_t bits) {
  TORCH_CHECK(w_hat.dim() == 2, "hwquant a2q_bias_range: weight rows [C, K]");
  TORCH_CHECK(s.numel() == 1 || s.numel() == w_hat.size(0),
              "hwquant a2q_bias_range: one scale or one per row");
  TORCH_CHECK(bits >= 2 && bits <= 62, "hwquant a2q_bias_range: 2 to 62 accumulator bits");
  if (!hwq::cpu_float(w_hat) || !hwq::cpu_float(s)) return std::nullopt;
  const at::Tensor w = w_hat.contiguous();
  const at::Tensor sc = s.to(w.scalar_type()).contiguous();
  const int64_t rows = w.size(0);
  at::Tensor lo = at::empty({rows}, w.options().dtype(at::kLong));
  at::Tensor hi = at::empty({rows}, w.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "hwquant_a2q_bias_range", [&] {
    bias_range_rows<scalar_t>(w.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(),
                              sc.numel() == 1, rows, w.size(1), x_min, x_max, bits,
                              lo.data_ptr<int64_t>(), hi.data_ptr<int64_t>());
  });
  return std::make_tuple(lo, hi);
}

std::optional<at::Tensor> accumulator_bias(const at::Tensor& bias, const at::Tensor& p_in,
                                           int64_t kind_in, const at::Tensor& p_w,
                                           int64_t kind_w, double qlo, double qhi,
                                           int64_t rounding,
                                           const std::optional<at::Tensor>& w_rows_in,
                                           int64_t x_min, int64_t x_max, int64_t bits) {
  const at::Tensor w_rows = w_rows_in.has_value() ? *w_rows_in : at::Tensor();  // or no clip
  TORCH_CHECK(rounding == 0 || rounding == 1, "hwquant accumulator_bias: unknown rounding code");
  const int64_t n = bias.numel();
  if (bias.dim() != 1 || p_in.numel() != 1 || (p_w.numel() != 1 && p_w.numel() != n))
    return std::nullopt;
  if (!same_cpu_float(bias, p_in) || !same_cpu_float(bias, p_w)) return std::nullopt;
  if (w_rows.defined()) {
    TORCH_CHECK(w_rows.dim() == 2 && w_rows.size(0) == n && bits >= 2 && bits <= 62,
                "hwquant accumulator_bias: weight rows [C, K] and 2 to 62 accumulator bits");
    if (!same_cpu_float(bias, w_rows)) return std::nullopt;
  }
  at::Tensor s_in, s_w;
  {
    at::NoGradGuard no_grad;  // the scales get no gradient here
    s_in = hwq::scale_of(p_in, kind_in);
    s_w = hwq::scale_of(p_w, kind_w);
  }
  if (!(at::GradMode::is_enabled() && bias.requires_grad())) {
    auto [out, keep] = bias_forward(bias, s_in, s_w, qlo, qhi, rounding, w_rows, x_min, x_max,
                                    bits);
    return out;
  }
  return AccumulatorBias::apply(bias, s_in, s_w, qlo, qhi, rounding, w_rows_in, x_min, x_max,
                                bits);
}

}  // namespace hwq
