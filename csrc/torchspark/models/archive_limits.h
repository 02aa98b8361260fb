// Decompression bombs in model archives, refused before LibTorch opens them.
//
// TorchScript archives and AOTInductor packages are zip files. LibTorch's
// reader (caffe2's PyTorchStreamReader over miniz) allocates a record's
// declared uncompressed size before it inflates the record, and its
// constructor already reads one record (the version): a file of a few KB
// whose central directory declares a 3 GB record made torch.jit.load allocate
// 3 GB before failing (measured: RELIABILITY.md). check_archive_sizes reads
// the central directory itself (zip and zip64) and refuses, with a
// ValueError naming the file and the record:
//   - a record declaring more uncompressed bytes than deflate can produce
//     from its compressed bytes (1032:1, the format's ceiling), or a stored
//     record whose two sizes differ: a corrupt archive;
//   - an archive whose records inflate to more than kMaxArchiveInflation
//     bytes beyond the file's own size: a decompression bomb. PyTorch writes
//     tensors stored (uncompressed) and deflates only code and debug
//     records, so a real model inflates by kilobytes to a few megabytes.
// A file without an end-of-directory record is left to LibTorch, which
// refuses it without reading a record; one whose end record puts the
// directory outside the file (which miniz was seen to open anyway) has every
// directory entry in its last 64 MiB checked.
//
// LibTorch's unpickler, too, allocates a string's or bytes' declared length
// before it reads them: a 2 KB archive whose data.pkl declared a 1.7 GB
// string made torch::jit::load reserve 1.7 GB (model_load_fuzzer).
// check_pickle_lengths walks a pickle's opcodes and refuses a length that
// runs past the pickle's end. Thread-safe (no state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace torchspark {

// The most a model archive may inflate beyond its file size.
constexpr uint64_t kMaxArchiveInflation = uint64_t{256} << 20;

// Checks the zip archive at `path` as above; `label` names it in errors.
void check_archive_sizes(const std::string& path, const std::string& label);

// Checks the pickle `data` (`size` bytes) as above; `label` names it in errors.
// Stops at STOP, or at an opcode it does not know (the unpickler refuses that).
void check_pickle_lengths(const uint8_t* data, size_t size, const std::string& label);

}  // namespace torchspark
