// torchspark._C: the pybind11 module. It only registers: each area's
// bindings live in their own file (errors, arrow, models, engine).
#include <torch/csrc/utils/pybind.h>

#include "bindings/common.h"

PYBIND11_MODULE(_C, m) {
  using namespace torchspark;
  m.doc() = "torchspark native core (private: use the torchspark package)";
  m.attr("TORCH_VERSION") = TORCHSPARK_TORCH_VERSION;
  bind_errors(m);
  bind_arrow(m);
  bind_models(m);
  bind_engine(m);
}
