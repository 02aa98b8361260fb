// Output allocations for large host tensors.
//
// A fresh multi-megabyte tensor from torch's CPU allocator is faulted in 4 KiB
// page by page on first touch, which on these machines costs more than the
// copy that fills it (benchmarks/RESULTS.md, pad_bench: torch.full of 512 MB
// took 324 ms against 38 ms for numpy, which asks for transparent huge pages).
// empty_host() allocates outputs of kHugePageThresholdBytes or more 2 MiB-aligned
// and advises the kernel to back them with huge pages; smaller ones come from
// torch's allocator. The memory is freed when the tensor's storage dies.
// Thread-safe.
#pragma once

#include <ATen/core/Tensor.h>

namespace torchspark {

constexpr int64_t kHugePageThresholdBytes = 4 << 20;

at::Tensor empty_host(at::IntArrayRef sizes, c10::ScalarType dtype);

}  // namespace torchspark
