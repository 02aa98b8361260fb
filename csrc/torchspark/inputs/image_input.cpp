// Input kind "image": one column of images -> [rows, 3, H, W], decoded,
// resized, cropped and normalized straight into the staging buffer.
//
// The column is either binary / large_binary (encoded JPEG, PNG or WebP
// bytes, e.g. the `content` of Spark's binaryFile source) or the struct of
// Spark's image source (origin, height, width, nChannels, mode, data: raw
// rows of BGR, BGRA or gray bytes, read in place with no decode).
//
// Options (all optional):
//   size          int or [h, w]: the output size (default 224 x 224)
//   resize        None: shorter side to max(h, w), then a center crop;
//                 int S: shorter side to S, then a center crop to (h, w)
//                 (torchvision's Resize(S) + CenterCrop); "stretch": to (h, w)
//   mean, std     3 numbers (or one for all channels): (x / 255 - mean) / std
//                 (default 0 and 1: values in [0, 1])
//   dtype         float32 (default), float64, float16 or bfloat16
//   channels_last bool: the staged batch in channels_last memory format
//                 (logical shape [N, 3, H, W] either way)
//   max_pixels    int: larger images are refused (default 89,478,485)
//   nulls         "error" (default) or "fill" (a null row stages as zeros)
//
// What fails cheaply (types, nulls, formats, header sizes, the pixel limit,
// Spark rows' lengths) is checked when the input is made, on the caller's
// thread; a stream that fails to decode fails its batch at staging time.
// Both name the column and the row ("(first in row N)") and show the bytes.
// Staging decodes rows in parallel (at::parallel_for, rows taken one at a
// time, so large and small images balance), with no Python and no GIL.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <array>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>

#include "torchspark/arrow/arrow_type.h"
#include "torchspark/errors.h"
#include "torchspark/image/decode.h"
#include "torchspark/image/image_format.h"
#include "torchspark/image/resize.h"
#include "torchspark/inputs/input_spec.h"

namespace torchspark {
namespace {

constexpr int64_t kDefaultSize = 224;

struct ImageOptions {
  int64_t height = kDefaultSize;  // output size
  int64_t width = kDefaultSize;
  ResizeMode mode = ResizeMode::kShorterSide;
  int64_t shorter_side = kDefaultSize;  // kShorterSide: max(height, width) unless given
  std::array<double, 3> mean{0.0, 0.0, 0.0};
  std::array<double, 3> std{1.0, 1.0, 1.0};
  c10::ScalarType dtype = c10::ScalarType::Float;
  bool channels_last = false;
  int64_t max_pixels = kDefaultMaxPixels;
  NullPolicy nulls = NullPolicy::kError;
};

// One row as found in the column; pointers into the Arrow buffers, which
// the column's chunk owners keep alive.
struct ImageRow {
  const uint8_t* data = nullptr;  // encoded bytes, or a Spark row's pixels
  int64_t size = 0;
  const char* origin = nullptr;  // a Spark row's origin (messages only)
  int64_t origin_size = 0;
  int32_t width = 0;  // Spark rows
  int32_t height = 0;
  int8_t channels = 0;  // 0: encoded; 1, 3, 4: a Spark row (gray, BGR, BGRA)
  bool null = false;
};

// ---- options ----

const OptionValue* option(const InputSpec& spec, const char* key) {
  auto it = spec.options.find(key);
  if (it == spec.options.end() || std::holds_alternative<std::monostate>(it->second)) {
    return nullptr;
  }
  return &it->second;
}

const char* type_name(const OptionValue& value) {
  static const char* names[] = {"None", "bool",        "int",     "float",
                                "str",  "torch.dtype", "[float]", "[str]"};
  return names[value.index()];
}

int64_t whole_number(double value, const char* key) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value == std::floor(value) && value >= 1 &&
                        value <= std::numeric_limits<int32_t>::max(),
                    "input kind 'image': option '", key, "' takes whole numbers >= 1, got ", value);
  return static_cast<int64_t>(value);
}

std::array<double, 3> channel_values(const InputSpec& spec, const char* key,
                                     std::array<double, 3> fallback) {
  const OptionValue* value = option(spec, key);
  if (value == nullptr) return fallback;
  std::array<double, 3> out{};
  if (const auto* list = std::get_if<std::vector<double>>(value)) {
    TORCH_CHECK_VALUE(list->size() == 3, "input kind 'image': option '", key,
                      "' takes 3 numbers (R, G, B), got ", list->size());
    std::copy(list->begin(), list->end(), out.begin());
  } else if (const auto* d = std::get_if<double>(value)) {
    out.fill(*d);
  } else if (const auto* i = std::get_if<int64_t>(value)) {
    out.fill(static_cast<double>(*i));
  } else {
    TORCH_CHECK_TYPE(false, "input kind 'image': option '", key,
                     "' must be a list of 3 numbers or a number, got ", type_name(*value));
  }
  for (double v : out) {
    TORCH_CHECK_VALUE(std::isfinite(v), "input kind 'image': option '", key,
                      "' takes finite numbers, got ", v);
  }
  return out;
}

ImageOptions read_options(const InputSpec& spec) {
  ImageOptions o;
  if (const OptionValue* size = option(spec, "size")) {
    if (const auto* n = std::get_if<int64_t>(size)) {
      o.height = o.width = whole_number(static_cast<double>(*n), "size");
    } else if (const auto* hw = std::get_if<std::vector<double>>(size)) {
      TORCH_CHECK_VALUE(hw->size() == 2,
                        "input kind 'image': option 'size' takes an int or [h, w], "
                        "got a list of ",
                        hw->size());
      o.height = whole_number((*hw)[0], "size");
      o.width = whole_number((*hw)[1], "size");
    } else {
      TORCH_CHECK_TYPE(false, "input kind 'image': option 'size' must be an int or [h, w], got ",
                       type_name(*size));
    }
  }
  o.shorter_side = std::max(o.height, o.width);
  if (const OptionValue* resize = option(spec, "resize")) {
    if (const auto* n = std::get_if<int64_t>(resize)) {
      o.shorter_side = whole_number(static_cast<double>(*n), "resize");
      TORCH_CHECK_VALUE(o.shorter_side >= std::max(o.height, o.width),
                        "input kind 'image': option 'resize' (the shorter side, ", o.shorter_side,
                        ") must be at least the larger side of size (", o.height, " x ", o.width,
                        ") so that the center crop fits; use resize='stretch' to resize to size");
    } else if (const auto* s = std::get_if<std::string>(resize)) {
      TORCH_CHECK_VALUE(*s == "stretch",
                        "input kind 'image': option 'resize' must be an int (the shorter side "
                        "before a center crop) or 'stretch', got '",
                        *s, "'");
      o.mode = ResizeMode::kStretch;
    } else {
      TORCH_CHECK_TYPE(
          false,
          "input kind 'image': option 'resize' must be an int (the shorter side before "
          "a center crop) or 'stretch', got ",
          type_name(*resize));
    }
  }
  o.mean = channel_values(spec, "mean", o.mean);
  o.std = channel_values(spec, "std", o.std);
  for (double s : o.std) {
    TORCH_CHECK_VALUE(s != 0.0, "input kind 'image': option 'std' must not hold a zero, got [",
                      o.std[0], ", ", o.std[1], ", ", o.std[2], "]");
  }
  o.dtype = dtype_option(spec, "dtype").value_or(c10::ScalarType::Float);
  TORCH_CHECK_VALUE(o.dtype == at::kFloat || o.dtype == at::kDouble || o.dtype == at::kHalf ||
                        o.dtype == at::kBFloat16,
                    "input kind 'image': option 'dtype' must be torch.float32, float64, float16 or "
                    "bfloat16, got ",
                    c10::toString(o.dtype));
  if (const OptionValue* cl = option(spec, "channels_last")) {
    const auto* b = std::get_if<bool>(cl);
    TORCH_CHECK_TYPE(b != nullptr,
                     "input kind 'image': option 'channels_last' must be a bool, got ",
                     type_name(*cl));
    o.channels_last = *b;
  }
  o.max_pixels = int_option(spec, "max_pixels").value_or(kDefaultMaxPixels);
  TORCH_CHECK_VALUE(o.max_pixels >= 1, "input kind 'image': option 'max_pixels' must be >= 1, got ",
                    o.max_pixels);
  o.nulls = nulls_option(spec);
  TORCH_CHECK_VALUE(o.nulls != NullPolicy::kMask,
                    "input kind 'image': nulls must be 'error' or 'fill', got 'mask'");
  return o;
}

// ---- the column ----

// A row's context for messages: " (first in row N)" and a Spark row's origin.
std::string where(int64_t row, const ImageRow& image) {
  std::string out = c10::str(" (first in row ", row, ")");
  if (image.origin != nullptr) {
    constexpr int64_t kShown = 200;
    out += "; origin '" +
           std::string(image.origin, static_cast<size_t>(std::min(image.origin_size, kShown))) +
           (image.origin_size > kShown ? "...'" : "'");
  }
  return out;
}

int64_t read_integer(const ArrowArray& array, c10::ScalarType dtype, int64_t i) {
  const void* values = array.buffers[1];
  switch (dtype) {
    case at::kByte: return load_unaligned<uint8_t>(values, i);
    case at::kChar: return load_unaligned<int8_t>(values, i);
    case at::kShort: return load_unaligned<int16_t>(values, i);
    case at::kInt: return load_unaligned<int32_t>(values, i);
    case at::kLong: return load_unaligned<int64_t>(values, i);
    default: break;
  }
  return 0;
}

// One field of a Spark image struct: its schema and array in a chunk.
struct Field {
  const ArrowSchema* schema = nullptr;
  const ArrowArray* array = nullptr;
  ArrowType type;
};

int64_t field_index(const ArrowSchema& schema, const char* name) {
  for (int64_t i = 0; i < schema.n_children; ++i) {
    const char* child = schema.children[i]->name;
    if (child != nullptr && std::string_view(child) == name) return i;
  }
  return -1;
}

const char* kSparkFields =
    "origin: string, height: int, width: int, nChannels: int, mode: int, "
    "data: binary";

Field struct_field(const ColumnChunk& chunk, const std::string& label, const char* name,
                   bool required) {
  const int64_t i = field_index(*chunk.schema, name);
  TS_CHECK_SUPPORTED(i >= 0 || !required, label, ": an image struct needs a field '", name,
                     "' (Spark's image source has ", kSparkFields, ")");
  Field field;
  if (i < 0) return field;
  field.schema = chunk.schema->children[i];
  field.array = chunk.array->children[i];
  const std::string what = c10::str(label, " field '", name, "'");
  const std::string_view format(field.schema->format);
  if (std::string_view(name) == "origin") {
    // A string: validated as the binary column it is laid out as.
    TS_CHECK_SUPPORTED(format == "u" || format == "U", what, ": expected a string, got ",
                       describe_format(field.schema->format));
    ArrowSchema as_binary = *field.schema;
    as_binary.format = format == "u" ? "z" : "Z";
    validate(as_binary, *field.array, what);
    field.type.kind = format == "u" ? TypeKind::kBinary : TypeKind::kLargeBinary;
    return field;
  }
  validate(*field.schema, *field.array, what);
  field.type = parse_type(*field.schema, what);
  if (std::string_view(name) == "data") {
    TS_CHECK_SUPPORTED(
        (field.type.kind == TypeKind::kBinary || field.type.kind == TypeKind::kLargeBinary) &&
            !field.type.dictionary_encoded,
        what, ": expected binary, got ", describe_format(field.schema->format));
  } else {
    TS_CHECK_SUPPORTED(field.type.kind == TypeKind::kPrimitive && !field.type.dictionary_encoded &&
                           c10::isIntegralType(field.type.dtype, /*includeBool=*/false),
                       what, ": expected an integer, got ", describe_format(field.schema->format));
  }
  return field;
}

std::pair<const uint8_t*, int64_t> binary_value(const ArrowArray& array, TypeKind kind, int64_t i) {
  auto [begin, length] = offsets_range(array.buffers[1], kind == TypeKind::kLargeBinary, i);
  const auto* data = static_cast<const uint8_t*>(array.buffers[2]);
  return {data == nullptr ? nullptr : data + begin, length};
}

// Spark's OpenCV modes: CV_8UC1, CV_8UC3, CV_8UC4.
int64_t mode_channels(int64_t mode) {
  return mode == 0 ? 1 : mode == 16 ? 3 : mode == 24 ? 4 : -1;
}

void read_struct_chunk(const ColumnChunk& chunk, const std::string& label,
                       std::vector<ImageRow>& rows) {
  validate_struct_shallow(*chunk.schema, *chunk.array, label);
  const Field origin = struct_field(chunk, label, "origin", false);
  const Field height = struct_field(chunk, label, "height", true);
  const Field width = struct_field(chunk, label, "width", true);
  const Field channels = struct_field(chunk, label, "nChannels", true);
  const Field mode = struct_field(chunk, label, "mode", false);
  const Field data = struct_field(chunk, label, "data", true);
  for (int64_t local = 0; local < chunk.length; ++local) {
    const int64_t s = chunk.start + local;  // the struct's own offset included
    const int64_t row = chunk.row_base + local;
    ImageRow& image = rows[row];
    if (origin.array != nullptr && is_valid(*origin.array, origin.array->offset + s)) {
      auto [text, length] = binary_value(*origin.array, origin.type.kind, origin.array->offset + s);
      image.origin = reinterpret_cast<const char*>(text);
      image.origin_size = length;
      if (image.origin == nullptr) image.origin = "";
    }
    if (!is_valid(*chunk.array, s) || !is_valid(*data.array, data.array->offset + s)) {
      image.null = true;
      continue;
    }
    for (const Field* f : {&height, &width, &channels}) {
      TS_CHECK_NOT_NULL(is_valid(*f->array, f->array->offset + s), label,
                        ": a Spark image row with a null '", f->schema->name, "'",
                        where(row, image));
    }
    const int64_t h = read_integer(*height.array, height.type.dtype, height.array->offset + s);
    const int64_t w = read_integer(*width.array, width.type.dtype, width.array->offset + s);
    const int64_t c =
        read_integer(*channels.array, channels.type.dtype, channels.array->offset + s);
    auto [bytes, size] = binary_value(*data.array, data.type.kind, data.array->offset + s);
    TORCH_CHECK_VALUE(
        h > 0 && w > 0, label, ": a Spark image row of height ", h, " and width ", w,
        h < 0 || w < 0 ? " (Spark's mark of a file it could not read as an image)" : "",
        where(row, image), "; expected height and width >= 1");
    TORCH_CHECK_VALUE(c == 1 || c == 3 || c == 4, label, ": a Spark image row with nChannels ", c,
                      where(row, image),
                      "; expected 1 (gray), 3 (BGR) or 4 (BGRA), 8 bits per channel");
    if (mode.array != nullptr && is_valid(*mode.array, mode.array->offset + s)) {
      const int64_t m = read_integer(*mode.array, mode.type.dtype, mode.array->offset + s);
      TORCH_CHECK_VALUE(mode_channels(m) == c, label, ": a Spark image row with mode ", m,
                        " and nChannels ", c, where(row, image),
                        "; expected mode 0 (CV_8UC1) with "
                        "1 channel, 16 (CV_8UC3) with 3, or 24 (CV_8UC4) with 4");
    }
    check_image_size(w, h, std::numeric_limits<int64_t>::max());
    TORCH_CHECK_VALUE(w <= std::numeric_limits<int32_t>::max() &&
                          h <= std::numeric_limits<int32_t>::max() && size == h * w * c,
                      label, ": a Spark image row's data has ", size, " bytes", where(row, image),
                      "; expected height ", h, " x width ", w, " x nChannels ", c, " = ",
                      h * w * c);
    image.data = bytes;
    image.size = size;
    image.height = static_cast<int32_t>(h);
    image.width = static_cast<int32_t>(w);
    image.channels = static_cast<int8_t>(c);
  }
}

void read_binary_chunk(const ColumnChunk& chunk, const ArrowType& type,
                       std::vector<ImageRow>& rows) {
  for (int64_t local = 0; local < chunk.length; ++local) {
    const int64_t i = chunk.start + local;
    ImageRow& image = rows[chunk.row_base + local];
    if (!is_valid(*chunk.array, i)) {
      image.null = true;
      continue;
    }
    auto [bytes, size] = binary_value(*chunk.array, type.kind, i);
    image.data = bytes;
    image.size = size;
  }
}

// The column's rows, every chunk validated; types checked.
std::vector<ImageRow> read_rows(const Column& column) {
  std::vector<ImageRow> rows(static_cast<size_t>(column.length));
  for (const ColumnChunk& chunk : column.chunks) {
    const ArrowType type = parse_type(*chunk.schema, column.label);
    if (type.kind == TypeKind::kStruct) {
      read_struct_chunk(chunk, column.label, rows);
      continue;
    }
    TS_CHECK_SUPPORTED((type.kind == TypeKind::kBinary || type.kind == TypeKind::kLargeBinary) &&
                           !type.dictionary_encoded,
                       column.label,
                       ": an image input takes a binary column of encoded images or the struct of "
                       "Spark's image source (",
                       kSparkFields, "), got ",
                       type.dictionary_encoded ? std::string("dictionary")
                                               : describe_format(chunk.schema->format));
    validate(*chunk.schema, *chunk.array, column.label);
    read_binary_chunk(chunk, type, rows);
  }
  return rows;
}

// ---- the source ----

class ImageSource final : public InputSource {
 public:
  ImageSource(Column column, std::vector<ImageRow> rows, ImageOptions options)
      : column_(std::move(column)),
        rows_(std::move(rows)),
        options_(options),
        table_(pixel_table(options.mean, options.std)) {}

  int64_t rows() const override { return static_cast<int64_t>(rows_.size()); }
  c10::ScalarType dtype() const override { return options_.dtype; }
  std::vector<int64_t> row_shape() const override { return {3, options_.height, options_.width}; }
  at::MemoryFormat memory_format() const override {
    return options_.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  }

  void stage_into(int64_t begin, int64_t count, const at::Tensor& order,
                  const at::Tensor& dst) const override {
    TORCH_CHECK_VALUE(dst.device().is_cpu() && dst.scalar_type() == options_.dtype &&
                          dst.dim() == 4 && dst.size(0) == count && dst.size(1) == 3 &&
                          dst.size(2) == options_.height && dst.size(3) == options_.width,
                      column_.label, ": image staging expects a CPU ",
                      c10::toString(options_.dtype), " tensor of shape [", count, ", 3, ",
                      options_.height, ", ", options_.width, "], got ", dst.device(), " ",
                      c10::toString(dst.scalar_type()), " ", dst.sizes());
    TORCH_CHECK_VALUE(
        begin >= 0 && begin + count <= rows() && (!order.defined() || order.numel() == count),
        column_.label, ": rows [", begin, ", ", begin + count, ") out of range for ", rows(),
        " rows");
    const int64_t* picked = order.defined() ? order.data_ptr<int64_t>() : nullptr;
    // Rows are taken one at a time from a shared counter, so a thread that
    // drew small images takes more of them.
    std::atomic<int64_t> next{0};
    std::mutex failed_mutex;
    int64_t failed_row = std::numeric_limits<int64_t>::max();
    std::exception_ptr failure;
    const int64_t tasks = std::min<int64_t>(count, at::get_num_threads());
    at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
      for (int64_t i = next++; i < count; i = next++) {
        const int64_t row = picked ? picked[i] : begin + i;
        try {
          stage_row(row, dst.select(0, i));
        } catch (...) {
          std::lock_guard<std::mutex> lock(failed_mutex);
          if (row < failed_row) {
            failed_row = row;
            failure = std::current_exception();
          }
        }
      }
    });
    if (failure) std::rethrow_exception(failure);
  }

  // Checks every row that can be checked without decoding it (the factory).
  void check_rows() const {
    int64_t nulls = 0;
    int64_t first_null = -1;
    for (int64_t row = 0; row < rows(); ++row) {
      const ImageRow& image = rows_[row];
      if (image.null) {
        if (nulls++ == 0) first_null = row;
        continue;
      }
      if (image.channels != 0) {
        check(row, image,
              [&] { check_image_size(image.width, image.height, options_.max_pixels); });
      } else {
        check(row, image, [&] {
          probe_image(image.data, static_cast<size_t>(image.size), options_.max_pixels);
        });
      }
    }
    TS_CHECK_NOT_NULL(options_.nulls != NullPolicy::kError || nulls == 0, column_.label, ": ",
                      nulls, nulls == 1 ? " null image" : " null images", " (first in row ",
                      first_null, "); pass nulls='fill' to stage null rows as zeros");
  }

 private:
  // Runs `body`; a ValueError from it is rethrown naming the column, the row
  // and what the bytes looked like.
  template <typename Body>
  void check(int64_t row, const ImageRow& image, Body&& body) const {
    try {
      body();
    } catch (const c10::ValueError& e) {
      const std::string shown =
          image.channels != 0 ? c10::str("a Spark image row of ", image.width, " x ", image.height,
                                         " x ", static_cast<int>(image.channels))
                              : describe_bytes(image.data, static_cast<size_t>(image.size));
      TORCH_CHECK_VALUE(false, column_.label, ": ",
                        image.channels != 0 ? "" : "cannot decode: ", e.msg(), where(row, image),
                        "; got ", shown);
    }
  }

  void stage_row(int64_t row, const at::Tensor& dst) const {
    const ImageRow& image = rows_[row];
    if (image.null) {
      dst.zero_();
      return;
    }
    if (image.channels != 0) {
      // Spark's rows: BGR / BGRA / gray, read in place.
      const int64_t c = image.channels;
      const ImageView view =
          packed_view(image.data, image.width, image.height, c,
                      c == 1 ? std::array<int64_t, 3>{0, 0, 0} : std::array<int64_t, 3>{2, 1, 0});
      check(row, image, [&] { resize_into(view, dst); });
      return;
    }
    check(row, image, [&] {
      const DecodedImage decoded =
          decode_image(image.data, static_cast<size_t>(image.size), options_.max_pixels);
      resize_into(decoded.view(), dst);
    });
  }

  void resize_into(const ImageView& view, const at::Tensor& dst) const {
    const ResizePlan plan = plan_resize(view.width, view.height, options_.mode,
                                        options_.shorter_side, options_.height, options_.width);
    resize_normalize_into(view, plan, table_, dst);
  }

  Column column_;
  std::vector<ImageRow> rows_;
  ImageOptions options_;
  PixelTable table_;
};

InputSourcePtr make_image_input(const ImportedTable& table, const InputSpec& spec) {
  const ImageOptions options = read_options(spec);
  Column column = table.column(single_column(spec));
  std::vector<ImageRow> rows = read_rows(column);
  auto source = std::make_shared<ImageSource>(std::move(column), std::move(rows), options);
  source->check_rows();
  return source;
}

const bool registered = (register_input_kind("image",
                                             {"size", "resize", "mean", "std", "dtype",
                                              "channels_last", "max_pixels", "nulls"},
                                             make_image_input),
                         true);

}  // namespace
}  // namespace torchspark
