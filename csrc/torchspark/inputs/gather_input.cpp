// Input kind "gather": scalar columns -> [rows, F], gathered straight into
// the staging buffer (the one copy the columnar layout forces, done once).
// Options: dtype (default float32), nulls ("error" | "fill"), fill. Types and
// nulls are checked when the input is made, on the caller's thread.
#include <ATen/ATen.h>

#include <mutex>

#include "torchspark/inputs/input_spec.h"
#include "torchspark/kernels/gather.h"

namespace torchspark {
namespace {

class GatherSource final : public InputSource {
 public:
  GatherSource(std::vector<Column> columns, int64_t rows, GatherOptions options)
      : columns_(std::move(columns)), rows_(rows), options_(options) {}

  int64_t rows() const override { return rows_; }
  c10::ScalarType dtype() const override { return options_.dtype; }
  std::vector<int64_t> row_shape() const override {
    return {static_cast<int64_t>(columns_.size())};
  }

  void stage_into(int64_t begin, int64_t count, const at::Tensor& order,
                  const at::Tensor& dst) const override {
    if (!order.defined()) {
      gather_rows(columns_, begin, count, options_, dst);
      return;
    }
    // Rows in another order (sorted by length): gather all rows once, then
    // select; the gathered tensor is kept for the submission's other batches.
    std::call_once(gathered_once_,
                   [&] { gathered_ = gather(columns_, rows_, options_, std::nullopt); });
    at::Tensor out = dst;
    at::index_select_out(out, gathered_, 0, order);
  }

 private:
  std::vector<Column> columns_;
  int64_t rows_;
  GatherOptions options_;
  mutable std::once_flag gathered_once_;
  mutable at::Tensor gathered_;
};

InputSourcePtr make_gather_input(const ImportedTable& table, const InputSpec& spec) {
  GatherOptions options;
  options.dtype = dtype_option(spec, "dtype").value_or(at::kFloat);
  options.nulls = nulls_option(spec);
  options.fill = scalar_option(spec, "fill").value_or(0);
  std::vector<Column> columns = table.select(spec.columns, "gather input");
  check_gather(columns, 0, table.num_rows(), options);
  return std::make_shared<GatherSource>(std::move(columns), table.num_rows(), options);
}

const bool registered =
    (register_input_kind("gather", {"dtype", "nulls", "fill"}, make_gather_input), true);

}  // namespace
}  // namespace torchspark
