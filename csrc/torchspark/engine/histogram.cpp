#include "torchspark/engine/histogram.h"

#include <algorithm>
#include <cstddef>
#include <utility>

#include <c10/util/Exception.h>

namespace torchspark {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      counts_(std::make_unique<std::atomic<int64_t>[]>(bounds_.size() + 1)) {
  TORCH_CHECK_VALUE(!bounds_.empty(), "a histogram needs at least one bucket bound");
  for (size_t i = 1; i < bounds_.size(); ++i) {
    TORCH_CHECK_VALUE(bounds_[i - 1] < bounds_[i], "histogram bucket bounds must increase: bound ",
                      i, " is ", bounds_[i], " after ", bounds_[i - 1]);
  }
}

void Histogram::observe(double value) {
  // The first bound >= value: Prometheus' buckets are inclusive upper bounds.
  const auto bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

HistogramSnapshot Histogram::snapshot() const {
  HistogramSnapshot out;
  out.bounds = bounds_;
  out.counts.resize(bounds_.size() + 1);
  for (size_t i = 0; i < out.counts.size(); ++i) {
    out.counts[i] = counts_[i].load(std::memory_order_relaxed);
  }
  out.sum = sum_.load(std::memory_order_relaxed);
  return out;
}

const std::vector<double>& latency_bucket_bounds() {
  static const std::vector<double> bounds = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                             0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                             1.0,    2.5,     5.0,    10.0,  30.0};
  return bounds;
}

const std::vector<double>& batch_rows_bucket_bounds() {
  static const std::vector<double> bounds = [] {
    std::vector<double> b;
    for (double rows = 1; rows <= 65536; rows *= 2) b.push_back(rows);
    return b;
  }();
  return bounds;
}

}  // namespace torchspark
