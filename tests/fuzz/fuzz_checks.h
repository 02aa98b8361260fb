// What every fuzz harness checks beyond the sanitizers (tests only).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace torchspark_fuzz {

// A property the harness checks does not hold: a crash for libFuzzer.
[[noreturn]] inline void fail(const char* message) {
  std::fprintf(stderr, "fuzz check failed: %s\n", message);
  std::abort();
}

// Reads every byte of a result, so that a view past its Arrow buffer is a report.
inline void touch(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return;
  at::Tensor c = t.contiguous();
  const auto* p = static_cast<const volatile uint8_t*>(c.data_ptr());
  uint8_t sum = 0;
  for (size_t i = 0; i < c.nbytes(); ++i) sum ^= p[i];
  (void)sum;
}

}  // namespace torchspark_fuzz
