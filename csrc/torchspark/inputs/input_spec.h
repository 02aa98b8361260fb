// How one model input is made from an Arrow batch: a kind, its columns and
// the kind's own options, and the registry of kinds.
//
// Each kind's file registers a factory under its name with the option names
// it takes (static registration, like the model backends). A factory reads
// its options through the typed helpers below (unknown names were refused
// before it runs) and converts the batch's columns into an InputSource on the caller's
// thread, checking types and nulls there, so that a bad column fails the
// submission rather than a batch.
#pragma once

#include <c10/core/Scalar.h>
#include <c10/core/ScalarType.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "torchspark/arrow/arrow_import.h"
#include "torchspark/inputs/input_source.h"

namespace torchspark {

// An option's value as the Python layer gives it.
using OptionValue = std::variant<std::monostate, bool, int64_t, double, std::string,
                                 c10::ScalarType, std::vector<double>, std::vector<std::string>>;

struct InputSpec {
  std::string kind;                            // a registered kind: "tensor", "gather", "pad", ...
  std::vector<std::string> columns;            // the Arrow columns it reads
  std::map<std::string, OptionValue> options;  // the kind's own; absent = its default
};

using InputFactory = std::function<InputSourcePtr(const ImportedTable&, const InputSpec&)>;

// Registers a kind, the option names it takes and its factory; a second
// registration of a name is a logic error.
void register_input_kind(const std::string& kind, std::vector<std::string> options,
                         InputFactory factory);
// The registered kinds, sorted.
std::vector<std::string> input_kinds();

// ValueError for an unknown kind (listing the registered ones) or an option
// the kind does not take (listing those it does): what can be checked before
// any data arrives (the engine checks its specs when it is made).
void check_spec(const InputSpec& spec);

// One input of an Arrow batch: check_spec's errors, and the kind's
// conversion errors, naming the column.
InputSourcePtr make_input(const ImportedTable& table, const InputSpec& spec);
// All inputs of an Arrow batch, one per spec.
Inputs make_inputs(const ImportedTable& table, const std::vector<InputSpec>& specs);

// ---- for factories: reading a spec ----

// ValueError unless every option of `spec` is in `known`.
void check_option_names(const InputSpec& spec, const std::vector<std::string>& known);
// The one column of a single-column kind; ValueError otherwise.
const std::string& single_column(const InputSpec& spec);
// Typed option values, absent (or None) -> nullopt; a value of another type
// is a TypeError naming the kind, the option and both types.
std::optional<c10::ScalarType> dtype_option(const InputSpec& spec, const std::string& key);
std::optional<std::string> string_option(const InputSpec& spec, const std::string& key);
std::optional<int64_t> int_option(const InputSpec& spec, const std::string& key);
// A bool, int or float.
std::optional<c10::Scalar> scalar_option(const InputSpec& spec, const std::string& key);
// The "nulls" option as a policy ("error" when absent).
NullPolicy nulls_option(const InputSpec& spec);
// The "length_group" option of padded kinds ("" when absent: the column's).
std::string length_group_option(const InputSpec& spec);

}  // namespace torchspark
