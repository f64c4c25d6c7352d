// hwquant's compiled A2Q / A2Q+ weight fake quantization: one C++ autograd node.
//
// The PyTorch reference is the autograd node _A2QFakeQuant in hwquant/nn/a2q.py (its
// docstring and the module's give the math), fed with a = torch.exp2(γ) and the
// quantizer's scale s(p). The row sums are ATen's (over the same float64 values, so
// the same numbers); everything else is loops that round each product and quotient
// exactly as those ops do: values and gradients are identical (tested). What it saves
// is some forty small ops and their Python per call, which dominate the step of a small
// A2Q model.
//
//   r = v (A2Q) or v − mean(v) (A2Q+), per row c of v [C, K] (the output channels)
//   g = min(a, T'·s)          a = 2^γ, T' = T·(1 − margin), s = p, |p| or 2^p
//   w = r · g / max(‖r‖₁ (+ |Σ r| for A2Q+), g·1e-6)     (the sums in float64)
//   x̂ = s · trunc(clamp(w / s, lo, hi))

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>  // M_LN2
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
// (its row sums are ∂s, LSQ) and gwr = gw·r, stored in float64 (exact) for its row sums,
// which reach g.
template <typename T>
HWQ_CLONES void backward_rows(const T* __restrict r, const T* __restrict f,
                              const T* __restrict s, T lo, T hi, const T* __restrict g,
                              int64_t rows, int64_t k, T* __restrict gw, T* __restrict gd,
                              double* __restrict gwr) {
  for (int64_t c = 0; c < rows; ++c) {
    const T fc = f[c], sc = s[c];
    const T* __restrict rc = r + c * k;
    const T* __restrict gc = g + c * k;
    T* __restrict wc = gw + c * k;
    T* __restrict dc = gd + c * k;
    double* __restrict xc = gwr + c * k;
    for (int64_t i = 0; i < k; ++i) {
      const T u = (rc[i] * fc) / sc;
      T cl = u < lo ? lo : u;
      cl = cl > hi ? hi : cl;
      const T q = hwq::round_code<T, 1>(cl);
      const bool in = (u >= lo) & (u <= hi);
      const T w = gc[i] * (in ? T(1) : T(0));  // ATen's grad · inside (g·0 = ±0, inf·0 = nan)
      wc[i] = w;
      dc[i] = gc[i] * (in ? q - u : q);
      xc[i] = static_cast<double>(w * rc[i]);
    }
  }
}

// gr = gw·f_c + l_c·sign(r) per row (sign as torch.sign: 0 for ±0 and NaN)
template <typename T>
HWQ_CLONES void chain_rows(const T* __restrict gw, const T* __restrict f, const T* __restrict l,
                           const T* __restrict r, int64_t rows, int64_t k, T* __restrict gr) {
  for (int64_t c = 0; c < rows; ++c) {
    const T fc = f[c], lc = l[c];
    const T* __restrict wc = gw + c * k;
    const T* __restrict rc = r + c * k;
    T* __restrict oc = gr + c * k;
    for (int64_t i = 0; i < k; ++i) {
      const T sign = T(T(0) < rc[i]) - T(rc[i] < T(0));
      oc[i] = wc[i] * fc + lc * sign;
    }
  }
}

// |r| and (A2Q+) r in float64, exact, for their row sums: ATen's r.abs().sum(1,
// dtype=float64) casts first, so these sums are its numbers
template <typename T>
HWQ_CLONES void wide_abs(const T* __restrict r, int64_t n, double* __restrict abs_out,
                         double* __restrict r_out) {
  for (int64_t i = 0; i < n; ++i) abs_out[i] = static_cast<double>(std::fabs(r[i]));
  if (r_out != nullptr)
    for (int64_t i = 0; i < n; ++i) r_out[i] = static_cast<double>(r[i]);
}

// max as torch.maximum: NaN if either is NaN
inline double nan_max(double a, double b) { return a != a ? a : (b != b ? b : (a > b ? a : b)); }

// The per-row numbers of the forward: m = s·T', g = where(a > m, m, a), divisor =
// max(l1 (+ |Σr|), g·1e-6) and factor = g / divisor, in the dtypes of the formula
template <typename T>
void row_factors(const T* a, const T* s, T bound, const double* l1, const double* rsum,
                 int64_t rows, T* g, bool* clamped, double* divisor, T* factor) {
  for (int64_t c = 0; c < rows; ++c) {
    const T m = s[c] * bound;
    clamped[c] = a[c] > m;
    g[c] = clamped[c] ? m : a[c];
    const double l = rsum != nullptr ? l1[c] + std::fabs(rsum[c]) : l1[c];
    const double g64 = static_cast<double>(g[c]);
    divisor[c] = nan_max(l, g64 * 1e-6);
    factor[c] = static_cast<T>(g64 / divisor[c]);
  }
}

// The per-row numbers of the backward from gf = Σ gw·r (float64) and gs = Σ gd: the
// gradients of l1 (gl1), of γ (through a = 2^γ) and of s (LSQ + the clamp's share)
template <typename T>
void row_grads(const double* gf, const T* factor, const double* divisor, const T* g,
               const bool* clamped, const T* a, T bound, int64_t rows, T* gl1, T* gs,
               T* ggamma) {
  for (int64_t c = 0; c < rows; ++c) {
    const bool live = divisor[c] > static_cast<double>(g[c]) * 1e-6;  // else factor is constant
    const double gg64 = live ? gf[c] / divisor[c] : 0.0;
    gl1[c] = live ? static_cast<T>(-gf[c] * static_cast<double>(factor[c]) / divisor[c]) : T(0);
    const T gg = static_cast<T>(gg64);
    const T ga = clamped[c] ? T(0) : gg;
    gs[c] = gs[c] + (clamped[c] ? gg : T(0)) * bound;
    ggamma[c] = ga * a[c] * static_cast<T>(M_LN2);  // torch.exp2's derivative
  }
}

struct A2QFakeQuant : public torch::autograd::Function<A2QFakeQuant> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& v, const at::Tensor& gamma,
                            const at::Tensor& p, int64_t kind, double bound, bool zero_centre,
                            double lo, double hi) {
    const int64_t rows = v.size(0);
    const at::Tensor v2 = v.reshape({rows, -1});
    const int64_t k = v2.size(1);
    const at::Tensor r = (zero_centre ? v2 - v2.mean(1, true) : v2).contiguous();
    const at::Tensor a = at::exp2(gamma).reshape({rows}).contiguous();
    const at::Tensor s_p = hwq::scale_of(p, kind);  // the scale, shaped like p
    const at::Tensor s = s_p.reshape({rows}).contiguous();
    const auto dt = r.options();
    const auto d64 = dt.dtype(at::kDouble);
    at::Tensor wide = at::empty({rows, k}, d64);
    at::Tensor wide_r = zero_centre ? at::empty({rows, k}, d64) : at::Tensor();
    at::Tensor g = at::empty({rows}, dt), factor = at::empty({rows}, dt);
    at::Tensor clamped = at::empty({rows}, dt.dtype(at::kBool));
    at::Tensor divisor = at::empty({rows}, d64);
    at::Tensor out = at::empty(v.sizes(), dt);
    AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "hwquant_a2q_forward", [&] {
      const scalar_t* rp = r.const_data_ptr<scalar_t>();
      wide_abs<scalar_t>(rp, rows * k, wide.data_ptr<double>(),
                         zero_centre ? wide_r.data_ptr<double>() : nullptr);
      const at::Tensor l1 = wide.sum(1);
      const at::Tensor rsum = zero_centre ? wide_r.sum(1) : at::Tensor();
      row_factors<scalar_t>(a.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
                            static_cast<scalar_t>(bound), l1.const_data_ptr<double>(),
                            zero_centre ? rsum.const_data_ptr<double>() : nullptr, rows,
                            g.data_ptr<scalar_t>(), clamped.data_ptr<bool>(),
                            divisor.data_ptr<double>(), factor.data_ptr<scalar_t>());
      forward_rows<scalar_t>(rp, factor.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
                             scalar_t(lo), scalar_t(hi), rows, k, out.data_ptr<scalar_t>());
    });
    ctx->save_for_backward({r, factor, s, divisor, g, clamped, a, p, s_p});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["zero_centre"] = zero_centre;
    ctx->saved_data["bound"] = bound;
    ctx->saved_data["lo"] = lo;
    ctx->saved_data["hi"] = hi;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &r = saved[0], &factor = saved[1], &s = saved[2], &divisor = saved[3];
    const at::Tensor &g = saved[4], &clamped = saved[5], &a = saved[6], &p = saved[7];
    const int64_t kind = ctx->saved_data["kind"].toInt();
    const bool zero_centre = ctx->saved_data["zero_centre"].toBool();
    const double bound = ctx->saved_data["bound"].toDouble();
    const double lo = ctx->saved_data["lo"].toDouble(), hi = ctx->saved_data["hi"].toDouble();
    const int64_t rows = r.size(0), k = r.size(1);
    const at::Tensor grad = grads[0].reshape({rows, k}).contiguous();
    const auto dt = r.options();

    at::Tensor gw = at::empty_like(r), gd = at::empty_like(r);
    at::Tensor gwr = at::empty({rows, k}, dt.dtype(at::kDouble));
    at::Tensor gr = at::empty_like(r);
    at::Tensor gl1 = at::empty({rows}, dt), ggamma = at::empty({rows}, dt), gs;
    AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "hwquant_a2q_backward", [&] {
      const scalar_t *rp = r.const_data_ptr<scalar_t>(), *fp = factor.const_data_ptr<scalar_t>();
      backward_rows<scalar_t>(rp, fp, s.const_data_ptr<scalar_t>(), scalar_t(lo), scalar_t(hi),
                              grad.const_data_ptr<scalar_t>(), rows, k, gw.data_ptr<scalar_t>(),
                              gd.data_ptr<scalar_t>(), gwr.data_ptr<double>());
      gs = gd.sum(1).contiguous();  // LSQ
      const at::Tensor gf = gwr.sum(1);
      row_grads<scalar_t>(gf.const_data_ptr<double>(), fp, divisor.const_data_ptr<double>(),
                          g.const_data_ptr<scalar_t>(), clamped.const_data_ptr<bool>(),
                          a.const_data_ptr<scalar_t>(), static_cast<scalar_t>(bound), rows,
                          gl1.data_ptr<scalar_t>(), gs.data_ptr<scalar_t>(),
                          ggamma.data_ptr<scalar_t>());
      chain_rows<scalar_t>(gw.const_data_ptr<scalar_t>(), fp, gl1.const_data_ptr<scalar_t>(), rp,
                           rows, k, gr.data_ptr<scalar_t>());
    });
    if (zero_centre) gr = gr - gr.mean(1, true);
    // s = s(p): the chain rule of torch.abs / torch.exp2, as in fake_quant.cpp
    at::Tensor gp = gs.reshape(p.sizes());
    if (kind == 1) gp = gp * p.sgn();
    if (kind == 2) gp = gp * saved[8] * M_LN2;
    return {gr.reshape(grads[0].sizes()), ggamma, kind == 0 ? at::Tensor() : gp,
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

namespace hwq {

std::optional<at::Tensor> a2q_fake_quant(const at::Tensor& v, const at::Tensor& gamma,
                                         const at::Tensor& p, int64_t kind, double bound,
                                         bool zero_centre, double lo, double hi) {
  TORCH_CHECK(v.dim() >= 2 && gamma.dim() == 1 && gamma.numel() == v.size(0) &&
                  p.numel() == v.size(0),
              "hwquant a2q_fake_quant: v [C, ...], γ [C] and p of one value per row");
  if (!same_cpu_float(v, gamma) || !same_cpu_float(v, p)) return std::nullopt;
  return A2QFakeQuant::apply(v, gamma, p, kind, bound, zero_centre, lo, hi);
}

}  // namespace hwq
