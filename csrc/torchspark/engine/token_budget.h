// The token budget of batches with padded inputs: fixed, off, or tuned while
// the engine runs (max_tokens = kAutoTokens).
//
// Tuning compares two budgets at a time on the live stream: the batcher
// forms batches under them alternately (next()), so both see rows of
// similar lengths (sorted submissions drift from short rows to long ones)
// and the same machine load; the workers report each batch's real tokens
// and compute time (record()). Once each has min_batches batches and
// min_seconds of compute, the one with more real tokens per second is kept
// (a challenger must win by `margin`). The search starts at `start`, doubles
// while doubling wins, else halves while halving wins, within [floor,
// ceiling], then settles for the engine's life. Out of memory under a budget
// lowers the ceiling below it. Real tokens per second, not rows: a trial's
// rows are not the other's, their tokens are comparable; padding and
// per-call overheads both show in it.
//
// Thread-safe: next() on the batcher, record() and out_of_memory() on the
// workers, the getters anywhere. Pure (no tensors), unit-tested in tests/csrc.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

namespace torchspark {

// EngineOptions::max_tokens: tune the budget while running.
constexpr int64_t kAutoTokens = -1;

struct TokenBudgetSettings {
  int64_t start = 1024;
  int64_t floor = 256;
  int64_t ceiling = 16384;
  int64_t warmup_batches = 2;  // the first batches (model warm-up) are not measured
  int64_t min_batches = 6;     // per budget and comparison
  double min_seconds = 0.2;    // of compute per budget and comparison
  double margin = 0.03;        // a challenger must be this much faster
};

class TokenBudget {
 public:
  // max_tokens > 0: fixed; 0: no budget; kAutoTokens: tuned.
  explicit TokenBudget(int64_t max_tokens, TokenBudgetSettings settings = {});

  // The budget to form the next batch with (0: none).
  int64_t next();
  // A batch formed under `budget` holding `tokens` real tokens ran in `seconds`.
  void record(int64_t budget, int64_t tokens, double seconds);
  // A batch formed under `budget` ran out of memory (and was split).
  void out_of_memory(int64_t budget);

  // The budget kept so far (the fixed one, 0, or the tuned best).
  int64_t current() const;
  bool tuning() const;  // auto and not settled yet
  struct Trial {
    int64_t budget;
    int64_t batches;
    int64_t tokens;
    double seconds;
    double tokens_per_second() const { return seconds > 0 ? tokens / seconds : 0.0; }
  };
  // Every finished comparison's two measurements, in order (for stats).
  std::vector<Trial> history() const;

 private:
  void decide();  // with mutex_ held, once both trials are measured

  mutable std::mutex mutex_;
  const TokenBudgetSettings settings_;
  const bool automatic_;
  int64_t best_;
  int64_t challenger_ = 0;  // 0: settled (or not automatic)
  int direction_ = 1;       // +1 doubling, -1 halving
  bool went_up_ = false;    // a doubling has won
  int64_t ceiling_;
  int64_t seen_ = 0;  // batches recorded, warm-up included
  int64_t turn_ = 0;  // alternates the two budgets
  Trial trial_best_{}, trial_challenger_{};
  std::vector<Trial> history_;
};

}  // namespace torchspark
