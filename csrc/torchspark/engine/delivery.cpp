#include "torchspark/engine/delivery.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <algorithm>

namespace torchspark {

std::vector<bool> per_token_outputs(const EngineOptions& options, const ModelOutputs& outputs,
                                    int64_t padded_len, const std::string& label,
                                    int64_t batch_index) {
  std::vector<bool> flags(outputs.tensors.size(), false);
  if (!options.per_token_any()) return flags;
  TORCH_CHECK_VALUE(padded_len >= 0, label,
                    ": per-token outputs need a padded token input (kind 'pad')");
  for (const int64_t j : options.per_token_indices) {
    TORCH_CHECK_VALUE(j >= 0 && j < static_cast<int64_t>(flags.size()), label,
                      ": per_token names output ", j, " but the model returned ", flags.size(),
                      " outputs");
    flags[j] = true;
  }
  for (const std::string& name : options.per_token_names) {
    auto it = std::find(outputs.names.begin(), outputs.names.end(), name);
    TORCH_CHECK_VALUE(it != outputs.names.end(), label, ": per_token names output '", name,
                      "' but the model returned ",
                      outputs.names.empty()
                          ? c10::str(outputs.tensors.size(), " positional outputs (no names)")
                          : c10::Join(", ", outputs.names));
    flags[it - outputs.names.begin()] = true;
  }
  for (size_t j = 0; j < flags.size(); ++j) {
    flags[j] = flags[j] || options.per_token_all;
    const at::Tensor& out = outputs.tensors[j];
    TORCH_CHECK_VALUE(!flags[j] || (out.dim() >= 2 && out.size(1) == padded_len), label,
                      ": output ", j, " of batch ", batch_index, " is per token but has shape ",
                      out.sizes(), "; expected [rows, ", padded_len,
                      ", ...] (dim 1: the batch's padded token width)");
  }
  return flags;
}

void assemble(ModelOutputs& assembled, int64_t rows, const at::Tensor& order, int64_t width,
              const BatchPiece& piece, const std::string& label, int64_t request_id) {
  const ModelOutputs& outputs = *piece.outputs;
  const std::vector<bool>& per_token = *piece.per_token;
  const bool any_per_token = std::find(per_token.begin(), per_token.end(), true) != per_token.end();
  const bool whole = piece.begin == 0 && piece.count == rows && !order.defined() &&
                     assembled.tensors.empty() && !any_per_token;
  if (whole) {
    // The request is this one piece: its outputs are views of the batch's.
    for (const at::Tensor& out : outputs.tensors) {
      assembled.tensors.push_back(out.narrow(0, piece.offset, piece.count));
    }
    assembled.names = outputs.names;
    return;
  }
  if (assembled.tensors.empty()) {
    for (size_t j = 0; j < outputs.tensors.size(); ++j) {
      std::vector<int64_t> sizes = outputs.tensors[j].sizes().vec();
      sizes[0] = rows;
      if (per_token[j]) sizes[1] = width;
      const auto options = outputs.tensors[j].options().device(at::kCPU);
      // Assembled from several batches (or reordered): one copy.
      assembled.tensors.push_back(per_token[j] ? at::zeros(sizes, options)
                                               : at::empty(sizes, options));
    }
    assembled.names = outputs.names;
  }
  TORCH_CHECK_VALUE(
      assembled.tensors.size() == outputs.tensors.size() && assembled.names == outputs.names, label,
      ": batch ", piece.batch_index, " returned ", outputs.tensors.size(),
      " outputs but an earlier batch of request ", request_id, " returned ",
      assembled.tensors.size(), " (or other names)");
  for (size_t j = 0; j < outputs.tensors.size(); ++j) {
    at::Tensor dst = assembled.tensors[j];
    at::Tensor src = outputs.tensors[j].narrow(0, piece.offset, piece.count);
    const size_t fixed = per_token[j] ? 2 : 1;  // dims that must agree from here on
    TORCH_CHECK_VALUE(dst.sizes().slice(fixed) == src.sizes().slice(fixed) &&
                          dst.scalar_type() == src.scalar_type(),
                      label, ": output ", j, " of batch ", piece.batch_index, " has rows of shape ",
                      src.sizes().slice(1), " (", src.scalar_type(),
                      ") but an earlier batch of request ", request_id, " gave ",
                      dst.sizes().slice(1), " (", dst.scalar_type(), ")",
                      piece.batch_padded && !per_token[j]
                          ? "; an output per token of the padded input needs per_token"
                          : "");
    if (per_token[j]) {
      // The batch's width cut to (or within) the submission's; zero at and
      // past each row's length, whatever the model computed there.
      const int64_t cut = std::min(dst.size(1), src.size(1));
      std::vector<int64_t> mask_shape{piece.count, cut};
      mask_shape.resize(static_cast<size_t>(src.dim()), 1);
      const at::Tensor past_end =
          at::arange(cut, piece.lengths.options()).unsqueeze(0).ge(piece.lengths.unsqueeze(1));
      src = src.narrow(1, 0, cut).masked_fill(past_end.view(mask_shape), 0);
      dst = dst.narrow(1, 0, cut);
    }
    if (order.defined()) {
      dst.index_copy_(0, order.narrow(0, piece.begin, piece.count), src);
    } else {
      dst.narrow(0, piece.begin, piece.count).copy_(src);
    }
  }
}

}  // namespace torchspark
