// hwquant's compiled CPU kernel: integer fake quantization in one pass.
//
// The formula is core/grid.py's for a saturating integer grid without zero point
// (hwquant.core.grid.fake_quantize is the source of truth; the tests compare the two
// bit for bit):
//
//     v = x / s,  c = clamp(v, lo, hi),  q = round(c),  x̂ = q · s
//     ∂x̂/∂x = 1 where lo ≤ v ≤ hi, else 0          (straight-through)
//     ∂x̂/∂s = q − v inside, q outside              (LSQ, Esser et al. 2020)
//
// Why it exists: on the small models hardware people train, a step is dominated by
// the per-op overhead of the seven tensor ops (and the Python autograd node) that
// the formula costs in PyTorch; here it is one loop and one C++ autograd node.
//
// Rounding codes: 0 = half to even (torch.round), 1 = toward zero (torch.trunc).
// Both are written with the "add 2^m" trick, which vectorizes on every CPU (SSE2,
// NEON) where std::nearbyint / std::trunc would not without -msse4.1.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// 2^(mantissa bits): every float at or above it is an integer.
template <typename T> constexpr T kIntegral = T(0);
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

// out = q·s; inside / dscale only when a gradient needs them.
template <typename T, int64_t R, bool SAVE_X, bool SAVE_S>
void quant_loop(const T* __restrict x, const T* __restrict s, bool scalar_scale, T lo, T hi,
                int64_t begin, int64_t end, T* __restrict out, bool* __restrict inside,
                T* __restrict dscale) {
  for (int64_t i = begin; i < end; ++i) {
    const T si = scalar_scale ? s[0] : s[i];
    const T v = x[i] / si;
    T c = v < lo ? lo : v;
    c = c > hi ? hi : c;
    const T q = round_code<T, R>(c);
    out[i] = q * si;
    const bool in = (v >= lo) & (v <= hi);
    if constexpr (SAVE_X) inside[i] = in;
    if constexpr (SAVE_S) dscale[i] = in ? q - v : q;
  }
}

struct Buffers {
  at::Tensor out, inside, dscale;
};

template <typename T, int64_t R>
void run(const at::Tensor& x, const at::Tensor& s, double lo, double hi, Buffers& b) {
  const bool scalar = s.numel() == 1;
  const T* xp = x.const_data_ptr<T>();
  const T* sp = s.const_data_ptr<T>();
  T* op = b.out.data_ptr<T>();
  bool* ip = b.inside.defined() ? b.inside.data_ptr<bool>() : nullptr;
  T* dp = b.dscale.defined() ? b.dscale.data_ptr<T>() : nullptr;
  const T l = static_cast<T>(lo), h = static_cast<T>(hi);
  // elementwise: any split over threads gives the same values
  at::parallel_for(0, x.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
    if (ip && dp)
      quant_loop<T, R, true, true>(xp, sp, scalar, l, h, begin, end, op, ip, dp);
    else if (ip)
      quant_loop<T, R, true, false>(xp, sp, scalar, l, h, begin, end, op, ip, dp);
    else if (dp)
      quant_loop<T, R, false, true>(xp, sp, scalar, l, h, begin, end, op, ip, dp);
    else
      quant_loop<T, R, false, false>(xp, sp, scalar, l, h, begin, end, op, ip, dp);
  });
}

Buffers quantize(const at::Tensor& x_in, const at::Tensor& s_in, double lo, double hi,
                 int64_t rounding, bool need_x, bool need_s) {
  TORCH_CHECK(x_in.device().is_cpu() && s_in.device().is_cpu(),
              "hwquant::fake_quant is a CPU kernel");
  TORCH_CHECK(x_in.scalar_type() == s_in.scalar_type(),
              "hwquant::fake_quant: x and s must share a dtype");
  TORCH_CHECK(rounding == 0 || rounding == 1, "hwquant::fake_quant: unknown rounding code");
  at::Tensor x = x_in.contiguous();
  at::Tensor s = s_in.numel() == 1 ? s_in.contiguous() : s_in.expand_as(x).contiguous();
  Buffers b;
  b.out = at::empty_like(x);
  if (need_x) b.inside = at::empty(x.sizes(), x.options().dtype(at::kBool));
  if (need_s) b.dscale = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hwquant_fake_quant", [&] {
    if (rounding == 0)
      run<scalar_t, 0>(x, s, lo, hi, b);
    else
      run<scalar_t, 1>(x, s, lo, hi, b);
  });
  return b;
}

struct FakeQuant : public torch::autograd::Function<FakeQuant> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& s,
                            double lo, double hi, int64_t rounding, bool need_x, bool need_s) {
    Buffers b = quantize(x, s, lo, hi, rounding, need_x, need_s);
    ctx->save_for_backward({b.inside, b.dscale});
    ctx->saved_data["scale_shape"] = s.sizes().vec();
    return b.out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& inside = saved[0];
    const at::Tensor& dscale = saved[1];
    const at::Tensor g = grads[0].contiguous();
    at::Tensor gx, gd;
    if (inside.defined()) gx = at::empty_like(g);
    if (dscale.defined()) gd = at::empty_like(g);
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "hwquant_fake_quant_backward", [&] {
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const bool* ip = inside.defined() ? inside.const_data_ptr<bool>() : nullptr;
      const scalar_t* dp = dscale.defined() ? dscale.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* xo = gx.defined() ? gx.data_ptr<scalar_t>() : nullptr;
      scalar_t* so = gd.defined() ? gd.data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, g.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
        if (xo)
          for (int64_t i = begin; i < end; ++i) xo[i] = ip[i] ? gp[i] : scalar_t(0);
        if (so)
          for (int64_t i = begin; i < end; ++i) so[i] = gp[i] * dp[i];
      });
    });
    // the scale's gradient: the same reduction as the PyTorch formula's
    at::Tensor gs;
    if (gd.defined()) gs = gd.sum_to_size(ctx->saved_data["scale_shape"].toIntVector());
    return {gx, gs, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor fake_quant(const at::Tensor& x, const at::Tensor& s, double lo, double hi,
                      int64_t rounding) {
  const bool grad = at::GradMode::is_enabled();
  const bool need_x = grad && x.requires_grad();
  const bool need_s = grad && s.requires_grad();
  if (!need_x && !need_s) return quantize(x, s, lo, hi, rounding, false, false).out;
  return FakeQuant::apply(x, s, lo, hi, rounding, need_x, need_s);
}

}  // namespace

TORCH_LIBRARY(hwquant, m) {
  m.def("fake_quant(Tensor x, Tensor s, float lo, float hi, int rounding) -> Tensor");
}

TORCH_LIBRARY_IMPL(hwquant, CompositeImplicitAutograd, m) { m.impl("fake_quant", fake_quant); }
