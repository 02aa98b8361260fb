#include "torchspark/engine/token_budget.h"

#include <algorithm>

namespace torchspark {

TokenBudget::TokenBudget(int64_t max_tokens, TokenBudgetSettings settings)
    : settings_(settings),
      automatic_(max_tokens == kAutoTokens),
      best_(max_tokens == kAutoTokens ? settings.start : std::max<int64_t>(max_tokens, 0)),
      ceiling_(settings.ceiling) {
  if (automatic_) {
    best_ = std::clamp(best_, settings_.floor, ceiling_);
    challenger_ = best_ * 2 <= ceiling_ ? best_ * 2 : 0;
    if (challenger_ == 0 && best_ / 2 >= settings_.floor) {
      direction_ = -1;
      challenger_ = best_ / 2;
    }
    trial_best_.budget = best_;
    trial_challenger_.budget = challenger_;
  }
}

int64_t TokenBudget::next() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (challenger_ == 0) return best_;
  return (turn_++ % 2 == 0) ? best_ : challenger_;
}

void TokenBudget::record(int64_t budget, int64_t tokens, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (challenger_ == 0) return;
  if (seen_++ < settings_.warmup_batches) return;
  Trial* trial = budget == best_         ? &trial_best_
                 : budget == challenger_ ? &trial_challenger_
                                         : nullptr;
  if (trial == nullptr) return;  // formed before the comparison began
  trial->batches += 1;
  trial->tokens += tokens;
  trial->seconds += seconds;
  const auto measured = [&](const Trial& t) {
    return t.batches >= settings_.min_batches && t.seconds >= settings_.min_seconds;
  };
  if (measured(trial_best_) && measured(trial_challenger_)) decide();
}

void TokenBudget::decide() {
  history_.push_back(trial_best_);
  history_.push_back(trial_challenger_);
  const bool won = trial_challenger_.tokens_per_second() >
                   trial_best_.tokens_per_second() * (1.0 + settings_.margin);
  int64_t next = 0;
  if (won) {
    best_ = challenger_;
    if (direction_ > 0) went_up_ = true;
    next = direction_ > 0 ? best_ * 2 : best_ / 2;
  } else if (direction_ > 0 && !went_up_) {
    direction_ = -1;  // doubling lost at once: try halving
    next = best_ / 2;
  }
  if (next < settings_.floor || next > ceiling_) next = 0;
  challenger_ = next;
  trial_best_ = Trial{best_, 0, 0, 0.0};
  trial_challenger_ = Trial{challenger_, 0, 0, 0.0};
}

void TokenBudget::out_of_memory(int64_t budget) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!automatic_ || budget <= 0) return;
  ceiling_ = std::max(settings_.floor, std::min(ceiling_, budget / 2));
  if (best_ > ceiling_) best_ = ceiling_;
  if (challenger_ > ceiling_ || challenger_ == best_) challenger_ = 0;
  trial_best_ = Trial{best_, 0, 0, 0.0};
  trial_challenger_ = Trial{challenger_, 0, 0, 0.0};
}

int64_t TokenBudget::current() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return best_;
}

bool TokenBudget::tuning() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return challenger_ != 0;
}

std::vector<TokenBudget::Trial> TokenBudget::history() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return history_;
}

}  // namespace torchspark
