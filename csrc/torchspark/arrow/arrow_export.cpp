#include "torchspark/arrow/arrow_export.h"

#include <ATen/ATen.h>

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "torchspark/errors.h"

namespace torchspark {

namespace {

const char* primitive_format(c10::ScalarType dtype) {
  using c10::ScalarType;
  switch (dtype) {
    case ScalarType::Char: return "c";
    case ScalarType::Byte: return "C";
    case ScalarType::Short: return "s";
    case ScalarType::UInt16: return "S";
    case ScalarType::Int: return "i";
    case ScalarType::UInt32: return "I";
    case ScalarType::Long: return "l";
    case ScalarType::UInt64: return "L";
    case ScalarType::Half: return "e";
    case ScalarType::Float: return "f";
    case ScalarType::Double: return "g";
    case ScalarType::Bool: return "b";
    default: return nullptr;
  }
}

// ---- ArrowSchema ----

struct SchemaPrivate {
  std::string format;
  std::string name;
  ArrowSchema child{};
  ArrowSchema* child_ptr = nullptr;
};

void release_schema(ArrowSchema* schema) {
  if (schema == nullptr || schema->release == nullptr) {
    return;
  }
  auto* priv = static_cast<SchemaPrivate*>(schema->private_data);
  if (priv->child.release != nullptr) {
    priv->child.release(&priv->child);
  }
  delete priv;
  schema->release = nullptr;
}

// Describes level `level` of `sizes` (0 = the outermost).
void make_schema(ArrowSchema* out, at::IntArrayRef sizes, size_t level, const char* leaf_format,
                 bool fixed, bool large, const char* name) {
  const bool is_leaf = level + 1 == sizes.size();
  // Built whole and moved in (assigning a literal trips GCC 12's -Wrestrict false positive).
  std::string format = is_leaf ? std::string(leaf_format)
                       : fixed ? "+w:" + std::to_string(sizes[level + 1])
                               : std::string(large ? "+L" : "+l");
  auto priv = std::make_unique<SchemaPrivate>(SchemaPrivate{std::move(format), std::string(name)});
  if (!is_leaf) {
    make_schema(&priv->child, sizes, level + 1, leaf_format, fixed, large, "item");
    priv->child_ptr = &priv->child;
  }
  *out = ArrowSchema{};
  out->format = priv->format.c_str();
  out->name = priv->name.c_str();
  out->metadata = nullptr;
  out->flags = ARROW_FLAG_NULLABLE;
  out->n_children = is_leaf ? 0 : 1;
  out->children = is_leaf ? nullptr : &priv->child_ptr;
  out->dictionary = nullptr;
  out->release = &release_schema;
  out->private_data = priv.release();
}

// ---- ArrowArray ----

struct ArrayPrivate {
  at::Tensor data;  // the tensor (leaf) or the generated offsets (list levels)
  const void* buffers[2] = {nullptr, nullptr};
  ArrowArray child{};
  ArrowArray* child_ptr = nullptr;
};

void release_array(ArrowArray* array) {
  if (array == nullptr || array->release == nullptr) {
    return;
  }
  auto* priv = static_cast<ArrayPrivate*>(array->private_data);
  if (priv->child.release != nullptr) {
    priv->child.release(&priv->child);
  }
  delete priv;
  array->release = nullptr;
}

void make_array(ArrowArray* out, const at::Tensor& leaf, at::IntArrayRef sizes, size_t level,
                int64_t rows, bool fixed, bool large) {
  auto priv = std::make_unique<ArrayPrivate>();
  const bool is_leaf = level + 1 == sizes.size();
  int64_t n_buffers = 2;
  if (is_leaf) {
    priv->data = leaf;
    priv->buffers[1] = leaf.numel() > 0 ? leaf.data_ptr() : nullptr;
  } else {
    const int64_t d = sizes[level + 1];
    if (fixed) {
      n_buffers = 1;
    } else {
      // Offsets 0, d, 2d, ...: the one allocation a list layout needs.
      priv->data = at::arange(0, (rows + 1) * d, std::max<int64_t>(d, 1),
                              at::TensorOptions().dtype(large ? at::kLong : at::kInt));
      if (d == 0) {
        priv->data = at::zeros({rows + 1}, at::TensorOptions().dtype(large ? at::kLong : at::kInt));
      }
      priv->buffers[1] = priv->data.data_ptr();
    }
    make_array(&priv->child, leaf, sizes, level + 1, rows * d, fixed, large);
    priv->child_ptr = &priv->child;
  }
  *out = ArrowArray{};
  out->length = rows;
  out->null_count = 0;
  out->offset = 0;
  out->n_buffers = n_buffers;
  out->n_children = is_leaf ? 0 : 1;
  out->buffers = priv->buffers;
  out->children = is_leaf ? nullptr : &priv->child_ptr;
  out->dictionary = nullptr;
  out->release = &release_array;
  out->private_data = priv.release();
}

// Arrow booleans are bit-packed (LSB first); torch's are bytes.
at::Tensor pack_bits(const at::Tensor& bools) {
  const int64_t n = bools.numel();
  at::Tensor bits = at::zeros({(n + 7) / 8}, at::TensorOptions().dtype(at::kByte));
  const bool* src = bools.data_ptr<bool>();
  uint8_t* dst = bits.data_ptr<uint8_t>();
  for (int64_t i = 0; i < n; ++i) {
    dst[i >> 3] |= static_cast<uint8_t>(src[i]) << (i & 7);
  }
  return bits;
}

}  // namespace

void export_tensor(const at::Tensor& tensor, const ExportOptions& options, ArrowSchema* schema,
                   ArrowArray* array, const std::string& what) {
  TORCH_CHECK_VALUE(tensor.defined(), what, ": expected a tensor, got an undefined tensor");
  TORCH_CHECK_VALUE(tensor.dim() >= 1, what,
                    ": expected at least 1 dimension (rows), got a 0-d tensor");
  TS_CHECK_SUPPORTED(tensor.layout() == at::kStrided, what, ": expected a dense tensor, got ",
                     tensor.layout());
  at::Tensor t = tensor.detach();
  if (t.scalar_type() == at::kBFloat16) {
    t = t.to(at::kFloat);  // no Arrow bfloat16; float32 holds every value exactly
  }
  const char* format = primitive_format(t.scalar_type());
  TS_CHECK_SUPPORTED(format != nullptr, what, ": dtype ", c10::toString(tensor.scalar_type()),
                     " has no Arrow type; expected a real number type or bool");
  t = t.to(at::kCPU).contiguous();

  at::Tensor leaf = t.scalar_type() == at::kBool ? pack_bits(t) : t;
  int64_t max_child_rows = 0;  // the largest list level's value count
  for (int64_t k = 1; k < t.dim(); ++k) {
    int64_t rows = 1;
    for (int64_t j = 0; j <= k; ++j) rows *= t.size(j);
    max_child_rows = std::max(max_child_rows, rows);
  }
  const bool large = max_child_rows > std::numeric_limits<int32_t>::max();

  // Build both before handing either out, so a failure leaks nothing.
  ArrowSchema s{};
  make_schema(&s, t.sizes(), 0, format, options.fixed_size_list, large, "");
  try {
    make_array(array, leaf, t.sizes(), 0, t.size(0), options.fixed_size_list, large);
  } catch (...) {
    s.release(&s);
    throw;
  }
  *schema = s;
}

}  // namespace torchspark
