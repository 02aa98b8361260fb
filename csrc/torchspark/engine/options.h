// The engine's options: one plain struct, every field with its default and
// meaning, validated in one place (validate_options). Bound to Python by
// field name (torchspark._C.EngineOptions).
#pragma once

#include <c10/core/Device.h>

#include <string>
#include <vector>

#include "torchspark/engine/token_budget.h"
#include "torchspark/models/model.h"

namespace torchspark {

// EngineOptions::sort_window: sort each submission whole.
constexpr int64_t kWholeSubmission = -1;

struct EngineOptions {
  // Where the model runs; inputs are moved there.
  c10::Device device = c10::Device(c10::kCPU);
  // Most rows per model call.
  int64_t batch_size = 4096;
  // > 0: a batch with padded inputs holds at most this many padded token
  // slots (rows x the sum of the padded inputs' widths, a length group's
  // counted once); 0 = rows only; kAutoTokens (-1): tuned while running
  // (token_budget.h).
  int64_t max_tokens = 0;
  // How long a partial batch waits for more rows before it runs.
  double max_delay_ms = 2.0;
  // The precision model calls compute in; a format that cannot apply it at
  // run time (capabilities().autocast false) takes only fp32 here.
  Precision precision = Precision::kFloat32;
  // Worker threads calling the model (AOTInductor: one runner each).
  int64_t threads = 1;
  // Batches staged or computing at once (>= 2 overlaps staging with compute).
  int64_t inflight = 2;
  // Pad every batch to batch_size rows (models that need static shapes).
  bool static_batch = false;
  // Padded inputs: sort rows by total length within windows of this many
  // rows to cut padding (outputs keep the submission order); 0 = off;
  // kWholeSubmission (-1): each submission sorted as one window.
  int64_t sort_window = 0;
  // Outputs per token of the first padded input ([rows, L, ...], L the
  // batch's padded width): every output (all), or those numbered or named
  // here. Each comes back [rows, W, ...], W the submission's own padded
  // width, with 0 at and past each row's length: the same whatever the batching.
  bool per_token_all = false;
  std::vector<int64_t> per_token_indices;
  std::vector<std::string> per_token_names;
  // Engine::run_inline takes a batch onto the caller's thread while the
  // model's calls average less than this (ms); 0 = never.
  double inline_below_ms = 1.0;

  bool per_token_any() const {
    return per_token_all || !per_token_indices.empty() || !per_token_names.empty();
  }
};

// ValueError naming the first field out of range and its allowed values.
void validate_options(const EngineOptions& options);

}  // namespace torchspark
