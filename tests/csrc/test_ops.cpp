// The test op library (libtorchspark_test_ops.so): test doubles that models
// exported by the tests call, so that the product carries none of them
// (STYLE.md 12). It links torch only, never torchspark; the tests load it with
// torch.ops.load_library (tests/test_ops.py) and the C++ build makes it with
// TORCHSPARK_BUILD_TESTS=ON (.ci/ctest). Every op is thread-safe.
//
//   torchspark_test::simulated_kernel(Tensor x, float ms) -> Tensor
//       A simulated accelerator kernel, for proving copy/compute overlap on a
//       CPU-only machine (DESIGN.md, "GPU honesty"): sleeps `ms` milliseconds,
//       leaving the CPU free as a GPU kernel launch would, and returns the
//       first value of each row ([rows, 1]).
//   torchspark_test::simulated_device(Tensor x, float fixed_ms, float row_us,
//                                     str lock) -> Tensor
//       A simulated single device per host that serialises calls across
//       processes, as one GPU does: holds an exclusive flock on the file
//       `lock` while it sleeps `fixed_ms` (a kernel launch, a sync) plus
//       `row_us` microseconds per row (the work), then returns the first value
//       of each row ([rows, 1]). For the shared engine's cross-task batching
//       benchmark (benchmarks/shared_bench.py).
//   torchspark_test::oom_above(Tensor x, int rows) -> Tensor
//       Fault injection: throws c10::OutOfMemoryError, as an allocator does,
//       when x has more than `rows` rows; otherwise returns x itself (a no-op
//       for the model). Exercises the engine's out-of-memory split.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>

namespace torchspark_test {
namespace {

at::Tensor simulated_kernel(const at::Tensor& x, double ms) {
  TORCH_CHECK_VALUE(ms >= 0, "simulated_kernel: ms must be >= 0, got ", ms);
  TORCH_CHECK_VALUE(x.dim() >= 1, "simulated_kernel: expected a batch dimension, got a 0-d tensor");
  std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms));
  // Next to no CPU work of its own: the first value of each row.
  return x.reshape({x.size(0), -1}).narrow(1, 0, 1).clone();
}

at::Tensor simulated_device(const at::Tensor& x, double fixed_ms, double row_us,
                            const std::string& lock) {
  TORCH_CHECK_VALUE(fixed_ms >= 0 && row_us >= 0,
                    "simulated_device: fixed_ms and row_us must be >= 0, got ", fixed_ms, " and ",
                    row_us);
  TORCH_CHECK_VALUE(x.dim() >= 1, "simulated_device: expected a batch dimension, got a 0-d tensor");
  const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  TORCH_CHECK(fd >= 0, "simulated_device: cannot open lock file '", lock,
              "': ", std::strerror(errno));
  // The device is busy for everyone on the host while this call runs.
  int locked = -1;
  do {
    locked = ::flock(fd, LOCK_EX);
  } while (locked != 0 && errno == EINTR);
  const double ms = fixed_ms + row_us * static_cast<double>(x.size(0)) / 1000.0;
  std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms));
  ::close(fd);  // releases the lock
  TORCH_CHECK(locked == 0, "simulated_device: flock of '", lock, "' failed");
  return x.reshape({x.size(0), -1}).narrow(1, 0, 1).clone();
}

at::Tensor oom_above(const at::Tensor& x, int64_t rows) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "oom_above: expected a batch dimension, got a 0-d tensor");
  // Worded as torch's CUDA allocator words it ("... out of memory ..."), which
  // is what the engine recognises once TorchScript has rethrown it.
  TORCH_CHECK_WITH(OutOfMemoryError, x.size(0) <= rows,
                   "oom_above: out of memory (injected): ", x.size(0), " rows, the limit is ",
                   rows);
  return x;
}

}  // namespace
}  // namespace torchspark_test

TORCH_LIBRARY(torchspark_test, m) {
  m.def("simulated_kernel(Tensor x, float ms) -> Tensor");
  m.def("simulated_device(Tensor x, float fixed_ms, float row_us, str lock) -> Tensor");
  // Returns x itself: the alias annotation says so (TorchScript's alias analysis
  // must not assume a fresh tensor).
  m.def("oom_above(Tensor(a) x, int rows) -> Tensor(a)");
  m.impl("simulated_kernel", torch::dispatch(c10::DispatchKey::CompositeExplicitAutograd,
                                             TORCH_FN(torchspark_test::simulated_kernel)));
  m.impl("simulated_device", torch::dispatch(c10::DispatchKey::CompositeExplicitAutograd,
                                             TORCH_FN(torchspark_test::simulated_device)));
  m.impl("oom_above", torch::dispatch(c10::DispatchKey::CompositeExplicitAutograd,
                                      TORCH_FN(torchspark_test::oom_above)));
}
