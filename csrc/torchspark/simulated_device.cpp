#include "torchspark/simulated_device.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <chrono>
#include <thread>

namespace torchspark {

at::Tensor simulated_kernel(const at::Tensor& x, double ms) {
  TORCH_CHECK_VALUE(ms >= 0, "simulated_kernel: ms must be >= 0, got ", ms);
  TORCH_CHECK_VALUE(x.dim() >= 1, "simulated_kernel: expected a batch dimension, got a 0-d tensor");
  std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms));
  // Next to no CPU work of its own: the first value of each row.
  return x.reshape({x.size(0), -1}).narrow(1, 0, 1).clone();
}

void register_simulated_device() {}

}  // namespace torchspark

TORCH_LIBRARY(torchspark, m) {
  m.def("simulated_kernel(Tensor x, float ms) -> Tensor");
  m.impl("simulated_kernel", torch::dispatch(c10::DispatchKey::CompositeExplicitAutograd,
                                             TORCH_FN(torchspark::simulated_kernel)));
}
