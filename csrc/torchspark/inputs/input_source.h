// The input-source interface: one model input of one submission, and how the
// engine stages its rows.
//
// A source is made from an Arrow batch by the factory of its kind (inputs/
// has one file per kind: tensor, gather, pad, mask, image) or wraps
// a tensor the caller submitted. The engine knows sources only through this
// interface: their rows, one row's shape and dtype, token lengths for padded
// inputs (token budgets, sorting), and stage_into(), which writes a run of
// rows into a staging buffer on the engine's staging thread. A source that
// is already one tensor says so (tensor()), so that a batch one submission
// covers is handed to the model as a view, with no copy.
//
// Ownership and threads: sources are immutable once made (stage_into may fill
// a private cache once, thread-safely) and are read from the engine's
// threads. They may hold Arrow data whose release needs the GIL: the engine
// never drops the last reference on its own threads (see engine.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/MemoryFormat.h>
#include <c10/core/Scalar.h>

#include <memory>
#include <string>
#include <vector>

namespace torchspark {

class InputSource {
 public:
  virtual ~InputSource() = default;

  // Rows along the batch dimension.
  virtual int64_t rows() const = 0;
  virtual c10::ScalarType dtype() const = 0;
  // The shape of one row; for a padded input, dim 0 is this source's padded width.
  virtual std::vector<int64_t> row_shape() const = 0;
  // Padded inputs: each row's token count, int64 [rows], contiguous, CPU,
  // within [0, row_shape()[0]]. Undefined for inputs that are not padded.
  virtual const at::Tensor& lengths() const;
  // Padded inputs: the value written past a row's length.
  virtual c10::Scalar pad_value() const { return 0; }
  // Padded inputs: padded inputs of one group describe the same tokens (a
  // text's ids, attention mask and token types): a token budget counts a
  // group's width once, and sorting sums lengths per group. Empty for
  // inputs that are not padded.
  virtual std::string length_group() const { return {}; }
  // The input as one tensor (rows along dim 0), when it is one already;
  // undefined for sources converted while staging.
  virtual const at::Tensor& tensor() const;
  // How the staged batch is laid out in memory: Contiguous, or ChannelsLast
  // for a 4-d batch ([N, C, H, W] with C varying fastest) that a
  // convolutional model reads faster. The shape stays the same.
  virtual at::MemoryFormat memory_format() const { return at::MemoryFormat::Contiguous; }
  // Writes rows [begin, begin + count), or with `order` (int64 [count], CPU)
  // rows order[0..count), into `dst`: CPU, dtype(), shape [count, row...],
  // dense in memory_format() (contiguous by default; a slice of a
  // channels_last batch for ChannelsLast). A padded input's dst may be
  // narrower or wider (dim 1, the batch's width) than row_shape()[0]: rows
  // are cut to it or padded with pad_value(). Errors name the input's column(s).
  virtual void stage_into(int64_t begin, int64_t count, const at::Tensor& order,
                          const at::Tensor& dst) const = 0;
  // For messages: "float32 rows of shape [8]" (", padded" for padded inputs).
  std::string describe() const;

  bool padded() const { return lengths().defined(); }
};
using InputSourcePtr = std::shared_ptr<const InputSource>;

// The inputs of one submission, one per positional model input.
struct Inputs {
  std::vector<InputSourcePtr> sources;
};

// A tensor the caller submitted as it is (rows along dim 0).
InputSourcePtr tensor_source(at::Tensor tensor);

// A right-padded [rows, width, ...] tensor with each row's length (int64
// [rows], within [0, width]) and the value past each length: the padded
// kinds' common form. Its length group is `group` (default: `label`, the
// column). Checks shapes and lengths (ValueError naming `label`).
InputSourcePtr padded_source(at::Tensor values, at::Tensor lengths, c10::Scalar pad_value,
                             const std::string& label, const std::string& group = {});

}  // namespace torchspark
