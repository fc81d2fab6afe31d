// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/run/scenario.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <future>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "mewm/core/file_util.h"
#include "mewm/eval/dynamics_data.h"
#include "mewm/run/runner.h"
#include "planning_fixture.h"

namespace mewm::scenarios {
namespace {

namespace fs = std::filesystem;
using namespace std::string_literals;

class ScenarioTest : public testing::VdbTest {
 protected:
  void SetUp() override { testing::WriteTestModels(dir_.path().string()); }

  /// A valid scenario, with `extra` appended (TOML tables may be reopened only once, so tests
  /// add whole new tables or replace keys by text substitution).
  std::string Valid() const {
    return R"([run]
name = "t"
seed = 3
output = "out"

[cohort]
source = "synthetic"
n = 2
seed = 9
spacing_mm = 2.0
)" + std::string(testing::kTestModelsToml);
  }

  Expected<ScenarioSpec> Parse(const std::string& text) {
    return ParseScenario(text, "test.toml", dir_.path().string());
  }

  static std::string Replace(std::string text, const std::string& from, const std::string& to) {
    const auto at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return text.replace(at, from.size(), to);
  }

  testing::TempDir dir_;
};

TEST_F(ScenarioTest, ParsesAValidScenarioWithDefaults) {
  auto spec = Parse(Valid());
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ(spec->name, "t");
  EXPECT_EQ(spec->seed, 3u);
  EXPECT_EQ(spec->output, "out");
  EXPECT_EQ(spec->cohort.source, CohortSpec::Source::kSynthetic);
  EXPECT_EQ(spec->cohort.n, 2);
  EXPECT_EQ(spec->cohort.spacing_mm, 2.0);
  EXPECT_EQ(spec->planner.search, SearchMode::kBeam);
  EXPECT_EQ(spec->planner.beams, 5);
  EXPECT_EQ(spec->planner.samples, 4);
  EXPECT_TRUE(spec->planner.control_arm);
  EXPECT_EQ(spec->planner.proposals, ProposalMode::kSearch);
  EXPECT_EQ(spec->policy_backend, "guideline");
  EXPECT_EQ(spec->calibration, dir_.File("models/calibration.json"));
  EXPECT_EQ(spec->protocol, "cTACE");
  EXPECT_EQ(spec->text, Valid());
}

TEST_F(ScenarioTest, ReadsPlannerAndConstraints) {
  auto spec = Parse(Valid() + R"(
[planner]
search = "reference"
beams = 2
samples = 3
drug_horizon = 1
embolic_horizon = 3
control_arm = false
proposals = "score"

[constraints]
require = ["thp"]
forbid = ["pva"]
)");
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ(spec->planner.search, SearchMode::kReference);
  EXPECT_EQ(spec->planner.beams, 2);
  EXPECT_EQ(spec->planner.drug_horizon, 1);
  EXPECT_FALSE(spec->planner.control_arm);
  EXPECT_EQ(spec->planner.proposals, ProposalMode::kScore);
  EXPECT_EQ(spec->require, std::vector<std::string>{"Pirarubicin"});  // aliases canonicalised
  EXPECT_EQ(spec->forbid, std::vector<std::string>{"PVA"});
}

TEST_F(ScenarioTest, ReportsEveryProblemAtOnceWithLines) {
  const std::string text =
      Replace(Replace(Valid(), "n = 2", "n = 0"), "seed = 3", "seed = \"three\"") +
      "\n[planner]\nbeamz = 3\nsearch = \"greedy\"\ncontrol_arm = \"yes\"\n"
      "proposals = \"all\"\n";
  auto spec = Parse(text);
  ASSERT_FALSE(spec);
  const std::string& m = spec.error().message;
  EXPECT_EQ(spec.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(m.find("test.toml:3"), std::string::npos) << m;  // seed: wrong type
  EXPECT_NE(m.find("run.seed"), std::string::npos) << m;
  EXPECT_NE(m.find("cohort.n"), std::string::npos) << m;  // out of range
  EXPECT_NE(m.find("beamz"), std::string::npos) << m;     // unknown key
  EXPECT_NE(m.find("greedy"), std::string::npos) << m;    // bad enum
  EXPECT_NE(m.find("beam, reference, exhaustive"), std::string::npos) << m;
  EXPECT_NE(m.find("planner.control_arm"), std::string::npos) << m;  // not a boolean
  EXPECT_NE(m.find("search, score"), std::string::npos) << m;        // proposals: bad enum
}

TEST_F(ScenarioTest, ProblemsPastAHundredLinesAreCountedNotListed) {
  // 90,000 unknown keys: each table lists 20 and counts the rest, and the problems list stops at
  // 100 lines. Before, the reply to a submitted scenario like this held 13 MB and its making was
  // quadratic (15 s, during which the server answered nothing else).
  std::string keys;
  for (int i = 0; i < 90000; ++i) keys += "x" + std::to_string(i) + " = 1\n";
  std::string text = Replace(Valid(), "[run]\n", "[run]\n" + keys);
  for (const char* table : {"[cohort]\n", "[dynamics]\n", "[survival]\n", "[planner]\n"}) {
    if (text.find(table) == std::string::npos) text += table;
    std::string more;
    for (int i = 0; i < 25; ++i) more += "y" + std::to_string(i) + " = 1\n";
    text = Replace(text, table, table + more);
  }
  auto spec = Parse(text);
  ASSERT_FALSE(spec);
  const std::string& m = spec.error().message;
  EXPECT_LT(m.size(), 40000u);
  EXPECT_EQ(m.rfind("invalid scenario test.toml:\n  test.toml:", 0), 0u) << m.substr(0, 300);
  EXPECT_NE(m.find("and 89980 more unknown keys in run"), std::string::npos);
  // 5 tables x 21 lines: 100 listed, 5 counted.
  EXPECT_EQ(std::count(m.begin(), m.end(), '\n'), 101);
  EXPECT_NE(m.find("\n  ... and 5 more"), std::string::npos) << m.substr(m.size() - 300);
}

TEST_F(ScenarioTest, MissingTablesAreProblemsWhateverKeysTheTextHas) {
  // Found by the dispatch fuzzer: a missing [run] with a top-level `__missing__` key that is not a
  // table threw std::bad_variant_access out of ParseScenario and killed `mewm serve`.
  for (const std::string& text :
       {std::string("__missing__ = 1\n"), std::string("run = 5\n__missing__ = \"x\"\n"),
        std::string("[__missing__]\nname = 3\n")}) {
    auto spec = Parse(text);
    ASSERT_FALSE(spec) << text;
    EXPECT_EQ(spec.error().code, ErrorCode::kInvalidArgument) << spec.error().message;
    EXPECT_NE(spec.error().message.find("run"), std::string::npos) << spec.error().message;
  }
}

TEST_F(ScenarioTest, RejectsUnknownBackendsAndMissingFiles) {
  auto backend = Parse(Replace(Valid(), "backend = \"cox\"", "backend = \"deepsurv\""));
  ASSERT_FALSE(backend);
  EXPECT_NE(backend.error().message.find("deepsurv"), std::string::npos);
  EXPECT_NE(backend.error().message.find("cox"), std::string::npos);
  auto missing = Parse(Replace(Valid(), "models/cox.json", "models/nope.json"));
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("nope.json"), std::string::npos);
  EXPECT_NE(missing.error().message.find("does not exist"), std::string::npos);
}

TEST_F(ScenarioTest, RejectsRuleBreakingAndUnknownConstraints) {
  auto rule = Parse(Valid() + "\n[constraints]\nrequire = [\"Cisplatin\", \"Oxaliplatin\"]\n");
  ASSERT_FALSE(rule);
  EXPECT_NE(rule.error().message.find("constraints.require breaks rule"), std::string::npos)
      << rule.error().message;
  auto unknown = Parse(Valid() + "\n[constraints]\nforbid = [\"Cisplatine\"]\n");
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("Cisplatin"), std::string::npos);  // did you mean
  auto mandatory = Parse(Valid() + "\n[constraints]\nforbid = [\"Lipiodol\"]\n");
  ASSERT_FALSE(mandatory);
  EXPECT_NE(mandatory.error().message.find("mandatory"), std::string::npos);
  auto both = Parse(Valid() + "\n[constraints]\nforbid = [\"PVA\"]\nrequire = [\"PVA\"]\n");
  ASSERT_FALSE(both);
  EXPECT_NE(both.error().message.find("both required and forbidden"), std::string::npos);
}

TEST_F(ScenarioTest, RejectsUnknownTablesBadDevicesAndBadTomlSyntax) {
  auto table = Parse(Valid() + "\n[plannner]\nbeams = 2\n");
  ASSERT_FALSE(table);
  EXPECT_NE(table.error().message.find("plannner"), std::string::npos);
  auto device = Parse(Replace(Valid(), "seed = 3", "seed = 3\ndevice = \"tpu\""));
  ASSERT_FALSE(device);
  EXPECT_NE(device.error().message.find("run.device"), std::string::npos);
  auto syntax = Parse("[run\nname = 1");
  ASSERT_FALSE(syntax);
  EXPECT_EQ(syntax.error().code, ErrorCode::kParse);
}

TEST_F(ScenarioTest, AMissingTableIsNamedNotAPlaceholder) {
  auto missing = Parse(Replace(Valid(), "[run]\nname = \"t\"\nseed = 3\noutput = \"out\"\n", ""));
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("[run]"), std::string::npos) << missing.error().message;
  EXPECT_NE(missing.error().message.find("run.name"), std::string::npos) << missing.error().message;
  EXPECT_EQ(missing.error().message.find("__missing__"), std::string::npos)
      << missing.error().message;
  auto wrong =
      Parse(Replace(Valid(), "[run]\nname = \"t\"\nseed = 3\noutput = \"out\"\n", "run = 5\n"));
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().message.find("__missing__"), std::string::npos) << wrong.error().message;
}

TEST_F(ScenarioTest, ManifestSourceNeedsAnExistingCsv) {
  const std::string manifest = Replace(
      Replace(Valid(), "source = \"synthetic\"", "source = \"manifest\"\nmanifest = \"p.csv\""),
      "n = 2\nseed = 9\nspacing_mm = 2.0\n", "");
  auto missing = Parse(manifest);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("p.csv"), std::string::npos);
  std::ofstream(dir_.File("p.csv")) << "patient_id\n";
  auto ok = Parse(manifest);
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_EQ(ok->cohort.manifest, dir_.File("p.csv"));
}

TEST_F(ScenarioTest, DiffusionBackendReadsItsModelAndSampler) {
  const std::string mech = "backend = \"mechanistic\"\ncalibration = \"models/calibration.json\"";
  std::ofstream(dir_.File("models/diffusion.pt")) << "weights";
  auto spec = Parse(Replace(Valid(), mech,
                            "backend = \"diffusion\"\nmodel = \"models/diffusion.pt\"\n"
                            "steps = 10\neta = 0.5\nguidance = 2.0\nanchor_level = true"));
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ(spec->dynamics_backend, "diffusion");
  EXPECT_TRUE(spec->diffusion.anchor_level);
  EXPECT_EQ(spec->diffusion.model_path, dir_.File("models/diffusion.pt"));
  EXPECT_EQ(spec->diffusion.config, "cpu");
  EXPECT_EQ(spec->diffusion.sampler.steps, 10);
  EXPECT_EQ(spec->diffusion.sampler.eta, 0.5);
  EXPECT_EQ(spec->diffusion.sampler.guidance, 2.0);
  // Mechanistic keys do not belong to the diffusion backend, and bad values are named.
  auto wrong = Parse(Replace(Valid(), mech,
                             "backend = \"diffusion\"\nmodel = \"models/diffusion.pt\"\n"
                             "calibration = \"models/calibration.json\"\nsteps = 0\n"
                             "config = \"gpu\"\nanchor_level = \"yes\""));
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("anchor_level"), std::string::npos);
  EXPECT_NE(wrong.error().message.find("calibration"), std::string::npos);
  EXPECT_NE(wrong.error().message.find("steps"), std::string::npos);
  EXPECT_NE(wrong.error().message.find("gpu"), std::string::npos);
  // A binary without the torch backend says so instead of running something else.
  auto loaded = BackendRegistry::Builtin().CreateDynamics(*spec);
  ASSERT_FALSE(loaded);
  EXPECT_EQ(loaded.error().code, ErrorCode::kUnsupported);
}

/// A survival backend a test adds: constant risk, its level read from the scenario.
class ConstantRisk : public survival::SurvivalModel {
 public:
  explicit ConstantRisk(double risk) : risk_(risk) {}
  Expected<survival::RiskScore> Score(const PatientCase&, const Outcome&) override {
    return survival::RiskScore{risk_, {}, {}};
  }
  std::string name() const override { return "constant"; }

 private:
  double risk_;
};

TEST_F(ScenarioTest, TheBuiltinRegistryNamesEveryShippedBackend) {
  const BackendRegistry backends = BackendRegistry::Builtin();
  EXPECT_EQ(backends.Names(BackendFamily::kPolicy),
            (std::vector<std::string>{"guideline", "vlm", "openai"}));
  EXPECT_EQ(backends.Names(BackendFamily::kDynamics),
            (std::vector<std::string>{"mechanistic", "diffusion"}));
  EXPECT_EQ(backends.Names(BackendFamily::kSurvival), std::vector<std::string>{"cox"});
  // The parser offers exactly those names, and says so.
  auto wrong = Parse(Replace(Valid(), "backend = \"cox\"", "backend = \"deep\""));
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("cox"), std::string::npos) << wrong.error().message;
  // Created through the registry, the models are the ones the scenario names.
  auto spec = Parse(Valid());
  ASSERT_TRUE(spec) << spec.error().message;
  auto models = LoadModels(*spec, backends);
  ASSERT_TRUE(models) << models.error().message;
  EXPECT_EQ(models->policy->name(), "guideline");
  EXPECT_EQ(models->survival->name(), "cox");
}

TEST_F(ScenarioTest, TheOpenAiPolicyTableIsReadAndValidated) {
  auto spec = Parse(Valid() + R"(
[policy]
backend = "openai"
endpoint = "http://127.0.0.1:11434/v1"
model = "qwen2.5vl"
top_k = 8
images = false
response_format = "json_schema"
timeout_s = 30
max_repairs = 1
)");
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ(spec->policy_backend, "openai");
  EXPECT_EQ(spec->openai.model, "qwen2.5vl");
  EXPECT_EQ(spec->openai.top_k, 8);
  EXPECT_FALSE(spec->openai.images);
  EXPECT_EQ(spec->openai.response_format, "json_schema");
  EXPECT_EQ(spec->openai.max_repairs, 1);
  EXPECT_EQ(spec->openai.api_key_env, "OPENAI_API_KEY");
  auto models = LoadModels(*spec, BackendRegistry::Builtin());
  ASSERT_TRUE(models) << models.error().message;
  EXPECT_EQ(models->policy->name(), "openai");

  // Every problem at once: a bad endpoint, a key it does not know, a missing model.
  auto bad = Parse(Valid() + R"(
[policy]
backend = "openai"
endpoint = "ftp://host/v1"
api_key = "sk-never-in-a-file"
)");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("model"), std::string::npos) << bad.error().message;
  EXPECT_NE(bad.error().message.find("api_key"), std::string::npos) << bad.error().message;
}

TEST_F(ScenarioTest, ABackendAddedToTheRegistryIsParsedAndCreatedFromItsOneEntry) {
  BackendRegistry backends = BackendRegistry::Builtin();
  Backend<survival::SurvivalModel> constant;
  constant.name = "constant";
  constant.keys = {"risk"};
  auto risk = std::make_shared<double>(0.0);  // the entry's own option, read from its table
  constant.read = [risk](BackendTableReader& r, ScenarioSpec&) {
    r.Take(r.table().GetDouble("risk", std::nullopt, 0.0, 10.0), risk.get());
  };
  constant.create =
      [risk](const ScenarioSpec&) -> Expected<std::unique_ptr<survival::SurvivalModel>> {
    return std::unique_ptr<survival::SurvivalModel>(std::make_unique<ConstantRisk>(*risk));
  };
  ASSERT_TRUE(backends.Add(constant));
  EXPECT_FALSE(backends.Add(constant));  // one name, once
  const std::string text = Replace(Valid(), "backend = \"cox\"\nmodel = \"models/cox.json\"",
                                   "backend = \"constant\"\nrisk = 1.5");
  ParseOptions options;
  options.backends = &backends;
  auto spec = ParseScenario(text, "test.toml", dir_.path().string(), options);
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ(spec->survival_backend, "constant");
  // LoadModels honours the survival (and policy) backend the scenario names.
  auto models = LoadModels(*spec, backends);
  ASSERT_TRUE(models) << models.error().message;
  EXPECT_EQ(models->survival->name(), "constant");
  EXPECT_EQ(*risk, 1.5);
  // Its keys are its own: another backend's key, or a bad value, is a problem naming it.
  auto foreign = ParseScenario(Replace(text, "risk = 1.5", "risk = 1.5\nmodel = \"x\""),
                               "test.toml", dir_.path().string(), options);
  ASSERT_FALSE(foreign);
  EXPECT_NE(foreign.error().message.find("model"), std::string::npos) << foreign.error().message;
  auto bad = ParseScenario(Replace(text, "risk = 1.5", "risk = 99"), "test.toml",
                           dir_.path().string(), options);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("risk"), std::string::npos) << bad.error().message;
  // A parser without the entry does not know the name.
  auto unknown = Parse(text);
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("constant"), std::string::npos);
  EXPECT_FALSE(BackendRegistry::Builtin().CreateSurvival(*spec));
}

TEST_F(ScenarioTest, ShippedScenariosAreValid) {
  for (const char* name : {"tace_demo", "tace_cohort_eval", "tace_cohort_eval_diffusion",
                           "tace_cohort_eval_vlm", "tace_cohort_eval_vlm_diffusion"}) {
    auto spec =
        LoadScenario(std::string(MEWM_SOURCE_DIR) + "/scenarios/" + name + "/scenario.toml");
    EXPECT_TRUE(spec) << name << ": " << spec.error().message;
  }
}

TEST_F(ScenarioTest, AScenarioFileOverItsLimitIsRefusedUnread) {
  // A shipped scenario padded with a comment past kMaxScenarioBytes: refused by its size.
  auto text = ReadFile(std::string(MEWM_SOURCE_DIR) + "/scenarios/tace_demo/scenario.toml");
  ASSERT_TRUE(text);
  std::ofstream(dir_.File("big.toml"))
      << *text << "# " << std::string(kMaxScenarioBytes, 'x') << "\n";
  auto big = LoadScenario(dir_.File("big.toml"));
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(big.error().message.find(std::to_string(kMaxScenarioBytes)), std::string::npos)
      << big.error().message;
}

TEST_F(ScenarioTest, RunNamesOutsideTheSafeAlphabetAreRefused) {
  for (const char* good : {"t", "tace_demo", "A-1.b_c", "9lives"}) {
    EXPECT_TRUE(ValidateRunName(good)) << good;
  }
  EXPECT_TRUE(ValidateRunName(std::string(64, 'n')));
  const std::vector<std::string> bad_names = {"../../../x",
                                              "/tmp/abs",
                                              "a/b",
                                              "victim/evil",
                                              "",
                                              ".hidden",
                                              "-flag",
                                              "_x",
                                              "a..b",
                                              "a b",
                                              "tab\tname",
                                              "nul\0x"s,
                                              "caf\xc3\xa9",
                                              std::string(65, 'n')};
  for (const std::string& bad : bad_names) {
    const Status named = ValidateRunName(bad);
    ASSERT_FALSE(named) << bad;
    EXPECT_NE(named.error().message.find("A-Z a-z 0-9 . _ -"), std::string::npos);
    auto spec = Parse(Replace(Valid(), "name = \"t\"", "name = \"" + bad + "\""));
    if (bad.find('\t') != std::string::npos || bad.find('\0') != std::string::npos) continue;
    ASSERT_FALSE(spec) << bad;
    EXPECT_EQ(spec.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(spec.error().message.find("test.toml:2: run.name must be"), std::string::npos)
        << spec.error().message;
  }
}

TEST_F(ScenarioTest, TheInputCheckRunsBeforeAnyFileIsLookedAt) {
  // A FIFO with no writer blocks a plain read forever, and /dev/zero never ends.
  ASSERT_EQ(::mkfifo(dir_.File("fifo.toml").c_str(), 0600), 0);
  const auto with_actions = [&](const std::string& path) {
    return Valid() + "\n[actions]\npath = \"" + path + "\"\n";
  };
  std::vector<ScenarioPath> seen;
  ParseOptions refuse_all;
  refuse_all.check_input = [&](const ScenarioPath& input) -> Status {
    seen.push_back(input);
    return MakeError(ErrorCode::kInvalidArgument, input.key + " refused");
  };
  for (const std::string& path : {dir_.File("fifo.toml"), "/dev/zero"s, "/no/such/file"s}) {
    seen.clear();
    auto spec = ParseScenario(with_actions(path), "test.toml", dir_.path().string(), refuse_all);
    ASSERT_FALSE(spec);
    // The first input met is refused and nothing else is looked at.
    EXPECT_EQ(spec.error().message, "dynamics.calibration refused");
    ASSERT_EQ(seen.size(), 1u);
  }
  ParseOptions refuse_actions;
  refuse_actions.check_input = [&](const ScenarioPath& input) -> Status {
    if (input.key != "actions.path") return {};
    return MakeError(ErrorCode::kInvalidArgument, input.path + " is outside");
  };
  auto refused =
      ParseScenario(with_actions("/dev/zero"), "test.toml", dir_.path().string(), refuse_actions);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().message, "/dev/zero is outside");

  // Without a check, special files are refused without being read, and so is a large file.
  auto fifo = std::async(std::launch::async, [&] { return Parse(with_actions("fifo.toml")); });
  if (fifo.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    const int unblock = ::open(dir_.File("fifo.toml").c_str(), O_WRONLY | O_NONBLOCK);
    if (unblock >= 0) ::close(unblock);
    FAIL() << "reading a FIFO named by actions.path blocked";
  }
  for (const auto& spec : {fifo.get(), Parse(with_actions("/dev/zero"))}) {
    ASSERT_FALSE(spec);
    EXPECT_NE(spec.error().message.find("which is not a regular file"), std::string::npos)
        << spec.error().message;
  }
  std::ofstream(dir_.File("huge.toml")) << std::string(kMaxActionBaseBytes + 1, '#');
  auto huge = Parse(with_actions("huge.toml"));
  ASSERT_FALSE(huge);
  EXPECT_NE(huge.error().message.find("too large"), std::string::npos) << huge.error().message;
}

/// String keys that are not paths, as "table.key". ScenarioTest.EveryPathKeyIsEnumerated makes
/// every other string key the parser reads appear in ScenarioSpec::InputPaths or OutputPaths,
/// so a new path key cannot escape the server's confinement silently: add a new string key
/// either to those lists or, if it is no path, here.
const std::set<std::string> kStringKeysThatAreNotPaths = {
    "run.name",         "run.device",       "cohort.source",        "policy.backend",
    "dynamics.backend", "dynamics.config",  "dynamics.uncertainty", "survival.backend",
    "planner.search",   "actions.protocol", "policy.device",        "policy.inputs",
    "planner.proposals"};

/// A scenario as tables of key = TOML value ("" is the root, written first).
using Tables = std::map<std::string, std::map<std::string, std::string>>;

std::string Render(const Tables& tables) {
  std::string text;
  for (const auto& [table, keys] : tables) {
    if (!table.empty()) text += "\n[" + table + "]\n";
    for (const auto& [key, value] : keys) text += key + " = " + value + "\n";
  }
  return text;
}

TEST_F(ScenarioTest, EveryPathKeyIsEnumerated) {
  // Every regular file the probes name holds a valid action base, the only input parsing reads.
  const auto probe_file = [&](const std::string& name) {
    std::ofstream(dir_.File(name)) << ActionBase::DefaultToml();
    return "\"" + name + "\"";
  };
  const std::string shared_models = "\"models/cox.json\"";
  // Two scenarios that between them reach every branch of the parser.
  const Tables synthetic = {
      {"run", {{"name", "\"t\""}}},
      {"cohort", {{"source", "\"synthetic\""}}},
      {"dynamics", {{"backend", "\"mechanistic\""}, {"calibration", probe_file("calib.json")}}},
      {"survival", {{"backend", "\"cox\""}, {"model", shared_models}}}};
  const Tables manifest = {
      {"run", {{"name", "\"t\""}}},
      {"cohort", {{"source", "\"manifest\""}, {"manifest", probe_file("m.csv")}}},
      {"policy", {{"backend", "\"vlm\""}, {"checkpoint", probe_file("v.pt")}}},
      {"dynamics", {{"backend", "\"diffusion\""}, {"model", probe_file("d.pt")}}},
      {"survival", {{"backend", "\"cox\""}, {"model", shared_models}}}};
  std::set<std::string> string_keys;
  for (Tables base : {synthetic, manifest}) {
    ASSERT_TRUE(Parse(Render(base))) << Parse(Render(base)).error().message;
    // 1. The keys the parser reads in each table, as its unknown-key errors list them.
    std::map<std::string, std::vector<std::string>> allowed;
    for (int pass = 0; pass < 2; ++pass) {
      Tables probe = base;
      probe[""]["zz_probe"] = "1";
      for (const auto& [table, keys] : allowed) {
        if (!table.empty()) probe[table]["zz_probe"] = "1";
      }
      for (auto& [table, keys] : probe) keys["zz_probe"] = "1";
      auto spec = Parse(Render(probe));
      ASSERT_FALSE(spec);
      const std::string& m = spec.error().message;
      const std::regex unknown(R"(unknown key ((\w+)\.)?zz_probe \(allowed: ([^)]*)\))");
      for (auto it = std::sregex_iterator(m.begin(), m.end(), unknown);
           it != std::sregex_iterator(); ++it) {
        std::vector<std::string>& keys = allowed[(*it)[2].str()];
        keys.clear();
        std::stringstream list((*it)[3].str());
        for (std::string key; std::getline(list, key, ',');) {
          key.erase(0, key.find_first_not_of(' '));
          if (key != "none") keys.push_back(key);
        }
      }
      if (pass == 0) {  // the root's keys are the tables: probe each in the second pass
        for (const std::string& table : allowed[""]) allowed[table];
      }
    }
    ASSERT_GE(allowed[""].size(), 8u);
    // 2. Which of those keys take a string: a string value gets no "must be ... (got string".
    for (const auto& [table, keys] : allowed) {
      if (table.empty()) continue;
      for (const std::string& key : keys) {
        Tables probe = base;
        probe[table][key] = "\"zz-probe\"";
        auto spec = Parse(Render(probe));
        const std::string name = table + "." + key;
        if (!spec && spec.error().message.find(name + " must be ") != std::string::npos &&
            spec.error().message.find("(got string") != std::string::npos) {
          continue;
        }
        string_keys.insert(name);
        if (kStringKeysThatAreNotPaths.count(name)) continue;
        // 3. A path: set it alone to a file of its own and find it in the enumeration.
        probe = base;
        const std::string file = "probe-" + table + "-" + key;
        probe[table][key] = probe_file(file);
        auto parsed = Parse(Render(probe));
        ASSERT_TRUE(parsed) << name << ": " << parsed.error().message;
        std::vector<ScenarioPath> listed = parsed->InputPaths();
        const auto outputs = parsed->OutputPaths();
        listed.insert(listed.end(), outputs.begin(), outputs.end());
        const bool found = std::any_of(listed.begin(), listed.end(), [&](const ScenarioPath& p) {
          return p.key == name && p.path.size() >= file.size() &&
                 p.path.compare(p.path.size() - file.size(), file.size(), file) == 0;
        });
        EXPECT_TRUE(found) << name << " takes a string but is neither enumerated by "
                           << "ScenarioSpec::InputPaths/OutputPaths nor listed in "
                           << "kStringKeysThatAreNotPaths";
      }
    }
  }
  // The probes found the known path keys (so a broken probe cannot pass by finding nothing).
  for (const char* key : {"run.output", "cohort.dir", "cohort.manifest", "dynamics.calibration",
                          "dynamics.model", "survival.model", "actions.path", "run.name"}) {
    EXPECT_TRUE(string_keys.count(key)) << key;
  }
  // Every input the parser meets goes through ParseOptions::check_input, and only those.
  for (Tables base : {synthetic, manifest}) {
    base["actions"]["path"] = probe_file("actions.toml");
    std::set<std::string> checked;
    ParseOptions options;
    options.check_input = [&](const ScenarioPath& input) -> Status {
      checked.insert(input.key);
      return {};
    };
    auto spec = ParseScenario(Render(base), "test.toml", dir_.path().string(), options);
    ASSERT_TRUE(spec) << spec.error().message;
    std::set<std::string> inputs;
    for (const ScenarioPath& input : spec->InputPaths()) inputs.insert(input.key);
    EXPECT_EQ(checked, inputs);
    EXPECT_EQ(inputs.count("actions.path"), 1u);
    EXPECT_EQ(inputs.count("survival.model"), 1u);
    // The manifest probe also runs the vlm policy (policy.checkpoint).
    EXPECT_EQ(inputs.size(), spec->cohort.source == CohortSpec::Source::kManifest ? 5u : 3u);
  }
}

TEST_F(ScenarioTest, SyntheticCohortsLiveWhereTheOneRuleSays) {
  auto spec = Parse(Valid());
  ASSERT_TRUE(spec);
  // mewm run: <output>/cohort, or cohort.dir as given.
  EXPECT_EQ(*SyntheticCohortDir(*spec, "runs/a"), "runs/a/cohort");
  spec->cohort.dir = "shared/c";
  EXPECT_EQ(*SyntheticCohortDir(*spec, "runs/a"), "shared/c");
  // The server: inside <root>/cohorts/ only.
  const std::string root = dir_.File("root");
  fs::create_directories(root + "/cohorts");
  spec->cohort.dir = "";
  EXPECT_EQ(*SyntheticCohortDir(*spec, root + "/runs", root), root + "/cohorts/n2-seed9-2mm");
  spec->cohort.dir = "cohorts/mine";
  EXPECT_EQ(*SyntheticCohortDir(*spec, root + "/runs", root), ResolvedPath(root) + "/cohorts/mine");
  fs::create_directories(dir_.File("elsewhere"));
  fs::create_directory_symlink(dir_.File("elsewhere"), root + "/cohorts/link");
  for (const std::string bad : {"runs/victim-1234", "cohorts", "cohorts/", "cohorts/../runs",
                                "cohorts/link/x", "/tmp/x", "."}) {
    spec->cohort.dir = bad;
    auto dir = SyntheticCohortDir(*spec, root + "/runs", root);
    ASSERT_FALSE(dir) << bad << " gave " << *dir;
    EXPECT_NE(dir.error().message.find("cohort.dir = \"" + bad + "\" must name a folder inside"),
              std::string::npos)
        << dir.error().message;
  }
}

}  // namespace
}  // namespace mewm::scenarios
