#include "torchspark/engine/staging_pool.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace torchspark {

at::Tensor StagingPool::acquire(c10::ScalarType dtype, int64_t numel) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->scalar_type() == dtype && it->numel() >= numel) {
        at::Tensor buffer = std::move(*it);
        free_.erase(it);
        return buffer;
      }
    }
  }
  at::TensorOptions options = at::TensorOptions().dtype(dtype);
  if (pinned_) options = options.pinned_memory(true);
  return at::empty({std::max<int64_t>(numel, 1)}, options);
}

void StagingPool::release(std::vector<at::Tensor>& buffers) {
  std::lock_guard<std::mutex> lock(mutex_);
  per_batch_ = std::max(per_batch_, buffers.size());
  for (at::Tensor& buffer : buffers) free_.push_back(std::move(buffer));
  buffers.clear();
  const size_t cap = static_cast<size_t>(inflight_) * per_batch_;
  if (free_.size() > cap) {
    free_.erase(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(free_.size() - cap));
  }
}

size_t StagingPool::free_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return free_.size();
}

size_t StagingPool::cap() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<size_t>(inflight_) * per_batch_;
}

}  // namespace torchspark
