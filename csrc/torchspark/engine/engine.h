// The batched engine: turns a stream of submissions into model calls.
//
// Threads and their work:
//   caller      submit() queues a Request (rows of inputs) and returns at once.
//   batcher     coalesces queued rows into batches of up to batch_size rows
//               (or max_tokens padded tokens), waiting at most max_delay_ms
//               for a partial batch; large submissions are split. It then
//               stages each batch (copies, gathers, pads into a reusable
//               buffer; a zero-copy view when one submission covers it) and
//               hands it to the workers. At most `inflight` batches are staged
//               or computing at once, so staging batch k+1 overlaps compute of
//               batch k.
//   inline      try_run_inline() runs one batch of ready tensors on the
//               caller's thread, when the engine is idle and the model's
//               calls are cheap (< inline_below_seconds): no Request, no
//               queue, no thread hand-off. Whether that beats the threads'
//               overlap depends on the caller too: the Python layer measures
//               both ways (Engine.map).
//   workers     (`threads` of them) run the model under InferenceMode (and
//               autocast for reduced precision), check the outputs, and
//               deliver each piece back to its Request, in submission order.
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
// names the model, the batch and its rows); out-of-memory splits the batch in
// halves and retries, down to one row. The engine keeps serving.
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
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "torchspark/arrow_import.h"
#include "torchspark/errors.h"
#include "torchspark/gather.h"
#include "torchspark/model.h"
#include "torchspark/pad.h"
#include "torchspark/stats.h"

namespace torchspark {

enum class Precision { kFloat32, kBFloat16, kFloat16 };
// "fp32" | "bf16" | "fp16".
Precision parse_precision(std::string_view name);

struct EngineOptions {
  // Where the model runs; inputs are moved there.
  c10::Device device = c10::Device(c10::kCPU);
  // Most rows per model call.
  int64_t batch_size = 4096;
  // > 0: a batch of a token input (one with lengths) holds at most this many
  // padded tokens (rows x longest row); 0 = rows only.
  int64_t max_tokens = 0;
  // How long a partial batch waits for more rows before it runs.
  double max_delay_ms = 2.0;
  // Autocast precision for TorchScript models (AOTInductor bakes it in at export).
  Precision precision = Precision::kFloat32;
  // Worker threads calling the model (AOTInductor: one runner each).
  int64_t threads = 1;
  // Batches staged or computing at once (>= 2 overlaps staging with compute).
  int64_t inflight = 2;
  // Pad every batch to batch_size rows (models that need static shapes).
  bool static_batch = false;
  // Token inputs: sort rows by length within windows of this many rows to cut
  // padding (outputs keep the submission order); 0 = off.
  int64_t sort_window = 0;
  // Per-token outputs of the padded token input ([rows, L, ...], L the batch's
  // padded width): every output (all), or those numbered or named here. Each
  // comes back [rows, W, ...], W the submission's own padded width, with 0 at
  // and past each row's length: the same whatever the batching.
  struct PerToken {
    bool all = false;
    std::vector<int64_t> indices;
    std::vector<std::string> names;
    bool any() const { return all || !indices.empty() || !names.empty(); }
  } per_token;
  // try_run_inline may run a batch inline while the model's calls average
  // less than this.
  double inline_below_seconds = 1e-3;
};

// One model input of one submission: a tensor (rows along dim 0), or scalar
// Arrow columns gathered straight into the staging buffer as [rows, F].
struct InputSource {
  at::Tensor tensor;
  std::vector<Column> gather_columns;
  GatherOptions gather;     // dtype, nulls and fill of the gather
  int64_t gather_rows = 0;  // rows of the gather source
};

struct Inputs {
  std::vector<InputSource> sources;
  // Optional int64 [rows]: input `token_input` is right-padded tokens; row i
  // holds lengths[i] values. Batches are cut to (or padded to, with
  // pad_value) their longest row, so submissions of different widths mix.
  at::Tensor lengths;
  int64_t token_input = 0;
  c10::Scalar pad_value = 0;
};

// How one model input is made from an Arrow batch.
enum class InputKind {
  kTensor,  // one column -> to_tensor (zero-copy where the layout allows)
  kGather,  // scalar columns -> [rows, F], gathered straight into the staging buffer
  kPad,     // one ragged list column -> padded [rows, L] + lengths (token batching)
};
InputKind parse_input_kind(std::string_view name);  // "tensor" | "gather" | "pad"

struct InputSpec {
  InputKind kind = InputKind::kTensor;
  std::vector<std::string> columns;  // kTensor/kPad: exactly one
  ToTensorOptions tensor;            // kTensor
  GatherOptions gather;              // kGather
  PadOptions pad;                    // kPad
};

// Throws ValueError (naming `label`) unless `next` feeds the model like `first`:
// same inputs, dtypes and row shapes (a token input's width may differ).
void check_compatible(const Inputs& first, const Inputs& next, const std::string& label);

// The engine inputs of one Arrow batch, per `specs` (at most one kPad).
// Throws the conversion errors, naming the column.
Inputs make_inputs(const ImportedTable& table, const std::vector<InputSpec>& specs);

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
  bool finishing_ = false;  // done decided (under mutex_), finish() pending
  bool taken_ = false;
  std::exception_ptr error_;
  ModelOutputs outputs_;
};
using RequestPtr = std::shared_ptr<Request>;

struct EngineStats {
  int64_t requests = 0;
  int64_t rows = 0;
  int64_t batches = 0;
  int64_t errors = 0;          // failed batches
  int64_t retries = 0;         // out-of-memory splits
  int64_t inline_batches = 0;  // run on the submitting thread
  double mean_batch_rows = 0;
  double padding_ratio = 0;   // padded slots / all slots in token inputs
  LatencySummary queue;       // submit -> its batch starts staging
  LatencySummary stage;       // staging one batch
  LatencySummary compute;     // one model call (with device copies)
  LatencySummary end_to_end;  // submit -> request done
};

class Engine {
 public:
  Engine(std::shared_ptr<const Model> model, EngineOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues one submission. Throws ValueError for inputs that do not fit the
  // model's arity or disagree on rows, and after close().
  RequestPtr submit(Inputs inputs, std::shared_ptr<void> keepalive = nullptr);
  // Runs `inputs` on this thread and returns the outputs, when the engine is
  // idle, the inputs are CPU tensors forming one batch (exactly batch_size
  // rows; 1 to batch_size with `partial`) and inline_possible(). Otherwise
  // returns nullopt and leaves `inputs` as they were, for submit(). Errors are
  // submit()'s and the batch's (ModelError naming the model, batch and rows).
  std::optional<ModelOutputs> try_run_inline(Inputs& inputs, bool partial);
  // A CPU model with dynamic batches whose calls average less than
  // inline_below_seconds.
  bool inline_possible() const;
  // Runs what is queued now instead of waiting for max_delay_ms.
  void flush();
  // Stops taking submissions. drain: finish what is queued; else fail it
  // (EngineClosed). Joins the threads; idempotent.
  void close(bool drain);
  bool closed() const;

  EngineStats stats() const;
  // Keepalives of finished requests, to destroy on the caller's thread.
  std::vector<std::shared_ptr<const void>> take_garbage();
  const EngineOptions& options() const { return options_; }
  const Model& model() const { return *model_; }

 private:
  struct Piece {
    RequestPtr request;
    std::shared_ptr<const Inputs> inputs;  // the request's, for staging
    int64_t begin;                         // in the request's staging order
    int64_t count;
  };
  struct Batch {
    int64_t index = 0;
    std::vector<Piece> pieces;
    int64_t rows = 0;
    int64_t padded_len = -1;  // token inputs: the longest row
    std::vector<at::Tensor> inputs;
    std::vector<at::Tensor> buffers;  // staging buffers to give back
    // Accelerator: recorded on the copy stream after the inputs' H2D copies.
    std::optional<c10::Event> copied;
  };

  void batch_loop();
  void worker_loop();
  // Runs a staged batch's model call, delivers or fails it, and retires it.
  void compute(Batch& batch, const std::optional<c10::Stream>& stream);
  // The rows of a submission; throws ValueError for inconsistent inputs.
  // Normalises `lengths` to contiguous int64 on the CPU.
  int64_t check_inputs(Inputs& inputs) const;
  // Records the first submission's layout, or checks `inputs` against it
  // (call with mutex_ held).
  void check_first(const Inputs& inputs);
  // ValueError unless every output has `rows` rows.
  void check_outputs(const ModelOutputs& outputs, int64_t rows, int64_t batch_index) const;
  // The ModelError of a failed batch (`which`: its requests' rows); counts it.
  std::exception_ptr batch_error(int64_t batch_index, int64_t rows, const std::string& which,
                                 std::exception_ptr error);
  void record_compute(double seconds);
  bool next_batch(Batch& batch);
  void stage(Batch& batch);
  ModelOutputs run_model(const std::vector<at::Tensor>& inputs, const Batch& batch);
  void deliver(Batch& batch, ModelOutputs& outputs);
  // The token lengths of a piece's rows, in staging order.
  static at::Tensor piece_lengths(const Piece& piece);
  // Which outputs of a token batch are per token (checked: [rows, padded_len, ...]).
  std::vector<bool> per_token_outputs(const Batch& batch, const ModelOutputs& outputs) const;
  void fail(Batch& batch, std::exception_ptr error, bool wrap = true);
  // Marks a request done (with `error` if set) unless it already is: records
  // its latency, moves its inputs and keepalive to the garbage list, then
  // wakes its waiters. Call without holding any lock.
  void complete(const RequestPtr& request, std::exception_ptr error);
  // Gives a finished batch's buffers back, its inputs to the garbage list, and
  // its inflight slot back.
  void retire(Batch& batch);
  std::exception_ptr closed_error(int64_t request_id) const;
  at::Tensor acquire_buffer(c10::ScalarType dtype, at::IntArrayRef sizes);
  void release_buffers(Batch& batch);
  // Accelerator: the outputs in pinned host memory, copied on `stream` after
  // the model's work, waited for.
  void outputs_to_host(ModelOutputs& outputs, const c10::Stream& stream) const;

  std::shared_ptr<const Model> model_;
  EngineOptions options_;
  // Accelerator only (unset on the CPU): stream and event operations of the
  // device's backend, and the stream the batcher copies inputs on.
  std::optional<c10::impl::VirtualGuardImpl> device_impl_;
  std::optional<c10::Stream> copy_stream_;

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
  // The first submission's inputs as empty tensors (no data held): the
  // others must match it.
  std::shared_ptr<const Inputs> first_;
  int64_t next_batch_ = 0;
  std::vector<at::Tensor> free_buffers_;
  std::vector<std::shared_ptr<const void>> garbage_;

  std::atomic<double> compute_average_s_{-1.0};  // < 0: no call yet
  std::atomic<int64_t> stat_inline_{0};
  std::atomic<int64_t> stat_requests_{0}, stat_rows_{0}, stat_batches_{0}, stat_errors_{0},
      stat_retries_{0}, stat_token_slots_{0}, stat_token_padding_{0};
  LatencyRecorder queue_latency_, stage_latency_, compute_latency_, end_to_end_latency_;

  std::mutex join_mutex_;  // serialises the joins of concurrent close() calls
  std::thread batcher_;
  std::vector<std::thread> workers_;
};

}  // namespace torchspark
