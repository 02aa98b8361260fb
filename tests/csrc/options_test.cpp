// csrc/torchspark/engine/options.h: validate_options accepts the defaults and
// every value at the edge of its range, and rejects each field out of range
// with a ValueError naming that field and the value.
#include "torchspark/engine/options.h"

#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "arrow_builders.h"

namespace torchspark {
namespace {

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

TEST(ValidateOptions, DefaultsAndEdgesAreValid) {
  EXPECT_NO_THROW(validate_options(EngineOptions{}));
  EngineOptions edges;
  edges.batch_size = 1;
  edges.max_tokens = 0;
  edges.max_delay_ms = 0;
  edges.threads = 1;
  edges.inflight = 1;
  edges.sort_window = 0;
  edges.inline_below_ms = 0;
  edges.per_token_indices = {0};
  EXPECT_NO_THROW(validate_options(edges));
  edges.inline_below_ms = kInf;  // always inline
  EXPECT_NO_THROW(validate_options(edges));
  edges.max_tokens = kAutoTokens;
  edges.sort_window = kWholeSubmission;
  EXPECT_NO_THROW(validate_options(edges));
}

struct Case {
  const char* field;
  std::function<void(EngineOptions&)> set;
  const char* value;  // as the message prints it
};

TEST(ValidateOptions, EachFieldOutOfRangeNamesTheField) {
  const std::vector<Case> cases = {
      {"batch_size", [](EngineOptions& o) { o.batch_size = 0; }, "0"},
      {"batch_size", [](EngineOptions& o) { o.batch_size = -5; }, "-5"},
      {"max_tokens", [](EngineOptions& o) { o.max_tokens = -2; }, "-2"},
      {"max_delay_ms", [](EngineOptions& o) { o.max_delay_ms = -0.5; }, "-0.5"},
      {"max_delay_ms", [](EngineOptions& o) { o.max_delay_ms = kNan; }, "nan"},
      {"max_delay_ms", [](EngineOptions& o) { o.max_delay_ms = kInf; }, "inf"},
      {"threads", [](EngineOptions& o) { o.threads = 0; }, "0"},
      {"inflight", [](EngineOptions& o) { o.inflight = 0; }, "0"},
      {"sort_window", [](EngineOptions& o) { o.sort_window = -2; }, "-2"},
      {"inline_below_ms", [](EngineOptions& o) { o.inline_below_ms = -1; }, "-1"},
      {"inline_below_ms", [](EngineOptions& o) { o.inline_below_ms = kNan; }, "nan"},
      {"per_token", [](EngineOptions& o) { o.per_token_indices = {0, -2}; }, "-2"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.field) + " = " + c.value);
    EngineOptions options;
    c.set(options);
    EXPECT_THROW_WITH(validate_options(options), c10::ValueError, c.field, "must be",
                      std::string("got ") + c.value);
  }
}

}  // namespace
}  // namespace torchspark
