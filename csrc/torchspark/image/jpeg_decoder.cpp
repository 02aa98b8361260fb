#include "torchspark/image/jpeg_decoder.h"

#include <c10/util/Exception.h>
#include <turbojpeg.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "torchspark/image/decode.h"
#include "torchspark/image/exif.h"

namespace torchspark {

namespace {

// One decompressor per thread: a tjhandle is not thread-safe, and creating
// one per image would cost an allocation of its error manager and tables.
class Decompressor {
 public:
  Decompressor() : handle_(tjInitDecompress()) {}
  ~Decompressor() {
    if (handle_ != nullptr) tjDestroy(handle_);
  }
  Decompressor(const Decompressor&) = delete;
  Decompressor& operator=(const Decompressor&) = delete;

  tjhandle get() {
    if (handle_ == nullptr) handle_ = tjInitDecompress();
    TORCH_CHECK(handle_ != nullptr,
                "TurboJPEG: could not create a decompressor: ", tjGetErrorStr2(nullptr));
    return handle_;
  }

  // Throws ValueError with the handle's error, after replacing the handle:
  // TurboJPEG 2.1 leaves a handle whose header read failed mid-stream in that
  // state, and the next tjDecompressHeader3 would go on parsing the new
  // bytes as the rest of the old header.
  [[noreturn]] void fail() {
    const std::string message = tjGetErrorStr2(handle_);
    tjDestroy(handle_);
    handle_ = nullptr;
    TORCH_CHECK_VALUE(false, "JPEG: ", message);
    std::abort();  // unreachable
  }

 private:
  tjhandle handle_;
};

Decompressor& thread_decompressor() {
  thread_local Decompressor decompressor;
  return decompressor;
}

struct Header {
  int width = 0;
  int height = 0;
  int colorspace = 0;
};

Header read_header(Decompressor& decompressor, const uint8_t* data, size_t size) {
  Header header;
  int subsampling = 0;
  const int rc =
      tjDecompressHeader3(decompressor.get(), data, static_cast<unsigned long>(size), &header.width,
                          &header.height, &subsampling, &header.colorspace);
  if (rc != 0) decompressor.fail();
  return header;
}

// Pillow's MULDIV255: a * b / 255, rounded.
inline int muldiv255(int a, int b) {
  const int t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}

inline uint8_t clip8(int v) {
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

}  // namespace

void cmyk_to_rgb(const uint8_t* stored_cmyk, uint8_t* rgb, int64_t pixels) {
  for (int64_t i = 0; i < pixels; ++i, stored_cmyk += 4, rgb += 3) {
    // Pillow reads every 4-component JPEG as inverted ("CMYK;I", Adobe's
    // convention), then converts CMYK to RGB with no color management.
    const int nk = stored_cmyk[3];  // 255 - k
    for (int c = 0; c < 3; ++c) {
      rgb[c] = clip8(nk - muldiv255(255 - stored_cmyk[c], nk));
    }
  }
}

ImageInfo probe_jpeg(const uint8_t* data, size_t size) {
  const Header header = read_header(thread_decompressor(), data, size);
  return {ImageFormat::kJpeg, header.width, header.height};
}

DecodedImage decode_jpeg(const uint8_t* data, size_t size, int64_t max_pixels) {
  Decompressor& decompressor = thread_decompressor();
  const Header header = read_header(decompressor, data, size);
  check_image_size(header.width, header.height, max_pixels);
  const bool gray = header.colorspace == TJCS_GRAY;
  const bool cmyk = header.colorspace == TJCS_CMYK || header.colorspace == TJCS_YCCK;
  const int format = gray ? TJPF_GRAY : cmyk ? TJPF_CMYK : TJPF_RGB;
  const int64_t pixel_bytes = tjPixelSize[format];
  const int64_t pixels = int64_t{header.width} * header.height;
  std::vector<uint8_t> decoded(static_cast<size_t>(pixels * pixel_bytes));
  // Default DCT (islow) and fancy upsampling: what Pillow's decoder uses.
  const int rc = tjDecompress2(
      decompressor.get(), data, static_cast<unsigned long>(size), decoded.data(), header.width,
      /*pitch=*/0, header.height, format, TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS);
  if (rc != 0) decompressor.fail();
  ImageView view;
  if (cmyk) {
    std::vector<uint8_t> rgb(static_cast<size_t>(pixels * 3));
    cmyk_to_rgb(decoded.data(), rgb.data(), pixels);
    decoded = std::move(rgb);
    view = packed_view(decoded.data(), header.width, header.height, 3, {0, 1, 2});
  } else if (gray) {
    view = packed_view(decoded.data(), header.width, header.height, 1, {0, 0, 0});
  } else {
    view = packed_view(decoded.data(), header.width, header.height, 3, {0, 1, 2});
  }
  view = oriented(view, jpeg_exif_orientation(data, size));
  return DecodedImage(std::move(decoded), view);
}

}  // namespace torchspark
