#include "torchspark/inputs/input_spec.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <algorithm>
#include <mutex>

namespace torchspark {

namespace {

struct Kind {
  std::vector<std::string> options;
  InputFactory factory;
};

std::map<std::string, Kind>& kinds() {
  static std::map<std::string, Kind> registered;
  return registered;
}

const Kind& kind_of(const InputSpec& spec) {
  auto it = kinds().find(spec.kind);
  TORCH_CHECK_VALUE(it != kinds().end(), "input kind: expected one of ",
                    c10::Join(", ", input_kinds()), ", got '", spec.kind, "'");
  return it->second;
}

std::string label_of(const InputSpec& spec) {
  return c10::str("input kind '", spec.kind, "' (columns ", c10::Join(", ", spec.columns), ")");
}

const char* type_name(const OptionValue& value) {
  static const char* names[] = {"None", "bool",        "int",     "float",
                                "str",  "torch.dtype", "[float]", "[str]"};
  return names[value.index()];
}

template <typename T>
const T* typed(const InputSpec& spec, const std::string& key, const char* expected) {
  auto it = spec.options.find(key);
  if (it == spec.options.end() || std::holds_alternative<std::monostate>(it->second)) {
    return nullptr;
  }
  const T* value = std::get_if<T>(&it->second);
  TORCH_CHECK_TYPE(value != nullptr, label_of(spec), ": option '", key, "' must be ", expected,
                   ", got ", type_name(it->second));
  return value;
}

}  // namespace

void register_input_kind(const std::string& kind, std::vector<std::string> options,
                         InputFactory factory) {
  TORCH_CHECK(kinds().emplace(kind, Kind{std::move(options), std::move(factory)}).second,
              "input kind '", kind, "' is registered twice");
}

std::vector<std::string> input_kinds() {
  std::vector<std::string> names;
  for (const auto& item : kinds()) names.push_back(item.first);
  return names;
}

void check_spec(const InputSpec& spec) {
  check_option_names(spec, kind_of(spec).options);
}

InputSourcePtr make_input(const ImportedTable& table, const InputSpec& spec) {
  const Kind& kind = kind_of(spec);
  check_option_names(spec, kind.options);
  return kind.factory(table, spec);
}

Inputs make_inputs(const ImportedTable& table, const std::vector<InputSpec>& specs) {
  Inputs inputs;
  inputs.sources.reserve(specs.size());
  for (const InputSpec& spec : specs) inputs.sources.push_back(make_input(table, spec));
  return inputs;
}

void check_option_names(const InputSpec& spec, const std::vector<std::string>& known) {
  for (const auto& item : spec.options) {
    TORCH_CHECK_VALUE(std::find(known.begin(), known.end(), item.first) != known.end(),
                      label_of(spec), ": unknown option '", item.first, "'; expected some of ",
                      c10::Join(", ", known));
  }
}

const std::string& single_column(const InputSpec& spec) {
  TORCH_CHECK_VALUE(spec.columns.size() == 1, "input kind '", spec.kind,
                    "': expected exactly one column, got ", spec.columns.size());
  return spec.columns[0];
}

std::optional<c10::ScalarType> dtype_option(const InputSpec& spec, const std::string& key) {
  const auto* value = typed<c10::ScalarType>(spec, key, "a torch.dtype");
  return value ? std::optional<c10::ScalarType>(*value) : std::nullopt;
}

std::optional<std::string> string_option(const InputSpec& spec, const std::string& key) {
  const auto* value = typed<std::string>(spec, key, "a str");
  return value ? std::optional<std::string>(*value) : std::nullopt;
}

std::optional<int64_t> int_option(const InputSpec& spec, const std::string& key) {
  const auto* value = typed<int64_t>(spec, key, "an int");
  return value ? std::optional<int64_t>(*value) : std::nullopt;
}

std::optional<c10::Scalar> scalar_option(const InputSpec& spec, const std::string& key) {
  auto it = spec.options.find(key);
  if (it == spec.options.end() || std::holds_alternative<std::monostate>(it->second)) {
    return std::nullopt;
  }
  if (const auto* b = std::get_if<bool>(&it->second)) return c10::Scalar(*b);
  if (const auto* i = std::get_if<int64_t>(&it->second)) return c10::Scalar(*i);
  if (const auto* d = std::get_if<double>(&it->second)) return c10::Scalar(*d);
  TORCH_CHECK_TYPE(false, label_of(spec), ": option '", key, "' must be a bool, int or float, got ",
                   type_name(it->second));
  return std::nullopt;
}

NullPolicy nulls_option(const InputSpec& spec) {
  return parse_null_policy(string_option(spec, "nulls").value_or("error"));
}

std::string length_group_option(const InputSpec& spec) {
  return string_option(spec, "length_group").value_or("");
}

}  // namespace torchspark
