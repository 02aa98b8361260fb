// A histogram with fixed bucket bounds: counts per bucket and the sum of the
// values observed, cumulative since construction.
//
// A reader takes deltas between two snapshots (torchspark.spark.metrics adds
// them to Prometheus histograms of the same bounds), so the engine records
// every model call without a callback into Python. Thread-safe: any thread
// observes and snapshots; observe() is a binary search and two relaxed atomic
// adds, no lock. A snapshot is not atomic across buckets: each count it reads
// is one that was reached, so deltas of later snapshots are never negative,
// but `sum` may lag or lead the counts by the observations in flight.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace torchspark {

struct HistogramSnapshot {
  std::vector<double> bounds;   // upper bounds (inclusive), increasing
  std::vector<int64_t> counts;  // bounds.size() + 1: counts[i] in (bounds[i-1], bounds[i]],
                                // the last above every bound (Prometheus' +Inf bucket)
  double sum = 0;               // of every value observed
};

class Histogram {
 public:
  // ValueError unless `bounds` is non-empty and strictly increasing.
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  HistogramSnapshot snapshot() const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<int64_t>[]> counts_;  // bounds_.size() + 1
  std::atomic<double> sum_{0.0};
};

// Seconds, 0.1 ms to 30 s: a light model's call on a CPU takes well under a
// millisecond, an Arrow batch of a large one seconds; steps of about 2-2.5x
// (Prometheus' defaults, extended down), so histogram_quantile's linear
// interpolation within a bucket is off by at most that step.
const std::vector<double>& latency_bucket_bounds();
// Rows per model call: powers of two, 1 to 65536 (batch_size's useful range).
const std::vector<double>& batch_rows_bucket_bounds();

}  // namespace torchspark
