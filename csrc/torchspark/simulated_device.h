// A simulated accelerator kernel for proving copy/compute overlap on a CPU-only
// machine (DESIGN.md, "GPU honesty"). The op torchspark::simulated_kernel(x, ms)
// sleeps for `ms` milliseconds, leaving the CPU free as a GPU kernel launch
// would, and returns the first value of each row ([rows, 1]). A TorchScript
// model calling it stands in for a device model in tests and benchmarks; it is
// registered when torchspark is loaded. Thread-safe.
#pragma once

#include <ATen/core/Tensor.h>

namespace torchspark {

at::Tensor simulated_kernel(const at::Tensor& x, double ms);

// Referenced by the module so the registration in simulated_device.cpp is linked.
void register_simulated_device();

}  // namespace torchspark
