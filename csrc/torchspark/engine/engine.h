// The engine: turns a stream of submissions into model calls.
//
// Threads and their work:
//   caller      submit() queues a Request (rows of inputs) and returns at once.
//   batcher     coalesces queued rows into batches (batching.h: up to
//               batch_size rows, or max_tokens padded slots), waiting at most
//               max_delay_ms for a partial batch; large submissions are split.
//               It then stages each batch: a zero-copy view when one
//               submission's tensor covers it, else each input's rows written
//               into a reusable buffer (staging_pool.h) by its source
//               (inputs/). At most `inflight` batches are staged or computing
//               at once, so staging batch k+1 overlaps compute of batch k.
//   workers     (`threads` of them) run the model (model_call.h: no grad, the
//               precision, out-of-memory splits), check the outputs, and
//               deliver each piece back to its Request (delivery.h).
//   inline      run_inline() runs one batch of ready tensors on the caller's
//               thread when the engine is idle and the model's calls are
//               cheap (< inline_below_ms): no Request, no queue, no hand-off.
// On an accelerator (device-generic c10 APIs only, no CUDA headers): staging
// buffers are pinned; the batcher copies each staged batch to the device on a
// copy stream and records an event; a worker makes its compute stream wait on
// that event, runs the model, copies the outputs into pinned host memory
// (torch's caching host allocator: reused, no allocation in the steady state)
// on the same stream and waits for that copy alone. With inflight >= 2 and
// threads >= 2 the copy of batch k+1 and the D2H of batch k-1 overlap the
// compute of batch k. Staging buffers go back to the pool only once the copy
// that read them has finished. On the CPU nothing is copied twice and none of
// this runs.
//
// Failure: a model error fails the requests of that batch only (the message
// names the model, the batch and its rows); out of memory splits the batch.
// The engine keeps serving.
//
// Ownership: a submission's inputs, its `keepalive` (the Arrow data behind
// them) and the Request itself (its outputs may be views of the inputs: an
// output that aliases an input is handed out as it is, as eager PyTorch does)
// are never destroyed on an engine thread: they move to a garbage list that
// the caller empties with take_garbage() on its own thread. (Dropping a
// tensor that has a Python object, or pyarrow's release, takes the GIL; a
// worker that did so while the caller waits on the engine with the GIL held
// would deadlock.) Outputs leave by take_result(). No Python here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "torchspark/engine/batching.h"
#include "torchspark/engine/options.h"
#include "torchspark/engine/request.h"
#include "torchspark/engine/staging_pool.h"
#include "torchspark/engine/stats.h"
#include "torchspark/engine/token_budget.h"
#include "torchspark/inputs/input_source.h"
#include "torchspark/models/model.h"

namespace torchspark {

struct EngineStats {
  int64_t requests = 0;
  int64_t rows = 0;
  int64_t batches = 0;
  int64_t errors = 0;          // failed batches
  int64_t retries = 0;         // out-of-memory splits
  int64_t inline_batches = 0;  // run on the submitting thread
  double mean_batch_rows = 0;
  double padding_ratio = 0;  // padded slots / all slots of padded inputs
  int64_t token_budget = 0;  // max_tokens in use (tuned: the best so far)
  bool token_budget_tuning = false;
  std::vector<TokenBudget::Trial> token_budget_trials;  // tuned: the comparisons
  LatencySummary queue;                                 // submit -> its batch starts staging
  LatencySummary stage;                                 // staging one batch
  LatencySummary compute;                               // one model call (with device copies)
  LatencySummary end_to_end;                            // submit -> request done
};

// Every sample since the engine started, in fixed buckets (histogram.h): the
// four latencies of EngineStats (seconds) and the rows of each model call.
struct EngineHistograms {
  HistogramSnapshot queue, stage, compute, end_to_end, batch_rows;
};

class Engine {
 public:
  // Validates `options` (validate_options) against the model: a precision
  // the model's format cannot apply at run time is a ValueError.
  Engine(std::shared_ptr<const Model> model, EngineOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues one submission. Throws ValueError for inputs that disagree on
  // rows, or with the first submission's layout, and after close().
  RequestPtr submit(Inputs inputs, std::shared_ptr<void> keepalive = nullptr);
  // Runs `inputs` on this thread and returns the outputs when the engine is
  // idle, the inputs are tensors (none padded) forming one batch of 1 to
  // batch_size rows on the CPU, and the model's calls average under
  // inline_below_ms. Otherwise returns nullopt and leaves `inputs` as they
  // were, for submit(). Errors are submit()'s and the batch's.
  std::optional<ModelOutputs> run_inline(Inputs& inputs);
  // Runs what is queued now instead of waiting for max_delay_ms.
  void flush();
  // Stops taking submissions. drain: finish what is queued; else fail it
  // (EngineClosedError). Joins the threads; idempotent.
  void close(bool drain);
  bool closed() const;

  EngineStats stats() const;
  // Cheap (no sorting): what Prometheus' histograms are fed from.
  EngineHistograms histograms() const;
  // Inputs, keepalives and requests of finished work, to destroy on the
  // caller's thread.
  std::vector<std::shared_ptr<const void>> take_garbage();
  const EngineOptions& options() const { return options_; }
  const Model& model() const { return *model_; }

 private:
  // What every submission must look like: the first one's inputs, without data.
  struct InputLayout {
    c10::ScalarType dtype;
    std::vector<int64_t> row;  // a padded input's width (dim 0) zeroed: widths may differ
    bool padded;
    std::string description;
  };
  struct Piece {
    RequestPtr request;
    std::shared_ptr<const Inputs> inputs;  // the request's, for staging
    int64_t begin;                         // in the request's staging order
    int64_t count;
  };
  struct Batch {
    int64_t index = 0;
    std::vector<Piece> pieces;
    BatchShape shape;    // rows, and the padded inputs' widths and groups
    int64_t budget = 0;  // the token budget it was formed under
    int64_t tokens = 0;  // its real (unpadded) tokens, for the budget's tuning
    std::vector<at::Tensor> inputs;
    std::vector<at::Tensor> buffers;  // staging buffers to give back
    // Accelerator: recorded on the copy stream after the inputs' H2D copies.
    std::optional<c10::Event> copied;
  };

  void batch_loop();
  void worker_loop();
  // Runs a staged batch's model call, delivers or fails it, and retires it.
  void compute(Batch& batch, const std::optional<c10::Stream>& stream);
  // The rows of a submission; ValueError for inconsistent inputs.
  int64_t check_inputs(const Inputs& inputs) const;
  // Records the first submission's layout, or checks `inputs` against it
  // (call with mutex_ held).
  void check_layout(const Inputs& inputs);
  // ValueError unless every output has `rows` rows.
  void check_outputs(const ModelOutputs& outputs, int64_t rows, int64_t batch_index) const;
  // The ModelError of a failed batch (`which`: its requests' rows); counts it.
  std::exception_ptr batch_error(int64_t batch_index, int64_t rows, const std::string& which,
                                 std::exception_ptr error);
  ModelOutputs run_model(const std::vector<at::Tensor>& inputs, int64_t batch_index,
                         int64_t budget = 0);
  void record_compute(double seconds);
  bool next_batch(Batch& batch);
  void stage(Batch& batch);
  void deliver(Batch& batch, ModelOutputs& outputs);
  // The lengths of a piece's rows in padded input `padded` (0: the first), staging order.
  at::Tensor piece_lengths(const Piece& piece, size_t padded) const;
  // Fails every open request of `batch` with `error` (wrapped as the batch's
  // ModelError when `wrap`).
  void fail(Batch& batch, std::exception_ptr error, bool wrap = true);
  // Finishes a claimed request: records its latency, moves its inputs and
  // keepalive to the garbage list, then wakes its waiters. Call without
  // holding any lock.
  void complete(const RequestPtr& request, std::exception_ptr error);
  // Gives a finished batch's buffers back, its inputs to the garbage list, and
  // its inflight slot back.
  void retire(Batch& batch);
  std::exception_ptr closed_error(int64_t request_id) const;
  // Accelerator: the outputs in pinned host memory, copied on `stream` after
  // the model's work, waited for.
  void outputs_to_host(ModelOutputs& outputs, const c10::Stream& stream) const;

  std::shared_ptr<const Model> model_;
  EngineOptions options_;
  RunContext context_;
  // Accelerator only (unset on the CPU): stream and event operations of the
  // device's backend, and the stream the batcher copies inputs on.
  std::optional<c10::impl::VirtualGuardImpl> device_impl_;
  std::optional<c10::Stream> copy_stream_;
  StagingPool pool_;

  mutable std::mutex mutex_;
  std::condition_variable intake_cv_;  // new submissions, flush, close
  std::condition_variable ready_cv_;   // staged batches, close
  std::condition_variable slots_cv_;   // an inflight slot freed
  std::deque<RequestPtr> queue_;       // submissions with rows not yet batched
  int64_t queue_front_taken_ = 0;      // rows of queue_.front() already batched
  std::deque<Batch> ready_;            // staged, waiting for a worker
  int64_t inflight_ = 0;               // batches staged or computing
  bool flush_ = false;
  bool closing_ = false;
  bool draining_ = false;
  bool stopped_ = false;
  int64_t next_id_ = 0;
  std::vector<InputLayout> layout_;  // empty until the first submission
  std::vector<size_t> padded_;       // which inputs are padded (from the layout)
  std::vector<int64_t> groups_;      // per padded input, its length group (from the layout)
  int64_t group_count_ = 0;
  TokenBudget budget_;
  int64_t next_batch_ = 0;
  std::vector<std::shared_ptr<const void>> garbage_;

  std::atomic<double> compute_average_s_{-1.0};  // < 0: no call yet
  std::atomic<int64_t> stat_inline_{0};
  std::atomic<int64_t> stat_requests_{0}, stat_rows_{0}, stat_batches_{0}, stat_errors_{0},
      stat_retries_{0}, stat_token_slots_{0}, stat_token_padding_{0};
  LatencyRecorder queue_latency_, stage_latency_, compute_latency_, end_to_end_latency_;
  Histogram batch_rows_{batch_rows_bucket_bounds()};

  std::mutex join_mutex_;  // serialises the joins of concurrent close() calls
  std::thread batcher_;
  std::vector<std::thread> workers_;
};

}  // namespace torchspark
