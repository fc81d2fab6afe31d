// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The vlm policy backend: training is deterministic and resumable, the trained model proposes
// distinct valid plans with findings on synthetic patients, and every misuse is a clear error.
// One binary (libtorch costs ~0.7 s per process); the whole file runs in a few seconds.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "mewm/core/file_util.h"
#include "mewm/policy/vlm_backend.h"
#include "mewm/run/backends.h"
#include "mewm/run/scenario.h"
#include "mewm/world/synthetic_world.h"

namespace mewm::policy {
namespace {

namespace fs = std::filesystem;

/// Toy examples: random CT, a spherical mask of varying size, a short note; the true hazards
/// favour a plan that depends on the note (AFP high -> an anthracycline plan).
std::vector<VlmTrainingExample> ToyExamples(int n, std::uint64_t seed) {
  const ActionBase& actions = ActionBase::Default();
  auto grammar = PlanGrammar::Create(actions, {});
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<VlmTrainingExample> out;
  const int s = kVlmCropSize;
  for (int i = 0; i < n; ++i) {
    VlmTrainingExample ex;
    ex.input.id = "T" + std::to_string(i);
    ex.input.ct.resize(std::size_t(s) * s * s);
    ex.input.tumor.resize(ex.input.ct.size());
    const double r = 3.0 + (i % 5);
    for (int k = 0; k < s; ++k)
      for (int j = 0; j < s; ++j)
        for (int x = 0; x < s; ++x) {
          const std::size_t o = std::size_t(x + s * (j + s * k));
          ex.input.ct[o] = 0.2f * u(rng);
          const double d2 = (x - 16) * (x - 16) + (j - 16) * (j - 16) + (k - 16) * (k - 16);
          ex.input.tumor[o] = d2 <= r * r ? 1.f : 0.f;
        }
    const bool high = i % 2 == 0;
    ex.input.note = std::string("Referral. AFP ") + (high ? "1,250 ng/mL" : "12 ng/mL") + ".";
    ex.input.covariates.child_pugh = i % 3 == 0 ? 'B' : 'A';
    ex.input.measured = {1, 8.0 * r, 100.0, 0.1, ex.input.covariates.child_pugh};
    const Plan favoured = *actions.ParsePlan(high ? "Lipiodol+Epirubicin" : "Lipiodol+Cisplatin");
    for (const Plan& p : grammar->plans()) {
      ex.plan_risks.push_back({p, p == favoured ? 0.5 : 1.0 + 0.01 * double(p.size())});
    }
    out.push_back(std::move(ex));
  }
  return out;
}

class VlmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("mewm-vlm-test-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  VlmTrainOptions Options(const std::string& out, int epochs) const {
    VlmTrainOptions o;
    o.out = out;
    o.epochs = epochs;
    o.batch = 4;
    o.threads = 1;
    o.seed = 7;
    return o;
  }
  /// Patient `index` of a coarse synthetic world (tumor region only: fast).
  static PatientCase Rendered(int index) {
    scenarios::WorldConfig config;
    config.spacing_mm = 3.0;
    auto world = scenarios::SyntheticWorld::Create(config, ActionBase::Default());
    EXPECT_TRUE(world);
    auto patient = world->Render(world->Sample(5, index), /*tumor_region_only=*/true);
    EXPECT_TRUE(patient) << patient.error().ToString();
    return std::move(patient).value();
  }

  /// What the checkpoint proposes for a patient: the plans and their exact log-probabilities.
  std::string Answer(const std::string& checkpoint, const PatientCase& patient) const {
    VlmOptions options;
    options.checkpoint = checkpoint;
    options.top_k = 8;
    options.threads = 1;
    auto model = CreateVlmPolicy(options, ActionBase::Default());
    EXPECT_TRUE(model) << model.error().ToString();
    auto proposal = (*model)->Propose(patient);
    EXPECT_TRUE(proposal) << proposal.error().ToString();
    std::string out;
    for (const RankedPlan& r : proposal->plans) {
      char lp[40];
      std::snprintf(lp, sizeof(lp), " %.17g\n", r.log_prob);
      out += r.plan.ToString() + lp;
    }
    return out;
  }
  fs::path dir_;
};

/// Same seed, same bytes; an interrupted run resumed from its state ends with the same bytes as an
/// uninterrupted one; another seed gives other weights.
TEST_F(VlmTest, TrainingIsDeterministicAndResumable) {
  const auto examples = ToyExamples(12, 1);
  const ActionBase& actions = ActionBase::Default();
  auto a = TrainVlm(examples, actions, Options(Path("a.pt"), 3));
  ASSERT_TRUE(a) << a.error().ToString();
  EXPECT_EQ(a->epochs.size(), 3u);
  EXPECT_GT(a->parameters, 100000);
  EXPECT_EQ(a->train_patients + a->validation_patients, 12);
  EXPECT_GE(a->best_epoch, 1);  // the lowest validation loss among the 3 epochs
  EXPECT_LE(a->best_epoch, 3);
  ASSERT_TRUE(TrainVlm(examples, actions, Options(Path("b.pt"), 3)));
  // Interrupted after 1 epoch, then resumed to 3.
  ASSERT_TRUE(TrainVlm(examples, actions, Options(Path("c.pt"), 1)));
  VlmTrainOptions resume = Options(Path("c.pt"), 3);
  resume.resume = true;
  auto c = TrainVlm(examples, actions, resume);
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(c->resumed_from_epoch, 1);
  EXPECT_EQ(c->epochs.size(), 2u);
  VlmTrainOptions other = Options(Path("d.pt"), 3);
  other.seed = 8;
  ASSERT_TRUE(TrainVlm(examples, actions, other));
  const PatientCase patient = Rendered(0);
  const std::string answer = Answer(Path("a.pt"), patient);
  EXPECT_EQ(answer, Answer(Path("b.pt"), patient));
  EXPECT_EQ(answer, Answer(Path("c.pt"), patient));
  EXPECT_NE(answer, Answer(Path("d.pt"), patient));
  EXPECT_LT(fs::file_size(Path("a.pt")), 20u << 20);
  // A resume of another run is refused rather than silently mixed, naming what differs (another
  // seed, learning rate, or examples), and the state is left as it is.
  const std::string state_file = Path("c.pt") + ".state/state.json";
  const std::string saved = *ReadFile(state_file);
  const auto refusal = [&](const VlmTrainOptions& o, const std::vector<VlmTrainingExample>& data) {
    auto r = TrainVlm(data, actions, o);
    EXPECT_EQ(*ReadFile(state_file), saved);
    if (r) ADD_FAILURE() << "another run's state was resumed";
    return r ? Error{} : r.error();
  };
  VlmTrainOptions wrong = Options(Path("c.pt"), 4);
  wrong.resume = true;
  wrong.seed = 9;
  Error e = refusal(wrong, examples);
  EXPECT_EQ(e.code, ErrorCode::kMismatch);
  EXPECT_NE(e.message.find("seed: the state has 7, this run has 9"), std::string::npos)
      << e.message;
  wrong = Options(Path("c.pt"), 4);
  wrong.resume = true;
  wrong.lr = 2e-3;
  EXPECT_NE(refusal(wrong, examples).message.find("lr: the state has 0.001, this run has 0.002"),
            std::string::npos);
  auto edited = examples;
  edited[5].input.note += " edited";
  wrong.lr = resume.lr;
  e = refusal(wrong, edited);
  EXPECT_EQ(e.code, ErrorCode::kMismatch);
  EXPECT_NE(e.message.find("\n  data: the state has"), std::string::npos) << e.message;
  // Fewer epochs than the state has done.
  wrong = Options(Path("c.pt"), 2);
  wrong.resume = true;
  e = refusal(wrong, examples);
  EXPECT_EQ(e.code, ErrorCode::kInvalidArgument);
  EXPECT_NE(e.message.find("at epoch 3, past the 2 epochs asked"), std::string::npos) << e.message;
  // A state saved before runs were recorded names only its seed, config and patient count: those
  // are still checked, and a match resumes.
  const nlohmann::json run = nlohmann::json::parse(saved).at("run");
  nlohmann::json legacy = nlohmann::json::parse(saved);
  legacy.erase("run");
  legacy["seed"] = run.at("seed");
  legacy["config"] = run.at("config");
  legacy["patients"] = run.at("patients");
  ASSERT_TRUE(WriteFileAtomic(state_file, legacy.dump()));
  wrong = Options(Path("c.pt"), 4);
  wrong.resume = true;
  wrong.seed = 9;
  EXPECT_EQ(TrainVlm(examples, actions, wrong).error().code, ErrorCode::kMismatch);
  auto legacy_resumed = TrainVlm(examples, actions, resume);  // 3 epochs asked, 3 done
  ASSERT_TRUE(legacy_resumed) << legacy_resumed.error().ToString();
  EXPECT_EQ(legacy_resumed->resumed_from_epoch, 3);
  EXPECT_TRUE(legacy_resumed->epochs.empty());
  // Epoch counts the trainer never writes are refused as corrupt, and the state is kept; a
  // state without its best validation loss still resumes.
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, nlohmann::json>>{{"epoch", -1},
                                                           {"epoch", 1e300},
                                                           {"epoch", "3"},
                                                           {"best_epoch", "x"},
                                                           {"best_epoch", 9},
                                                           {"best_epoch", -2}}) {
    nlohmann::json bad = legacy;
    bad[key] = value;
    ASSERT_TRUE(WriteFileAtomic(state_file, bad.dump()));
    auto r = TrainVlm(examples, actions, resume);
    ASSERT_FALSE(r) << key << " " << value.dump();
    EXPECT_EQ(r.error().code, ErrorCode::kCorruptData) << r.error().message;
    EXPECT_NE(r.error().message.find(key), std::string::npos) << r.error().message;
    EXPECT_EQ(*ReadFile(state_file), bad.dump());
  }
  legacy.erase("best_val_loss");
  ASSERT_TRUE(WriteFileAtomic(state_file, legacy.dump()));
  auto without_loss = TrainVlm(examples, actions, resume);
  ASSERT_TRUE(without_loss) << without_loss.error().ToString();
}

/// The trained model on rendered synthetic patients: K distinct valid plans, best first, with
/// findings; contraindications hold; the ablation inputs run; the registry creates it.
TEST_F(VlmTest, ProposesDistinctValidPlansWithFindingsOnRenderedPatients) {
  const ActionBase& actions = ActionBase::Default();
  ASSERT_TRUE(TrainVlm(ToyExamples(8, 2), actions, Options(Path("m.pt"), 2)));
  VlmOptions options;
  options.checkpoint = Path("m.pt");
  options.top_k = 6;
  options.threads = 1;
  for (const std::string inputs : {"both", "image", "note"}) {
    options.inputs = inputs;
    auto model = CreateVlmPolicy(options, actions);
    ASSERT_TRUE(model) << model.error().ToString();
    EXPECT_EQ((*model)->name(), "vlm");
    for (int index = 0; index < 2; ++index) {
      PatientCase patient = Rendered(index);
      patient.note = "Child-Pugh " + std::string(1, patient.covariates.child_pugh);
      patient.covariates.child_pugh = index == 0 ? 'B' : 'A';
      auto proposal = (*model)->Propose(patient);
      ASSERT_TRUE(proposal) << proposal.error().ToString();
      ASSERT_EQ(proposal->plans.size(), 6u);
      std::set<Plan> distinct;
      for (std::size_t i = 0; i < proposal->plans.size(); ++i) {
        const RankedPlan& r = proposal->plans[i];
        EXPECT_TRUE(actions.Validate(r.plan)) << r.plan.ToString();
        EXPECT_TRUE(distinct.insert(r.plan).second);
        if (i > 0) {
          EXPECT_LE(r.log_prob, proposal->plans[i - 1].log_prob);
        }
        if (index == 0) {
          EXPECT_FALSE(r.plan.Contains("Absolute Alcohol"));
        }
      }
      ASSERT_TRUE(proposal->findings);
      EXPECT_GE(proposal->findings->lesion_count, 1);
      EXPECT_NE(proposal->rationale.find("VLM findings"), std::string::npos);
      EXPECT_FALSE(proposal->drugs.empty());
      EXPECT_EQ(proposal->embolics.front(), "Lipiodol");
    }
  }
  // Through the registry, as a scenario creates it; without the factory, a clear error.
  scenarios::ScenarioSpec spec;
  spec.policy_backend = "vlm";
  spec.vlm.checkpoint = Path("m.pt");
  spec.vlm.threads = 1;
  auto with = scenarios::BackendRegistry::Builtin({}, VlmFactoryFunction()).CreatePolicy(spec);
  ASSERT_TRUE(with) << with.error().ToString();
  auto without = scenarios::BackendRegistry::Builtin().CreatePolicy(spec);
  ASSERT_FALSE(without);
  EXPECT_EQ(without.error().code, ErrorCode::kUnsupported);
}

TEST_F(VlmTest, MisuseIsAClearError) {
  const ActionBase& actions = ActionBase::Default();
  EXPECT_EQ(TrainVlm(ToyExamples(3, 1), actions, Options(Path("x.pt"), 1)).error().code,
            ErrorCode::kInvalidArgument);
  VlmTrainOptions bad = Options(Path("x.pt"), 1);
  bad.temperature = 0.0;
  EXPECT_EQ(TrainVlm(ToyExamples(6, 1), actions, bad).error().code, ErrorCode::kInvalidArgument);
  auto no_plan = ToyExamples(6, 1);
  no_plan[2].plan_risks.clear();
  auto refused = TrainVlm(no_plan, actions, Options(Path("x.pt"), 1));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("'T2'"), std::string::npos);
  auto short_crop = ToyExamples(6, 1);
  short_crop[1].input.ct.resize(10);
  EXPECT_EQ(TrainVlm(short_crop, actions, Options(Path("x.pt"), 1)).error().code,
            ErrorCode::kInvalidArgument);

  VlmOptions options;
  EXPECT_EQ(CreateVlmPolicy(options, actions).error().code, ErrorCode::kInvalidArgument);
  options.checkpoint = Path("missing.pt");
  EXPECT_FALSE(CreateVlmPolicy(options, actions));
  options.top_k = 0;
  EXPECT_EQ(CreateVlmPolicy(options, actions).error().code, ErrorCode::kInvalidArgument);
  options.top_k = 3;
  options.inputs = "audio";
  EXPECT_EQ(CreateVlmPolicy(options, actions).error().code, ErrorCode::kInvalidArgument);
  options.inputs = "both";

  // A checkpoint trained on this action base refuses another one's items.
  ASSERT_TRUE(TrainVlm(ToyExamples(6, 1), actions, Options(Path("m.pt"), 1)));
  options.checkpoint = Path("m.pt");
  options.threads = 1;
  std::string other = ActionBase::DefaultToml();
  other += "\n[[drug]]\nname = \"Doxorubicin\"\nclass = \"anthracycline\"\n";
  auto other_base = ActionBase::FromToml(other, "other.toml");
  ASSERT_TRUE(other_base) << other_base.error().ToString();
  auto mismatch = CreateVlmPolicy(options, *other_base);
  ASSERT_FALSE(mismatch);
  EXPECT_EQ(mismatch.error().code, ErrorCode::kMismatch);
  // A corrupted checkpoint is caught by its checksum.
  {
    std::string bytes = *ReadFile(Path("m.pt"));
    bytes[bytes.size() / 2] ^= 0x5A;
    ASSERT_TRUE(WriteFileAtomic(Path("m.pt"), bytes));
  }
  auto corrupt = CreateVlmPolicy(options, actions);
  ASSERT_FALSE(corrupt);
  EXPECT_EQ(corrupt.error().code, ErrorCode::kCorruptData);
}

}  // namespace
}  // namespace mewm::policy
