#include "torchspark/engine/engine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/StreamGuard.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "torchspark/errors.h"
#include "torchspark/gather.h"

namespace torchspark {

using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

c10::ScalarType autocast_dtype(Precision precision) {
  return precision == Precision::kBFloat16 ? at::kBFloat16 : at::kHalf;
}

// Autocast for one model call on this thread (the state is thread-local).
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, Precision precision, bool enabled)
      : device_(device), enabled_(enabled && precision != Precision::kFloat32) {
    if (!enabled_) return;
    was_enabled_ = at::autocast::is_autocast_enabled(device_);
    was_dtype_ = at::autocast::get_autocast_dtype(device_);
    at::autocast::set_autocast_enabled(device_, true);
    at::autocast::set_autocast_dtype(device_, autocast_dtype(precision));
  }
  ~AutocastScope() {
    if (!enabled_) return;
    at::autocast::set_autocast_enabled(device_, was_enabled_);
    at::autocast::set_autocast_dtype(device_, was_dtype_);
    at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
  bool enabled_;
  bool was_enabled_ = false;
  c10::ScalarType was_dtype_ = at::kFloat;
};

// An allocator's out-of-memory error. Inside a TorchScript model it does not
// keep its type: the interpreter rethrows every error that is not its own as
// a std::runtime_error holding the message (torch/csrc/jit/runtime/
// interpreter.cpp, handleError; checked by tests/test_engine.py's
// out-of-memory tests), so it is also recognised by torch's wording: "CUDA
// out of memory" (MPS, XPU alike), the CPU allocator's "can't allocate
// memory", std::bad_alloc's what().
bool is_out_of_memory(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const c10::OutOfMemoryError&) {
    return true;
  } catch (const std::bad_alloc&) {
    return true;
  } catch (const std::exception& e) {
    const std::string_view what = e.what();
    for (std::string_view marker : {"out of memory", "can't allocate memory", "std::bad_alloc"}) {
      if (what.find(marker) != std::string_view::npos) return true;
    }
    return false;
  } catch (...) {
    return false;
  }
}

std::string describe(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

}  // namespace

InputKind parse_input_kind(std::string_view name) {
  if (name == "tensor") return InputKind::kTensor;
  if (name == "gather") return InputKind::kGather;
  if (name == "pad") return InputKind::kPad;
  TORCH_CHECK_VALUE(false, "input kind: expected one of 'tensor', 'gather', 'pad', got '", name,
                    "'");
  return InputKind::kTensor;
}

Inputs make_inputs(const ImportedTable& table, const std::vector<InputSpec>& specs) {
  Inputs inputs;
  bool have_pad = false;
  for (size_t i = 0; i < specs.size(); ++i) {
    const InputSpec& spec = specs[i];
    InputSource source;
    if (spec.kind == InputKind::kGather) {
      source.gather_columns = table.select(spec.columns, "gather input");
      source.gather = spec.gather;
      source.gather_rows = table.num_rows();
      // Types and nulls are checked now, on the caller's thread, not in a batch.
      check_gather(source.gather_columns, 0, table.num_rows(), spec.gather);
    } else {
      TORCH_CHECK_VALUE(spec.columns.size() == 1, "input ", i, " (",
                        spec.kind == InputKind::kPad ? "pad" : "tensor",
                        "): expected exactly one column, got ", spec.columns.size());
      Column column = table.column(spec.columns[0]);
      if (spec.kind == InputKind::kTensor) {
        ColumnTensor converted = to_tensor(column, spec.tensor);
        TORCH_CHECK_VALUE(spec.tensor.nulls != NullPolicy::kMask, column.label,
                          ": nulls='mask' is not available for model inputs; use 'fill'");
        source.tensor = converted.values;
      } else {
        TORCH_CHECK_VALUE(!have_pad, "input ", i, ": only one input may be padded (kind 'pad')");
        have_pad = true;
        PadResult padded = pad(column, spec.pad);
        source.tensor = padded.values;
        inputs.lengths = padded.lengths;
        inputs.token_input = static_cast<int64_t>(i);
        inputs.pad_value = spec.pad.pad_value;
      }
    }
    inputs.sources.push_back(std::move(source));
  }
  return inputs;
}

namespace {

std::string describe_input(const InputSource& source) {
  if (source.tensor.defined()) {
    return c10::str(c10::toString(source.tensor.scalar_type()), " rows of shape ",
                    source.tensor.sizes().slice(1));
  }
  return c10::str(c10::toString(source.gather.dtype), " rows of ", source.gather_columns.size(),
                  " gathered columns");
}

}  // namespace

void check_compatible(const Inputs& first, const Inputs& next, const std::string& label) {
  const bool same_arity = first.sources.size() == next.sources.size() &&
                          first.lengths.defined() == next.lengths.defined() &&
                          (!first.lengths.defined() || first.token_input == next.token_input);
  TORCH_CHECK_VALUE(
      same_arity, label, ": every submission must have the same inputs; the first had ",
      first.sources.size(), first.lengths.defined() ? " (with lengths)" : "", ", this one has ",
      next.sources.size(), next.lengths.defined() ? " (with lengths)" : "");
  for (size_t i = 0; i < first.sources.size(); ++i) {
    const InputSource& a = first.sources[i];
    const InputSource& b = next.sources[i];
    const bool a_columns = !a.tensor.defined();
    const bool b_columns = !b.tensor.defined();
    bool same = a_columns == b_columns;
    if (same && a_columns) {
      same = a.gather.dtype == b.gather.dtype && a.gather_columns.size() == b.gather_columns.size();
    } else if (same) {
      auto a_row = a.tensor.sizes().slice(1).vec();
      auto b_row = b.tensor.sizes().slice(1).vec();
      if (first.lengths.defined() && static_cast<int64_t>(i) == first.token_input &&
          !a_row.empty() && !b_row.empty()) {
        a_row[0] = b_row[0] = 0;  // token widths may differ: batches re-pad
      }
      same = a.tensor.scalar_type() == b.tensor.scalar_type() && a_row == b_row;
    }
    TORCH_CHECK_VALUE(same, label, ": input ", i, " has ", describe_input(b),
                      " but the first submission had ", describe_input(a),
                      "; submissions to one engine must match");
  }
}

Precision parse_precision(std::string_view name) {
  if (name == "fp32") return Precision::kFloat32;
  if (name == "bf16") return Precision::kBFloat16;
  if (name == "fp16") return Precision::kFloat16;
  TORCH_CHECK_VALUE(false, "precision: expected one of 'fp32', 'bf16', 'fp16', got '", name, "'");
  return Precision::kFloat32;
}

// ---------------------------------------------------------------------------
// Request

bool Request::done() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return done_;
}

bool Request::wait(double seconds) const {
  std::unique_lock<std::mutex> lock(mutex_);
  TORCH_CHECK_VALUE(!std::isnan(seconds), "wait: timeout must be a number, got nan");
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

// ---------------------------------------------------------------------------
// Engine

Engine::Engine(std::shared_ptr<const Model> model, EngineOptions options)
    : model_(std::move(model)), options_(std::move(options)) {
  TORCH_CHECK_VALUE(model_ != nullptr, "Engine: expected a model, got none");
  TORCH_CHECK_VALUE(options_.batch_size >= 1, "batch_size must be >= 1, got ", options_.batch_size);
  TORCH_CHECK_VALUE(options_.max_tokens >= 0, "max_tokens must be >= 0, got ", options_.max_tokens);
  TORCH_CHECK_VALUE(options_.max_delay_ms >= 0, "max_delay_ms must be >= 0, got ",
                    options_.max_delay_ms);
  TORCH_CHECK_VALUE(options_.threads >= 1, "threads must be >= 1, got ", options_.threads);
  TORCH_CHECK_VALUE(options_.inflight >= 1, "inflight must be >= 1, got ", options_.inflight);
  TORCH_CHECK_VALUE(options_.sort_window >= 0, "sort_window must be >= 0, got ",
                    options_.sort_window);
  if (!options_.device.is_cpu()) {
    // The backend's streams and events (CUDA, XPU, ...), through c10's
    // device-generic interface: no backend headers, one binary for all.
    device_impl_.emplace(options_.device.type());
    if (!options_.device.has_index()) {
      options_.device = c10::Device(options_.device.type(), device_impl_->getDevice().index());
    }
    copy_stream_ = device_impl_->getStreamFromGlobalPool(options_.device);
  }
  try {
    batcher_ = std::thread([this] { batch_loop(); });
    for (int64_t i = 0; i < options_.threads; ++i) {
      workers_.emplace_back([this] { worker_loop(); });
    }
  } catch (...) {
    close(/*drain=*/false);  // join what started before rethrowing
    throw;
  }
}

Engine::~Engine() {
  close(/*drain=*/false);
}

bool Engine::closed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return closing_;
}

int64_t Engine::check_inputs(Inputs& inputs) const {
  int64_t rows = -1;
  for (size_t i = 0; i < inputs.sources.size(); ++i) {
    const InputSource& source = inputs.sources[i];
    int64_t n = 0;
    if (source.tensor.defined()) {
      TORCH_CHECK_VALUE(source.tensor.dim() >= 1, model_->label(), ": input ", i,
                        " must have a batch dimension, got a 0-d tensor");
      n = source.tensor.size(0);
    } else {
      n = source.gather_rows;
    }
    TORCH_CHECK_VALUE(rows < 0 || n == rows, model_->label(), ": input ", i, " has ", n,
                      " rows but input 0 has ", rows);
    rows = n;
  }
  TORCH_CHECK_VALUE(!inputs.sources.empty(), model_->label(), ": expected at least one input");
  TORCH_CHECK_VALUE(!inputs.lengths.defined() ||
                        (inputs.token_input >= 0 &&
                         inputs.token_input < static_cast<int64_t>(inputs.sources.size())),
                    model_->label(), ": token_input ", inputs.token_input, " is not one of the ",
                    inputs.sources.size(), " inputs");
  if (inputs.lengths.defined()) {
    const at::Tensor& first = inputs.sources[inputs.token_input].tensor;
    TORCH_CHECK_VALUE(first.defined() && first.dim() >= 2, model_->label(), ": lengths need input ",
                      inputs.token_input, " to be a padded [rows, length, ...] tensor");
    TORCH_CHECK_VALUE(inputs.lengths.dim() == 1 && inputs.lengths.size(0) == rows, model_->label(),
                      ": lengths must be a 1-d tensor of ", rows, " values, got shape ",
                      inputs.lengths.sizes());
    inputs.lengths = inputs.lengths.detach().to(at::kCPU, at::kLong).contiguous();
    if (rows > 0) {
      const int64_t lo = inputs.lengths.min().item<int64_t>();
      const int64_t hi = inputs.lengths.max().item<int64_t>();
      TORCH_CHECK_VALUE(lo >= 0 && hi <= first.size(1), model_->label(),
                        ": lengths must be in [0, ", first.size(1), "], got [", lo, ", ", hi, "]");
    }
  }
  return rows;
}

void Engine::check_first(const Inputs& inputs) {
  // Every submission must feed the model the same way (batches mix them).
  if (!first_) {
    // What the first submission looked like, without holding its data.
    auto shape = std::make_shared<Inputs>();
    for (const InputSource& source : inputs.sources) {
      InputSource meta;
      if (source.tensor.defined()) {
        std::vector<int64_t> sizes = source.tensor.sizes().vec();
        sizes[0] = 0;
        meta.tensor = at::empty(sizes, source.tensor.options());
      } else {
        meta.gather_columns.resize(source.gather_columns.size());
        meta.gather = source.gather;
      }
      shape->sources.push_back(std::move(meta));
    }
    if (inputs.lengths.defined()) {
      shape->lengths = at::empty({0}, at::TensorOptions().dtype(at::kLong));
    }
    shape->token_input = inputs.token_input;
    first_ = std::move(shape);
  }
  check_compatible(*first_, inputs, model_->label());
}

RequestPtr Engine::submit(Inputs inputs, std::shared_ptr<void> keepalive) {
  auto request = std::make_shared<Request>();
  const int64_t rows = check_inputs(inputs);
  if (options_.sort_window > 0 && inputs.lengths.defined()) {
    if (rows > 1) {
      // Stable sort by length inside each window: similar lengths share batches.
      std::vector<int64_t> order(rows);
      std::iota(order.begin(), order.end(), 0);
      const int64_t* len = inputs.lengths.data_ptr<int64_t>();
      for (int64_t w = 0; w < rows; w += options_.sort_window) {
        const int64_t e = std::min(rows, w + options_.sort_window);
        std::stable_sort(order.begin() + w, order.begin() + e,
                         [&](int64_t a, int64_t b) { return len[a] < len[b]; });
      }
      request->order_ = at::tensor(order, at::TensorOptions().dtype(at::kLong));
    }
    // Rows are staged in sorted order: gathered inputs become tensors now so
    // they can be index-selected like the others (for every submission, so
    // they all look alike, whatever their row count).
    for (InputSource& source : inputs.sources) {
      if (!source.tensor.defined()) {
        source.tensor =
            gather(source.gather_columns, source.gather_rows, source.gather, std::nullopt);
        source.gather_columns.clear();
      }
    }
  }
  request->rows_ = rows;
  request->inputs_ = std::make_shared<const Inputs>(std::move(inputs));
  request->keepalive_ = std::move(keepalive);
  request->submitted_ = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    TORCH_CHECK(!closing_, model_->label(), ": the engine is closed");
    check_first(*request->inputs_);
    request->id_ = next_id_++;
    queue_.push_back(request);
  }
  stat_requests_ += 1;
  stat_rows_ += rows;
  intake_cv_.notify_one();
  return request;
}

bool Engine::inline_possible() const {
  // Cheap calls, measured: a moving average of the model's calls.
  const double average = compute_average_s_.load(std::memory_order_relaxed);
  return options_.device.is_cpu() && !options_.static_batch && average >= 0 &&
         average < options_.inline_below_seconds;
}

std::optional<ModelOutputs> Engine::try_run_inline(Inputs& inputs, bool partial) {
  // Tensors already in memory, one batch as they are: nothing to stage.
  if (!inline_possible() || inputs.lengths.defined() ||
      !std::all_of(inputs.sources.begin(), inputs.sources.end(),
                   [](const InputSource& source) { return source.tensor.defined(); })) {
    return std::nullopt;
  }
  const int64_t rows = check_inputs(inputs);
  if (rows < 1 || rows > options_.batch_size || (!partial && rows != options_.batch_size)) {
    return std::nullopt;
  }
  Batch batch;
  int64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    TORCH_CHECK(!closing_, model_->label(), ": the engine is closed");
    // Only into an idle engine: queued rows would otherwise be overtaken.
    if (!queue_.empty() || inflight_ > 0) return std::nullopt;
    check_first(inputs);
    id = next_id_++;
    batch.index = next_batch_++;
    ++inflight_;  // the batcher sees the slot taken
  }
  stat_requests_ += 1;
  stat_rows_ += rows;
  stat_inline_ += 1;
  batch.rows = rows;
  std::vector<at::Tensor> tensors;
  tensors.reserve(inputs.sources.size());
  for (const InputSource& source : inputs.sources) tensors.push_back(source.tensor);
  const auto start = Clock::now();
  ModelOutputs outputs;
  std::exception_ptr error;
  try {
    outputs = run_model(tensors, batch);
    record_compute(seconds_since(start));
    stat_batches_ += 1;
    check_outputs(outputs, rows, batch.index);
  } catch (...) {
    error = batch_error(batch.index, rows, c10::str("request ", id, " rows [0, ", rows, ")"),
                        std::current_exception());
  }
  end_to_end_latency_.record(seconds_since(start));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    --inflight_;
  }
  slots_cv_.notify_one();
  if (error) std::rethrow_exception(error);
  return outputs;
}

void Engine::flush() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    flush_ = true;
  }
  intake_cv_.notify_all();
}

std::exception_ptr Engine::closed_error(int64_t request_id) const {
  return std::make_exception_ptr(EngineClosedError(
      {__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
      c10::str(model_->label(), ": the engine was closed before request ", request_id, " ran")));
}

void Engine::close(bool drain) {
  std::deque<RequestPtr> cancelled;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    draining_ = closing_ ? draining_ && drain : drain;  // a later close(false) aborts a drain
    closing_ = true;
    if (!draining_) {
      cancelled.swap(queue_);
      queue_front_taken_ = 0;
    }
  }
  intake_cv_.notify_all();
  slots_cv_.notify_all();
  ready_cv_.notify_all();
  for (const RequestPtr& request : cancelled) {
    bool newly = false;
    {
      std::lock_guard<std::mutex> lock(request->mutex_);
      newly = !request->done_ && !request->finishing_;
      if (newly) request->finishing_ = true;
    }
    if (newly) {
      complete(request, closed_error(request->id_));
    }
  }
  std::lock_guard<std::mutex> join_lock(join_mutex_);  // close() may race with close()
  if (batcher_.joinable()) {
    batcher_.join();
  }
  for (std::thread& worker : workers_) {
    if (worker.joinable()) {
      worker.join();
    }
  }
}

std::vector<std::shared_ptr<const void>> Engine::take_garbage() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::shared_ptr<const void>> out;
  out.swap(garbage_);
  return out;
}

EngineStats Engine::stats() const {
  EngineStats s;
  s.requests = stat_requests_;
  s.rows = stat_rows_;
  s.batches = stat_batches_;
  s.errors = stat_errors_;
  s.retries = stat_retries_;
  s.inline_batches = stat_inline_;
  s.mean_batch_rows = s.batches > 0 ? static_cast<double>(s.rows) / s.batches : 0.0;
  const int64_t slots = stat_token_slots_;
  s.padding_ratio = slots > 0 ? static_cast<double>(stat_token_padding_) / slots : 0.0;
  s.queue = queue_latency_.summary();
  s.stage = stage_latency_.summary();
  s.compute = compute_latency_.summary();
  s.end_to_end = end_to_end_latency_.summary();
  return s;
}

// ---- batching ----

bool Engine::next_batch(Batch& batch) {
  std::unique_lock<std::mutex> lock(mutex_);
  intake_cv_.wait(lock, [&] { return !queue_.empty() || closing_; });
  if (queue_.empty() || (closing_ && !draining_)) {
    return false;
  }
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double, std::milli>(options_.max_delay_ms));
  int64_t max_len = 0;
  const bool tokens = first_ && first_->lengths.defined();  // same for every submission
  for (;;) {
    if (queue_.empty()) {
      if (flush_ || closing_ || batch.rows >= options_.batch_size) break;
      if (intake_cv_.wait_until(lock, deadline) == std::cv_status::timeout && queue_.empty()) {
        break;
      }
      continue;
    }
    const RequestPtr request = queue_.front();
    {
      std::lock_guard<std::mutex> request_lock(request->mutex_);
      if (request->done_ || request->finishing_) {
        // Failed by an earlier batch: its remaining rows are not run.
        garbage_.push_back(std::move(queue_.front()));
        queue_.pop_front();
        queue_front_taken_ = 0;
        continue;
      }
    }
    const int64_t begin = queue_front_taken_;
    const int64_t remaining = request->rows_ - begin;
    int64_t take = std::min(remaining, options_.batch_size - batch.rows);
    if (tokens) {
      // Rows of this request, in staging order, while the padded batch fits
      // the token budget (if any); the batch is cut to its longest row.
      const int64_t* len = request->inputs_->lengths.data_ptr<int64_t>();
      const int64_t* order =
          request->order_.defined() ? request->order_.data_ptr<int64_t>() : nullptr;
      int64_t fit = 0;
      int64_t longest = max_len;
      for (; fit < take; ++fit) {
        const int64_t row = order ? order[begin + fit] : begin + fit;
        const int64_t candidate = std::max(longest, std::max<int64_t>(len[row], 1));
        if (options_.max_tokens > 0 && (batch.rows + fit + 1) * candidate > options_.max_tokens &&
            batch.rows + fit > 0) {
          break;
        }
        longest = candidate;
      }
      take = fit;
      max_len = longest;
    }
    if (take == 0 && remaining > 0) {
      break;  // the batch is full
    }
    batch.pieces.push_back({request, request->inputs_, begin, take});
    batch.rows += take;
    queue_front_taken_ += take;
    if (queue_front_taken_ == request->rows_) {
      queue_.pop_front();
      queue_front_taken_ = 0;
    }
    if (batch.rows >= options_.batch_size || (take < remaining)) {
      break;
    }
  }
  if (queue_.empty()) {
    flush_ = false;
  }
  if (tokens) {
    batch.padded_len = max_len;
  }
  batch.index = next_batch_++;
  return !batch.pieces.empty();
}

at::Tensor Engine::acquire_buffer(c10::ScalarType dtype, at::IntArrayRef sizes) {
  const int64_t numel = c10::multiply_integers(sizes);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < free_buffers_.size(); ++i) {
      if (free_buffers_[i].scalar_type() == dtype && free_buffers_[i].numel() >= numel) {
        at::Tensor buffer = std::move(free_buffers_[i]);
        free_buffers_.erase(free_buffers_.begin() + static_cast<int64_t>(i));
        return buffer;
      }
    }
  }
  // Pinned host memory only when the model runs on an accelerator.
  at::TensorOptions buffer_options = at::TensorOptions().dtype(dtype);
  if (!options_.device.is_cpu()) {
    buffer_options = buffer_options.pinned_memory(true);
  }
  return at::empty({std::max<int64_t>(numel, 1)}, buffer_options);
}

void Engine::release_buffers(Batch& batch) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (at::Tensor& buffer : batch.buffers) {
    free_buffers_.push_back(std::move(buffer));
  }
  batch.buffers.clear();
  // Bounded: buffers in use never exceed inflight per input.
  const size_t cap = static_cast<size_t>(options_.inflight) * 8;
  while (free_buffers_.size() > cap) {
    free_buffers_.erase(free_buffers_.begin());
  }
}

void Engine::stage(Batch& batch) {
  // Staging buffers are reused: no autograd history may attach to them.
  c10::AutoGradMode no_grad(false);
  const auto start = Clock::now();
  for (const Piece& piece : batch.pieces) {
    queue_latency_.record(std::chrono::duration<double>(start - piece.request->submitted_).count());
  }
  const Inputs& first = *batch.pieces.front().inputs;
  const size_t num_inputs = first.sources.size();
  const int64_t staged_rows = options_.static_batch ? options_.batch_size : batch.rows;
  batch.inputs.assign(num_inputs, at::Tensor());

  for (size_t i = 0; i < num_inputs; ++i) {
    const bool token_input = static_cast<int64_t>(i) == first.token_input && batch.padded_len >= 0;
    const Piece& only = batch.pieces.front();
    const InputSource& only_source = only.inputs->sources.at(i);
    // On an accelerator only pinned memory copies asynchronously: stage the rest.
    const bool async_copyable = options_.device.is_cpu() || !only_source.tensor.defined() ||
                                only_source.tensor.is_pinned() ||
                                only_source.tensor.device() == options_.device;
    const bool whole_view = async_copyable && batch.pieces.size() == 1 &&
                            only_source.tensor.defined() && !only.request->order_.defined() &&
                            staged_rows == batch.rows &&
                            (!token_input || batch.padded_len == only_source.tensor.size(1));
    if (whole_view) {
      // One submission covers the batch: a view, no copy.
      batch.inputs[i] = only_source.tensor.narrow(0, only.begin, only.count);
    } else {
      std::vector<int64_t> sizes{staged_rows};
      c10::ScalarType dtype;
      if (only_source.tensor.defined()) {
        auto row = only_source.tensor.sizes().slice(1).vec();
        if (token_input) row[0] = batch.padded_len;
        sizes.insert(sizes.end(), row.begin(), row.end());
        dtype = only_source.tensor.scalar_type();
      } else {
        sizes.push_back(static_cast<int64_t>(only_source.gather_columns.size()));
        dtype = only_source.gather.dtype;
      }
      at::Tensor buffer = acquire_buffer(dtype, sizes);
      at::Tensor staged = buffer.narrow(0, 0, c10::multiply_integers(sizes)).view(sizes);
      batch.buffers.push_back(std::move(buffer));
      int64_t offset = 0;
      for (const Piece& piece : batch.pieces) {
        const InputSource& source = piece.inputs->sources.at(i);
        at::Tensor dst = staged.narrow(0, offset, piece.count);
        if (source.tensor.defined()) {
          at::Tensor src = source.tensor;
          if (token_input) {
            // Submissions padded to other widths: cut to, or pad up to, the batch's.
            const int64_t width = std::min(batch.padded_len, src.size(1));
            src = src.narrow(1, 0, width);
            if (width < batch.padded_len) {
              dst.narrow(1, width, batch.padded_len - width).fill_(piece.inputs->pad_value);
              dst = dst.narrow(1, 0, width);
            }
          }
          if (piece.request->order_.defined()) {
            dst.copy_(
                src.index_select(0, piece.request->order_.narrow(0, piece.begin, piece.count)));
          } else {
            dst.copy_(src.narrow(0, piece.begin, piece.count));
          }
        } else {
          gather_rows(source.gather_columns, piece.begin, piece.count, source.gather, dst);
        }
        offset += piece.count;
      }
      if (staged_rows > offset) {
        at::Tensor padding = staged.narrow(0, offset, staged_rows - offset);
        if (token_input) {
          padding.fill_(first.pad_value);
        } else {
          padding.zero_();
        }
      }
      batch.inputs[i] = staged;
    }
    if (copy_stream_) {
      batch.inputs[i] = batch.inputs[i].to(options_.device, /*non_blocking=*/true);
    }
  }
  if (copy_stream_) {
    batch.copied.emplace(options_.device.type());
    batch.copied->record(*copy_stream_);
  }
  if (batch.padded_len >= 0) {
    int64_t real = 0;
    for (const Piece& piece : batch.pieces) {
      real += piece_lengths(piece).clamp_max(batch.padded_len).sum().item<int64_t>();
    }
    stat_token_slots_ += staged_rows * batch.padded_len;
    stat_token_padding_ += staged_rows * batch.padded_len - real;
  }
  stage_latency_.record(seconds_since(start));
}

ModelOutputs Engine::run_model(const std::vector<at::Tensor>& inputs, const Batch& batch) {
  const int64_t rows = inputs.empty() ? 0 : inputs[0].size(0);
  try {
    // No grad, not InferenceMode: outputs go to the caller as they are, and
    // inference tensors could not be modified in place outside inference mode.
    c10::AutoGradMode no_grad(false);
    AutocastScope autocast(options_.device.type(), options_.precision,
                           model_->format() == ModelFormat::kTorchScript);
    return model_->forward(inputs);
  } catch (...) {
    std::exception_ptr error = std::current_exception();
    if (!is_out_of_memory(error) || rows <= 1 || options_.static_batch) {
      if (is_out_of_memory(error)) {
        TORCH_CHECK(false, model_->label(), ": out of memory on ",
                    options_.static_batch ? "a static batch (static_batch=True cannot split) "
                                          : "a single row ",
                    "of batch ", batch.index, ": ", describe(error));
      }
      std::rethrow_exception(error);
    }
  }
  // Out of memory: what the failed attempt held is released (its stack is
  // gone); run the halves and join them, which gives the unsplit result.
  stat_retries_ += 1;
  const int64_t half = rows / 2;
  std::vector<at::Tensor> low, high;
  for (const at::Tensor& input : inputs) {
    low.push_back(input.narrow(0, 0, half));
    high.push_back(input.narrow(0, half, rows - half));
  }
  ModelOutputs first = run_model(low, batch);
  ModelOutputs second = run_model(high, batch);
  TORCH_CHECK(first.tensors.size() == second.tensors.size(), model_->label(),
              ": the halves of split batch ", batch.index, " returned ", first.tensors.size(),
              " and ", second.tensors.size(), " outputs");
  for (size_t j = 0; j < first.tensors.size(); ++j) {
    first.tensors[j] = at::cat({first.tensors[j], second.tensors[j]}, 0);
  }
  return first;
}

void Engine::outputs_to_host(ModelOutputs& outputs, const c10::Stream& stream) const {
  bool copied = false;
  for (at::Tensor& out : outputs.tensors) {
    if (!out.defined() || out.device().is_cpu()) continue;
    // Pinned, from torch's caching host allocator: blocks are reused once the
    // caller drops the outputs, and the D2H copy is asynchronous.
    at::Tensor host = at::empty(out.sizes(), out.options().device(at::kCPU).pinned_memory(true));
    host.copy_(out, /*non_blocking=*/true);
    out = std::move(host);
    copied = true;
  }
  if (copied) {
    // Wait for this batch's copies only; other workers' streams keep going.
    c10::Event done(stream.device_type());
    done.record(stream);
    done.synchronize();
  }
}

void Engine::check_outputs(const ModelOutputs& outputs, int64_t rows, int64_t batch_index) const {
  for (size_t j = 0; j < outputs.tensors.size(); ++j) {
    const at::Tensor& out = outputs.tensors[j];
    TORCH_CHECK_VALUE(out.defined() && out.dim() >= 1 && out.size(0) == rows, model_->label(),
                      ": output ", j, " of batch ", batch_index, " has shape ",
                      out.defined() ? c10::str(out.sizes()) : std::string("(undefined)"),
                      "; expected ", rows, " rows (dim 0), one per input row");
  }
}

at::Tensor Engine::piece_lengths(const Piece& piece) {
  const at::Tensor& lengths = piece.inputs->lengths;
  const at::Tensor& order = piece.request->order_;
  return order.defined() ? lengths.index_select(0, order.narrow(0, piece.begin, piece.count))
                         : lengths.narrow(0, piece.begin, piece.count);
}

std::vector<bool> Engine::per_token_outputs(const Batch& batch, const ModelOutputs& outputs) const {
  const EngineOptions::PerToken& wanted = options_.per_token;
  std::vector<bool> flags(outputs.tensors.size(), false);
  if (!wanted.any()) return flags;
  TORCH_CHECK_VALUE(batch.padded_len >= 0, model_->label(),
                    ": per-token outputs need a padded token input (kind 'pad')");
  for (const int64_t j : wanted.indices) {
    TORCH_CHECK_VALUE(j >= 0 && j < static_cast<int64_t>(flags.size()), model_->label(),
                      ": per_token names output ", j, " but the model returned ", flags.size(),
                      " outputs");
    flags[j] = true;
  }
  for (const std::string& name : wanted.names) {
    auto it = std::find(outputs.names.begin(), outputs.names.end(), name);
    TORCH_CHECK_VALUE(it != outputs.names.end(), model_->label(), ": per_token names output '",
                      name, "' but the model returned ", c10::Join(", ", outputs.names));
    flags[it - outputs.names.begin()] = true;
  }
  for (size_t j = 0; j < flags.size(); ++j) {
    flags[j] = flags[j] || wanted.all;
    const at::Tensor& out = outputs.tensors[j];
    TORCH_CHECK_VALUE(!flags[j] || (out.dim() >= 2 && out.size(1) == batch.padded_len),
                      model_->label(), ": output ", j, " of batch ", batch.index,
                      " is per token but has shape ", out.sizes(), "; expected [rows, ",
                      batch.padded_len, ", ...] (dim 1: the batch's padded token width)");
  }
  return flags;
}

void Engine::deliver(Batch& batch, ModelOutputs& outputs) {
  c10::AutoGradMode no_grad(false);
  check_outputs(outputs, batch.inputs.empty() ? batch.rows : batch.inputs[0].size(0), batch.index);
  const std::vector<bool> per_token = per_token_outputs(batch, outputs);
  const bool any_per_token = std::find(per_token.begin(), per_token.end(), true) != per_token.end();
  for (at::Tensor& out : outputs.tensors) {
    if (!out.device().is_cpu()) {
      out = out.to(at::kCPU);
    }
    // An output that aliases a staging buffer (an identity model) must not be
    // handed out: the buffer is reused by the next batch. One that aliases the
    // caller's own input is handed out as it is, as eager PyTorch would.
    if (std::any_of(batch.buffers.begin(), batch.buffers.end(), [&](const at::Tensor& buffer) {
          return out.storage().is_alias_of(buffer.storage());
        })) {
      out = out.clone();
    }
  }
  int64_t offset = 0;
  for (Piece& piece : batch.pieces) {
    Request& request = *piece.request;
    bool complete = false;
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lock(request.mutex_);
      if (!request.done_ && !request.finishing_) {
        try {
          // Per-token outputs are always assembled: to the submission's width,
          // zero past each row's length.
          const bool whole = piece.begin == 0 && piece.count == request.rows_ &&
                             !request.order_.defined() && request.outputs_.tensors.empty() &&
                             !any_per_token;
          if (whole) {
            // The request is this one piece: its outputs are views of the batch's.
            for (const at::Tensor& out : outputs.tensors) {
              request.outputs_.tensors.push_back(out.narrow(0, offset, piece.count));
            }
            request.outputs_.names = outputs.names;
          } else if (request.outputs_.tensors.empty()) {
            for (size_t j = 0; j < outputs.tensors.size(); ++j) {
              std::vector<int64_t> sizes = outputs.tensors[j].sizes().vec();
              sizes[0] = request.rows_;
              const auto options = outputs.tensors[j].options().device(at::kCPU);
              if (per_token[j]) {
                sizes[1] = piece.inputs->sources.at(piece.inputs->token_input).tensor.size(1);
              }
              // Assembled from several batches (or reordered): one copy.
              request.outputs_.tensors.push_back(per_token[j] ? at::zeros(sizes, options)
                                                              : at::empty(sizes, options));
            }
            request.outputs_.names = outputs.names;
          }
          TORCH_CHECK_VALUE(request.outputs_.tensors.size() == outputs.tensors.size() &&
                                request.outputs_.names == outputs.names,
                            model_->label(), ": batch ", batch.index, " returned ",
                            outputs.tensors.size(), " outputs but an earlier batch of request ",
                            request.id_, " returned ", request.outputs_.tensors.size(),
                            " (or other names)");
          for (size_t j = 0; j < outputs.tensors.size() && !whole; ++j) {
            at::Tensor dst = request.outputs_.tensors[j];
            at::Tensor src = outputs.tensors[j].narrow(0, offset, piece.count);
            const size_t fixed = per_token[j] ? 2 : 1;  // dims that must agree from here on
            TORCH_CHECK_VALUE(dst.sizes().slice(fixed) == src.sizes().slice(fixed) &&
                                  dst.scalar_type() == src.scalar_type(),
                              model_->label(), ": output ", j, " of batch ", batch.index,
                              " has rows of shape ", src.sizes().slice(1), " (", src.scalar_type(),
                              ") but an earlier batch of request ", request.id_, " gave ",
                              dst.sizes().slice(1), " (", dst.scalar_type(), ")",
                              batch.padded_len >= 0 && !per_token[j]
                                  ? "; an output per token of the padded input needs per_token"
                                  : "");
            if (per_token[j]) {
              // The batch's width cut to (or within) the submission's; zero at
              // and past each row's length, whatever the model computed there.
              const int64_t width = std::min(dst.size(1), src.size(1));
              const at::Tensor lengths = piece_lengths(piece);
              std::vector<int64_t> mask_shape{piece.count, width};
              mask_shape.resize(static_cast<size_t>(src.dim()), 1);
              const at::Tensor past_end =
                  at::arange(width, lengths.options()).unsqueeze(0).ge(lengths.unsqueeze(1));
              src = src.narrow(1, 0, width).masked_fill(past_end.view(mask_shape), 0);
              dst = dst.narrow(1, 0, width);
            }
            if (request.order_.defined()) {
              dst.index_copy_(0, request.order_.narrow(0, piece.begin, piece.count), src);
            } else {
              dst.narrow(0, piece.begin, piece.count).copy_(src);
            }
          }
          request.delivered_ += piece.count;
          complete = request.delivered_ == request.rows_ && !request.finishing_;
        } catch (...) {
          error = std::current_exception();
          complete = !request.finishing_;
        }
        if (complete) request.finishing_ = true;
      }
    }
    if (complete) {
      this->complete(piece.request, error);
    }
    offset += piece.count;
  }
}

std::exception_ptr Engine::batch_error(int64_t batch_index, int64_t rows, const std::string& which,
                                       std::exception_ptr error) {
  stat_errors_ += 1;
  return std::make_exception_ptr(
      ModelError({__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
                 c10::str(model_->label(), ": batch ", batch_index, " (", rows, " rows: ", which,
                          ") failed: ", describe(error))));
}

void Engine::fail(Batch& batch, std::exception_ptr error, bool wrap) {
  std::exception_ptr final_error = error;
  if (wrap) {
    std::string which;
    int64_t total = 0;
    for (const Piece& piece : batch.pieces) {
      which += c10::str(which.empty() ? "" : ", ", "request ", piece.request->id_, " rows [",
                        piece.begin, ", ", piece.begin + piece.count, ")");
      total += piece.count;
    }
    final_error = batch_error(batch.index, total, which, error);
  }
  for (const Piece& piece : batch.pieces) {
    bool newly = false;
    {
      std::lock_guard<std::mutex> lock(piece.request->mutex_);
      newly = !piece.request->done_ && !piece.request->finishing_;
      if (newly) piece.request->finishing_ = true;
    }
    if (newly) {
      complete(piece.request, final_error);
    }
  }
}

void Engine::complete(const RequestPtr& request, std::exception_ptr error) {
  // Bookkeeping first, so a waiter woken below sees it (stats, freed inputs).
  end_to_end_latency_.record(seconds_since(request->submitted_));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // The caller's tensors (which may have Python objects attached) and Arrow
    // data are only ever dropped on the caller's thread: see take_garbage().
    if (request->inputs_) garbage_.push_back(std::move(request->inputs_));
    if (request->keepalive_) garbage_.push_back(std::move(request->keepalive_));
  }
  {
    std::lock_guard<std::mutex> lock(request->mutex_);
    request->error_ = error;
    request->done_ = true;
  }
  request->cv_.notify_all();
}

void Engine::retire(Batch& batch) {
  // The staging buffers are reused: the copies that read them must be done.
  if (batch.copied) batch.copied->synchronize();
  batch.inputs.clear();
  release_buffers(batch);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // The requests too: one whose Future is gone would otherwise end here,
    // and its outputs may share memory with the caller's inputs.
    for (Piece& piece : batch.pieces) {
      if (piece.inputs) garbage_.push_back(std::move(piece.inputs));
      if (piece.request) garbage_.push_back(std::move(piece.request));
    }
    batch.pieces.clear();
    --inflight_;
  }
  slots_cv_.notify_one();
}

void Engine::batch_loop() {
  at::init_num_threads();
  // Accelerator: the staged inputs' H2D copies go on the copy stream.
  std::optional<c10::StreamGuard> on_copy_stream;
  if (copy_stream_) on_copy_stream.emplace(*copy_stream_);
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      slots_cv_.wait(lock,
                     [&] { return inflight_ < options_.inflight || (closing_ && !draining_); });
      if (closing_ && !draining_) break;
    }
    Batch batch;
    if (!next_batch(batch)) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (closing_) break;
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++inflight_;
    }
    bool cancel = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      cancel = closing_ && !draining_;  // closed while this batch waited for rows
    }
    try {
      if (cancel) {
        for (const Piece& piece : batch.pieces) {
          Batch one;
          one.pieces.push_back(piece);
          fail(one, closed_error(piece.request->id_), /*wrap=*/false);
        }
        throw std::runtime_error("cancelled");
      }
      stage(batch);
    } catch (...) {
      if (!cancel) fail(batch, std::current_exception());
      retire(batch);
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ready_.push_back(std::move(batch));
    }
    ready_cv_.notify_one();
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopped_ = true;
  }
  ready_cv_.notify_all();
}

void Engine::worker_loop() {
  // A new thread: take torch's intra-op settings (OpenMP and MKL thread
  // counts are per thread), as ATen asks of every thread it did not start.
  at::init_num_threads();
  // Accelerator: this worker's model calls and output copies go on its own
  // compute stream (the current stream is thread-local).
  std::optional<c10::Stream> compute_stream;
  std::optional<c10::StreamGuard> on_compute_stream;
  if (device_impl_) {
    compute_stream = device_impl_->getStreamFromGlobalPool(options_.device);
    on_compute_stream.emplace(*compute_stream);
  }
  for (;;) {
    Batch batch;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      ready_cv_.wait(lock, [&] { return !ready_.empty() || stopped_; });
      if (ready_.empty()) break;
      batch = std::move(ready_.front());
      ready_.pop_front();
    }
    compute(batch, compute_stream);
  }
}

void Engine::compute(Batch& batch, const std::optional<c10::Stream>& stream) {
  const auto start = Clock::now();
  try {
    if (batch.copied) {
      // Compute waits for the inputs' copies, and the device allocator must
      // not reuse their memory before the compute stream is done with it.
      batch.copied->block(*stream);
      for (const at::Tensor& input : batch.inputs) {
        device_impl_->recordDataPtrOnStream(input.storage().data_ptr(), *stream);
      }
    }
    ModelOutputs outputs = run_model(batch.inputs, batch);
    if (stream) outputs_to_host(outputs, *stream);
    record_compute(seconds_since(start));
    stat_batches_ += 1;
    deliver(batch, outputs);
  } catch (...) {
    fail(batch, std::current_exception());
  }
  retire(batch);
}

void Engine::record_compute(double seconds) {
  compute_latency_.record(seconds);
  // A moving average of the call's cost: one input of try_run_inline's choice.
  const double average = compute_average_s_.load(std::memory_order_relaxed);
  compute_average_s_.store(average < 0 ? seconds : 0.9 * average + 0.1 * seconds,
                           std::memory_order_relaxed);
}

}  // namespace torchspark
