// Unit tests of the pure parts of image/: magic-byte sniffing and byte
// descriptions, EXIF orientation parsing (both byte orders, malformed
// segments), orientation views, Pillow's resample weights, the resize
// geometry, the pixel limit, and a TurboJPEG round trip (encode here, decode
// through decode_image; truncation is an error and the thread's decompressor
// recovers from it).
#include <gtest/gtest.h>
#include <turbojpeg.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "torchspark/image/decode.h"
#include "torchspark/image/exif.h"
#include "torchspark/image/image_format.h"
#include "torchspark/image/image_view.h"
#include "torchspark/image/resize.h"

namespace torchspark {
namespace {

std::vector<uint8_t> bytes(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

TEST(ImageFormat, SniffsMagicBytes) {
  auto sniff = [](const std::string& s) {
    return sniff_format(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  EXPECT_EQ(sniff(std::string("\xff\xd8\xff\xe0", 4)), ImageFormat::kJpeg);
  EXPECT_EQ(sniff(std::string("\x89PNG\r\n\x1a\n\0\0", 10)), ImageFormat::kPng);
  EXPECT_EQ(sniff(std::string("RIFF\x10\0\0\0WEBPVP8 ", 16)), ImageFormat::kWebp);
  EXPECT_EQ(sniff(std::string("RIFF\x10\0\0\0WAVEfmt ", 16)), ImageFormat::kUnknown);
  EXPECT_EQ(sniff("GIF89a..."), ImageFormat::kGif);
  EXPECT_EQ(sniff("BM0123456789abcdef"), ImageFormat::kBmp);
  EXPECT_EQ(sniff(std::string("II*\0", 4)), ImageFormat::kTiff);
  EXPECT_EQ(sniff(std::string("\0\0\0\x1c"
                              "ftypavif",
                              12)),
            ImageFormat::kAvif);
  EXPECT_EQ(sniff(std::string("\0\0\0\x18"
                              "ftypheic",
                              12)),
            ImageFormat::kHeic);
  EXPECT_EQ(sniff("\xff\xd8"), ImageFormat::kUnknown);  // too short for JPEG's 3 bytes
  EXPECT_EQ(sniff(""), ImageFormat::kUnknown);
  EXPECT_TRUE(is_decodable(ImageFormat::kWebp));
  EXPECT_FALSE(is_decodable(ImageFormat::kGif));
}

TEST(ImageFormat, DescribesBytes) {
  const auto html = bytes("<html><body>");
  EXPECT_EQ(describe_bytes(html.data(), html.size()),
            "12 bytes starting 3c 68 74 6d 6c 3e 3c 62 ('<html><b')");
  const uint8_t one[] = {0xff};
  EXPECT_EQ(describe_bytes(one, 1), "1 byte starting ff ('.')");
  EXPECT_EQ(describe_bytes(nullptr, 0), "0 bytes (empty)");
}

// An APP1 Exif segment with IFD0 holding `entries` (tag, type, value) in
// the given byte order, inside SOI ... SOS.
std::vector<uint8_t> exif_jpeg(bool little, std::vector<std::array<uint32_t, 3>> entries,
                               bool truncate_ifd = false) {
  std::vector<uint8_t> tiff;
  auto put16 = [&](uint32_t v) {
    if (little) {
      tiff.push_back(v & 0xff), tiff.push_back(v >> 8);
    } else {
      tiff.push_back(v >> 8), tiff.push_back(v & 0xff);
    }
  };
  auto put32 = [&](uint32_t v) {
    if (little) {
      for (int i = 0; i < 4; ++i) tiff.push_back((v >> (8 * i)) & 0xff);
    } else {
      for (int i = 3; i >= 0; --i) tiff.push_back((v >> (8 * i)) & 0xff);
    }
  };
  tiff.push_back(little ? 'I' : 'M');
  tiff.push_back(little ? 'I' : 'M');
  put16(42);
  put32(8);
  put16(static_cast<uint32_t>(entries.size()));
  for (const auto& [tag, type, value] : entries) {
    put16(tag);
    put16(type);
    put32(1);
    if (type == 3) {
      put16(value);
      put16(0);
    } else {
      put32(value);
    }
  }
  put32(0);
  if (truncate_ifd) tiff.resize(tiff.size() - 10);
  std::vector<uint8_t> out = {0xff, 0xd8, 0xff, 0xe0, 0x00, 0x04, 'J', 'F'};  // SOI, a short APP0
  const size_t length = 2 + 6 + tiff.size();
  out.insert(out.end(), {0xff, 0xe1, static_cast<uint8_t>(length >> 8),
                         static_cast<uint8_t>(length & 0xff), 'E', 'x', 'i', 'f', 0, 0});
  out.insert(out.end(), tiff.begin(), tiff.end());
  out.insert(out.end(), {0xff, 0xda, 0x00, 0x02});  // SOS
  return out;
}

TEST(Exif, ReadsOrientationInBothByteOrders) {
  for (bool little : {true, false}) {
    for (uint32_t o = 1; o <= 8; ++o) {
      const auto jpeg = exif_jpeg(little, {{0x010f, 3, 7}, {0x0112, 3, o}});
      EXPECT_EQ(jpeg_exif_orientation(jpeg.data(), jpeg.size()), static_cast<int>(o));
    }
    const auto as_long = exif_jpeg(little, {{0x0112, 4, 6}});
    EXPECT_EQ(jpeg_exif_orientation(as_long.data(), as_long.size()), 6);
  }
}

TEST(Exif, MalformedOrMissingIsOne) {
  const auto out_of_range = exif_jpeg(true, {{0x0112, 3, 9}});
  EXPECT_EQ(jpeg_exif_orientation(out_of_range.data(), out_of_range.size()), 1);
  const auto no_tag = exif_jpeg(false, {{0x010f, 3, 6}});
  EXPECT_EQ(jpeg_exif_orientation(no_tag.data(), no_tag.size()), 1);
  const auto wrong_type = exif_jpeg(true, {{0x0112, 2, 6}});
  EXPECT_EQ(jpeg_exif_orientation(wrong_type.data(), wrong_type.size()), 1);
  auto truncated = exif_jpeg(true, {{0x0112, 3, 6}}, /*truncate_ifd=*/true);
  EXPECT_EQ(jpeg_exif_orientation(truncated.data(), truncated.size()), 1);
  // Every prefix of a valid segment parses without reading past its end
  // (ASan checks the reads) and gives 1 or the orientation.
  const auto full = exif_jpeg(false, {{0x0112, 3, 8}});
  for (size_t n = 0; n <= full.size(); ++n) {
    std::vector<uint8_t> prefix(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    const int o = jpeg_exif_orientation(prefix.data(), prefix.size());
    EXPECT_TRUE(o == 1 || o == 8) << n;
  }
  const uint8_t not_tiff[] = {'X', 'X', 0, 42, 0, 0, 0, 8};
  EXPECT_EQ(tiff_orientation(not_tiff, sizeof(not_tiff)), 1);
  // A segment length running past the data.
  std::vector<uint8_t> long_segment = {0xff, 0xd8, 0xff, 0xe1, 0xff, 0xff, 'E', 'x'};
  EXPECT_EQ(jpeg_exif_orientation(long_segment.data(), long_segment.size()), 1);
}

TEST(ImageView, OrientationsMoveEachPixelWhereExifSays) {
  // A 3 x 2 gray image whose pixel (x, y) holds 10 * y + x.
  const uint8_t data[] = {0, 1, 2, 10, 11, 12};
  const ImageView stored = packed_view(data, 3, 2, 1, {0, 0, 0});
  auto at = [](const ImageView& v, int64_t x, int64_t y) { return int{*v.pixel(x, y)}; };
  // Displayed pixel (x, y) reads stored (sx, sy) per EXIF's definitions.
  struct Case {
    int orientation;
    int64_t w, h;
    int (*expected)(int64_t x, int64_t y);
  };
  const Case cases[] = {
      {1, 3, 2, [](int64_t x, int64_t y) { return int(10 * y + x); }},
      {2, 3, 2, [](int64_t x, int64_t y) { return int(10 * y + (2 - x)); }},
      {3, 3, 2, [](int64_t x, int64_t y) { return int(10 * (1 - y) + (2 - x)); }},
      {4, 3, 2, [](int64_t x, int64_t y) { return int(10 * (1 - y) + x); }},
      {5, 2, 3, [](int64_t x, int64_t y) { return int(10 * x + y); }},
      {6, 2, 3, [](int64_t x, int64_t y) { return int(10 * (1 - x) + y); }},
      {7, 2, 3, [](int64_t x, int64_t y) { return int(10 * (1 - x) + (2 - y)); }},
      {8, 2, 3, [](int64_t x, int64_t y) { return int(10 * x + (2 - y)); }},
  };
  for (const Case& c : cases) {
    const ImageView v = oriented(stored, c.orientation);
    ASSERT_EQ(v.width, c.w) << c.orientation;
    ASSERT_EQ(v.height, c.h) << c.orientation;
    for (int64_t y = 0; y < c.h; ++y) {
      for (int64_t x = 0; x < c.w; ++x) {
        EXPECT_EQ(at(v, x, y), c.expected(x, y)) << c.orientation << " " << x << "," << y;
      }
    }
  }
}

TEST(Resize, WeightsOfAHalvingAreTheTriangleNormalized) {
  // 4 -> 2: scale 2, support 2; output 0 centred at 1.0 reads inputs 0..2 with
  // triangle((x - 1 + 0.5) / 2) = 0.75, 0.75, 0.25, normalized by 1.75.
  const ResampleAxis axis = resample_axis(4, 2, 0, 2);
  ASSERT_EQ(axis.taps, 5);
  EXPECT_EQ(axis.first[0], 0);
  EXPECT_EQ(axis.count[0], 3);
  const double one = 1 << kWeightBits;
  EXPECT_EQ(axis.weights[0], static_cast<int32_t>(0.5 + 3.0 / 7 * one));
  EXPECT_EQ(axis.weights[1], static_cast<int32_t>(0.5 + 3.0 / 7 * one));
  EXPECT_EQ(axis.weights[2], static_cast<int32_t>(0.5 + 1.0 / 7 * one));
  // Output 1, centred at 3.0: inputs 1..3 (4 is past the end).
  EXPECT_EQ(axis.first[1], 1);
  EXPECT_EQ(axis.count[1], 3);
}

TEST(Resize, WeightsSumToOneAndStayInRange) {
  for (auto [in, out] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 7}, {7, 1}, {100, 33}, {33, 100}, {640, 224}, {5, 5}}) {
    const ResampleAxis axis = resample_axis(in, out, 0, out);
    for (int64_t i = 0; i < out; ++i) {
      EXPECT_GE(axis.first[i], 0);
      EXPECT_LE(axis.first[i] + axis.count[i], in);
      EXPECT_LE(axis.count[i], axis.taps);
      int64_t sum = 0;
      for (int64_t t = 0; t < axis.count[i]; ++t) sum += axis.weights[i * axis.taps + t];
      EXPECT_NEAR(static_cast<double>(sum), 1 << kWeightBits, static_cast<double>(axis.taps))
          << in << " -> " << out << " at " << i;
    }
  }
  // The same size: each output reads its own input at weight one.
  const ResampleAxis same = resample_axis(5, 5, 0, 5);
  for (int64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(same.first[i], i);
    EXPECT_EQ(same.weights[i * same.taps], 1 << kWeightBits);
  }
  // A kept window is the same weights as the whole axis, cut.
  const ResampleAxis whole = resample_axis(300, 120, 0, 120);
  const ResampleAxis window = resample_axis(300, 120, 10, 100);
  for (int64_t i = 0; i < 100; ++i) {
    EXPECT_EQ(window.first[i], whole.first[i + 10]);
    EXPECT_EQ(window.count[i], whole.count[i + 10]);
  }
  EXPECT_THROW(resample_axis(10, 5, 3, 3), c10::ValueError);
}

TEST(Resize, GeometryIsTorchvisionsResizeThenCenterCrop) {
  // 640 x 480 landscape, shorter side 256: 341 x 256 (int(256 * 640 / 480)),
  // crop 224: left round(117 / 2) = round(58.5) = 58, top round(16) = 16.
  ResizePlan p = plan_resize(640, 480, ResizeMode::kShorterSide, 256, 224, 224);
  EXPECT_EQ(p.resized_width, 341);
  EXPECT_EQ(p.resized_height, 256);
  EXPECT_EQ(p.crop_left, 58);
  EXPECT_EQ(p.crop_top, 16);
  // Halves round to even: 5 left over -> 2, 7 -> 4 (Python's round).
  EXPECT_EQ(plan_resize(45, 40, ResizeMode::kShorterSide, 40, 40, 40).crop_left, 2);
  EXPECT_EQ(plan_resize(47, 40, ResizeMode::kShorterSide, 40, 40, 40).crop_left, 4);
  // Portrait, non-square crop.
  p = plan_resize(45, 97, ResizeMode::kShorterSide, 40, 24, 40);
  EXPECT_EQ(p.resized_width, 40);
  EXPECT_EQ(p.resized_height, 86);  // int(40 * 97 / 45) = int(86.2)
  EXPECT_EQ(p.crop_left, 0);
  EXPECT_EQ(p.crop_top, 31);
  p = plan_resize(45, 97, ResizeMode::kStretch, 0, 24, 40);
  EXPECT_EQ(p.resized_width, 40);
  EXPECT_EQ(p.resized_height, 24);
  EXPECT_EQ(p.crop_left + p.crop_top, 0);
  EXPECT_THROW(plan_resize(10, 10, ResizeMode::kShorterSide, 20, 24, 24), c10::ValueError);
}

TEST(Resize, WritesNormalizedValuesAtAnyStrides) {
  // A 2 x 1 RGB image resized to itself: the pixels, normalized.
  const uint8_t data[] = {255, 0, 51, 0, 255, 102};
  const ImageView view = packed_view(data, 2, 1, 3, {0, 1, 2});
  const ResizePlan plan = plan_resize(2, 1, ResizeMode::kStretch, 0, 1, 2);
  const PixelTable table = pixel_table({0.5, 0.0, 0.0}, {0.5, 1.0, 2.0});
  for (bool channels_last : {false, true}) {
    at::Tensor batch = at::zeros({1, 3, 1, 2})
                           .contiguous(channels_last ? at::MemoryFormat::ChannelsLast
                                                     : at::MemoryFormat::Contiguous);
    resize_normalize_into(view, plan, table, batch[0]);
    const at::Tensor expected =
        at::tensor({1.0, -1.0, 0.0, 1.0, 0.1, 0.2}, at::kFloat).view({3, 1, 2});
    EXPECT_TRUE(at::allclose(batch[0], expected)) << batch;
  }
}

TEST(Decode, PixelLimitAndZeroSize) {
  EXPECT_NO_THROW(check_image_size(100, 100, 10000));
  EXPECT_THROW(check_image_size(100, 101, 10000), c10::ValueError);
  EXPECT_THROW(check_image_size(0, 5, 10000), c10::ValueError);
  EXPECT_THROW(check_image_size(5, 0, 10000), c10::ValueError);
  // No overflow for the largest header sizes.
  EXPECT_THROW(check_image_size(0xffffffffLL, 0xffffffffLL, kDefaultMaxPixels), c10::ValueError);
  // A PNG header claiming 100000 x 100000: refused from the header alone.
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0,    13,
                              'I',  'H', 'D', 'R', 0,    1,    0x86, 0xa0, 0, 1, 0x86, 0xa0};
  try {
    probe_image(png.data(), png.size(), kDefaultMaxPixels);
    FAIL() << "expected a ValueError";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("100000 x 100000 = 10000000000 pixels"), std::string::npos)
        << e.what();
  }
  const auto gif = bytes("GIF89a\x01\0\x01\0");
  EXPECT_THROW(probe_image(gif.data(), gif.size(), kDefaultMaxPixels), c10::ValueError);
  EXPECT_THROW(probe_image(nullptr, 0, kDefaultMaxPixels), c10::ValueError);
}

std::vector<uint8_t> encode_jpeg(const std::vector<uint8_t>& rgb, int width, int height) {
  tjhandle handle = tjInitCompress();
  unsigned char* out = nullptr;
  unsigned long size = 0;
  const int rc =
      tjCompress2(handle, rgb.data(), width, 0, height, TJPF_RGB, &out, &size, TJSAMP_444, 100, 0);
  EXPECT_EQ(rc, 0) << tjGetErrorStr2(handle);
  std::vector<uint8_t> jpeg(out, out + size);
  tjFree(out);
  tjDestroy(handle);
  return jpeg;
}

TEST(Decode, JpegRoundTripTruncationAndRecovery) {
  const int w = 24;
  const int h = 16;
  std::vector<uint8_t> rgb(static_cast<size_t>(w * h * 3));
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      uint8_t* p = rgb.data() + (y * w + x) * 3;
      p[0] = static_cast<uint8_t>(x * 10);
      p[1] = static_cast<uint8_t>(y * 15);
      p[2] = 128;
    }
  }
  const std::vector<uint8_t> jpeg = encode_jpeg(rgb, w, h);
  const ImageInfo info = probe_image(jpeg.data(), jpeg.size(), kDefaultMaxPixels);
  EXPECT_EQ(info.format, ImageFormat::kJpeg);
  EXPECT_EQ(info.width, w);
  EXPECT_EQ(info.height, h);
  {
    const DecodedImage decoded = decode_image(jpeg.data(), jpeg.size(), kDefaultMaxPixels);
    ASSERT_EQ(decoded.view().width, w);
    ASSERT_EQ(decoded.view().height, h);
    int worst = 0;
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x < w; ++x) {
        for (int c = 0; c < 3; ++c) {
          const int got = decoded.view().pixel(x, y)[decoded.view().channel[c]];
          worst = std::max(worst, std::abs(got - rgb[(y * w + x) * 3 + c]));
        }
      }
    }
    EXPECT_LE(worst, 3);  // quality 100, 4:4:4: near lossless
  }
  // Truncated in the scan: a decoder warning, reported as an error.
  const std::vector<uint8_t> cut(jpeg.begin(),
                                 jpeg.begin() + static_cast<std::ptrdiff_t>(jpeg.size() - 40));
  try {
    decode_image(cut.data(), cut.size(), kDefaultMaxPixels);
    FAIL() << "expected a ValueError";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("JPEG: Premature end of JPEG file"), std::string::npos)
        << e.what();
  }
  // A header that fails mid-marker, then a good image on the same thread.
  const auto junk = bytes("\xff\xd8\xffjunk");
  EXPECT_THROW(probe_image(junk.data(), junk.size(), kDefaultMaxPixels), c10::ValueError);
  EXPECT_EQ(probe_image(jpeg.data(), jpeg.size(), kDefaultMaxPixels).width, w);
  EXPECT_THROW(decode_image(jpeg.data(), jpeg.size(), w * h - 1), c10::ValueError);
}

}  // namespace
}  // namespace torchspark
