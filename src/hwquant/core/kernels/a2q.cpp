// hwquant's compiled A2Q / A2Q+ weight fake quantization: one C++ autograd node.
//
// The PyTorch reference is the autograd node _A2QFakeQuant in hwquant/nn/a2q.py (its
// docstring and the module's give the math). The row reductions are the same ATen ops
// (so the float64 sums are the same numbers); the elementwise work is three loops that
// round each product and quotient exactly as those ops do: values and gradients are
// identical (tested). What it saves is some forty small ops and their Python per call,
// which dominate the step of a small A2Q model.
//
//   r = v (A2Q) or v − mean(v) (A2Q+), per row c of v [C, K]
//   g = min(a, T'·s)          a = 2^γ, T' = T·(1 − margin)
//   w = r · g / max(‖r‖₁ (+ |Σ r| for A2Q+), g·1e-6)     (the sums in float64)
//   x̂ = s · trunc(clamp(w / s, lo, hi))

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstdint>

#include "common.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The elementwise part, per row c: w = r·f_c, u = w/s_c, x̂ = s_c·trunc(clamp(u, lo, hi))
// (each product / quotient rounded once, as the ATen ops round it).
template <typename T>
HWQ_CLONES void forward_rows(const T* __restrict r, const T* __restrict f, const T* __restrict s,
                             T lo, T hi, int64_t rows, int64_t k, T* __restrict out) {
  for (int64_t c = 0; c < rows; ++c) {
    const T fc = f[c], sc = s[c];
    const T* rc = r + c * k;
    T* oc = out + c * k;
    for (int64_t i = 0; i < k; ++i) {
      const T u = (rc[i] * fc) / sc;
      T cl = u < lo ? lo : u;
      cl = cl > hi ? hi : cl;
      oc[i] = hwq::round_code<T, 1>(cl) * sc;
    }
  }
}

// The forward again, then per element: gw = g·[inside], gd = g·(inside ? q − u : q)
// (its row sums are ∂s, LSQ) and gwr = gw·r (its row sums, in float64, reach g).
template <typename T>
HWQ_CLONES void backward_rows(const T* __restrict r, const T* __restrict f,
                              const T* __restrict s, T lo, T hi, const T* __restrict g,
                              int64_t rows, int64_t k, T* __restrict gw, T* __restrict gd,
                              T* __restrict gwr) {
  for (int64_t c = 0; c < rows; ++c) {
    const T fc = f[c], sc = s[c];
    const T* __restrict rc = r + c * k;
    const T* __restrict gc = g + c * k;
    T* __restrict wc = gw + c * k;
    T* __restrict dc = gd + c * k;
    T* __restrict xc = gwr + c * k;
    for (int64_t i = 0; i < k; ++i) {
      const T u = (rc[i] * fc) / sc;
      T cl = u < lo ? lo : u;
      cl = cl > hi ? hi : cl;
      const T q = hwq::round_code<T, 1>(cl);
      const bool in = (u >= lo) & (u <= hi);
      const T w = gc[i] * (in ? T(1) : T(0));  // ATen's grad · inside (g·0 = ±0, inf·0 = nan)
      wc[i] = w;
      dc[i] = gc[i] * (in ? q - u : q);
      xc[i] = w * rc[i];
    }
  }
}

// gr = gw·f_c + l_c·sgn(r) per row
template <typename T>
HWQ_CLONES void chain_rows(const T* __restrict gw, const T* __restrict f, const T* __restrict l,
                           const T* __restrict sgn, int64_t rows, int64_t k, T* __restrict gr) {
  for (int64_t c = 0; c < rows; ++c) {
    const T fc = f[c], lc = l[c];
    const T* __restrict wc = gw + c * k;
    const T* __restrict sc = sgn + c * k;
    T* __restrict oc = gr + c * k;
    for (int64_t i = 0; i < k; ++i) oc[i] = wc[i] * fc + lc * sc[i];
  }
}

struct A2QFakeQuant : public torch::autograd::Function<A2QFakeQuant> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& v, const at::Tensor& a,
                            const at::Tensor& s, double bound, bool zero_centre, double lo,
                            double hi) {
    const at::Tensor r = (zero_centre ? v - v.mean(1, true) : v).contiguous();
    const at::Tensor m = s * bound;
    const at::Tensor clamped = a > m;
    const at::Tensor g = at::where(clamped, m, a);
    at::Tensor l1 = r.abs().sum(1, false, at::kDouble);
    if (zero_centre) l1 = l1 + r.sum(1, false, at::kDouble).abs();
    const at::Tensor g64 = g.to(at::kDouble);
    const at::Tensor divisor = at::maximum(l1, g64 * 1e-6);
    const at::Tensor factor = (g64 / divisor).to(r.scalar_type()).contiguous();
    const at::Tensor sc = s.contiguous();
    at::Tensor out = at::empty_like(r);
    AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "hwquant_a2q_forward", [&] {
      forward_rows<scalar_t>(r.const_data_ptr<scalar_t>(), factor.const_data_ptr<scalar_t>(),
                             sc.const_data_ptr<scalar_t>(), scalar_t(lo), scalar_t(hi),
                             r.size(0), r.size(1), out.data_ptr<scalar_t>());
    });
    ctx->save_for_backward({r, factor, sc, divisor, g, clamped});
    ctx->saved_data["zero_centre"] = zero_centre;
    ctx->saved_data["bound"] = bound;
    ctx->saved_data["lo"] = lo;
    ctx->saved_data["hi"] = hi;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &r = saved[0], &factor = saved[1], &s = saved[2], &divisor = saved[3];
    const at::Tensor &g = saved[4], &clamped = saved[5];
    const at::Tensor grad = grads[0].contiguous();
    const bool zero_centre = ctx->saved_data["zero_centre"].toBool();
    const double bound = ctx->saved_data["bound"].toDouble();
    const double lo = ctx->saved_data["lo"].toDouble(), hi = ctx->saved_data["hi"].toDouble();
    const int64_t rows = r.size(0), k = r.size(1);

    at::Tensor gw = at::empty_like(r), gd = at::empty_like(r), gwr = at::empty_like(r);
    AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "hwquant_a2q_backward", [&] {
      backward_rows<scalar_t>(r.const_data_ptr<scalar_t>(), factor.const_data_ptr<scalar_t>(),
                              s.const_data_ptr<scalar_t>(), scalar_t(lo), scalar_t(hi),
                              grad.const_data_ptr<scalar_t>(), rows, k, gw.data_ptr<scalar_t>(),
                              gd.data_ptr<scalar_t>(), gwr.data_ptr<scalar_t>());
    });
    at::Tensor gs = gd.sum(1);  // LSQ
    const at::Tensor gf = gwr.sum(1, false, at::kDouble);
    const at::Tensor live = divisor > g.to(at::kDouble) * 1e-6;  // else factor is constant
    at::Tensor gg = at::where(live, gf / divisor, 0.0);
    const at::Tensor gl1 = at::where(live, -gf * factor.to(at::kDouble) / divisor, 0.0)
                               .to(r.scalar_type())
                               .contiguous();
    const at::Tensor sgn = at::sign(r);
    at::Tensor gr = at::empty_like(r);
    AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "hwquant_a2q_chain", [&] {
      chain_rows<scalar_t>(gw.const_data_ptr<scalar_t>(), factor.const_data_ptr<scalar_t>(),
                           gl1.const_data_ptr<scalar_t>(), sgn.const_data_ptr<scalar_t>(), rows,
                           k, gr.data_ptr<scalar_t>());
    });
    if (zero_centre) gr = gr - gr.mean(1, true);
    gg = gg.to(g.scalar_type());
    const at::Tensor ga = at::where(clamped, 0.0, gg);
    gs = gs + at::where(clamped, gg, 0.0) * bound;
    return {gr, ga, gs, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

namespace hwq {

std::optional<at::Tensor> a2q_fake_quant(const at::Tensor& v, const at::Tensor& a,
                                         const at::Tensor& s, double bound, bool zero_centre,
                                         double lo, double hi) {
  TORCH_CHECK(v.dim() == 2 && a.dim() == 1 && s.dim() == 1,
              "hwquant a2q_fake_quant: v [C, K], a [C] and s [C]");
  if (!same_cpu_float(v, a) || !same_cpu_float(v, s)) return std::nullopt;
  return A2QFakeQuant::apply(v, a, s, bound, zero_centre, lo, hi);
}

}  // namespace hwq
