#include "torchspark/engine/request.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace torchspark {

bool Request::done() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return done_;
}

bool Request::wait(double seconds) const {
  TORCH_CHECK_VALUE(!std::isnan(seconds), "wait: timeout must be a number, got nan");
  std::unique_lock<std::mutex> lock(mutex_);
  if (seconds < 0 || !std::isfinite(seconds) || seconds > 1e9) {
    cv_.wait(lock, [&] { return done_; });  // beyond what the clock can add: no limit
    return true;
  }
  return cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return done_; });
}

ModelOutputs Request::take_result() {
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [&] { return done_; });
  if (error_) {
    std::rethrow_exception(error_);
  }
  TORCH_CHECK(!taken_, "request ", id_, ": its result was already taken");
  taken_ = true;
  return std::move(outputs_);
}

bool Request::claim_locked() {
  if (!open_locked()) return false;
  finishing_ = true;
  return true;
}

bool Request::claim() {
  std::lock_guard<std::mutex> lock(mutex_);
  return claim_locked();
}

void Request::finish(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::move(error);
    done_ = true;
  }
  cv_.notify_all();
}

}  // namespace torchspark
