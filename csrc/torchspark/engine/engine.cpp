#include "torchspark/engine/engine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <c10/core/StreamGuard.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <algorithm>

#include "torchspark/engine/delivery.h"
#include "torchspark/engine/model_call.h"
#include "torchspark/errors.h"

namespace torchspark {

using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Tuned budgets stay within what fits a device's memory comfortably; an
// accelerator's wider compute usually wants bigger batches.
TokenBudgetSettings budget_settings(const EngineOptions& options) {
  TokenBudgetSettings settings;
  settings.ceiling = options.device.is_cpu() ? 16384 : 65536;
  return settings;
}

}  // namespace

Engine::Engine(std::shared_ptr<const Model> model, EngineOptions options)
    : model_(std::move(model)),
      options_(std::move(options)),
      pool_(options_.inflight, /*pinned=*/!options_.device.is_cpu()),
      budget_(options_.max_tokens, budget_settings(options_)) {
  TORCH_CHECK_VALUE(model_ != nullptr, "Engine: expected a model, got none");
  validate_options(options_);
  TORCH_CHECK_VALUE(options_.precision == Precision::kFloat32 || model_->capabilities().autocast,
                    model_->label(), ": precision '", precision_name(options_.precision),
                    "' is applied at run time by autocast, which this format does not use; "
                    "export the model in that precision (torchspark.export(..., precision='",
                    precision_name(options_.precision), "')) and run it with precision 'fp32'");
  if (!options_.device.is_cpu()) {
    // The backend's streams and events (CUDA, XPU, ...), through c10's
    // device-generic interface: no backend headers, one binary for all.
    device_impl_.emplace(options_.device.type());
    if (!options_.device.has_index()) {
      options_.device = c10::Device(options_.device.type(), device_impl_->getDevice().index());
    }
    copy_stream_ = device_impl_->getStreamFromGlobalPool(options_.device);
  }
  context_.device = options_.device;
  context_.precision = options_.precision;
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

// ---- submitting ----

int64_t Engine::check_inputs(const Inputs& inputs) const {
  TORCH_CHECK_VALUE(!inputs.sources.empty(), model_->label(), ": expected at least one input");
  const int64_t rows = inputs.sources[0]->rows();
  for (size_t i = 1; i < inputs.sources.size(); ++i) {
    const int64_t n = inputs.sources[i]->rows();
    TORCH_CHECK_VALUE(n == rows, model_->label(), ": input ", i, " has ", n,
                      " rows but input 0 has ", rows);
  }
  return rows;
}

namespace {

// One row's shape, a padded input's width (dim 0) zeroed: widths may differ.
std::vector<int64_t> layout_row(const InputSource& source) {
  std::vector<int64_t> row = source.row_shape();
  if (source.padded() && !row.empty()) row[0] = 0;
  return row;
}

}  // namespace

void Engine::check_layout(const Inputs& inputs) {
  // Every submission must feed the model the same way (batches mix them).
  // Called with mutex_ held for every submission: compared in place, the
  // descriptions are only formatted for an error.
  if (layout_.empty()) {
    for (size_t i = 0; i < inputs.sources.size(); ++i) {
      const InputSource& source = *inputs.sources[i];
      layout_.push_back({source.dtype(), layout_row(source), source.padded(), source.describe()});
      if (source.padded()) {
        padded_.push_back(i);
        // Inputs of one length group (a text's ids and mask) share a number.
        int64_t group = group_count_;
        for (size_t q = 0; q + 1 < padded_.size(); ++q) {
          if (inputs.sources[padded_[q]]->length_group() == source.length_group()) {
            group = groups_[q];
            break;
          }
        }
        if (group == group_count_) ++group_count_;
        groups_.push_back(group);
      }
    }
    return;
  }
  TORCH_CHECK_VALUE(inputs.sources.size() == layout_.size(), model_->label(),
                    ": every submission must have the same inputs; the first had ", layout_.size(),
                    ", this one has ", inputs.sources.size());
  for (size_t i = 0; i < layout_.size(); ++i) {
    const InputLayout& first = layout_[i];
    const InputSource& source = *inputs.sources[i];
    TORCH_CHECK_VALUE(first.dtype == source.dtype() && first.padded == source.padded() &&
                          first.row == layout_row(source),
                      model_->label(), ": input ", i, " has ", source.describe(),
                      " but the first submission had ", first.description,
                      "; submissions to one engine must match");
  }
}

RequestPtr Engine::submit(Inputs inputs, std::shared_ptr<void> keepalive) {
  auto request = std::make_shared<Request>();
  const int64_t rows = check_inputs(inputs);
  std::vector<const InputSource*> padded;
  for (const InputSourcePtr& source : inputs.sources) {
    if (source->padded()) padded.push_back(source.get());
  }
  if (options_.sort_window != 0 && !padded.empty() && rows > 1) {
    // Staged sorted by total length within windows: similar lengths share
    // batches. A length group (a text's ids and mask) counts once: its longest.
    std::vector<std::string> groups;
    std::vector<std::vector<int64_t>> group_keys;
    for (const InputSource* source : padded) {
      const std::string group = source->length_group();
      const auto found = std::find(groups.begin(), groups.end(), group);
      const size_t g = static_cast<size_t>(found - groups.begin());
      if (found == groups.end()) {
        groups.push_back(group);
        group_keys.emplace_back(rows, 0);
      }
      const int64_t* row_lengths = source->lengths().data_ptr<int64_t>();
      for (int64_t r = 0; r < rows; ++r) {
        group_keys[g][r] = std::max(group_keys[g][r], row_lengths[r]);
      }
    }
    std::vector<int64_t> keys(rows, 0);
    for (const std::vector<int64_t>& group : group_keys) {
      for (int64_t r = 0; r < rows; ++r) keys[r] += group[r];
    }
    const int64_t window = options_.sort_window == kWholeSubmission ? 0 : options_.sort_window;
    request->order_ =
        at::tensor(windowed_sort(keys.data(), rows, window), at::TensorOptions().dtype(at::kLong));
  }
  request->rows_ = rows;
  request->inputs_ = std::make_shared<const Inputs>(std::move(inputs));
  request->keepalive_ = std::move(keepalive);
  request->submitted_ = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    TORCH_CHECK(!closing_, model_->label(), ": the engine is closed");
    check_layout(*request->inputs_);
    request->id_ = next_id_++;
    queue_.push_back(request);
  }
  stat_requests_ += 1;
  stat_rows_ += rows;
  intake_cv_.notify_one();
  return request;
}

std::optional<ModelOutputs> Engine::run_inline(Inputs& inputs) {
  // Cheap calls, measured: a moving average of the model's calls.
  const double average = compute_average_s_.load(std::memory_order_relaxed);
  const bool cheap = options_.device.is_cpu() && !options_.static_batch && average >= 0 &&
                     average * 1e3 < options_.inline_below_ms;
  // Tensors already in memory, one batch as they are: nothing to stage.
  if (!cheap ||
      !std::all_of(inputs.sources.begin(), inputs.sources.end(), [](const InputSourcePtr& source) {
        return source->tensor().defined() && !source->padded();
      })) {
    return std::nullopt;
  }
  const int64_t rows = check_inputs(inputs);
  if (rows < 1 || rows > options_.batch_size) return std::nullopt;
  int64_t id = 0;
  int64_t batch_index = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    TORCH_CHECK(!closing_, model_->label(), ": the engine is closed");
    // Only into an idle engine: queued rows would otherwise be overtaken.
    if (!queue_.empty() || inflight_ > 0) return std::nullopt;
    check_layout(inputs);
    id = next_id_++;
    batch_index = next_batch_++;
    ++inflight_;  // the batcher sees the slot taken
  }
  stat_requests_ += 1;
  stat_rows_ += rows;
  stat_inline_ += 1;
  std::vector<at::Tensor> tensors;
  tensors.reserve(inputs.sources.size());
  for (const InputSourcePtr& source : inputs.sources) tensors.push_back(source->tensor());
  const auto start = Clock::now();
  ModelOutputs outputs;
  std::exception_ptr error;
  try {
    outputs = run_model(tensors, batch_index);
    record_compute(seconds_since(start));
    stat_batches_ += 1;
    batch_rows_.observe(static_cast<double>(rows));
    check_outputs(outputs, rows, batch_index);
  } catch (...) {
    error = batch_error(batch_index, rows, c10::str("request ", id, " rows [0, ", rows, ")"),
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
    if (request->claim()) complete(request, closed_error(request->id_));
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
  s.token_budget = budget_.current();
  s.token_budget_tuning = budget_.tuning();
  s.token_budget_trials = budget_.history();
  s.queue = queue_latency_.summary();
  s.stage = stage_latency_.summary();
  s.compute = compute_latency_.summary();
  s.end_to_end = end_to_end_latency_.summary();
  return s;
}

EngineHistograms Engine::histograms() const {
  return {queue_latency_.histogram(), stage_latency_.histogram(), compute_latency_.histogram(),
          end_to_end_latency_.histogram(), batch_rows_.snapshot()};
}

// ---- batching and staging (the batcher thread) ----

bool Engine::next_batch(Batch& batch) {
  std::unique_lock<std::mutex> lock(mutex_);
  intake_cv_.wait(lock, [&] { return !queue_.empty() || closing_; });
  if (queue_.empty() || (closing_ && !draining_)) {
    return false;
  }
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double, std::milli>(options_.max_delay_ms));
  batch.shape.groups = groups_;
  batch.budget = padded_.empty() ? 0 : budget_.next();
  for (;;) {
    if (queue_.empty()) {
      if (flush_ || closing_ || batch.shape.rows >= options_.batch_size) break;
      if (intake_cv_.wait_until(lock, deadline) == std::cv_status::timeout && queue_.empty()) {
        break;
      }
      continue;
    }
    const RequestPtr request = queue_.front();
    {
      std::lock_guard<std::mutex> request_lock(request->mutex_);
      if (!request->open_locked()) {
        // Failed by an earlier batch: its remaining rows are not run.
        garbage_.push_back(std::move(queue_.front()));
        queue_.pop_front();
        queue_front_taken_ = 0;
        continue;
      }
    }
    const int64_t begin = queue_front_taken_;
    const int64_t remaining = request->rows_ - begin;
    RowLengths lengths;
    for (const size_t i : padded_) {
      lengths.lengths.push_back(request->inputs_->sources[i]->lengths().data_ptr<int64_t>());
    }
    lengths.order = request->order_.defined() ? request->order_.data_ptr<int64_t>() : nullptr;
    const int64_t take =
        fit_rows(batch.shape, lengths, begin, remaining, options_.batch_size, batch.budget);
    if (take == 0 && remaining > 0) {
      break;  // the batch is full
    }
    batch.pieces.push_back({request, request->inputs_, begin, take});
    queue_front_taken_ += take;
    if (queue_front_taken_ == request->rows_) {
      queue_.pop_front();
      queue_front_taken_ = 0;
    }
    if (batch.shape.rows >= options_.batch_size || take < remaining) {
      break;
    }
  }
  if (queue_.empty()) {
    flush_ = false;
  }
  batch.shape.widths.resize(padded_.size(), 0);
  batch.index = next_batch_++;
  return !batch.pieces.empty();
}

at::Tensor Engine::piece_lengths(const Piece& piece, size_t padded) const {
  const at::Tensor& lengths = piece.inputs->sources[padded_[padded]]->lengths();
  const at::Tensor& order = piece.request->order_;
  return order.defined() ? lengths.index_select(0, order.narrow(0, piece.begin, piece.count))
                         : lengths.narrow(0, piece.begin, piece.count);
}

void Engine::stage(Batch& batch) {
  // Staging buffers are reused: no autograd history may attach to them.
  c10::AutoGradMode no_grad(false);
  const auto start = Clock::now();
  for (const Piece& piece : batch.pieces) {
    queue_latency_.record(std::chrono::duration<double>(start - piece.request->submitted_).count());
  }
  const int64_t rows = batch.shape.rows;
  const int64_t staged_rows = options_.static_batch ? options_.batch_size : rows;
  const std::vector<InputSourcePtr>& first = batch.pieces.front().inputs->sources;
  batch.inputs.assign(first.size(), at::Tensor());
  size_t padded_index = 0;
  for (size_t i = 0; i < first.size(); ++i) {
    const InputSource& only = *first[i];
    const Piece& only_piece = batch.pieces.front();
    std::vector<int64_t> row = only.row_shape();
    if (only.padded()) row[0] = batch.shape.widths[padded_index++];
    const at::Tensor& tensor = only.tensor();
    // On an accelerator only pinned memory copies asynchronously: stage the rest.
    const bool async_copyable = options_.device.is_cpu() || !tensor.defined() ||
                                tensor.is_pinned() || tensor.device() == options_.device;
    const bool whole_view = async_copyable && batch.pieces.size() == 1 && tensor.defined() &&
                            !only_piece.request->order_.defined() && staged_rows == rows &&
                            (!only.padded() || row[0] == tensor.size(1));
    if (whole_view) {
      // One submission covers the batch: a view, no copy.
      batch.inputs[i] = tensor.narrow(0, only_piece.begin, only_piece.count);
    } else {
      std::vector<int64_t> sizes{staged_rows};
      sizes.insert(sizes.end(), row.begin(), row.end());
      at::Tensor buffer = pool_.acquire(only.dtype(), c10::multiply_integers(sizes));
      at::Tensor staged = buffer.narrow(0, 0, c10::multiply_integers(sizes)).view(sizes);
      if (only.memory_format() == at::MemoryFormat::ChannelsLast && sizes.size() == 4) {
        // The same bytes as [N, H, W, C], seen as [N, C, H, W].
        staged = buffer.narrow(0, 0, c10::multiply_integers(sizes))
                     .view({sizes[0], sizes[2], sizes[3], sizes[1]})
                     .permute({0, 3, 1, 2});
      }
      batch.buffers.push_back(std::move(buffer));
      int64_t offset = 0;
      for (const Piece& piece : batch.pieces) {
        const at::Tensor& order = piece.request->order_;
        piece.inputs->sources[i]->stage_into(
            piece.begin, piece.count,
            order.defined() ? order.narrow(0, piece.begin, piece.count) : at::Tensor(),
            staged.narrow(0, offset, piece.count));
        offset += piece.count;
      }
      if (staged_rows > offset) {
        // static_batch: rows past the real ones.
        at::Tensor padding = staged.narrow(0, offset, staged_rows - offset);
        if (only.padded()) {
          padding.fill_(only.pad_value());
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
  for (size_t p = 0; p < padded_.size(); ++p) {
    const int64_t width = batch.shape.widths[p];
    int64_t real = 0;
    for (const Piece& piece : batch.pieces) {
      real += piece_lengths(piece, p).clamp_max(width).sum().item<int64_t>();
    }
    stat_token_slots_ += staged_rows * width;
    stat_token_padding_ += staged_rows * width - real;
    batch.tokens += real;
  }
  stage_latency_.record(seconds_since(start));
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
    bool cancel = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++inflight_;
      cancel = closing_ && !draining_;  // closed while this batch waited for rows
    }
    try {
      if (cancel) {
        for (const Piece& piece : batch.pieces) {
          if (piece.request->claim()) complete(piece.request, closed_error(piece.request->id_));
        }
      } else {
        stage(batch);
      }
    } catch (...) {
      fail(batch, std::current_exception());
      cancel = true;
    }
    if (cancel) {
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

// ---- compute and delivery (the worker threads) ----

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

ModelOutputs Engine::run_model(const std::vector<at::Tensor>& inputs, int64_t batch_index,
                               int64_t budget) {
  return call_model(*model_, inputs, context_, !options_.static_batch, batch_index, [this, budget] {
    stat_retries_ += 1;
    budget_.out_of_memory(budget);
  });
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
    ModelOutputs outputs = run_model(batch.inputs, batch.index, batch.budget);
    if (stream) outputs_to_host(outputs, *stream);
    const double seconds = seconds_since(start);
    record_compute(seconds);
    if (batch.budget > 0) budget_.record(batch.budget, batch.tokens, seconds);
    stat_batches_ += 1;
    batch_rows_.observe(static_cast<double>(batch.shape.rows));
    deliver(batch, outputs);
  } catch (...) {
    fail(batch, std::current_exception());
  }
  retire(batch);
}

void Engine::record_compute(double seconds) {
  compute_latency_.record(seconds);
  // A moving average of the call's cost: what run_inline decides by.
  const double average = compute_average_s_.load(std::memory_order_relaxed);
  compute_average_s_.store(average < 0 ? seconds : 0.9 * average + 0.1 * seconds,
                           std::memory_order_relaxed);
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

void Engine::deliver(Batch& batch, ModelOutputs& outputs) {
  c10::AutoGradMode no_grad(false);
  const int64_t staged_rows = batch.inputs.empty() ? batch.shape.rows : batch.inputs[0].size(0);
  check_outputs(outputs, staged_rows, batch.index);
  const int64_t padded_len = padded_.empty() ? -1 : batch.shape.widths[0];
  const std::vector<bool> per_token =
      per_token_outputs(options_, outputs, padded_len, model_->label(), batch.index);
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
  const bool any_per_token = std::find(per_token.begin(), per_token.end(), true) != per_token.end();
  BatchPiece share;
  share.outputs = &outputs;
  share.per_token = &per_token;
  share.batch_index = batch.index;
  share.batch_padded = !padded_.empty();
  for (Piece& piece : batch.pieces) {
    Request& request = *piece.request;
    share.begin = piece.begin;
    share.count = piece.count;
    bool claimed = false;
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lock(request.mutex_);
      if (request.open_locked()) {
        try {
          int64_t width = 0;
          if (any_per_token) {
            share.lengths = piece_lengths(piece, 0);
            width = piece.inputs->sources[padded_[0]]->row_shape()[0];
          }
          assemble(request.outputs_, request.rows_, request.order_, width, share, model_->label(),
                   request.id_);
          request.delivered_ += piece.count;
          if (request.delivered_ == request.rows_) claimed = request.claim_locked();
        } catch (...) {
          error = std::current_exception();
          claimed = request.claim_locked();
        }
      }
    }
    if (claimed) complete(piece.request, error);
    share.offset += piece.count;
  }
}

// ---- failure and completion ----

std::exception_ptr Engine::batch_error(int64_t batch_index, int64_t rows, const std::string& which,
                                       std::exception_ptr error) {
  stat_errors_ += 1;
  return std::make_exception_ptr(
      ModelError({__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
                 c10::str(model_->label(), ": batch ", batch_index, " (", rows, " rows: ", which,
                          ") failed: ", describe_error(error))));
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
    if (piece.request->claim()) complete(piece.request, final_error);
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
  request->finish(std::move(error));
}

void Engine::retire(Batch& batch) {
  // The staging buffers are reused: the copies that read them must be done.
  if (batch.copied) batch.copied->synchronize();
  batch.inputs.clear();
  pool_.release(batch.buffers);
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

}  // namespace torchspark
