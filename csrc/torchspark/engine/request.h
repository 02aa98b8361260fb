// One submission to the engine, and the handle its caller waits on.
//
// The engine fills it (outputs assembled piece by piece, see delivery.h) and
// finishes it exactly once: claim() is the one check that decides who
// finishes a request (delivery of its last rows, the failure of a batch
// carrying its rows, or close()), so a request is never finished twice nor
// left unfinished. Thread-safe; the engine's threads and the caller share it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>

#include "torchspark/inputs/input_source.h"
#include "torchspark/models/model.h"

namespace torchspark {

class Request {
 public:
  int64_t id() const { return id_; }
  int64_t rows() const { return rows_; }
  bool done() const;
  // Waits up to `seconds` (< 0: forever); returns done().
  bool wait(double seconds) const;
  // Waits, then hands over the outputs (rows in submission order); once only,
  // so that no reference to them stays behind on an engine thread. Throws
  // the error that failed the request.
  ModelOutputs take_result();

 private:
  friend class Engine;
  // Whether it is still open (neither finished nor being finished); with mutex_ held.
  bool open_locked() const { return !done_ && !finishing_; }
  // Claims the right to finish it: true for the first caller only; with mutex_ held.
  bool claim_locked();
  // Claims it (taking mutex_).
  bool claim();
  // Marks it done (with `error` if set) and wakes its waiters; after a claim.
  void finish(std::exception_ptr error);

  int64_t id_ = 0;
  int64_t rows_ = 0;
  // Shared with the pieces being staged; every reference ends in the
  // engine's garbage list, never dropped on an engine thread.
  std::shared_ptr<const Inputs> inputs_;
  at::Tensor order_;  // int64 [rows]: staging order (sorted by length), or undefined
  std::shared_ptr<void> keepalive_;
  std::chrono::steady_clock::time_point submitted_;

  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  int64_t delivered_ = 0;
  bool done_ = false;
  bool finishing_ = false;  // claimed (under mutex_), finish() pending
  bool taken_ = false;
  std::exception_ptr error_;
  ModelOutputs outputs_;
};
using RequestPtr = std::shared_ptr<Request>;

}  // namespace torchspark
