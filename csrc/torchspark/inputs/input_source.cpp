#include "torchspark/inputs/input_source.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

namespace torchspark {

namespace {
const at::Tensor& undefined_tensor() {
  static const at::Tensor none;
  return none;
}
}  // namespace

const at::Tensor& InputSource::lengths() const {
  return undefined_tensor();
}

const at::Tensor& InputSource::tensor() const {
  return undefined_tensor();
}

std::string InputSource::describe() const {
  const std::vector<int64_t> row = row_shape();
  return c10::str(c10::toString(dtype()), " rows of shape ", c10::IntArrayRef(row),
                  padded() ? ", padded" : "");
}

namespace {

// A tensor as it is: stage_into copies rows (or gathers them by `order`).
class TensorSource : public InputSource {
 public:
  explicit TensorSource(at::Tensor tensor) : tensor_(std::move(tensor)) {}

  int64_t rows() const override { return tensor_.size(0); }
  c10::ScalarType dtype() const override { return tensor_.scalar_type(); }
  std::vector<int64_t> row_shape() const override { return tensor_.sizes().slice(1).vec(); }
  const at::Tensor& tensor() const override { return tensor_; }

  void stage_into(int64_t begin, int64_t count, const at::Tensor& order,
                  const at::Tensor& dst) const override {
    at::Tensor src = tensor_;
    at::Tensor out = dst;
    if (padded()) {
      // Submissions padded to other widths: cut to, or pad up to, the batch's.
      const int64_t width = std::min(dst.size(1), src.size(1));
      src = src.narrow(1, 0, width);
      if (width < dst.size(1)) {
        dst.narrow(1, width, dst.size(1) - width).fill_(pad_value());
        out = dst.narrow(1, 0, width);
      }
    }
    out.copy_(order.defined() ? src.index_select(0, order) : src.narrow(0, begin, count));
  }

 protected:
  at::Tensor tensor_;
};

class PaddedSource final : public TensorSource {
 public:
  PaddedSource(at::Tensor values, at::Tensor lengths, c10::Scalar pad_value, std::string group)
      : TensorSource(std::move(values)),
        lengths_(std::move(lengths)),
        pad_value_(pad_value),
        group_(std::move(group)) {}

  const at::Tensor& lengths() const override { return lengths_; }
  c10::Scalar pad_value() const override { return pad_value_; }
  std::string length_group() const override { return group_; }

 private:
  at::Tensor lengths_;
  c10::Scalar pad_value_;
  std::string group_;
};

}  // namespace

InputSourcePtr tensor_source(at::Tensor tensor) {
  TORCH_CHECK_VALUE(tensor.defined() && tensor.dim() >= 1,
                    "input: expected a tensor with a batch dimension, got ",
                    tensor.defined() ? "a 0-d tensor" : "an undefined tensor");
  return std::make_shared<TensorSource>(std::move(tensor));
}

InputSourcePtr padded_source(at::Tensor values, at::Tensor lengths, c10::Scalar pad_value,
                             const std::string& label, const std::string& group) {
  TORCH_CHECK_VALUE(values.defined() && values.dim() >= 2, label,
                    ": a padded input must be a [rows, length, ...] tensor, got shape ",
                    values.defined() ? c10::str(values.sizes()) : std::string("(undefined)"));
  const int64_t rows = values.size(0);
  TORCH_CHECK_VALUE(lengths.defined() && lengths.dim() == 1 && lengths.size(0) == rows, label,
                    ": lengths must be a 1-d tensor of ", rows, " values, got shape ",
                    lengths.defined() ? c10::str(lengths.sizes()) : std::string("(undefined)"));
  lengths = lengths.detach().to(at::kCPU, at::kLong).contiguous();
  if (rows > 0) {
    const int64_t lo = lengths.min().item<int64_t>();
    const int64_t hi = lengths.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi <= values.size(1), label, ": lengths must be in [0, ",
                      values.size(1), "], got [", lo, ", ", hi, "]");
  }
  return std::make_shared<PaddedSource>(std::move(values), std::move(lengths), pad_value,
                                        group.empty() ? label : group);
}

}  // namespace torchspark
