#include "torchspark/engine/options.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace torchspark {

void validate_options(const EngineOptions& o) {
  TORCH_CHECK_VALUE(o.batch_size >= 1, "batch_size must be >= 1, got ", o.batch_size);
  TORCH_CHECK_VALUE(o.max_tokens >= 0 || o.max_tokens == kAutoTokens,
                    "max_tokens must be >= 0 (0: no token budget) or -1 (tuned), got ",
                    o.max_tokens);
  TORCH_CHECK_VALUE(std::isfinite(o.max_delay_ms) && o.max_delay_ms >= 0,
                    "max_delay_ms must be a finite number >= 0, got ", o.max_delay_ms);
  TORCH_CHECK_VALUE(o.threads >= 1, "threads must be >= 1, got ", o.threads);
  TORCH_CHECK_VALUE(o.inflight >= 1, "inflight must be >= 1, got ", o.inflight);
  TORCH_CHECK_VALUE(o.sort_window >= 0 || o.sort_window == kWholeSubmission,
                    "sort_window must be >= 0 (0: no sorting) or -1 (whole submissions), got ",
                    o.sort_window);
  TORCH_CHECK_VALUE(!std::isnan(o.inline_below_ms) && o.inline_below_ms >= 0,
                    "inline_below_ms must be >= 0 (0: never inline), got ", o.inline_below_ms);
  for (const int64_t j : o.per_token_indices) {
    TORCH_CHECK_VALUE(j >= 0, "per_token: output indices must be >= 0, got ", j);
  }
}

}  // namespace torchspark
