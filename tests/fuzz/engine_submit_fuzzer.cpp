// libFuzzer target: the engine's Arrow inputs, end to end. Record batches
// decoded from the fuzzer's bytes (c_data_builder.h) are imported, turned into
// model inputs by the registered input kinds (inputs/: tensor, gather, pad,
// mask, image) and submitted to a real Engine running a real TorchScript
// model, with fuzzed engine options (batch size, token budget fixed or tuned,
// sorting window, inflight, worker threads, static batches, per-token outputs,
// inline runs).
//
// Structure-aware: the bytes choose 1 to 3 inputs (each a kind, its columns
// and its options), one record batch schema holding those columns in formats
// the kind takes (numbers, fixed-size lists, lists of token ids, binary
// images; now and then a format it does not), and 1 to 3 submissions of that
// schema, each an array whose lengths, offsets, nulls, buffers and children
// the builder mutates.
//
// The models (built once, at start-up, from TorchScript source and loaded with
// load_model from a file, as the product loads them): forward(x0[, x1[, x2]])
// returns each input's row sums in float64 ([rows]) and, in the per-token
// variants, one input itself ([rows, L, ...]).
//
// Checked beyond "no sanitizer report", for every submission: it finishes
// within 8 s, and either fails with one of the project's error types
// (c10::Error and its torchspark subclasses; anything else escapes and is a
// crash), or succeeds with one output per model output, each with the
// submission's row count, each read in full, the row sums equal to the same
// columns converted directly by the kernels (to_tensor, gather, pad,
// list_lengths; no engine), and a per-token output equal to the directly
// padded column at the submission's own width (zero past each row's length).
// Every Arrow struct handed over is released exactly once, after the engine
// is gone, and never a child.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fuzzer/FuzzedDataProvider.h>
#include <torch/script.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "c_data_builder.h"
#include "fuzz_checks.h"
#include "torchspark/arrow/arrow_import.h"
#include "torchspark/arrow/arrow_owner.h"
#include "torchspark/engine/engine.h"
#include "torchspark/inputs/input_spec.h"
#include "torchspark/kernels/gather.h"
#include "torchspark/kernels/pad.h"
#include "torchspark/models/model_registry.h"

namespace {

using namespace torchspark_fuzz;
using torchspark::Column;
using torchspark::InputSpec;

constexpr int kMaxInputs = 3;

// models()[n - 1][p + 1]: n inputs, input p returned as it is (-1: none).
using ModelTable =
    std::array<std::array<std::shared_ptr<const torchspark::Model>, kMaxInputs + 1>, kMaxInputs>;

std::shared_ptr<const torchspark::Model> make_model(int inputs, int identity) {
  std::string args, sums;
  for (int i = 0; i < inputs; ++i) {
    args += (i ? ", x" : "x") + std::to_string(i) + ": Tensor";
    sums += "self.rowsum(x" + std::to_string(i) + "), ";
  }
  if (identity >= 0) sums += "x" + std::to_string(identity) + ", ";
  torch::jit::Module module("FuzzModel");
  module.define(
      "def rowsum(self, x: Tensor) -> Tensor:\n"
      "    y = x.double()\n"
      "    if y.dim() == 1:\n"
      "        return y\n"
      "    return y.flatten(1).sum(1)\n"
      "\n"
      "def forward(self, " +
      args + "):\n    return (" + sums + ")\n");
  const char* dir = std::getenv("TMPDIR");
  const std::string path = std::string(dir && *dir ? dir : "/tmp") + "/torchspark-engine-fuzz-" +
                           std::to_string(getpid()) + "-" + std::to_string(inputs) + "-" +
                           std::to_string(identity) + ".pt";
  module.save(path);
  auto model = torchspark::load_model(path, torchspark::ModelOptions{});
  std::remove(path.c_str());
  return model;
}

const ModelTable& models() {
  static const ModelTable table = [] {
    ModelTable t;
    for (int n = 1; n <= kMaxInputs; ++n) {
      for (int p = -1; p < n; ++p) t[n - 1][p + 1] = make_model(n, p);
    }
    return t;
  }();
  return table;
}

enum class Kind { kTensor, kGather, kPad, kMask, kImage };
const char* const kKindNames[] = {"tensor", "gather", "pad", "mask", "image"};

struct ColumnPlan {
  std::string format;        // the column's format
  std::string child_format;  // lists: the values' format
};

struct InputPlan {
  Kind kind = Kind::kTensor;
  InputSpec spec;
  bool zero_pad = true;  // pad: pad_value 0, so that row sums do not depend on the batch width
};

struct Plan {
  std::vector<ColumnPlan> columns;  // named c0, c1, ...
  std::vector<InputPlan> inputs;
  torchspark::EngineOptions options;
  int identity = -1;  // the model input returned as it is (a per-token output)
  int submissions = 1;
  bool try_inline = false;
};

const char* const kNumbers[] = {"c", "C", "s", "S", "i", "I", "l", "L", "e", "f", "g", "b"};
const char* const kTokenValues[] = {"i", "l", "I", "C", "f", "s"};
const c10::ScalarType kDtypes[] = {at::kFloat, at::kDouble, at::kLong, at::kInt,  at::kShort,
                                   at::kChar,  at::kByte,   at::kBool, at::kHalf, at::kBFloat16};

template <typename T, size_t N>
T pick(FuzzedDataProvider& in, const T (&values)[N]) {
  return values[in.ConsumeIntegralInRange<size_t>(0, N - 1)];
}

// A column of a format `kind` takes (now and then one it does not).
ColumnPlan column_for(FuzzedDataProvider& in, Kind kind) {
  if (rarely(in, 16)) kind = static_cast<Kind>(in.ConsumeIntegralInRange<int>(0, 4));
  switch (kind) {
    case Kind::kTensor:
      switch (in.ConsumeIntegralInRange<int>(0, 3)) {
        case 1: return {"+w:" + std::to_string(in.ConsumeIntegralInRange<int>(0, 4)), "f"};
        case 2: return {"+w:" + std::to_string(in.ConsumeIntegralInRange<int>(1, 3)), "l"};
        case 3: return {"+l", pick(in, kNumbers)};
        default: return {pick(in, kNumbers), ""};
      }
    case Kind::kGather: return {pick(in, kNumbers), ""};
    case Kind::kPad:
    case Kind::kMask: return {in.ConsumeBool() ? "+l" : "+L", pick(in, kTokenValues)};
    case Kind::kImage: return {in.ConsumeBool() ? "z" : "Z", ""};
  }
  return {"i", ""};
}

c10::Scalar pick_scalar(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 1: return in.ConsumeIntegralInRange<int64_t>(-3, 300);
    case 2: return in.ConsumeFloatingPoint<double>();
    case 3: return true;
    default: return 0;
  }
}

torchspark::OptionValue scalar_value(const c10::Scalar& s) {
  if (s.isBoolean()) return s.toBool();
  if (s.isIntegral(false)) return s.toLong();
  return s.toDouble();
}

InputPlan input_for(FuzzedDataProvider& in, Plan& plan) {
  InputPlan input;
  input.kind = static_cast<Kind>(in.ConsumeIntegralInRange<int>(0, 4));
  InputSpec& spec = input.spec;
  spec.kind = kKindNames[static_cast<int>(input.kind)];
  // A column of its own, or (pad and mask of one text, two inputs of one
  // column) one the plan has already.
  const auto add_column = [&] {
    if (!plan.columns.empty() && in.ConsumeIntegralInRange<int>(0, 3) == 3) {
      const size_t i = in.ConsumeIntegralInRange<size_t>(0, plan.columns.size() - 1);
      spec.columns.push_back("c" + std::to_string(i));
      return;
    }
    plan.columns.push_back(column_for(in, input.kind));
    spec.columns.push_back("c" + std::to_string(plan.columns.size() - 1));
  };
  const int columns = input.kind == Kind::kGather ? in.ConsumeIntegralInRange<int>(1, 3) : 1;
  for (int i = 0; i < columns; ++i) add_column();
  if (rarely(in, 32)) spec.columns.push_back("missing");

  auto& o = spec.options;
  if (in.ConsumeBool()) o["nulls"] = std::string(in.ConsumeBool() ? "fill" : "error");
  switch (input.kind) {
    case Kind::kTensor:
    case Kind::kGather:
      if (in.ConsumeBool()) o["dtype"] = pick(in, kDtypes);
      if (in.ConsumeBool()) o["fill"] = scalar_value(pick_scalar(in));
      break;
    case Kind::kPad:
    case Kind::kMask:
      if (in.ConsumeBool()) o["dtype"] = pick(in, kDtypes);
      if (in.ConsumeBool()) o["max_len"] = in.ConsumeIntegralInRange<int64_t>(-1, 12);
      if (in.ConsumeBool()) o["length_group"] = std::string(in.ConsumeBool() ? "text" : "other");
      if (input.kind == Kind::kPad && rarely(in, 4)) {
        const c10::Scalar value = pick_scalar(in);
        o["pad_value"] = scalar_value(value);
        input.zero_pad = value.isIntegral(false) && value.toLong() == 0;
      }
      break;
    case Kind::kImage:
      o["size"] = in.ConsumeIntegralInRange<int64_t>(0, 6);
      if (in.ConsumeBool()) o["resize"] = std::string("stretch");
      if (in.ConsumeBool()) o["max_pixels"] = in.ConsumeIntegralInRange<int64_t>(0, 1 << 12);
      if (in.ConsumeBool()) o["channels_last"] = true;
      if (in.ConsumeBool()) o["dtype"] = pick(in, kDtypes);
      break;
  }
  if (rarely(in, 32)) o["not_an_option"] = int64_t{1};
  if (rarely(in, 32) && !o.empty()) o.begin()->second = std::string("of the wrong type");
  return input;
}

Plan make_plan(FuzzedDataProvider& in) {
  Plan plan;
  const int inputs = in.ConsumeIntegralInRange<int>(1, kMaxInputs);
  for (int i = 0; i < inputs; ++i) plan.inputs.push_back(input_for(in, plan));
  torchspark::EngineOptions& o = plan.options;
  o.batch_size = rarely(in, 32) ? in.ConsumeIntegralInRange<int64_t>(-1, 0)
                                : in.ConsumeIntegralInRange<int64_t>(1, 64);
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 1: o.max_tokens = in.ConsumeIntegralInRange<int64_t>(1, 300); break;
    case 2: o.max_tokens = torchspark::kAutoTokens; break;
    default: o.max_tokens = 0;
  }
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 1: o.sort_window = in.ConsumeIntegralInRange<int64_t>(1, 16); break;
    case 2: o.sort_window = torchspark::kWholeSubmission; break;
    default: o.sort_window = 0;
  }
  o.inflight = in.ConsumeIntegralInRange<int64_t>(1, 3);
  o.threads = in.ConsumeIntegralInRange<int64_t>(1, 2);
  o.static_batch = rarely(in, 8);
  o.max_delay_ms = 0.0;
  // A per-token output: the first padded input returned as it is (now and then another).
  for (int i = 0; i < inputs; ++i) {
    const Kind k = plan.inputs[i].kind;
    if ((k == Kind::kPad || k == Kind::kMask) && in.ConsumeBool()) {
      plan.identity = rarely(in, 8) ? in.ConsumeIntegralInRange<int>(0, inputs - 1) : i;
      o.per_token_indices = {inputs};
      break;
    }
  }
  plan.submissions = in.ConsumeIntegralInRange<int>(1, 3);
  plan.try_inline = in.ConsumeBool();
  o.inline_below_ms = plan.try_inline ? 1e9 : 0.0;
  return plan;
}

// The plan's record batch schema: a struct of columns c0, c1, ... (no fuzzer bytes read).
ArrowSchema* batch_schema(Builder& build, const Plan& plan) {
  std::vector<ArrowSchema*> fields;
  for (size_t i = 0; i < plan.columns.size(); ++i) {
    const ColumnPlan& c = plan.columns[i];
    std::vector<ArrowSchema*> children;
    if (!c.child_format.empty()) children.push_back(build.field(c.child_format, "item"));
    fields.push_back(build.field(c.format, "c" + std::to_string(i), children));
  }
  return build.field("+s", "", fields);
}

at::Tensor row_sums(const at::Tensor& t) {
  at::Tensor y = t.to(at::kDouble);
  return y.dim() == 1 ? y : y.flatten(1).sum(1);
}

at::Tensor row_magnitudes(const at::Tensor& t) {
  return row_sums(t.to(at::kDouble).abs());
}

// The padded values of `column` as the engine's per-token output holds them:
// zero at and past each row's length, as float64.
at::Tensor zeroed_past_length(const at::Tensor& values, const at::Tensor& lengths) {
  at::Tensor inside =
      at::arange(values.size(1), lengths.options()).unsqueeze(0) < lengths.unsqueeze(1);
  return at::where(inside, values.to(at::kDouble), at::zeros({}, at::kDouble));
}

struct Reference {
  at::Tensor sums;       // [rows] float64, or undefined: not checked
  at::Tensor magnitude;  // [rows]: the sums of |values|, for the rounding tolerance
  at::Tensor per_token;  // the padded input itself (float64), or undefined

  void set_sums(const at::Tensor& values) {
    sums = row_sums(values);
    magnitude = row_magnitudes(values);
  }
};

torchspark::PadOptions pad_options(const InputSpec& spec) {
  torchspark::PadOptions options;
  options.nulls = torchspark::nulls_option(spec);
  options.max_len = torchspark::int_option(spec, "max_len");
  options.dtype = torchspark::dtype_option(spec, "dtype");
  options.pad_value = torchspark::scalar_option(spec, "pad_value").value_or(0);
  return options;
}

// What an input must give, from the kernels alone (no engine); throws what
// they throw.
Reference reference(const torchspark::ImportedTable& table, const InputPlan& input) {
  const InputSpec& spec = input.spec;
  Reference ref;
  switch (input.kind) {
    case Kind::kTensor: {
      torchspark::ToTensorOptions options;
      options.dtype = torchspark::dtype_option(spec, "dtype");
      options.nulls = torchspark::nulls_option(spec);
      options.fill = torchspark::scalar_option(spec, "fill").value_or(0);
      ref.set_sums(torchspark::to_tensor(table.column(spec.columns[0]), options).values);
      break;
    }
    case Kind::kGather: {
      torchspark::GatherOptions options;
      options.dtype = torchspark::dtype_option(spec, "dtype").value_or(at::kFloat);
      options.nulls = torchspark::nulls_option(spec);
      options.fill = torchspark::scalar_option(spec, "fill").value_or(0);
      ref.set_sums(torchspark::gather(table.select(spec.columns, "gather input"), table.num_rows(),
                                      options, std::nullopt));
      break;
    }
    case Kind::kPad: {
      torchspark::PadOptions options = pad_options(spec);
      torchspark::PadResult padded = torchspark::pad(table.column(spec.columns[0]), options);
      if (input.zero_pad) ref.set_sums(padded.values);
      ref.per_token = zeroed_past_length(padded.values, padded.lengths);
      break;
    }
    case Kind::kMask: {
      torchspark::PadOptions options = pad_options(spec);
      options.dtype.reset();
      at::Tensor lengths = torchspark::list_lengths(table.column(spec.columns[0]), options);
      const c10::ScalarType dtype = torchspark::dtype_option(spec, "dtype").value_or(at::kLong);
      const int64_t width = lengths.numel() > 0 ? lengths.max().item<int64_t>() : 0;
      at::Tensor ones = at::ones({lengths.numel(), width}, at::TensorOptions().dtype(dtype));
      ref.per_token = zeroed_past_length(ones, lengths);
      ref.set_sums(ref.per_token);
      break;
    }
    case Kind::kImage: break;  // decoded pixels: read in full, rows checked
  }
  return ref;
}

// Row sums agree: equal, both NaN, or within float64 rounding of the row's
// magnitude (the engine may sum a staged copy with another vector layout).
void check_sums(const at::Tensor& got, const at::Tensor& want, const at::Tensor& magnitude) {
  if (got.sizes() != want.sizes()) fail("row sums: the output's shape is not the reference's");
  const auto* g = got.contiguous().data_ptr<double>();
  const at::Tensor w_c = want.contiguous(), m_c = magnitude.contiguous();
  const auto* w = w_c.data_ptr<double>();
  const auto* m = m_c.data_ptr<double>();
  for (int64_t i = 0; i < got.numel(); ++i) {
    if (std::isnan(w[i]) && std::isnan(g[i])) continue;
    if (g[i] == w[i]) continue;
    // Overflowed magnitudes: the order of the sum decides; else rounding only.
    if (!std::isfinite(m[i]) || std::abs(g[i] - w[i]) <= 1e-12 * m[i]) continue;
    std::fprintf(stderr, "row %lld: engine %.17g, reference %.17g\n", static_cast<long long>(i),
                 g[i], w[i]);
    fail("an output row sum differs from the kernels' conversion of the same rows");
  }
}

// What the inputs did, printed at exit with TORCHSPARK_FUZZ_STATS=1: shows
// that the fuzzer gets past the refusals to submissions that score.
struct Counts {
  int64_t submissions = 0, refused_at_import = 0, refused_at_submit = 0, failed = 0, scored = 0,
          checked_rows = 0;
  ~Counts() {
    const char* stats = std::getenv("TORCHSPARK_FUZZ_STATS");
    if (stats == nullptr || std::string(stats) != "1") return;
    std::fprintf(stderr,
                 "engine_submit: %lld submissions: %lld refused at import, %lld at make_inputs or "
                 "submit, %lld failed in the engine, %lld scored (%lld rows checked)\n",
                 static_cast<long long>(submissions), static_cast<long long>(refused_at_import),
                 static_cast<long long>(refused_at_submit), static_cast<long long>(failed),
                 static_cast<long long>(scored), static_cast<long long>(checked_rows));
  }
};
Counts counts;

struct Submission {
  std::shared_ptr<torchspark::ImportedTable> table;
  torchspark::RequestPtr request;
  std::optional<torchspark::ModelOutputs> inline_outputs;
};

void check_outputs(const Plan& plan, const Submission& s, const torchspark::ModelOutputs& out) {
  const int n = static_cast<int>(plan.inputs.size());
  const size_t expected = static_cast<size_t>(n + (plan.identity >= 0 ? 1 : 0));
  if (out.tensors.size() != expected) fail("the outputs are not the model's outputs");
  const int64_t rows = s.table->num_rows();
  ++counts.scored;
  counts.checked_rows += rows;
  for (const at::Tensor& t : out.tensors) {
    if (t.dim() < 1 || t.size(0) != rows) fail("an output does not have the submission's rows");
    touch(t);
  }
  for (int i = 0; i < n; ++i) {
    const InputPlan& input = plan.inputs[i];
    Reference ref;
    try {
      ref = reference(*s.table, input);
    } catch (const c10::Error&) {
      fail("the engine scored an input that its kernels refuse");
    }
    if (ref.sums.defined()) check_sums(out.tensors[i], ref.sums, ref.magnitude);
    if (i == plan.identity && ref.per_token.defined()) {
      const at::Tensor& got = out.tensors[n];
      if (got.sizes() != ref.per_token.sizes()) {
        fail("a per-token output is not at the submission's padded width");
      }
      const at::Tensor g = got.to(at::kDouble);
      const at::Tensor same = (g == ref.per_token) | (g.isnan() & ref.per_token.isnan());
      if (!same.all().item<bool>()) fail("a per-token output differs from the padded column");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);  // one input at a time, deterministic
  models();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Arena arena;
  Builder build(in, arena);
  const Plan plan = make_plan(in);
  std::vector<InputSpec> specs;
  for (const InputPlan& input : plan.inputs) specs.push_back(input.spec);
  {
    std::vector<Submission> submissions;
    for (int k = 0; k < plan.submissions; ++k) {
      ArrowSchema* schema = batch_schema(build, plan);
      // The batch's rows, 17 when the input is used up, so that short inputs
      // make batches the engine splits and sorts (the builder still makes the
      // lengths inconsistent now and then).
      const int64_t rows = rarely(in, 16) ? in.ConsumeIntegralInRange<int64_t>(0, 1024)
                                          : 1 + (in.ConsumeIntegral<uint8_t>() ^ 0x10) % 40;
      ArrowArray* array = build.array(schema, 0, rows);
      build.make_top(schema);
      build.make_top(array);
      Submission s;
      ++counts.submissions;
      try {
        s.table = std::make_shared<torchspark::ImportedTable>(
            torchspark::import_array(schema, array, "batch"), "batch");
      } catch (const c10::Error&) {
        // import_array takes the schema first: a refused schema leaves the array with us.
        ++counts.refused_at_import;
      }
      if (array->release) array->release(array);
      if (schema->release) schema->release(schema);
      if (s.table) submissions.push_back(std::move(s));
    }
    const int n = static_cast<int>(plan.inputs.size());
    std::optional<torchspark::Engine> engine;
    try {
      engine.emplace(models()[n - 1][plan.identity + 1], plan.options);
    } catch (const c10::Error&) {
      // Options the engine refuses (a batch size under 1): its intended outcome.
    }
    if (engine) {
      for (size_t k = 0; k < submissions.size(); ++k) {
        Submission& s = submissions[k];
        try {
          torchspark::Inputs inputs = torchspark::make_inputs(*s.table, specs);
          if (plan.try_inline && k > 0) s.inline_outputs = engine->run_inline(inputs);
          if (!s.inline_outputs) s.request = engine->submit(std::move(inputs), s.table);
        } catch (const c10::Error&) {
          // A column the kind refuses, inputs that disagree: the submission fails.
          ++counts.refused_at_submit;
        }
        if (s.inline_outputs) check_outputs(plan, s, *s.inline_outputs);
      }
      engine->flush();
      for (Submission& s : submissions) {
        if (!s.request) continue;
        if (!s.request->wait(8.0)) fail("a submission did not finish within 8 s");
        std::optional<torchspark::ModelOutputs> outputs;
        try {
          outputs = s.request->take_result();
        } catch (const c10::Error&) {
          // A batch that failed (the model raised, a row did not stage): the project's error.
          ++counts.failed;
        }
        if (outputs) check_outputs(plan, s, *outputs);
      }
      engine->close(/*drain=*/true);
      engine->take_garbage();
      engine.reset();
    }
  }
  for (int count : arena.top_releases) {
    if (count != 1) fail("a top-level ArrowSchema/ArrowArray was not released exactly once");
  }
  if (arena.child_releases != 0) fail("a child or dictionary was released on its own");
  return 0;
}
