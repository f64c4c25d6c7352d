// The Python module of hwquant's kernels (hwquant.core.kernels loads it): plain
// pybind11 functions, which cost a tenth of a torch.ops call's dispatch.
#include <torch/extension.h>

#include "common.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fake_quant", &hwq::fake_quant);
  m.def("fake_quant_tangent", &hwq::fake_quant_tangent);
  m.def("a2q_fake_quant", &hwq::a2q_fake_quant);
  m.def("a2q_bias_range", &hwq::a2q_bias_range);
  m.def("accumulator_bias", &hwq::accumulator_bias);
}
