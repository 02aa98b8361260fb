#include "torchspark/kernels/host_memory.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <cstdlib>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace torchspark {

at::Tensor empty_host(at::IntArrayRef sizes, c10::ScalarType dtype) {
  const auto options = at::TensorOptions().dtype(dtype);
  const int64_t bytes =
      c10::multiply_integers(sizes) * static_cast<int64_t>(c10::elementSize(dtype));
#if defined(__linux__)
  if (bytes >= kHugePageThresholdBytes) {
    constexpr size_t kHugePage = 2 << 20;
    const size_t rounded = (static_cast<size_t>(bytes) + kHugePage - 1) / kHugePage * kHugePage;
    void* data = std::aligned_alloc(kHugePage, rounded);
    if (data == nullptr) {
      throw std::bad_alloc();
    }
    // Advice only: without transparent huge pages this is a no-op.
    (void)madvise(data, rounded, MADV_HUGEPAGE);
    return at::from_blob(data, sizes, [](void* p) { std::free(p); }, options);
  }
#endif
  return at::empty(sizes, options);
}

}  // namespace torchspark
