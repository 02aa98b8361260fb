// A file per fuzzer process holding the current input, for entry points that
// take a path (model files), as the product hands them one (tests only).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace torchspark_fuzz {

// $TMPDIR (or /tmp)/torchspark-<what>-<pid>.bin, holding `size` bytes of `data`.
inline const std::string& write_scratch_file(const char* what, const uint8_t* data, size_t size) {
  static const std::string path = [what] {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir && *dir ? dir : "/tmp") + "/torchspark-" + what + "-" +
           std::to_string(getpid()) + ".bin";
  }();
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, file) != size) std::abort();
  std::fclose(file);
  return path;
}

}  // namespace torchspark_fuzz
