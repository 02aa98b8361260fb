#include "torchspark/engine/stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace torchspark {

void LatencyRecorder::record(double seconds) {
  histogram_.observe(seconds);
  std::lock_guard<std::mutex> lock(mutex_);
  if (static_cast<int64_t>(samples_.size()) < kLatencySamples) {
    samples_.push_back(seconds);
  } else {
    samples_[count_ % kLatencySamples] = seconds;
  }
  ++count_;
}

LatencySummary LatencyRecorder::summary() const {
  std::vector<double> sorted;
  LatencySummary out;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    sorted = samples_;
    out.count = count_;
  }
  if (sorted.empty()) {
    return out;
  }
  std::sort(sorted.begin(), sorted.end());
  // Nearest-rank percentiles.
  auto rank = [&](double q) {
    const auto n = static_cast<double>(sorted.size());
    const auto i = static_cast<size_t>(std::max(1.0, std::ceil(q * n))) - 1;
    return sorted[std::min(i, sorted.size() - 1)];
  };
  out.mean_s = std::accumulate(sorted.begin(), sorted.end(), 0.0) / sorted.size();
  out.p50_s = rank(0.50);
  out.p90_s = rank(0.90);
  out.p99_s = rank(0.99);
  out.max_s = sorted.back();
  return out;
}

}  // namespace torchspark
