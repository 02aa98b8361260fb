#include "torchspark/image/png_decoder.h"

#include <c10/util/Exception.h>
#include <png.h>

#include <cstring>
#include <vector>

#include "torchspark/image/decode.h"

namespace torchspark {

namespace {

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// The read state libpng's callbacks see: the input, and the first error.
struct PngState {
  const uint8_t* data = nullptr;
  size_t size = 0;
  size_t pos = 0;
  char message[256] = {};
};

void on_error(png_structp png, png_const_charp message) {
  auto* state = static_cast<PngState*>(png_get_error_ptr(png));
  std::strncpy(state->message, message ? message : "unknown error", sizeof(state->message) - 1);
  png_longjmp(png, 1);
}

// Warnings (an incorrect sRGB profile, an unknown chunk, ...) concern
// metadata, never pixels: ignored, as Pillow does. Pixel damage is an error.
void on_warning(png_structp, png_const_charp) {}

void on_read(png_structp png, png_bytep out, size_t length) {
  auto* state = static_cast<PngState*>(png_get_io_ptr(png));
  if (length > state->size - state->pos) {
    png_error(png, "the data ends before the image does (truncated)");
  }
  std::memcpy(out, state->data + state->pos, length);
  state->pos += length;
}

struct PngLayout {
  uint32_t width = 0;
  uint32_t height = 0;
  int channels = 0;
  size_t row_bytes = 0;
};

// The two setjmp points: plain C frames only (no destructors to skip when
// libpng longjmps back), locals not modified after setjmp. Each returns
// false with state->message set on an error.
bool read_layout(png_structp png, png_infop info, PngLayout* layout) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_info(png, info);
  const int color = png_get_color_type(png, info);
  const int depth = png_get_bit_depth(png, info);
  if (depth == 16) png_set_strip_16(png);  // the high byte, as Pillow keeps for 16-bit RGB
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  layout->width = png_get_image_width(png, info);
  layout->height = png_get_image_height(png, info);
  layout->channels = png_get_channels(png, info);
  layout->row_bytes = png_get_rowbytes(png, info);
  return true;
}

bool read_rows(png_structp png, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  return true;
}

// Frees libpng's structures however the decode ends.
class PngReader {
 public:
  explicit PngReader(PngState* state)
      : png_(png_create_read_struct(PNG_LIBPNG_VER_STRING, state, on_error, on_warning)) {
    TORCH_CHECK(png_ != nullptr, "PNG: could not create a libpng reader");
    info_ = png_create_info_struct(png_);
    TORCH_CHECK(info_ != nullptr, "PNG: could not create a libpng info struct");
    png_set_read_fn(png_, state, on_read);
    // Our own limit applies (max_pixels, checked between header and pixels);
    // libpng's default 1e6 x 1e6 would refuse nothing ours allows anyway.
  }
  ~PngReader() { png_destroy_read_struct(&png_, info_ ? &info_ : nullptr, nullptr); }
  PngReader(const PngReader&) = delete;
  PngReader& operator=(const PngReader&) = delete;

  png_structp png() const { return png_; }
  png_infop info() const { return info_; }

 private:
  png_structp png_;
  png_infop info_ = nullptr;
};

}  // namespace

ImageInfo probe_png(const uint8_t* data, size_t size) {
  // Signature (8), IHDR's length (4) and type (4), then width and height.
  TORCH_CHECK_VALUE(size >= 24 && std::memcmp(data + 12, "IHDR", 4) == 0,
                    "PNG: no IHDR chunk after the signature (", size < 24 ? "truncated" : "corrupt",
                    " header)");
  return {ImageFormat::kPng, read_be32(data + 16), read_be32(data + 20)};
}

DecodedImage decode_png(const uint8_t* data, size_t size, int64_t max_pixels) {
  const ImageInfo info = probe_png(data, size);
  check_image_size(info.width, info.height, max_pixels);
  PngState state;
  state.data = data;
  state.size = size;
  PngReader reader(&state);
  PngLayout layout;
  TORCH_CHECK_VALUE(read_layout(reader.png(), reader.info(), &layout), "PNG: ", state.message);
  TORCH_CHECK_VALUE(layout.width == info.width && layout.height == info.height &&
                        (layout.channels == 1 || layout.channels == 3) &&
                        layout.row_bytes == size_t{layout.width} * layout.channels,
                    "PNG: unexpected layout after conversion to 8-bit RGB: ", layout.width, " x ",
                    layout.height, " with ", layout.channels, " channels and ", layout.row_bytes,
                    " bytes a row");
  std::vector<uint8_t> pixels(layout.row_bytes * layout.height);
  std::vector<png_bytep> rows(layout.height);
  for (uint32_t y = 0; y < layout.height; ++y) rows[y] = pixels.data() + y * layout.row_bytes;
  TORCH_CHECK_VALUE(read_rows(reader.png(), rows.data()), "PNG: ", state.message);
  const ImageView view =
      layout.channels == 1 ? packed_view(pixels.data(), layout.width, layout.height, 1, {0, 0, 0})
                           : packed_view(pixels.data(), layout.width, layout.height, 3, {0, 1, 2});
  return DecodedImage(std::move(pixels), view);
}

}  // namespace torchspark
