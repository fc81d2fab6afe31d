// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/scenarios/scenario.h"

#include <gtest/gtest.h>

#include <fstream>

#include "mewm/scenarios/dynamics_data.h"
#include "mewm/scenarios/runner.h"
#include "planning_fixture.h"

namespace mewm::scenarios {
namespace {

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

[constraints]
require = ["thp"]
forbid = ["pva"]
)");
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ(spec->planner.search, SearchMode::kReference);
  EXPECT_EQ(spec->planner.beams, 2);
  EXPECT_EQ(spec->planner.drug_horizon, 1);
  EXPECT_EQ(spec->require, std::vector<std::string>{"Pirarubicin"});  // aliases canonicalised
  EXPECT_EQ(spec->forbid, std::vector<std::string>{"PVA"});
}

TEST_F(ScenarioTest, ReportsEveryProblemAtOnceWithLines) {
  const std::string text =
      Replace(Replace(Valid(), "n = 2", "n = 0"), "seed = 3", "seed = \"three\"") +
      "\n[planner]\nbeamz = 3\nsearch = \"greedy\"\n";
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
                            "steps = 10\neta = 0.5\nguidance = 2.0"));
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ(spec->dynamics_backend, "diffusion");
  EXPECT_EQ(spec->diffusion.model_path, dir_.File("models/diffusion.pt"));
  EXPECT_EQ(spec->diffusion.config, "cpu");
  EXPECT_EQ(spec->diffusion.sampler.steps, 10);
  EXPECT_EQ(spec->diffusion.sampler.eta, 0.5);
  EXPECT_EQ(spec->diffusion.sampler.guidance, 2.0);
  // Mechanistic keys do not belong to the diffusion backend, and bad values are named.
  auto wrong = Parse(Replace(Valid(), mech,
                             "backend = \"diffusion\"\nmodel = \"models/diffusion.pt\"\n"
                             "calibration = \"models/calibration.json\"\nsteps = 0\n"
                             "config = \"gpu\""));
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("calibration"), std::string::npos);
  EXPECT_NE(wrong.error().message.find("steps"), std::string::npos);
  EXPECT_NE(wrong.error().message.find("gpu"), std::string::npos);
  // A binary without the torch backend says so instead of running something else.
  auto loaded = LoadDynamics(*spec);
  ASSERT_FALSE(loaded);
  EXPECT_EQ(loaded.error().code, ErrorCode::kUnsupported);
}

TEST_F(ScenarioTest, ShippedScenariosAreValid) {
  for (const char* name : {"tace_demo", "tace_cohort_eval", "tace_cohort_eval_diffusion"}) {
    auto spec =
        LoadScenario(std::string(MEWM_SOURCE_DIR) + "/scenarios/" + name + "/scenario.toml");
    EXPECT_TRUE(spec) << name << ": " << spec.error().message;
  }
}

TEST(SpearmanTest, RanksWithTiesAndRefusesConstantSides) {
  EXPECT_DOUBLE_EQ(Spearman({1, 2, 3, 4}, {10, 20, 30, 40}), 1.0);
  EXPECT_DOUBLE_EQ(Spearman({1, 2, 3, 4}, {4, 3, 2, 1}), -1.0);
  EXPECT_NEAR(Spearman({1, 2, 2, 3}, {1, 2, 3, 4}), 0.9487, 1e-4);
  EXPECT_TRUE(std::isnan(Spearman({1, 1, 1}, {1, 2, 3})));
  EXPECT_TRUE(std::isnan(Spearman({1, 2}, {1, 2, 3})));
}

}  // namespace
}  // namespace mewm::scenarios
