#include "torchspark/models/archive_limits.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <optional>
#include <vector>

namespace torchspark {
namespace {

// Deflate's ceiling: one 258-byte match per 2 bits at best, about 1032:1.
constexpr uint64_t kDeflateMaxRatio = 1032;
constexpr uint32_t kEndOfDirectory = 0x06054b50;
constexpr uint32_t kZip64Locator = 0x07064b50;
constexpr uint32_t kZip64EndOfDirectory = 0x06064b50;
constexpr uint32_t kDirectoryEntry = 0x02014b50;
constexpr size_t kEndOfDirectorySize = 22;
constexpr size_t kMaxComment = 0xffff;
// An inconsistent end record: how much of the file is scanned for directory entries.
constexpr uint64_t kMaxDirectoryScan = uint64_t{64} << 20;

uint64_t le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Bytes [offset, offset + n) of the file, or nullopt past its end.
std::optional<std::vector<uint8_t>> read_at(std::ifstream& in, uint64_t file_size, uint64_t offset,
                                            uint64_t n) {
  if (offset > file_size || n > file_size - offset) return std::nullopt;
  std::vector<uint8_t> out(static_cast<size_t>(n));
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(n));
  if (static_cast<uint64_t>(in.gcount()) != n) return std::nullopt;
  return out;
}

struct Directory {
  uint64_t offset = 0;
  uint64_t size = 0;
  uint64_t entries = 0;
};

// Where the central directory is (zip64 when the classic fields overflow).
std::optional<Directory> find_directory(std::ifstream& in, uint64_t file_size) {
  if (file_size < kEndOfDirectorySize) return std::nullopt;
  const uint64_t tail = std::min<uint64_t>(file_size, kEndOfDirectorySize + kMaxComment);
  const auto bytes = read_at(in, file_size, file_size - tail, tail);
  if (!bytes) return std::nullopt;
  for (size_t i = bytes->size() - kEndOfDirectorySize + 1; i-- > 0;) {
    const uint8_t* p = bytes->data() + i;
    if (le(p, 4) != kEndOfDirectory) continue;
    Directory d{le(p + 16, 4), le(p + 12, 4), le(p + 10, 2)};
    const uint64_t end_offset = file_size - tail + i;
    if (d.offset == 0xffffffff || d.size == 0xffffffff || d.entries == 0xffff) {
      if (end_offset < 20) return std::nullopt;
      const auto locator = read_at(in, file_size, end_offset - 20, 20);
      if (!locator || le(locator->data(), 4) != kZip64Locator) return std::nullopt;
      const auto end64 = read_at(in, file_size, le(locator->data() + 8, 8), 56);
      if (!end64 || le(end64->data(), 4) != kZip64EndOfDirectory) return std::nullopt;
      d = {le(end64->data() + 48, 8), le(end64->data() + 40, 8), le(end64->data() + 32, 8)};
    }
    return d;
  }
  return std::nullopt;
}

// Checks central directory entries one by one, summing what they declare.
class EntryChecker {
 public:
  EntryChecker(const std::string& label, uint64_t file_size)
      : label_(label), file_size_(file_size) {}

  // Checks the entry at `p` (its signature matched; `available` bytes from
  // `p` are readable); returns its length, 0 when it is cut short.
  size_t check(const uint8_t* p, size_t available) {
    if (available < 46) return 0;
    const uint64_t method = le(p + 10, 2);
    uint64_t compressed = le(p + 20, 4);
    uint64_t uncompressed = le(p + 24, 4);
    const size_t name_size = le(p + 28, 2), extra_size = le(p + 30, 2),
                 comment_size = le(p + 32, 2);
    const size_t length = 46 + name_size + extra_size + comment_size;
    if (available < length) return 0;
    const std::string name(reinterpret_cast<const char*>(p + 46), name_size);
    // Zip64: the sizes that overflowed 32 bits, in order, in the extra field 0x0001.
    const uint8_t* x = p + 46 + name_size;
    const uint8_t* const x_end = x + extra_size;
    while (x_end - x >= 4) {
      const uint64_t id = le(x, 2), size = le(x + 2, 2);
      if (static_cast<uint64_t>(x_end - x - 4) < size) break;
      if (id == 0x0001) {
        const uint8_t* v = x + 4;
        if (uncompressed == 0xffffffff && size >= 8) {
          uncompressed = le(v, 8);
          v += 8;
        }
        if (compressed == 0xffffffff && static_cast<uint64_t>(x + 4 + size - v) >= 8) {
          compressed = le(v, 8);
        }
      }
      x += 4 + size;
    }
    TORCH_CHECK_VALUE(compressed <= file_size_, label_, ": record '", name, "' declares ",
                      compressed, " compressed bytes in a file of ", file_size_,
                      " bytes: a corrupt archive, refused before loading");
    TORCH_CHECK_VALUE(method != 0 || compressed == uncompressed, label_, ": record '", name,
                      "' is stored uncompressed but declares ", uncompressed, " bytes for ",
                      compressed, " stored bytes: a corrupt archive, refused before loading");
    TORCH_CHECK_VALUE(uncompressed / kDeflateMaxRatio <= compressed, label_, ": record '", name,
                      "' declares ", uncompressed, " bytes uncompressed from ", compressed,
                      " compressed bytes, more than deflate's ", kDeflateMaxRatio,
                      ":1: a corrupt archive or a decompression bomb, refused before loading");
    inflated_ += uncompressed;
    TORCH_CHECK_VALUE(inflated_ <= file_size_ + kMaxArchiveInflation, label_,
                      ": the archive's records declare more than ", inflated_,
                      " bytes uncompressed in a file of ", file_size_, " bytes (at most ",
                      kMaxArchiveInflation >> 20,
                      " MiB more than the file is allowed): a decompression bomb, refused before "
                      "loading");
    return length;
  }

 private:
  const std::string& label_;
  uint64_t file_size_;
  uint64_t inflated_ = 0;
};

}  // namespace

void check_archive_sizes(const std::string& path, const std::string& label) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  TORCH_CHECK_VALUE(in.good(), label, ": cannot open the file");
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  const std::optional<Directory> directory = find_directory(in, file_size);
  if (!directory) return;  // no end record: LibTorch's reader refuses the file
  EntryChecker checker(label, file_size);
  if (directory->offset <= file_size && directory->size <= file_size - directory->offset) {
    const auto entries = read_at(in, file_size, directory->offset, directory->size);
    if (!entries) return;
    const uint8_t* p = entries->data();
    const uint8_t* const end = p + entries->size();
    for (uint64_t e = 0; e < directory->entries && end - p >= 4 && le(p, 4) == kDirectoryEntry;
         ++e) {
      const size_t length = checker.check(p, static_cast<size_t>(end - p));
      if (length == 0) break;
      p += length;
    }
    return;
  }
  // The end record puts the directory outside the file, yet LibTorch's miniz
  // was seen to open such a file and read a record (model_load_fuzzer): every
  // directory entry found in the file's last kMaxDirectoryScan bytes is checked.
  const uint64_t scanned = std::min(file_size, kMaxDirectoryScan);
  const auto tail = read_at(in, file_size, file_size - scanned, scanned);
  if (!tail) return;
  for (size_t k = 0; k + 4 <= tail->size(); ++k) {
    if (le(tail->data() + k, 4) == kDirectoryEntry)
      checker.check(tail->data() + k, tail->size() - k);
  }
}

void check_pickle_lengths(const uint8_t* data, size_t size, const std::string& label) {
  size_t i = 0;
  const auto skip_line = [&] {
    while (i < size && data[i] != '\n') ++i;
    if (i < size) ++i;
  };
  while (i < size) {
    const uint8_t op = data[i++];
    int width = 0;             // bytes of a length field
    bool has_payload = false;  // the length counts bytes that follow
    switch (op) {
      case '.':
        return;  // STOP
      // A length, then that many bytes: strings, bytes, longs.
      case 'X':
      case 'B':
      case 'T':
      case 0x8b:
        width = 4;
        has_payload = true;
        break;
      case 0x8c:
      case 'C':
      case 'U':
      case 0x8a:
        width = 1;
        has_payload = true;
        break;
      case 0x8d:
      case 0x8e:
      case 0x96:
        width = 8;
        has_payload = true;
        break;
      case 0x95:
        width = 8;
        break;  // FRAME: the length of what follows, no payload of its own
      // Fixed-size arguments.
      case 0x80:
      case 'K':
      case 'q':
      case 'h': i += 1; continue;
      case 'M': i += 2; continue;
      case 'J':
      case 'r':
      case 'j': i += 4; continue;
      case 'G': i += 8; continue;
      // Newline-terminated arguments (one line, or two for GLOBAL and INST).
      case 'c':
      case 'i':
        skip_line();
        skip_line();
        continue;
      case 'I':
      case 'L':
      case 'F':
      case 'S':
      case 'V':
      case 'P':
      case 'g':
      case 'p': skip_line(); continue;
      // No argument.
      case '(':
      case ')':
      case ']':
      case '}':
      case 'a':
      case 'e':
      case 's':
      case 'u':
      case 't':
      case '0':
      case '1':
      case '2':
      case 'N':
      case 'R':
      case 'b':
      case 'd':
      case 'l':
      case 'o':
      case 'Q':
      case 0x81:
      case 0x85:
      case 0x86:
      case 0x87:
      case 0x88:
      case 0x89:
      case 0x8f:
      case 0x90:
      case 0x91:
      case 0x92:
      case 0x93:
      case 0x94: continue;
      default: return;  // not an opcode of protocols 0-5: the unpickler refuses it
    }
    if (size - i < static_cast<size_t>(width)) return;
    const uint64_t length = le(data + i, width);
    i += width;
    TORCH_CHECK_VALUE(length <= size - i, label, ": declares ", length, " bytes at offset ",
                      i - width - 1, " of a ", size,
                      "-byte pickle: a corrupt archive, refused before loading");
    if (has_payload) i += length;
  }
}

}  // namespace torchspark
