// Reusable host buffers that batches are staged into.
//
// A staged batch holds one buffer per input that is not handed to the model
// as a view; at most `inflight` batches are staged or computing at once. So
// inflight x (buffers per batch) buffers serve every batch in the steady
// state with no allocation: the free list is capped there (the largest
// number one batch gave back, times inflight), and beyond it buffers are
// freed, oldest first. A request takes the first free buffer of its dtype
// that is large enough (buffers are 1-D; callers view them in their shape).
// On an accelerator the buffers are pinned, so their H2D copies are
// asynchronous. Thread-safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <mutex>
#include <vector>

namespace torchspark {

class StagingPool {
 public:
  StagingPool(int64_t inflight, bool pinned) : inflight_(inflight), pinned_(pinned) {}

  // A 1-D CPU buffer of `dtype` with at least `numel` elements (at least 1).
  at::Tensor acquire(c10::ScalarType dtype, int64_t numel);
  // Gives one batch's buffers back (moved out of `buffers`).
  void release(std::vector<at::Tensor>& buffers);
  // Buffers on the free list now.
  size_t free_count() const;
  // The free list's cap now: inflight x the most buffers one batch gave back.
  size_t cap() const;

 private:
  const int64_t inflight_;
  const bool pinned_;
  mutable std::mutex mutex_;
  std::vector<at::Tensor> free_;
  size_t per_batch_ = 0;
};

}  // namespace torchspark
