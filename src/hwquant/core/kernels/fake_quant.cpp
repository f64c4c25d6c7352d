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
// The scale may come as its parameter p: s = p, |p| or 2^p (scale codes 0, 1, 2),
// with the chain rule of torch.abs / torch.exp2 applied to ∂s (the same ATen ops
// autograd would run), which saves the scale its own autograd node per call.
//
// Rounding codes: 0 = half to even (torch.round), 1 = toward zero (torch.trunc).
// Both are written with the "add 2^m" trick, which vectorizes on every CPU (SSE2,
// NEON) where std::nearbyint / std::trunc would not without -msse4.1.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>  // M_LN2
#include <cstdint>

#include "common.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// out = q·s
template <typename T, int64_t R>
HWQ_CLONES void quant_loop(const T* __restrict x, const T* __restrict s, bool scalar_scale,
                           T lo, T hi, int64_t begin, int64_t end, T* __restrict out) {
  for (int64_t i = begin; i < end; ++i) {
    const T si = scalar_scale ? s[0] : s[i];
    const T v = x[i] / si;
    T c = v < lo ? lo : v;
    c = c > hi ? hi : c;
    out[i] = hwq::round_code<T, R>(c) * si;
  }
}

// The forward again (cheaper than keeping its masks), then ∂x = g inside the range
// else 0, and g·∂x̂/∂s (q − v inside, q outside), whose sum is ∂s.
template <typename T, int64_t R, bool GX, bool GS>
HWQ_CLONES void grad_loop(const T* __restrict x, const T* __restrict s, bool scalar_scale,
                          T lo, T hi, const T* __restrict g, int64_t begin, int64_t end,
                          T* __restrict gx, T* __restrict gd) {
  for (int64_t i = begin; i < end; ++i) {
    const T si = scalar_scale ? s[0] : s[i];
    const T v = x[i] / si;
    T c = v < lo ? lo : v;
    c = c > hi ? hi : c;
    const T q = hwq::round_code<T, R>(c);
    const bool in = (v >= lo) & (v <= hi);
    if constexpr (GX) gx[i] = in ? g[i] : T(0);
    if constexpr (GS) gd[i] = g[i] * (in ? q - v : q);
  }
}

// x̂ = q·s and ∂x̂/∂s (q − v inside, q outside) of one scale, without autograd
template <typename T, int64_t R>
HWQ_CLONES void tangent_loop(const T* __restrict x, T s, T lo, T hi, int64_t begin,
                             int64_t end, T* __restrict out, T* __restrict d) {
  for (int64_t i = begin; i < end; ++i) {
    const T v = x[i] / s;
    T c = v < lo ? lo : v;
    c = c > hi ? hi : c;
    const T q = hwq::round_code<T, R>(c);
    const bool in = (v >= lo) & (v <= hi);
    out[i] = q * s;
    d[i] = in ? q - v : q;
  }
}

void check(const at::Tensor& x, const at::Tensor& s, int64_t rounding) {
  TORCH_CHECK(x.device().is_cpu() && s.device().is_cpu(), "hwquant::fake_quant is a CPU kernel");
  TORCH_CHECK(x.scalar_type() == s.scalar_type(),
              "hwquant::fake_quant: x and s must share a dtype");
  TORCH_CHECK(rounding == 0 || rounding == 1, "hwquant::fake_quant: unknown rounding code");
}

// s laid out for the loops: one value, or one per element of x
at::Tensor scale_like(const at::Tensor& s, const at::Tensor& x) {
  return s.numel() == 1 ? s.contiguous() : s.expand_as(x).contiguous();
}

at::Tensor quantize(const at::Tensor& x_in, const at::Tensor& s_in, double lo, double hi,
                    int64_t rounding) {
  check(x_in, s_in, rounding);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor s = scale_like(s_in, x);
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hwquant_fake_quant", [&] {
    const scalar_t *xp = x.const_data_ptr<scalar_t>(), *sp = s.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const bool scalar = s.numel() == 1;
    const auto l = static_cast<scalar_t>(lo), h = static_cast<scalar_t>(hi);
    // elementwise: any split over threads gives the same values
    at::parallel_for(0, x.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
      if (rounding == 0)
        quant_loop<scalar_t, 0>(xp, sp, scalar, l, h, begin, end, op);
      else
        quant_loop<scalar_t, 1>(xp, sp, scalar, l, h, begin, end, op);
    });
  });
  return out;
}

template <typename T, int64_t R>
void grads(const T* x, const T* s, bool scalar, T lo, T hi, const T* g, int64_t n, T* gx,
           T* gd) {
  at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
    if (gx && gd)
      grad_loop<T, R, true, true>(x, s, scalar, lo, hi, g, begin, end, gx, gd);
    else if (gx)
      grad_loop<T, R, true, false>(x, s, scalar, lo, hi, g, begin, end, gx, gd);
    else
      grad_loop<T, R, false, true>(x, s, scalar, lo, hi, g, begin, end, gx, gd);
  });
}

struct FakeQuant : public torch::autograd::Function<FakeQuant> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& p,
                            double lo, double hi, int64_t rounding, int64_t kind, bool need_x,
                            bool need_s) {
    const at::Tensor s = hwq::scale_of(p, kind);
    // ∂s/∂p needs p (abs: sgn p) or s (exp2: s·ln 2)
    const at::Tensor chain = kind == 1 ? p : (kind == 2 ? s : at::Tensor());
    ctx->save_for_backward({x, s, chain});
    ctx->saved_data["lo"] = lo;
    ctx->saved_data["hi"] = hi;
    ctx->saved_data["codes"] = (rounding << 8) | (kind << 4) | (need_x << 1) | int64_t(need_s);
    return quantize(x, s, lo, hi, rounding);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads_out) {
    const auto saved = ctx->get_saved_variables();
    const int64_t codes = ctx->saved_data["codes"].toInt();
    const int64_t rounding = codes >> 8, kind = (codes >> 4) & 15;
    const bool need_x = (codes >> 1) & 1, need_s = codes & 1;
    const double lo = ctx->saved_data["lo"].toDouble(), hi = ctx->saved_data["hi"].toDouble();
    const at::Tensor x = saved[0].contiguous();
    const at::Tensor s = scale_like(saved[1], x);
    const at::Tensor g = grads_out[0].contiguous();
    at::Tensor gx = need_x ? at::empty_like(x) : at::Tensor();
    at::Tensor gd = need_s ? at::empty_like(x) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hwquant_fake_quant_backward", [&] {
      const scalar_t *xp = x.const_data_ptr<scalar_t>(), *sp = s.const_data_ptr<scalar_t>();
      scalar_t* xo = need_x ? gx.data_ptr<scalar_t>() : nullptr;
      scalar_t* so = need_s ? gd.data_ptr<scalar_t>() : nullptr;
      const auto l = static_cast<scalar_t>(lo), h = static_cast<scalar_t>(hi);
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      if (rounding == 0)
        grads<scalar_t, 0>(xp, sp, s.numel() == 1, l, h, gp, x.numel(), xo, so);
      else
        grads<scalar_t, 1>(xp, sp, s.numel() == 1, l, h, gp, x.numel(), xo, so);
    });
    // the scale's gradient: the same reduction as the PyTorch formula's
    at::Tensor gs;
    if (need_s) {
      gs = gd.sum_to_size(saved[1].sizes());
      if (kind == 1) gs = gs * saved[2].sgn();  // torch.abs's derivative
      if (kind == 2) gs = gs * saved[2] * M_LN2;  // torch.exp2's: grad · result · ln 2
    }
    return {gx, gs, at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// x and its scale: CPU float32 / float64 of one dtype, the scale broadcasting to x
bool serves(const at::Tensor& x, const at::Tensor& p) {
  if (!hwq::same_cpu_float(x, p)) return false;
  if (p.numel() == 1) return true;
  if (p.dim() > x.dim()) return false;
  for (int64_t i = 1; i <= p.dim(); ++i) {  // p broadcasts to x's shape
    const int64_t a = p.size(-i), b = x.size(-i);
    if (a != b && a != 1) return false;
  }
  return true;
}

}  // namespace

namespace hwq {

std::optional<std::tuple<at::Tensor, at::Tensor>> fake_quant_tangent(const at::Tensor& x_in,
                                                                     const at::Tensor& s,
                                                                     double lo, double hi,
                                                                     int64_t rounding) {
  if (!hwq::same_cpu_float(x_in, s) || s.numel() != 1 || (rounding != 0 && rounding != 1))
    return std::nullopt;
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x), d = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hwquant_fake_quant_tangent", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t sv = s.item<scalar_t>();
    scalar_t *op = out.data_ptr<scalar_t>(), *dp = d.data_ptr<scalar_t>();
    const auto l = static_cast<scalar_t>(lo), h = static_cast<scalar_t>(hi);
    at::parallel_for(0, x.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
      if (rounding == 0)
        tangent_loop<scalar_t, 0>(xp, sv, l, h, begin, end, op, dp);
      else
        tangent_loop<scalar_t, 1>(xp, sv, l, h, begin, end, op, dp);
    });
  });
  return std::make_tuple(out, d);
}

std::optional<at::Tensor> fake_quant(const at::Tensor& x, const at::Tensor& p, double lo,
                                     double hi, int64_t rounding, int64_t kind) {
  if (!serves(x, p)) return std::nullopt;
  const bool grad = at::GradMode::is_enabled();
  const bool need_x = grad && x.requires_grad();
  const bool need_s = grad && p.requires_grad();
  if (!need_x && !need_s) return quantize(x, hwq::scale_of(p, kind), lo, hi, rounding);
  return FakeQuant::apply(x, p, lo, hi, rounding, kind, need_x, need_s);
}

}  // namespace hwq
