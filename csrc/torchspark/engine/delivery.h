// Delivery: a batch's outputs split back to the submissions whose rows it
// carried, each submission's outputs assembled in its own row order.
//
// A submission covered by one batch, in order, gets views of the batch's
// outputs (no copy). Otherwise its outputs are allocated once, at its first
// piece, and each piece is copied into place (index_copy when rows were
// staged sorted). Outputs per token of the first padded input are assembled
// at the submission's own padded width, zero at and past each row's length,
// whatever width each batch was cut to. Pure tensor code: no locks (the
// caller holds the request's).
#pragma once

#include <string>
#include <vector>

#include "torchspark/engine/options.h"
#include "torchspark/models/model.h"

namespace torchspark {

// Which outputs are per token: those options.per_token_* name, each checked
// to be [rows, padded_len, ...]. padded_len < 0: the batch has no padded
// input (per-token options are then an error).
std::vector<bool> per_token_outputs(const EngineOptions& options, const ModelOutputs& outputs,
                                    int64_t padded_len, const std::string& label,
                                    int64_t batch_index);

// One submission's share of a batch: rows [offset, offset + count) of the
// batch's outputs are the submission's rows [begin, begin + count) in its
// staging order.
struct BatchPiece {
  const ModelOutputs* outputs = nullptr;
  const std::vector<bool>* per_token = nullptr;
  int64_t batch_index = 0;
  bool batch_padded = false;  // the batch has a padded input: a hint in shape errors
  int64_t offset = 0;
  int64_t begin = 0;
  int64_t count = 0;
  // Per-token outputs: these rows' lengths in the first padded input, staging order.
  at::Tensor lengths;
};

// Adds `piece` to `assembled`: the outputs of request `request_id` of `rows`
// rows, staged in `order` (undefined: submission order), `width` wide in its
// first padded input. ValueError (naming `label`, the batch and the request)
// when a batch's outputs disagree with an earlier batch's.
void assemble(ModelOutputs& assembled, int64_t rows, const at::Tensor& order, int64_t width,
              const BatchPiece& piece, const std::string& label, int64_t request_id);

}  // namespace torchspark
