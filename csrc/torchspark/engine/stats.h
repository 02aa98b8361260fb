// Latency and counter statistics of the engine.
//
// LatencyRecorder keeps the most recent kLatencySamples samples of one
// latency (a ring buffer), so percentiles are exact over that window and the
// memory is fixed, and counts every sample ever recorded in a Histogram of
// latency_bucket_bounds() (histogram.h), which Prometheus reads. Thread-safe:
// workers record, any thread summarises.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "torchspark/engine/histogram.h"

namespace torchspark {

constexpr int64_t kLatencySamples = 1 << 14;

struct LatencySummary {
  int64_t count = 0;  // samples ever recorded
  double mean_s = 0;  // over the window
  double p50_s = 0;
  double p90_s = 0;
  double p99_s = 0;
  double max_s = 0;
};

class LatencyRecorder {
 public:
  void record(double seconds);
  LatencySummary summary() const;
  HistogramSnapshot histogram() const { return histogram_.snapshot(); }

 private:
  mutable std::mutex mutex_;
  std::vector<double> samples_;  // ring buffer of up to kLatencySamples
  int64_t count_ = 0;
  Histogram histogram_{latency_bucket_bounds()};
};

}  // namespace torchspark
