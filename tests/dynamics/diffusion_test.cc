// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The diffusion dynamics: configs, crops, a real (tiny) training run, the backend's contract
// (conditioning, determinism, batching) and its errors. diffusion_shipped_test.cc checks the
// shipped checkpoint.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <utility>
#include <vector>

#include "../core/test_env.h"
#include "mewm/core/file_util.h"
#include "mewm/core/seed.h"
#include "mewm/core/sha256.h"
#include "mewm/core/stats.h"
#include "mewm/dynamics/diffusion_backend.h"
#include "mewm/tace/tumor_features.h"

namespace mewm::dynamics {
namespace {

namespace fs = std::filesystem;

Plan P(const std::string& text) { return *ActionBase::Default().ParsePlan(text); }

/// A small config that trains in seconds: 16^3 crops at 3 mm.
DiffusionConfig Tiny() {
  DiffusionConfig c = *DiffusionConfig::Preset("cpu", ActionBase::Default());
  c.name = "tiny";
  c.crop_voxels = 16;
  c.spacing_mm = 3.0;
  c.latent_channels = 4;
  c.ae_channels = {4, 8, 8};
  c.unet_channels = {8, 8};
  c.embed_dim = 16;
  c.train_timesteps = 50;
  return c;
}

/// A tiny training run on one thread: `steps` of each stage at `batch`, validated every
/// `validate_every` steps.
DiffusionTrainOptions TinyTraining(std::uint64_t seed, int steps, int batch, int validate_every) {
  DiffusionTrainOptions o;
  o.config = Tiny();
  o.seed = seed;
  o.ae_steps = steps;
  o.ae_batch = batch;
  o.ae_patch = 16;
  o.denoiser_steps = steps;
  o.denoiser_batch = batch;
  o.validate_every = validate_every;
  o.threads = 1;
  return o;
}

/// A 48 mm cube of liver with spherical tumors of `radius` mm at `centres` (lesion k = label k+1).
PatientCase Phantom(const std::vector<Eigen::Vector3d>& centres, double radius = 9.0,
                    double tumor_hu = 100.0) {
  const Geometry g = Geometry::Isotropic(1.5, {-60, -60, -60});
  DenseFloat ct({80, 80, 80}, g, 55.0f);
  DenseLabel tumor({80, 80, 80}, g, 0);
  for (int k = 0; k < 80; ++k)
    for (int j = 0; j < 80; ++j)
      for (int i = 0; i < 80; ++i) {
        const Eigen::Vector3d w = g.IndexToWorld({double(i), double(j), double(k)});
        for (std::size_t c = 0; c < centres.size(); ++c) {
          if ((w - centres[c]).norm() < radius) {
            tumor.at(i, j, k) = std::int32_t(c + 1);
            ct.at(i, j, k) = float(tumor_hu);
          }
        }
      }
  PatientCase p{"D1", *Volume::FromDense(ct, "ct"), *LabelVolume::FromDense(tumor, "tumor"),
                std::nullopt, Covariates{}};
  p.covariates.age_years = 60;
  return p;
}

/// Six phantom patients (patient n, from 0 to 5, has a tumor of radius 8 + n mm), each under
/// each of `plans`, which leaves patient n the share `kept(plan, n)` of the tumor's radius.
std::vector<DiffusionPair> PairsBy(const DiffusionConfig& config,
                                   const std::vector<std::string>& plans,
                                   const std::function<double(const std::string&, int)>& kept) {
  std::vector<DiffusionPair> pairs;
  for (int n = 0; n < 6; ++n) {
    const PatientCase pre = Phantom({{double(n % 3) * 3.0, 0, 0}}, 8.0 + n);
    const LesionTile crop = LesionCrops(pre, config)->front();
    const CropSpec& spec = crop.spec;
    for (const std::string& plan : plans) {
      const PatientCase post =
          Phantom({{double(n % 3) * 3.0, 0, 0}}, (8.0 + n) * kept(plan, n), 20.0);
      pairs.push_back({pre.id, P(plan), *ExtractChannels(pre.ct, pre.tumor, spec, config.window),
                       *ExtractChannels(post.ct, post.tumor, spec, config.window), crop.diameter_mm,
                       pre.covariates, *ComputeTumorFeatures(pre.ct, pre.tumor)});
    }
  }
  return pairs;
}

/// Training pairs where the post-treatment tumor shrinks more with an embolic than with a drug:
/// a learnable, plan-dependent response.
/// PairsBy's six patients, each under each plan of `kept_by_plan` (the plan, and the share of the
/// tumor's radius it leaves).
std::vector<DiffusionPair> Pairs(const DiffusionConfig& config,
                                 const std::vector<std::pair<std::string, double>>& kept_by_plan = {
                                     {"Lipiodol+Epirubicin", 0.8}, {"Lipiodol+PVA", 0.3}}) {
  std::vector<std::string> plans;
  for (const auto& entry : kept_by_plan) plans.push_back(entry.first);
  return PairsBy(config, plans, [&kept_by_plan](const std::string& plan, int) {
    for (const auto& [name, kept] : kept_by_plan) {
      if (name == plan) return kept;
    }
    return 1.0;
  });
}

/// The sum of an outcome's viable fraction over its voxels (its residual, in voxels).
double ViableSum(const Outcome& o) {
  const auto f = o.viable_fraction->ToDense().data;
  return std::accumulate(f.begin(), f.end(), 0.0);
}

/// The largest absolute difference between two volumes' voxels (infinite for different sizes).
double MaxDifference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double max_diff = 0.0;
  for (std::size_t x = 0; x < a.size(); ++x) {
    max_diff = std::max(max_diff, double(std::abs(a[x] - b[x])));
  }
  return max_diff;
}

class DiffusionTest : public testing::VdbTest {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    DiffusionTrainOptions o = TinyTraining(5, 30, 4, 10);
    o.out = (dir_->path() / "tiny.pt").string();
    o.metadata_json = R"({"command":"test"})";
    auto pairs = Pairs(o.config);
    auto report = TrainDiffusion(pairs, {}, o, {});
    ASSERT_TRUE(report) << report.error().ToString();
    model_path_ = new std::string(o.out);
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete model_path_;
  }
  static DiffusionBackendOptions Options() {
    DiffusionBackendOptions o;
    o.model_path = *model_path_;
    o.config = "";  // the tiny config it records
    o.sampler.steps = 4;
    o.threads = 1;
    return o;
  }
  static std::unique_ptr<DiffusionDynamics> Model() {
    auto m = CreateDiffusionDynamics(Options());
    EXPECT_TRUE(m) << m.error().ToString();
    return m ? std::move(*m) : nullptr;
  }
  /// The tiny model fine-tuned for 10 steps with `config` (seeded by `seed`), saved as `name` in
  /// the suite's folder and loaded; nullptr after a failed expectation.
  static std::unique_ptr<DiffusionDynamics> FineTuned(std::uint64_t seed,
                                                      const DiffusionConfig& config,
                                                      const std::string& name) {
    DiffusionTrainOptions t = TinyTraining(seed, 10, 4, 100);
    t.init_from = *model_path_;
    t.config = config;
    t.out = (dir_->path() / name).string();
    auto tuned = TrainDiffusion(Pairs(t.config), {}, t, {});
    EXPECT_TRUE(tuned) << tuned.error().ToString();
    if (!tuned) return nullptr;
    DiffusionBackendOptions o = Options();
    o.model_path = t.out;
    auto m = CreateDiffusionDynamics(o);
    EXPECT_TRUE(m) << m.error().ToString();
    return m ? std::move(*m) : nullptr;
  }
  /// The tiny model fine-tuned by `t` on `pairs`, with a head that tells the members of an item
  /// group apart (DiffusionConfig::HeadReadsEachItem), loaded anchored. Expects the head to have
  /// learned the contrast between a crop's plans, which a head reading the group cannot see;
  /// nullptr after a failed expectation.
  static std::unique_ptr<DiffusionDynamics> AnchoredItemHead(
      const DiffusionTrainOptions& t, const std::vector<DiffusionPair>& pairs) {
    auto tuned = TrainDiffusion(pairs, {}, t, {});
    EXPECT_TRUE(tuned) << tuned.error().ToString();
    if (!tuned) return nullptr;
    const nlohmann::json head =
        TrainingRecord(t.out).value("response_head", nlohmann::json::object());
    EXPECT_LT(head.value("train_contrast_rmse", 1e9),
              0.25 * head.value("validation_no_contrast_rmse", 0.0))
        << head.dump();
    DiffusionBackendOptions anchored = Options();
    anchored.model_path = t.out;
    anchored.anchor_level = true;
    auto m = CreateDiffusionDynamics(anchored);
    EXPECT_TRUE(m) << m.error().ToString();
    return m ? std::move(*m) : nullptr;
  }
  /// The tiny model's fine-tune (seeded by `seed`, written as `name` in the suite's folder) with a
  /// response head and every drug in one saturating group: the setup of the heads that tell drugs
  /// apart.
  static DiffusionTrainOptions GroupedDrugHead(std::uint64_t seed, const std::string& name) {
    DiffusionTrainOptions t = TinyTraining(seed, 10, 4, 100);
    t.init_from = *model_path_;
    t.config.response_head = true;
    t.config.item_groups = *ItemGroups(ActionBase::Default(), "all");
    t.config.group_once = true;
    t.out = (dir_->path() / name).string();
    return t;
  }
  /// A grouped-drug head with covariates (GroupedDrugHead), trained on an embolic's contrast
  /// (Lipiodol alone against Lipiodol+PVA) and written to `name`; then the options that fit its
  /// drug term alone (response_drug_only) from it. Returns the two, the head's first.
  static std::pair<DiffusionTrainOptions, DiffusionTrainOptions> HeadThenItsDrugTerm(
      std::uint64_t seed, const std::string& name) {
    DiffusionTrainOptions t = GroupedDrugHead(seed, name);
    t.config.clinical = true;
    auto head =
        TrainDiffusion(Pairs(t.config, {{"Lipiodol", 0.9}, {"Lipiodol+PVA", 0.4}}), {}, t, {});
    EXPECT_TRUE(head) << head.error().ToString();
    DiffusionTrainOptions d = t;
    d.init_from = t.out;
    d.denoiser_steps = 0;
    d.config.drug_classes = *ItemGroups(ActionBase::Default(), "class");
    d.response_drug_only = true;
    return {t, d};
  }
  /// Expects that the suite's checkpoint `from` (which has the input named `input`) cannot start
  /// a model without it: kMismatch naming the input.
  static void ExpectNoFineTuneDropping(const std::string& from, const std::string& input) {
    DiffusionTrainOptions t = TinyTraining(15, 10, 4, 100);
    t.init_from = (dir_->path() / from).string();
    t.out = (dir_->path() / ("without_" + input + ".pt")).string();
    auto back = TrainDiffusion(Pairs(t.config), {}, t, {});
    ASSERT_FALSE(back);
    EXPECT_EQ(back.error().code, ErrorCode::kMismatch);
    EXPECT_NE(back.error().message.find(input), std::string::npos) << back.error().message;
  }
  /// What the checkpoint at `path` records of its training (its metadata's "training").
  static nlohmann::json TrainingRecord(const std::string& path) {
    DiffusionBackendOptions o = Options();
    o.model_path = path;
    auto model = CreateDiffusionDynamics(o);
    EXPECT_TRUE(model) << model.error().ToString();
    return model ? nlohmann::json::parse((*model)->metadata_json()).at("training")
                 : nlohmann::json::object();
  }
  /// Expects the loss weight `weight` of `t` refused when negative or NaN, and with a
  /// distillation (which trains against its teacher, not the true outcomes).
  static void ExpectWeightRefused(DiffusionTrainOptions t, double DiffusionTrainOptions::*weight,
                                  const std::vector<DiffusionPair>& pairs) {
    for (double bad : {-1.0, std::nan("")}) {
      t.*weight = bad;
      const auto refused = TrainDiffusion(pairs, {}, t, {});
      ASSERT_FALSE(refused);
      EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
    }
    t.residual_weight = t.pair_weight = 0.0;
    t.*weight = 1.0;
    t.init_from.clear();
    t.distill_from = *model_path_;
    const auto distilled = TrainDiffusion(pairs, {}, t, {});
    ASSERT_FALSE(distilled);
    EXPECT_EQ(distilled.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(distilled.error().message.find("distill"), std::string::npos)
        << distilled.error().message;
  }
  /// The post-treatment CT of `p`'s one outcome of Lipiodol+PVA, seeded by `seed`; empty after a
  /// failed expectation.
  static std::vector<float> PostCt(DiffusionDynamics& model, const PatientCase& p,
                                   std::uint64_t seed) {
    auto outcomes = model.Simulate(p, {{P("Lipiodol+PVA"), 0, seed, 0}});
    EXPECT_TRUE(outcomes) << outcomes.error().ToString();
    return outcomes ? outcomes->front().post_ct.ToDense().data : std::vector<float>{};
  }
  static testing::TempDir* dir_;
  static std::string* model_path_;
};
testing::TempDir* DiffusionTest::dir_ = nullptr;
std::string* DiffusionTest::model_path_ = nullptr;

TEST_F(DiffusionTest, ConfigRoundTripsAndRejectsBadValues) {
  const DiffusionConfig c = *DiffusionConfig::Preset("mewm", ActionBase::Default());
  EXPECT_EQ(c.crop_voxels, 96);
  EXPECT_EQ(c.latent_voxels(), 24);
  auto back = DiffusionConfig::FromJson(c.ToJson(), "test");
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(back->ToJson(), c.ToJson());
  EXPECT_EQ(DiffusionConfig::Preset("huge", ActionBase::Default()).error().code,
            ErrorCode::kInvalidArgument);
  DiffusionConfig bad = c;
  bad.crop_voxels = 30;
  EXPECT_FALSE(bad.Validate());
  bad = c;
  bad.items.push_back(bad.items.front());
  EXPECT_FALSE(bad.Validate());
  EXPECT_EQ(DiffusionConfig::FromJson("{\"name\":1}", "x.json").error().code, ErrorCode::kParse);
  // Checkpoints from before World v2 record no mask channel: they were trained on the mask.
  nlohmann::json old = nlohmann::json::parse(c.ToJson());
  EXPECT_EQ(old.at("mask_channel"), "viable_fraction");
  old.erase("mask_channel");
  EXPECT_EQ(DiffusionConfig::FromJson(old.dump(), "v1.pt")->mask_channel, "viable_mask");
  bad = c;
  bad.mask_channel = "density";
  EXPECT_FALSE(bad.Validate());
  // Distilled guidance is written only when there is some, and read back.
  EXPECT_FALSE(old.contains("guidance_distilled"));
  DiffusionConfig distilled = c;
  distilled.guidance_distilled = 2.5;
  EXPECT_DOUBLE_EQ(DiffusionConfig::FromJson(distilled.ToJson(), "d.pt")->guidance_distilled, 2.5);
  distilled.guidance_distilled = 0.5;
  EXPECT_FALSE(distilled.Validate());
  // Likewise the lesion-size input.
  EXPECT_FALSE(old.contains("lesion_size"));
  EXPECT_FALSE(DiffusionConfig::FromJson(old.dump(), "v1.pt")->lesion_size);
  DiffusionConfig sized = c;
  sized.lesion_size = true;
  EXPECT_TRUE(DiffusionConfig::FromJson(sized.ToJson(), "s.pt")->lesion_size);
  EXPECT_NEAR(LesionSizeFeature(35.0), 0.0, 1e-12);
  EXPECT_NEAR(LesionSizeFeature(70.0), std::log(2.0), 1e-12);
  EXPECT_TRUE(std::isfinite(LesionSizeFeature(0.0)));
  // Likewise the items' size slopes, which need the size input.
  EXPECT_FALSE(old.contains("item_size"));
  sized.item_size = true;
  EXPECT_TRUE(DiffusionConfig::FromJson(sized.ToJson(), "s.pt")->item_size);
  DiffusionConfig unsized = c;
  unsized.item_size = true;
  ASSERT_FALSE(unsized.Validate());
  EXPECT_NE(unsized.Validate().error().message.find("lesion_size"), std::string::npos);
  // Likewise the items' enhancement slopes, and their feature.
  EXPECT_FALSE(old.contains("item_enhancement"));
  DiffusionConfig enhanced = c;
  enhanced.item_enhancement = true;
  EXPECT_TRUE(DiffusionConfig::FromJson(enhanced.ToJson(), "e.pt")->item_enhancement);
  EXPECT_FALSE(DiffusionConfig::FromJson(c.ToJson(), "c.pt")->item_enhancement);
  EXPECT_NEAR(EnhancementFeature(90.0), 0.0, 1e-12);
  EXPECT_NEAR(EnhancementFeature(110.0), 1.0, 1e-12);
  // Likewise the response head.
  EXPECT_FALSE(old.contains("response_head"));
  DiffusionConfig headed = c;
  headed.response_head = true;
  EXPECT_TRUE(DiffusionConfig::FromJson(headed.ToJson(), "h.pt")->response_head);
  EXPECT_FALSE(DiffusionConfig::FromJson(c.ToJson(), "c.pt")->response_head);
  // Likewise the head's signs of drug sensitivity, which need the head, and their features.
  EXPECT_FALSE(old.contains("response_sensitivity"));
  headed.response_sensitivity = true;
  EXPECT_TRUE(DiffusionConfig::FromJson(headed.ToJson(), "h.pt")->response_sensitivity);
  EXPECT_FALSE(DiffusionConfig::FromJson(c.ToJson(), "c.pt")->response_sensitivity);
  DiffusionConfig headless = c;
  headless.response_sensitivity = true;
  ASSERT_FALSE(headless.Validate());
  EXPECT_NE(headless.Validate().error().message.find("response_head"), std::string::npos);
  // Likewise the head's per-item size slopes, which need the head and the size.
  EXPECT_FALSE(old.contains("response_item_size"));
  DiffusionConfig item_sized = sized;
  item_sized.response_head = true;
  item_sized.response_item_size = true;
  EXPECT_TRUE(DiffusionConfig::FromJson(item_sized.ToJson(), "i.pt")->response_item_size);
  EXPECT_FALSE(DiffusionConfig::FromJson(headed.ToJson(), "h.pt")->response_item_size);
  for (DiffusionConfig lacking : {headed, sized}) {  // no size, then no head
    lacking.response_item_size = true;
    ASSERT_FALSE(lacking.Validate());
    EXPECT_NE(lacking.Validate().error().message.find("response_item_size needs"),
              std::string::npos);
  }
  // Likewise the head's drug classes, which need the head and the covariates, name a drug, have
  // one entry per item and exclude the head that reads each drug by name.
  EXPECT_FALSE(old.contains("drug_classes"));
  DiffusionConfig classed = c;
  classed.response_head = true;
  classed.clinical = true;
  classed.drug_classes = *ItemGroups(ActionBase::Default(), "class");
  ASSERT_TRUE(classed.Validate()) << classed.Validate().error().ToString();
  EXPECT_TRUE(classed.HeadReadsEachItem());
  EXPECT_EQ(DiffusionConfig::FromJson(classed.ToJson(), "d.pt")->drug_classes,
            classed.drug_classes);
  EXPECT_FALSE(DiffusionConfig::FromJson(c.ToJson(), "c.pt")->HeadReadsEachItem());
  const auto refused = [&](DiffusionConfig wrong, const std::string& why) {
    ASSERT_FALSE(wrong.Validate()) << why;
    EXPECT_NE(wrong.Validate().error().message.find(why), std::string::npos)
        << wrong.Validate().error().message;
  };
  for (bool head : {false, true}) {
    DiffusionConfig lacking = classed;
    (head ? lacking.response_head : lacking.clinical) = false;
    refused(lacking, "drug_classes needs response_head and clinical");
  }
  DiffusionConfig both = classed;
  both.response_sensitivity = true;
  refused(both, "exclude each other");
  DiffusionConfig short_list = classed;
  short_list.drug_classes.pop_back();
  refused(short_list, "one entry per item");
  DiffusionConfig no_drug = classed;
  no_drug.drug_classes.assign(classed.items.size(), "");
  refused(no_drug, "names no drug");
  TumorFeatures tumor;
  tumor.sd_hu = 25.0;
  EXPECT_EQ(SensitivityFeatures(tumor), (std::array<double, 2>{0.0, 0.0}));
  tumor.sd_hu = 35.0;
  tumor.necrotic_fraction = 0.1;
  EXPECT_EQ(SensitivityFeatures(tumor), (std::array<double, 2>{2.0, 2.0}));
  // Likewise the clinical input, and its features.
  EXPECT_FALSE(old.contains("clinical"));
  EXPECT_FALSE(DiffusionConfig::FromJson(old.dump(), "v1.pt")->clinical);
  DiffusionConfig clinical = c;
  clinical.clinical = true;
  EXPECT_TRUE(DiffusionConfig::FromJson(clinical.ToJson(), "c.pt")->clinical);
  Covariates typical;
  typical.afp_ng_ml = std::pow(10.0, 1.5);
  typical.age_years = 62;
  EXPECT_EQ(ClinicalFeatures(typical), (std::array<double, 3>{0.0, 0.0, 0.0}));
  typical.afp_ng_ml = 0.0;  // no AFP reads as 0.1 ng/mL, finite
  typical.vascular_invasion = true;
  typical.age_years = 80;
  EXPECT_EQ(ClinicalFeatures(typical), (std::array<double, 3>{-2.5, 1.0, 2.0}));
  // A texture model is written only when fitted, read back, and checked bin by bin.
  EXPECT_FALSE(old.contains("texture"));
  EXPECT_TRUE(DiffusionConfig::FromJson(old.dump(), "v1.pt")->texture.empty());
  DiffusionConfig textured = c;
  textured.texture.fraction_edges = {0.5};
  textured.texture.change_edges_hu = {-20.0, 20.0};
  textured.texture.pre_edges_hu = {40.0};
  EXPECT_EQ(textured.texture.bins(), 24u);
  textured.texture.offset_hu.assign(24, 0.0);
  textured.texture.noise_hu.assign(24, 0.0);
  textured.texture.offset_hu[23] = 180.0;
  textured.texture.noise_hu[12] = 8.0;
  auto read = DiffusionConfig::FromJson(textured.ToJson(), "t.pt");
  ASSERT_TRUE(read) << read.error().ToString();
  EXPECT_EQ(read->texture.offset_hu, textured.texture.offset_hu);
  EXPECT_EQ(read->texture.noise_hu, textured.texture.noise_hu);
  nlohmann::json hostile = nlohmann::json::parse(textured.ToJson());
  hostile["texture"]["offset_hu"] = {1.0, 2.0};  // not one per bin
  EXPECT_EQ(DiffusionConfig::FromJson(hostile.dump(), "h.pt").error().code,
            ErrorCode::kInvalidArgument);
  hostile = nlohmann::json::parse(textured.ToJson());
  hostile["texture"]["change_edges_hu"] = {20.0, -20.0};  // not ascending
  EXPECT_EQ(DiffusionConfig::FromJson(hostile.dump(), "h.pt").error().code,
            ErrorCode::kInvalidArgument);
  hostile = nlohmann::json::parse(textured.ToJson());
  hostile["texture"]["noise_hu"][0] = -1.0;
  EXPECT_EQ(DiffusionConfig::FromJson(hostile.dump(), "h.pt").error().code,
            ErrorCode::kInvalidArgument);
  hostile["texture"] = {{"offset_hu", nlohmann::json::array()}};
  EXPECT_EQ(DiffusionConfig::FromJson(hostile.dump(), "h.pt").error().code, ErrorCode::kParse);
  EXPECT_FALSE((SamplerConfig{0, 0.0, 1.0}.Validate()));
  EXPECT_FALSE((SamplerConfig{10, 1.5, 1.0}.Validate()));
  EXPECT_EQ(ReferenceSampler().steps, 200);
}

TEST_F(DiffusionTest, CropsCoverEveryLesionAndWeightsFadeAwayFromTheTumor) {
  const DiffusionConfig c = *DiffusionConfig::Preset("cpu", ActionBase::Default());
  // Two lesions 24 mm apart share one 96 mm crop; one 90 mm away gets its own.
  EXPECT_EQ(LesionCrops(Phantom({{-12, 0, 0}, {12, 0, 0}}), c)->size(), 1u);
  EXPECT_EQ(LesionCrops(Phantom({{-45, 0, 0}, {45, 0, 0}}), c)->size(), 2u);
  PatientCase empty = Phantom({});
  EXPECT_EQ(LesionCrops(empty, c).error().code, ErrorCode::kInvalidArgument);

  const PatientCase p = Phantom({{0, 0, 0}});
  const CropSpec spec = LesionCrops(p, c)->front().spec;
  auto ch = ExtractChannels(p.ct, p.tumor, spec, c.window);
  ASSERT_TRUE(ch) << ch.error().ToString();
  EXPECT_EQ(ch->ct.dims, (Index3{64, 64, 64}));
  EXPECT_FLOAT_EQ(ch->mask.at(32, 32, 32), 1.0f);
  EXPECT_NEAR(ch->ct.at(32, 32, 32), c.window.ToUnit(100.0f), 1e-4);
  const DenseFloat w = BlendWeight(ch->mask, c.spacing_mm, 6.0);
  EXPECT_FLOAT_EQ(w.at(32, 32, 32), 1.0f);  // tumor
  EXPECT_GT(w.at(32, 32, 39), 0.85f);       // 11 mm from the centre, 2 mm outside the tumor
  EXPECT_FLOAT_EQ(w.at(0, 32, 32), 0.0f);   // crop border
  EXPECT_LT(w.at(32, 32, 58), 0.05f);       // 39 mm out
}

TEST_F(DiffusionTest, ALesionLargerThanACropIsTiledAndServedWhole) {
  DiffusionConfig c = Tiny();
  c.crop_voxels = 32;  // 96 mm at 3 mm: a lesion above 80 mm is tiled
  auto one = LesionTiles(Phantom({{0, 0, 0}}, 12.0), c);
  ASSERT_TRUE(one);
  ASSERT_EQ(one->size(), 1u);
  EXPECT_TRUE(one->front().territory.min.array().isInf().all());
  EXPECT_EQ(one->front().spec.center_world,
            LesionCrops(Phantom({{0, 0, 0}}, 12.0), c)->front().spec.center_world);
  EXPECT_NEAR(one->front().diameter_mm, 24.0, 1.0);  // equivalent sphere of the voxelised ball
  EXPECT_EQ(LesionTiles(Phantom({{0, 0, 0}}, 45.0), Tiny()).error().code,
            ErrorCode::kInvalidArgument);  // 16-voxel crops cannot tile a 90 mm lesion

  const PatientCase big = Phantom({{0, 0, 0}}, 45.0);
  auto tiles = LesionTiles(big, c);
  ASSERT_TRUE(tiles) << tiles.error().ToString();
  ASSERT_EQ(tiles->size(), 8u);  // 90 mm: two 45 mm territories per axis
  const double reach = 0.5 * 96.0 - 24.0;
  for (const LesionTile& t : *tiles) {
    EXPECT_NEAR(t.diameter_mm, 90.0, 1.0);  // every tile reads the whole lesion's size
    for (int a = 0; a < 3; ++a) {           // each tile reaches 24 mm beyond the faces it shares
      for (double face : {t.territory.min[a], t.territory.max[a]}) {
        if (std::isfinite(face)) {
          EXPECT_LE(std::abs(face - t.spec.center_world[a]), reach + 1e-9);
        }
      }
    }
  }
  const DenseLabel tumor = big.tumor.ToDense();
  std::int64_t tumor_voxels = 0;
  for (std::int64_t k = 0; k < 80; ++k)
    for (std::int64_t j = 0; j < 80; ++j)
      for (std::int64_t i = 0; i < 80; ++i) {
        if (tumor.at(i, j, k) == 0) continue;
        ++tumor_voxels;
        const Eigen::Vector3d w = tumor.geometry.IndexToWorld({double(i), double(j), double(k)});
        int owners = 0;
        for (const LesionTile& t : *tiles) {
          owners += (w.array() >= t.territory.min.array()).all() &&
                    (w.array() < t.territory.max.array()).all();
        }
        ASSERT_EQ(owners, 1) << "voxel " << i << "," << j << "," << k;
      }

  // Served: an outcome identical to the patient comes back whole, every tumor voxel viable (the
  // decoded change is zero, the weight is 1 on the tumor of every territory) but for those
  // within a lattice cell of the surface, where the 3 mm crop's mask is interpolated. One 96 mm
  // crop would have tapered its weight from 30 mm out.
  testing::TempDir dir;
  DiffusionTrainOptions o = TinyTraining(3, 2, 2, 100);
  o.config = c;
  o.out = (dir.path() / "tiles.pt").string();
  ASSERT_TRUE(TrainDiffusion(Pairs(c), {}, o, {}));
  DiffusionBackendOptions b = Options();
  b.model_path = o.out;
  auto model = CreateDiffusionDynamics(b);
  ASSERT_TRUE(model) << model.error().ToString();
  const Outcome unchanged{P("Lipiodol"), 0, big.ct.DeepCopy(), big.tumor.DeepCopy()};
  auto served = (*model)->Reconstruct(big, unchanged);
  ASSERT_TRUE(served) << served.error().ToString();
  ASSERT_TRUE(served->viable_fraction);
  const DenseFloat fraction = served->viable_fraction->ToDense();
  std::int64_t inner = 0, whole = 0;
  for (std::int64_t k = 0; k < 80; ++k)
    for (std::int64_t j = 0; j < 80; ++j)
      for (std::int64_t i = 0; i < 80; ++i) {
        if (tumor.geometry.IndexToWorld({double(i), double(j), double(k)}).norm() >= 45.0 - 4.5) {
          continue;
        }
        ++inner;
        whole += fraction.at(i, j, k) > 0.99f;
      }
  EXPECT_GT(inner, tumor_voxels / 2);
  EXPECT_EQ(whole, inner);
  EXPECT_EQ((*model)->counters().encodes, 8);
}

TEST_F(DiffusionTest, PostCropsCarryTheContinuousViableFraction) {
  const DiffusionConfig c = *DiffusionConfig::Preset("cpu", ActionBase::Default());
  const PatientCase p = Phantom({{0, 0, 0}});
  const CropSpec spec = LesionCrops(p, c)->front().spec;
  // A partial response: 30% of the tumor survives everywhere, so the thresholded mask is empty.
  Outcome o{P("Lipiodol+Epirubicin"), 0, p.ct.DeepCopy(),
            LabelVolume(p.ct.geometry(), p.ct.extent(), "viable")};
  DenseFloat u = p.ct.ToDense();
  const DenseLabel tumor = p.tumor.ToDense();
  for (std::size_t x = 0; x < u.size(); ++x) u.data[x] = tumor.data[x] != 0 ? 0.3f : 0.0f;
  o.viable_fraction = *Volume::FromDense(u, "viable_fraction");
  auto fraction = OutcomeChannels(o, spec, c);
  ASSERT_TRUE(fraction) << fraction.error().ToString();
  EXPECT_NEAR(fraction->mask.at(32, 32, 32), 0.3f, 1e-5);
  EXPECT_FLOAT_EQ(fraction->mask.at(2, 2, 2), 0.0f);
  DiffusionConfig mask_config = c;
  mask_config.mask_channel = "viable_mask";
  EXPECT_FLOAT_EQ(OutcomeChannels(o, spec, mask_config)->mask.at(32, 32, 32), 0.0f);
  o.viable_fraction.reset();  // an outcome without a fraction falls back on its mask
  EXPECT_FLOAT_EQ(OutcomeChannels(o, spec, c)->mask.at(32, 32, 32), 0.0f);
}

TEST_F(DiffusionTest, OutcomesKeepThePreTreatmentTextureWhereTheModelChangesNothing) {
  PatientCase p = Phantom({{0, 0, 0}}, 12.0);
  Rng rng(4);
  DenseFloat noisy = p.ct.ToDense();
  for (float& v : noisy.data) v += float(15.0 * rng.Normal());
  p.ct = *Volume::FromDense(noisy, "ct");
  auto model = Model();
  ASSERT_TRUE(model);
  auto out = model->Simulate(p, {{P("Lipiodol+PVA"), 0, 7, 0}});
  ASSERT_TRUE(out) << out.error().ToString();
  // The outcome is the pre-treatment CT plus a smooth decoded change: subtracting the CT leaves
  // no scanner noise (second differences of the change are small against the 15 HU noise's).
  const DenseFloat post = out->front().post_ct.ToDense();
  std::vector<double> second;
  for (int i = 31; i < 50; ++i) {
    const auto change = [&](int x) { return double(post.at(x, 40, 40) - noisy.at(x, 40, 40)); };
    second.push_back(change(i - 1) + change(i + 1) - 2.0 * change(i));
  }
  EXPECT_LT(MeanStd(second).second, 0.3 * 15.0 * std::sqrt(6.0));
  EXPECT_EQ(post.at(2, 2, 2), noisy.at(2, 2, 2));
}

TEST_F(DiffusionTest, PlansConditionTheOutcomeAndSeedsMakeItReproducible) {
  auto model = Model();
  ASSERT_TRUE(model);
  const PatientCase p = Phantom({{0, 0, 0}});
  const SimulationRequest a{P("Lipiodol+Epirubicin"), 0, 42, 0};
  const SimulationRequest b{P("Lipiodol+PVA"), 0, 42, 0};
  auto both = model->Simulate(p, {a, b});
  ASSERT_TRUE(both) << both.error().ToString();
  ASSERT_EQ(both->size(), 2u);
  for (const Outcome& o : *both) {
    EXPECT_TRUE(CheckOutcome(o, o.plan == a.plan ? a : b, p));
    ASSERT_TRUE(o.viable_fraction.has_value());
  }
  // Same noise, different plan: a different outcome (the plan reaches the generator).
  const DenseFloat ca = (*both)[0].post_ct.ToDense(), cb = (*both)[1].post_ct.ToDense();
  double diff = 0.0;
  for (std::size_t x = 0; x < ca.size(); ++x) diff += std::abs(ca.data[x] - cb.data[x]);
  EXPECT_GT(diff, 1.0);
  // An outcome depends on its request alone, not on its batch (asked as another patient id, which
  // the model computes again rather than copying: SaturatedGroupCountsOncePerPlan).
  PatientCase again = p;
  again.id = "again";
  auto alone = model->Simulate(again, {a});
  ASSERT_TRUE(alone);
  // HU: float noise of a different batch size only.
  EXPECT_LT(MaxDifference(ca.data, (*alone)[0].post_ct.ToDense().data), 0.5);
  // Away from the tumor the CT is untouched.
  EXPECT_FLOAT_EQ((*both)[0].post_ct.GetValue(2, 2, 2), p.ct.GetValue(2, 2, 2));
  // Counters: one encode per patient id, one forward per step, one embedding per plan.
  const DiffusionCounters k = model->counters();
  EXPECT_EQ(k.encodes, 2);
  EXPECT_EQ(k.reused, 0);
  EXPECT_EQ(k.forwards, 8);
  EXPECT_EQ(k.sample_forwards, 12);
  EXPECT_EQ(k.plan_embeddings, 3);
  EXPECT_EQ(model->evaluations(), 8);
  // Planners must hand it the crop's whole context: half the 48 mm crop, plus 2 mm.
  EXPECT_DOUBLE_EQ(model->context_margin_mm(), 26.0);
  EXPECT_GT(k.denoiser_gflop, 0.0);
}

TEST_F(DiffusionTest, ACancelledBatchStopsWithinAStepAndKeepsNothing) {
  // The backend ignored cancellation: a run's cancel waited for the whole batch.
  auto model = Model();
  ASSERT_TRUE(model);
  const PatientCase p = Phantom({{0, 0, 0}});
  std::vector<SimulationRequest> requests;
  for (int n = 0; n < 12; ++n) requests.push_back({P("Lipiodol+PVA"), n, 100u + n, 0});
  std::atomic<int> polls{0};
  model->set_cancelled([&] { return ++polls > 2; });
  auto stopped = model->Simulate(p, requests);
  ASSERT_FALSE(stopped);
  EXPECT_EQ(stopped.error().code, ErrorCode::kCancelled);
  EXPECT_NE(stopped.error().message.find("cancelled"), std::string::npos);
  // Stopped before its third step: 2 forwards, where the batch takes 8 (2 chunks x 4 steps).
  EXPECT_EQ(model->counters().forwards, 2);
  // A cancelled batch leaves nothing half-made behind: the same requests, not cancelled, give
  // what a fresh model gives, generated rather than copied.
  model->set_cancelled({});
  auto whole = model->Simulate(p, requests);
  ASSERT_TRUE(whole) << whole.error().ToString();
  EXPECT_EQ(model->counters().reused, 0);
  auto fresh = Model();
  auto expected = fresh->Simulate(p, requests);
  ASSERT_TRUE(expected);
  for (std::size_t r = 0; r < requests.size(); ++r) {
    EXPECT_EQ((*whole)[r].post_ct.ToDense().data, (*expected)[r].post_ct.ToDense().data) << r;
  }
  // Polled before each decode too: a cancel after the last step still stops the batch.
  auto late = Model();
  polls = 0;
  late->set_cancelled([&] { return ++polls > 4; });  // 4 steps pass, then the decode stops
  PatientCase other = p;
  other.id = "other";
  auto decoded = late->Simulate(other, {requests.front()});
  ASSERT_FALSE(decoded);
  EXPECT_EQ(decoded.error().code, ErrorCode::kCancelled);
  EXPECT_EQ(late->counters().forwards, 4);
}

TEST_F(DiffusionTest, GuidanceBatchesTheNullPlanIntoTheSameForward) {
  DiffusionBackendOptions o = Options();
  o.sampler.guidance = 3.0;
  auto model = CreateDiffusionDynamics(o);
  ASSERT_TRUE(model);
  auto out = (*model)->Simulate(Phantom({{0, 0, 0}}), {{P("Lipiodol+PVA"), 0, 1, 0}});
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_EQ((*model)->counters().forwards, 4);
  EXPECT_EQ((*model)->counters().sample_forwards, 8);
}

TEST_F(DiffusionTest, TrainingOnADeviceThisBuildCannotUseIsRefusedBeforeAnyWork) {
  EXPECT_TRUE(CheckDevice("cpu"));
  const auto misspelt = CheckDevice("gpu");
  ASSERT_FALSE(misspelt);
  EXPECT_EQ(misspelt.error().code, ErrorCode::kInvalidArgument);
  DiffusionTrainOptions t = TinyTraining(21, 5, 4, 100);
  t.out = (dir_->path() / "on_no_device.pt").string();
  t.state_dir = (dir_->path() / "on_no_device_state").string();
  t.device = "gpu";
  const auto refused = TrainDiffusion(Pairs(t.config), {}, t, {});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
  if (CheckDevice("cuda")) GTEST_SKIP() << "CUDA is usable here: OnCudaTrainingAndSampling... runs";
  t.device = "cuda";
  const auto no_cuda = TrainDiffusion(Pairs(t.config), {}, t, {});
  ASSERT_FALSE(no_cuda);
  EXPECT_EQ(no_cuda.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(no_cuda.error().message.find("no usable CUDA"), std::string::npos)
      << no_cuda.error().message;
  EXPECT_FALSE(fs::exists(t.out));
  EXPECT_FALSE(fs::exists(t.state_dir));
}

// Runs only where CUDA is usable (a CUDA build on a GPU machine: tools/gpu_check.sh); skipped
// elsewhere.
TEST_F(DiffusionTest, OnCudaTrainingAndSamplingFollowTheCpu) {
  if (!CheckDevice("cuda")) GTEST_SKIP() << "no usable CUDA in this build or on this machine";
  const auto train = [&](const std::string& device, const std::string& name,
                         std::vector<double>& losses) {
    DiffusionTrainOptions t = TinyTraining(23, 20, 4, 10);
    t.device = device;
    t.out = (dir_->path() / (name + ".pt")).string();
    t.state_dir = (dir_->path() / (name + "_state")).string();
    const auto report = TrainDiffusion(
        Pairs(t.config), {}, t, [&](const DiffusionTrainProgress& p) { losses.push_back(p.loss); });
    EXPECT_TRUE(report) << report.error().ToString();
    return t;
  };
  std::vector<double> on_cpu, on_cuda;
  train("cpu", "trained_on_cpu", on_cpu);
  DiffusionTrainOptions cuda = train("cuda", "trained_on_cuda", on_cuda);
  // The same initial weights, batches and noise: the first loss agrees to float precision (TF32
  // convolutions included), and the run stays close to the CPU's.
  ASSERT_EQ(on_cpu.size(), 40u);
  ASSERT_EQ(on_cuda.size(), 40u);
  EXPECT_NEAR(on_cuda[0], on_cpu[0], 0.02 * std::abs(on_cpu[0]));
  const auto last = [](const std::vector<double>& l) {
    return (l[35] + l[36] + l[37] + l[38] + l[39]) / 5.0;
  };
  EXPECT_NEAR(last(on_cuda), last(on_cpu), 0.3 * last(on_cpu));
  EXPECT_EQ(TrainingRecord(cuda.out).value("device", ""), "cuda:0");

  // The checkpoint trained on CUDA samples on either device, the same outcome to within float
  // noise.
  const PatientCase p = Phantom({{0, 0, 0}});
  const SimulationRequest request{P("Lipiodol+PVA"), 0, 42, 0};
  DiffusionBackendOptions o = Options();
  o.model_path = cuda.out;
  std::vector<DenseFloat> ct;
  for (const char* device : {"cpu", "cuda"}) {
    o.device = device;
    auto model = CreateDiffusionDynamics(o);
    ASSERT_TRUE(model) << model.error().ToString();
    auto out = (*model)->Simulate(p, {request});
    ASSERT_TRUE(out) << out.error().ToString();
    EXPECT_TRUE(CheckOutcome(out->front(), request, p));
    ct.push_back(out->front().post_ct.ToDense());
  }
  EXPECT_LT(MaxDifference(ct[0].data, ct[1].data), 5.0);

  // Its training state, saved on CUDA, resumes on the CPU.
  cuda.device = "cpu";
  cuda.denoiser_steps = 30;
  const auto resumed = TrainDiffusion(Pairs(cuda.config), {}, cuda, {});
  ASSERT_TRUE(resumed) << resumed.error().ToString();
  EXPECT_EQ(resumed->resumed_from_step, 40);
}

// Likewise CUDA only: MeWM's size (the "mewm" preset, 96^3 crops at 1 mm) trains a few steps
// of each stage on the GPU, and its checkpoint samples an outcome there.
TEST_F(DiffusionTest, OnCudaTheMewmConfigTrainsAndSamples) {
  if (!CheckDevice("cuda")) GTEST_SKIP() << "no usable CUDA in this build or on this machine";
  DiffusionTrainOptions t;
  t.config = *DiffusionConfig::Preset("mewm", ActionBase::Default());
  t.seed = 29;
  t.ae_steps = t.denoiser_steps = 6;
  t.ae_batch = 8;  // the recipe's batches
  t.denoiser_batch = 12;
  t.validate_every = 100;  // validated once, after each stage's last step
  t.guidance_grid = {1.0};
  t.device = "cuda";
  t.out = (dir_->path() / "mewm_on_cuda.pt").string();
  // When each step ended, by stage: steps 2 to 5 time a step (the first warms up, the last also
  // validates), for planning a full run.
  std::map<std::string, std::vector<std::chrono::steady_clock::time_point>> ended;
  const auto report = TrainDiffusion(Pairs(t.config), {}, t, [&](const DiffusionTrainProgress& p) {
    ended[p.stage].push_back(std::chrono::steady_clock::now());
  });
  ASSERT_TRUE(report) << report.error().ToString();
  EXPECT_TRUE(std::isfinite(report->denoiser_val_loss));
  for (const auto& [stage, at] : ended) {
    ASSERT_EQ(at.size(), 6u) << stage;
    std::cout << "mewm config on CUDA, " << stage << ": "
              << std::chrono::duration<double>(at[4] - at[0]).count() / 4.0 << " s a step\n";
  }
  std::cout << "mewm config on CUDA: the whole run (2 x 6 steps, validations) " << report->seconds
            << " s\n";
  DiffusionBackendOptions o = Options();
  o.model_path = t.out;
  o.config = "mewm";
  o.device = "cuda";
  auto model = CreateDiffusionDynamics(o);
  ASSERT_TRUE(model) << model.error().ToString();
  const PatientCase p = Phantom({{0, 0, 0}});
  const SimulationRequest request{P("Lipiodol+PVA"), 0, 42, 0};
  auto out = (*model)->Simulate(p, {request});
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_TRUE(CheckOutcome(out->front(), request, p));
}

TEST_F(DiffusionTest, GuidanceDistilsIntoOnePass) {
  // A teacher trained long enough for its plan and null-plan passes to differ.
  DiffusionTrainOptions t = TinyTraining(11, 30, 4, 100);
  t.denoiser_steps = 300;
  t.null_plan_prob = 0.3;
  t.out = (dir_->path() / "teacher.pt").string();
  ASSERT_TRUE(TrainDiffusion(Pairs(t.config), {}, t, {}));
  t.denoiser_steps = 60;
  t.validate_every = 30;
  t.distill_from = t.out;
  t.state_dir = (dir_->path() / "distill_state").string();  // a fresh state starts distilling
  t.distill_guidance = 3.0;
  t.out = (dir_->path() / "distilled.pt").string();
  std::vector<double> losses;
  auto report = TrainDiffusion(Pairs(t.config), {}, t, [&](const DiffusionTrainProgress& p) {
    EXPECT_EQ(p.stage, "denoiser");  // the teacher's autoencoder is kept
    losses.push_back(p.loss);
  });
  ASSERT_TRUE(report) << report.error().ToString();
  // The student learns the teacher's guided prediction: the distillation loss (0 would be a
  // perfect copy) falls well below where the teacher's own conditional pass starts.
  ASSERT_EQ(losses.size(), 60u);
  const double first = (losses[0] + losses[1] + losses[2] + losses[3] + losses[4]) / 5;
  const double last = (losses[55] + losses[56] + losses[57] + losses[58] + losses[59]) / 5;
  EXPECT_LT(last, 0.5 * first) << first << " -> " << last;
  // Scored at guidance 1 only: the guidance is in the weights.
  ASSERT_EQ(report->guidance_scores.size(), 1u);
  EXPECT_EQ(report->recommended_guidance, 1.0);

  DiffusionBackendOptions o = Options();
  o.model_path = t.out;
  auto student = CreateDiffusionDynamics(o);
  ASSERT_TRUE(student) << student.error().ToString();
  EXPECT_DOUBLE_EQ((*student)->config().guidance_distilled, 3.0);
  const PatientCase p = Phantom({{0, 0, 0}});
  const SimulationRequest request{P("Lipiodol+PVA"), 0, 42, 0};
  auto one_pass = (*student)->Simulate(p, {request});
  ASSERT_TRUE(one_pass) << one_pass.error().ToString();
  // One row per step: no null-plan rows.
  EXPECT_EQ((*student)->counters().sample_forwards, o.sampler.steps);

  // Guiding a distilled checkpoint again is refused, at load and at sampling.
  o.sampler.guidance = 3.0;
  auto twice = CreateDiffusionDynamics(o);
  ASSERT_FALSE(twice);
  EXPECT_EQ(twice.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(twice.error().message.find("distilled"), std::string::npos) << twice.error().message;
  (*student)->set_sampler({4, 0.0, 2.0});
  auto refused = (*student)->Simulate(p, {request});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);

  // A missing teacher, a teacher of another config, and nothing to distil.
  const std::string teacher = t.distill_from;
  t.distill_from = (dir_->path() / "missing.pt").string();
  EXPECT_EQ(TrainDiffusion(Pairs(t.config), {}, t, {}).error().code, ErrorCode::kNotFound);
  t.distill_from = teacher;
  t.config.embed_dim = 32;
  const auto other = TrainDiffusion(Pairs(t.config), {}, t, {});
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().code, ErrorCode::kMismatch);
  EXPECT_NE(other.error().message.find("teacher"), std::string::npos) << other.error().message;
  t.config = Tiny();
  t.distill_guidance = 1.0;
  EXPECT_EQ(TrainDiffusion(Pairs(t.config), {}, t, {}).error().code, ErrorCode::kInvalidArgument);
}

TEST_F(DiffusionTest, FineTuningKeepsTheAutoencoderAndTrainsTheDenoiserFurther) {
  DiffusionTrainOptions t = TinyTraining(13, 20, 4, 100);
  t.out = (dir_->path() / "base.pt").string();
  auto base = TrainDiffusion(Pairs(t.config), {}, t, {});
  ASSERT_TRUE(base) << base.error().ToString();
  t.init_from = t.out;
  t.out = (dir_->path() / "tuned.pt").string();
  t.seed = 14;
  t.denoiser_steps = 10;
  int steps = 0;
  auto tuned = TrainDiffusion(Pairs(t.config), {}, t, [&](const DiffusionTrainProgress& p) {
    EXPECT_EQ(p.stage, "denoiser");  // the autoencoder stage is skipped
    ++steps;
  });
  ASSERT_TRUE(tuned) << tuned.error().ToString();
  EXPECT_EQ(steps, 10);
  // The same autoencoder and latent scale: the same reconstructions of the same crops.
  EXPECT_FLOAT_EQ(float(tuned->latent_scale), float(base->latent_scale));  // stored as float
  EXPECT_EQ(tuned->ae_val_l1_ct, base->ae_val_l1_ct);
  EXPECT_EQ(tuned->ae_val_mask_dice, base->ae_val_mask_dice);
  // Not distilled: scored over the whole guidance grid, and loadable with guidance.
  EXPECT_EQ(tuned->guidance_scores.size(), t.guidance_grid.size());
  DiffusionBackendOptions o = Options();
  o.model_path = t.out;
  o.sampler.guidance = 2.0;
  auto model = CreateDiffusionDynamics(o);
  ASSERT_TRUE(model) << model.error().ToString();
  EXPECT_EQ((*model)->config().guidance_distilled, 1.0);

  // Refusals: with a distillation, a missing checkpoint, another architecture.
  const std::string tuned_path = t.out;
  t.distill_from = tuned_path;
  auto both = TrainDiffusion(Pairs(t.config), {}, t, {});
  ASSERT_FALSE(both);
  EXPECT_EQ(both.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(both.error().message.find("init_from"), std::string::npos) << both.error().message;
  t.distill_from.clear();
  t.init_from = (dir_->path() / "missing.pt").string();
  EXPECT_EQ(TrainDiffusion(Pairs(t.config), {}, t, {}).error().code, ErrorCode::kNotFound);
  t.init_from = tuned_path;
  t.config.embed_dim = 32;
  const auto other = TrainDiffusion(Pairs(t.config), {}, t, {});
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().code, ErrorCode::kMismatch);
  EXPECT_NE(other.error().message.find("fine-tune"), std::string::npos) << other.error().message;
}

TEST_F(DiffusionTest, DecoderFineTuneLearnsThePasteAndLeavesTheDenoiserAlone) {
  // A distilled student: a decoder-only fine-tune may start from one and keeps its guidance.
  DiffusionTrainOptions t = TinyTraining(17, 10, 4, 100);
  t.distill_from = *model_path_;
  t.denoiser_steps = 2;
  t.out = (dir_->path() / "student.pt").string();
  auto student = TrainDiffusion(Pairs(t.config), {}, t, {});
  ASSERT_TRUE(student) << student.error().ToString();
  t.distill_from.clear();
  t.init_from = t.out;
  t.out = (dir_->path() / "decoder.pt").string();
  t.denoiser_steps = 0;
  t.decoder_steps = 40;
  t.decoder_lr = 2e-3;
  t.validate_every = 20;
  std::vector<double> losses;
  int validated = 0;
  auto tuned = TrainDiffusion(Pairs(t.config), {}, t, [&](const DiffusionTrainProgress& p) {
    EXPECT_EQ(p.stage, "decoder");  // neither the autoencoder nor the denoiser trains
    losses.push_back(p.loss);
    if (p.val_loss >= 0.0) ++validated;
  });
  ASSERT_TRUE(tuned) << tuned.error().ToString();
  ASSERT_EQ(losses.size(), 40u);
  EXPECT_EQ(validated, 2);
  // The paste loss falls.
  const double first = (losses[0] + losses[1] + losses[2] + losses[3]) / 4;
  const double last = (losses[36] + losses[37] + losses[38] + losses[39]) / 4;
  EXPECT_LT(last, 0.8 * first) << first << " -> " << last;
  // The encoder, the latent scale and the denoiser are the student's: the same denoiser loss on
  // the same latents.
  EXPECT_EQ(tuned->denoiser_val_loss, student->denoiser_val_loss);
  EXPECT_FLOAT_EQ(float(tuned->latent_scale), float(student->latent_scale));
  // The decoder did change, and the checkpoint is still the distilled student.
  EXPECT_NE(tuned->ae_val_l1_ct, student->ae_val_l1_ct);
  ASSERT_EQ(tuned->guidance_scores.size(), 1u);
  DiffusionBackendOptions o = Options();
  o.model_path = t.out;
  auto model = CreateDiffusionDynamics(o);
  ASSERT_TRUE(model) << model.error().ToString();
  EXPECT_DOUBLE_EQ((*model)->config().guidance_distilled, 2.0);
  EXPECT_NE((*model)->metadata_json().find("decoder_steps"), std::string::npos);

  // In a fresh run the decoder trains between the autoencoder and the denoiser.
  // Resumed, it counts the decoder's steps among those done.
  DiffusionTrainOptions fresh = TinyTraining(18, 3, 2, 100);
  fresh.decoder_steps = 3;
  fresh.state_dir = (dir_->path() / "decoder_state").string();
  std::vector<std::string> stages;
  ASSERT_TRUE(TrainDiffusion(Pairs(fresh.config), {}, fresh, [&](const DiffusionTrainProgress& p) {
    if (stages.empty() || stages.back() != p.stage) stages.push_back(p.stage);
  }));
  EXPECT_EQ(stages, (std::vector<std::string>{"autoencoder", "decoder", "denoiser"}));
  fresh.denoiser_steps = 5;
  auto resumed = TrainDiffusion(Pairs(fresh.config), {}, fresh, {});
  ASSERT_TRUE(resumed) << resumed.error().ToString();
  EXPECT_EQ(resumed->resumed_from_step, 9);
  fresh.state_dir.clear();

  // Refusals: no denoiser steps without a checkpoint, or without decoder steps; negative steps.
  fresh.denoiser_steps = 0;
  EXPECT_EQ(TrainDiffusion(Pairs(fresh.config), {}, fresh, {}).error().code,
            ErrorCode::kInvalidArgument);
  t.decoder_steps = 0;
  EXPECT_EQ(TrainDiffusion(Pairs(t.config), {}, t, {}).error().code, ErrorCode::kInvalidArgument);
  t.decoder_steps = -1;
  t.denoiser_steps = 1;
  EXPECT_EQ(TrainDiffusion(Pairs(t.config), {}, t, {}).error().code, ErrorCode::kInvalidArgument);
}

TEST_F(DiffusionTest, TheDecoderCanLearnToReadThePreTreatmentCrop) {
  // A decoder-only fine-tune adds the decoder's view of the pre-treatment crop to a checkpoint
  // without it. Its last layer starts at zero: with a zero learning rate the outcomes are the
  // start's, bit for bit.
  const PatientCase p = Phantom({{0, 0, 0}});
  const auto simulate = [&](DiffusionDynamics& model) { return PostCt(model, p, 42); };
  auto base = Model();
  ASSERT_TRUE(base);
  EXPECT_FALSE(base->config().decoder_pre);
  const std::vector<float> before = simulate(*base);
  DiffusionTrainOptions t = TinyTraining(19, 10, 4, 100);
  t.init_from = *model_path_;
  t.config.decoder_pre = true;
  t.denoiser_steps = 0;
  t.decoder_steps = 2;
  t.decoder_lr = 0.0;
  t.out = (dir_->path() / "pre_zero.pt").string();
  ASSERT_TRUE(TrainDiffusion(Pairs(t.config), {}, t, {}));
  DiffusionBackendOptions o = Options();
  o.model_path = t.out;
  auto unchanged = CreateDiffusionDynamics(o);
  ASSERT_TRUE(unchanged) << unchanged.error().ToString();
  EXPECT_TRUE((*unchanged)->config().decoder_pre);  // recorded in the checkpoint
  EXPECT_EQ(MaxDifference(simulate(**unchanged), before), 0.0);
  // Trained, the paste loss falls and the outcomes move; the denoiser is the start's.
  t.decoder_steps = 30;
  t.decoder_lr = 2e-3;
  t.out = (dir_->path() / "pre.pt").string();
  std::vector<double> losses;
  auto tuned = TrainDiffusion(Pairs(t.config), {}, t, [&](const DiffusionTrainProgress& progress) {
    losses.push_back(progress.loss);
  });
  ASSERT_TRUE(tuned) << tuned.error().ToString();
  ASSERT_EQ(losses.size(), 30u);
  EXPECT_LT((losses[26] + losses[27] + losses[28] + losses[29]) / 4,
            0.8 * (losses[0] + losses[1] + losses[2] + losses[3]) / 4);
  o.model_path = t.out;
  auto reading = CreateDiffusionDynamics(o);
  ASSERT_TRUE(reading) << reading.error().ToString();
  EXPECT_GT(MaxDifference(simulate(**reading), before), 0.0);
  // The ceiling (the truth encoded and decoded) reads the pre-treatment crop too.
  auto truth = base->Simulate(p, {{P("Lipiodol+PVA"), 0, 42, 0}});
  ASSERT_TRUE(truth);
  EXPECT_TRUE((*reading)->Reconstruct(p, truth->front()));
}

TEST_F(DiffusionTest, ATextureFitAddsTheFineTextureTheDecoderCannotCarry) {
  const PatientCase p = Phantom({{0, 0, 0}});
  const SimulationRequest request{P("Lipiodol+PVA"), 0, 42, 0};
  auto base = Model();
  ASSERT_TRUE(base);
  auto plain = base->Simulate(p, {request});
  ASSERT_TRUE(plain) << plain.error().ToString();
  // A texture fit alone: no weight changes, the checkpoint gains the fitted table.
  DiffusionTrainOptions t = TinyTraining(23, 10, 4, 100);
  t.init_from = *model_path_;
  t.denoiser_steps = 0;
  t.decoder_steps = 0;
  t.fit_texture = true;
  t.out = (dir_->path() / "texture.pt").string();
  auto fitted = TrainDiffusion(Pairs(t.config), {}, t, {});
  ASSERT_TRUE(fitted) << fitted.error().ToString();
  EXPECT_GT(fitted->texture_bins, 0);
  DiffusionBackendOptions o = Options();
  o.model_path = t.out;
  auto textured = CreateDiffusionDynamics(o);
  ASSERT_TRUE(textured) << textured.error().ToString();
  const TextureModel& texture = (*textured)->config().texture;
  ASSERT_FALSE(texture.empty());
  EXPECT_TRUE(texture.Validate());
  const auto nonzero = std::count_if(texture.noise_hu.begin(), texture.noise_hu.end(),
                                     [](double sd) { return sd > 0.0; });
  EXPECT_GT(nonzero, 0);
  EXPECT_LE(nonzero, fitted->texture_bins);
  // The outcome's CT changes inside the crop only, reproducibly for one seed; its viable
  // fraction, which survival reads, does not change.
  auto once = (*textured)->Simulate(p, {request});
  auto again = (*textured)->Simulate(p, {request});
  ASSERT_TRUE(once && again);
  const std::vector<float> ct = once->front().post_ct.ToDense().data;
  EXPECT_EQ(MaxDifference(ct, again->front().post_ct.ToDense().data), 0.0);
  EXPECT_GT(MaxDifference(ct, plain->front().post_ct.ToDense().data), 0.0);
  EXPECT_EQ(MaxDifference(once->front().viable_fraction->ToDense().data,
                          plain->front().viable_fraction->ToDense().data),
            0.0);
  EXPECT_EQ(ct.front(), plain->front().post_ct.ToDense().data.front());  // a corner, far away
  EXPECT_TRUE((*textured)->Reconstruct(p, plain->front()));
  // A run that changes the decoder drops the table fitted to the old one; one that leaves the
  // decoder (a denoiser fine-tune) keeps it.
  DiffusionTrainOptions next = TinyTraining(23, 10, 4, 100);
  next.init_from = t.out;
  next.denoiser_steps = 0;
  next.decoder_steps = 2;
  next.out = (dir_->path() / "texture_dropped.pt").string();
  ASSERT_TRUE(TrainDiffusion(Pairs(next.config), {}, next, {}));
  o.model_path = next.out;
  EXPECT_TRUE((*CreateDiffusionDynamics(o))->config().texture.empty());
  next.denoiser_steps = 2;
  next.decoder_steps = 0;
  next.out = (dir_->path() / "texture_kept.pt").string();
  ASSERT_TRUE(TrainDiffusion(Pairs(next.config), {}, next, {}));
  o.model_path = next.out;
  EXPECT_EQ((*CreateDiffusionDynamics(o))->config().texture.offset_hu, texture.offset_hu);
  // Refusals: a decoder that reads the pre-treatment crop with nothing to train it, and a
  // negative decoder learning rate.
  DiffusionTrainOptions bad = TinyTraining(23, 10, 4, 100);
  bad.config.decoder_pre = true;
  auto refused = TrainDiffusion(Pairs(bad.config), {}, bad, {});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(refused.error().message.find("decoder steps"), std::string::npos);
  bad = t;
  bad.fit_texture = false;
  bad.decoder_steps = 2;
  bad.decoder_lr = -1e-3;
  EXPECT_EQ(TrainDiffusion(Pairs(bad.config), {}, bad, {}).error().code,
            ErrorCode::kInvalidArgument);
}

TEST_F(DiffusionTest, TheLesionSizeInputCanBeAddedByFineTuning) {
  DiffusionConfig sized = Tiny();
  sized.lesion_size = true;
  const auto model = FineTuned(15, sized, "sized.pt");
  ASSERT_TRUE(model);
  EXPECT_TRUE(model->config().lesion_size);
  // Two lesions in separate crops: each plan is embedded once per crop, with that crop's size.
  const PatientCase two = Phantom({{-30, 0, 0}, {30, 0, 0}}, 8.0);
  auto outcomes = model->Simulate(two, {{P("Lipiodol+PVA"), 0, 1, 0}, {P("Lipiodol"), 0, 2, 0}});
  ASSERT_TRUE(outcomes) << outcomes.error().ToString();
  EXPECT_EQ(model->counters().plan_embeddings, 4);
  // Not the reverse: a model with the input cannot start one without it.
  ExpectNoFineTuneDropping("sized.pt", "lesion_size");
}

TEST_F(DiffusionTest, ItemSizeSlopesCanBeAddedByFineTuningAndChangeWhatTheSizeDoes) {
  // The same fine-tune (seed, steps, pairs) with and without the items' size slopes, from a
  // checkpoint that has neither: the slopes start at zero, train, and change the outcome.
  DiffusionConfig sized = Tiny();
  sized.lesion_size = true;
  const auto without = FineTuned(19, sized, "sized_19.pt");
  sized.item_size = true;
  const auto with = FineTuned(19, sized, "item_sized.pt");
  ASSERT_TRUE(without && with);
  EXPECT_FALSE(without->config().item_size);
  EXPECT_TRUE(with->config().item_size);
  const PatientCase p = Phantom({{0, 0, 0}}, 12.0);
  EXPECT_GT(MaxDifference(PostCt(*with, p, 5), PostCt(*without, p, 5)), 0.0);
  ExpectNoFineTuneDropping("item_sized.pt", "item_size");
}

TEST_F(DiffusionTest, ItemEnhancementSlopesCanBeAddedByFineTuningAndReadTheMeasuredEnhancement) {
  // Two patients whose crops are identical (liver and tumor both above the window's top, where it
  // clamps) but whose tumors' measured enhancement differs: only the slopes can tell them apart.
  const auto bright = [](double tumor_hu) {
    PatientCase p = Phantom({{0, 0, 0}}, 12.0, tumor_hu);
    DenseFloat ct = p.ct.ToDense();
    const DenseLabel tumor = p.tumor.ToDense();
    for (std::size_t v = 0; v < ct.data.size(); ++v) {
      if (tumor.data[v] == 0) ct.data[v] = 650.0f;
    }
    p.ct = *Volume::FromDense(ct, "ct");
    return p;
  };
  const PatientCase low = bright(700.0), high = bright(900.0);
  // The generated viable fraction (the post-treatment CT keeps each patient's own HU where the
  // paste leaves it).
  const auto fraction = [](DiffusionDynamics& model, const PatientCase& p) {
    auto outcomes = model.Simulate(p, {{P("Lipiodol+PVA"), 0, 3, 0}});
    EXPECT_TRUE(outcomes) << outcomes.error().ToString();
    return outcomes ? outcomes->front().viable_fraction->ToDense().data : std::vector<float>{};
  };
  auto base = Model();
  ASSERT_TRUE(base);
  EXPECT_EQ(MaxDifference(fraction(*base, low), fraction(*base, high)), 0.0);  // blind to it
  DiffusionConfig config = Tiny();
  config.item_enhancement = true;
  const auto model = FineTuned(29, config, "item_enhanced.pt");
  ASSERT_TRUE(model);
  EXPECT_TRUE(model->config().item_enhancement);
  const double apart = MaxDifference(fraction(*model, low), fraction(*model, high));
  EXPECT_GT(apart, 0.0);
  EXPECT_TRUE(std::isfinite(apart));
  ExpectNoFineTuneDropping("item_enhanced.pt", "item_enhancement");  // nor the reverse
}

TEST_F(DiffusionTest, TheClinicalInputCanBeAddedByFineTuningAndTheOutcomeFollowsIt) {
  // One image, two patients: another AFP, vascular invasion and age.
  PatientCase low = Phantom({{0, 0, 0}}, 10.0), high = low;
  low.covariates.afp_ng_ml = 3.0;
  high.covariates.afp_ng_ml = 20000.0;
  high.covariates.vascular_invasion = true;
  high.covariates.age_years = 80;
  const auto post_ct = [](DiffusionDynamics& model, const PatientCase& p) {
    return PostCt(model, p, 7);
  };
  auto base = Model();
  ASSERT_TRUE(base);
  EXPECT_FALSE(base->config().clinical);
  EXPECT_EQ(MaxDifference(post_ct(*base, low), post_ct(*base, high)), 0.0);  // blind to them
  DiffusionConfig config = Tiny();
  config.clinical = true;
  const auto model = FineTuned(23, config, "clinical.pt");
  ASSERT_TRUE(model);
  EXPECT_TRUE(model->config().clinical);
  EXPECT_GT(MaxDifference(post_ct(*model, low), post_ct(*model, high)), 0.0);
  ExpectNoFineTuneDropping("clinical.pt", "clinical");  // nor the reverse
}

TEST_F(DiffusionTest, AResponseHeadLearnsEachPlansLevelAndIsServedPerCrop) {
  DiffusionConfig config = Tiny();
  config.response_head = true;
  const auto model = FineTuned(41, config, "response.pt");
  ASSERT_TRUE(model);
  EXPECT_TRUE(model->config().response_head);
  // The pairs' true levels: a constant prediction's RMS error is their SD. The head reads the
  // plan, so it does far better than that.
  double sum = 0.0, sum_sq = 0.0;
  const auto pairs = Pairs(config);
  const double voxel_ml = std::pow(config.spacing_mm, 3) * 1e-3;
  for (const DiffusionPair& pair : pairs) {
    const auto ml = [voxel_ml](const DenseFloat& mask) {
      return std::accumulate(mask.data.begin(), mask.data.end(), 0.0) * voxel_ml;
    };
    const double level = ResponseLevelFeature(ml(pair.post.mask), ml(pair.pre.mask));
    sum += level;
    sum_sq += level * level;
  }
  const double n = double(pairs.size());
  const double constant_rmse = std::sqrt(sum_sq / n - (sum / n) * (sum / n));
  ASSERT_GT(constant_rmse, 0.5);
  const nlohmann::json head = TrainingRecord((dir_->path() / "response.pt").string())
                                  .value("response_head", nlohmann::json::object());
  EXPECT_LT(head.value("train_rmse", 1e9), 0.25 * constant_rmse) << head.dump();
  // Likewise the contrast between a crop's two plans, against none (no split: the validation
  // pairs are the training pairs).
  EXPECT_LT(head.value("train_contrast_rmse", 1e9),
            0.25 * head.value("validation_no_contrast_rmse", 0.0))
      << head.dump();
  EXPECT_TRUE(std::isfinite(head.value("validation_rmse", std::nan(""))));
  // Two lesions in separate crops: the level is predicted from each crop, so each plan is
  // embedded once per crop.
  const PatientCase two = Phantom({{-30, 0, 0}, {30, 0, 0}}, 8.0);
  auto outcomes = model->Simulate(two, {{P("Lipiodol+PVA"), 0, 1, 0}, {P("Lipiodol"), 0, 2, 0}});
  ASSERT_TRUE(outcomes) << outcomes.error().ToString();
  EXPECT_EQ(model->counters().plan_embeddings, 4);
  // Anchored (DiffusionBackendOptions::anchor_level), the amount of viable tumor is the head's:
  // two samples of a plan differ in where it lies, not in how much, and the plan the pairs kept
  // more of keeps more. The CT follows the moved amount in the tumor (FollowAnchoredFraction) and
  // is the one generated without the anchor away from it.
  const std::vector<SimulationRequest> requests = {{P("Lipiodol+Epirubicin"), 0, 1, 0},
                                                   {P("Lipiodol+Epirubicin"), 1, 2, 0},
                                                   {P("Lipiodol+PVA"), 0, 1, 0}};
  DiffusionBackendOptions anchored = Options();
  anchored.model_path = (dir_->path() / "response.pt").string();
  anchored.anchor_level = true;
  auto anchored_model = CreateDiffusionDynamics(anchored);
  ASSERT_TRUE(anchored_model) << anchored_model.error().ToString();
  auto moved = (*anchored_model)->Simulate(two, requests);
  auto free = model->Simulate(two, requests);
  ASSERT_TRUE(moved) << moved.error().ToString();
  ASSERT_TRUE(free) << free.error().ToString();
  EXPECT_NEAR(ViableSum((*moved)[0]) / ViableSum((*moved)[1]), 1.0, 0.02);
  EXPECT_GT(std::abs(ViableSum((*free)[0]) / ViableSum((*free)[1]) - 1.0), 1e-4);
  EXPECT_LT(ViableSum((*moved)[2]), ViableSum((*moved)[0]) / 1.2);
  const Geometry& g = two.ct.geometry();
  for (std::size_t r = 0; r < requests.size(); ++r) {
    double in_tumor = 0.0, away = 0.0;  // the largest |anchored - free| HU
    // Whether the generation left a voxel at least half dead well inside a tumor (its edge is
    // partial volume on the patient's lattice).
    bool dead = false;
    for (int k = 0; k < 80; ++k)
      for (int j = 0; j < 80; ++j)
        for (int i = 0; i < 80; ++i) {
          const double d = std::abs(double((*moved)[r].post_ct.GetValue(i, j, k)) -
                                    double((*free)[r].post_ct.GetValue(i, j, k)));
          const Eigen::Vector3d w = g.IndexToWorld({double(i), double(j), double(k)});
          const double from_centre = std::min((w - Eigen::Vector3d(-30, 0, 0)).norm(),
                                              (w - Eigen::Vector3d(30, 0, 0)).norm());
          if (two.tumor.GetValue(i, j, k) != 0) in_tumor = std::max(in_tumor, d);
          if (from_centre < 8.0 - 3.0) {
            dead = dead || (*free)[r].viable_fraction->GetValue(i, j, k) <= 0.5f;
          }
          if (from_centre > 8.0 + 4.0) away = std::max(away, d);
        }
    // With no dead tissue to copy, the CT stays as generated (FollowAnchoredFraction).
    EXPECT_EQ(in_tumor > 0.0, dead) << r << ": " << in_tumor;
    EXPECT_EQ(away, 0.0) << r;
  }
  anchored.model_path = *model_path_;  // no head
  const auto headless = CreateDiffusionDynamics(anchored);
  ASSERT_FALSE(headless);
  EXPECT_EQ(headless.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(headless.error().message.find("response head"), std::string::npos);
  // The feature: no change is 0, a complete response of a 50 mL tumor about -3.9.
  EXPECT_NEAR(ResponseLevelFeature(50.0, 50.0), 0.0, 1e-12);
  EXPECT_NEAR(ResponseLevelFeature(0.0, 50.0), -std::log(51.0), 1e-12);
  EXPECT_TRUE(std::isfinite(ResponseLevelFeature(-1.0, 0.0)));
  ExpectNoFineTuneDropping("response.pt", "response_head");  // nor the reverse
  // The head can be fitted again alone (denoiser steps 0), but not onto a checkpoint whose
  // denoiser never learnt to read a level.
  DiffusionTrainOptions refit = TinyTraining(43, 10, 4, 100);
  refit.config = config;
  refit.denoiser_steps = 0;
  refit.init_from = (dir_->path() / "response.pt").string();
  refit.out = (dir_->path() / "response_refit.pt").string();
  auto refitted = TrainDiffusion(pairs, {}, refit, {});
  ASSERT_TRUE(refitted) << refitted.error().ToString();
  EXPECT_LT(refitted->response.train_rmse, 0.25 * constant_rmse);
  // A texture fitted alone keeps the head as it was, and the checkpoint still records its fit.
  DiffusionTrainOptions textured = TinyTraining(47, 10, 4, 100);
  textured.fit_texture = true;
  textured.denoiser_steps = 0;
  textured.init_from = refit.out;
  textured.out = (dir_->path() / "response_textured.pt").string();
  ASSERT_TRUE(TrainDiffusion(pairs, {}, textured, {}));
  const nlohmann::json kept = TrainingRecord(textured.out).at("response_head");
  EXPECT_NEAR(kept.at("train_rmse").get<double>(), refitted->response.train_rmse, 1e-6)
      << kept.dump();
  refit.init_from = *model_path_;
  refit.out = (dir_->path() / "response_refused.pt").string();
  auto refused = TrainDiffusion(pairs, {}, refit, {});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(refused.error().message.find("response head"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(refit.out));
}

TEST_F(DiffusionTest, AResponseHeadReadsTheItemGroups) {
  // With every drug in one saturating group, the head's level, and so the anchored amount of
  // viable tumor, is the same whichever drugs a plan holds, and one drug differs from none.
  // Each request is simulated alone, as another patient, so nothing is copied.
  DiffusionConfig config = Tiny();
  config.response_head = true;
  config.item_groups = *ItemGroups(ActionBase::Default(), "all");
  config.group_once = true;
  ASSERT_TRUE(FineTuned(53, config, "response_grouped.pt"));
  DiffusionBackendOptions anchored = Options();
  anchored.model_path = (dir_->path() / "response_grouped.pt").string();
  anchored.anchor_level = true;
  auto model = CreateDiffusionDynamics(anchored);
  ASSERT_TRUE(model) << model.error().ToString();
  const PatientCase p = Phantom({{0, 0, 0}}, 8.0);
  int calls = 0;
  const auto fraction = [&](const std::string& plan) {
    PatientCase again = p;
    again.id = "phantom " + std::to_string(++calls);
    auto out = (*model)->Simulate(again, {{P(plan), 0, 42, 0}});
    EXPECT_TRUE(out) << out.error().ToString();
    return out ? out->front().viable_fraction->ToDense().data : std::vector<float>{};
  };
  const std::vector<float> one = fraction("Lipiodol+Oxaliplatin");
  EXPECT_EQ(MaxDifference(one, fraction("Lipiodol+Epirubicin")), 0.0);
  EXPECT_EQ(MaxDifference(one, fraction("Lipiodol+Oxaliplatin+Mitomycin")), 0.0);
  EXPECT_GT(MaxDifference(one, fraction("Lipiodol")), 0.0);
  // So one patient's drug variants are generated once.
  const DiffusionCounters before = (*model)->counters();
  ASSERT_TRUE((*model)->Simulate(
      p, {{P("Lipiodol+Oxaliplatin"), 0, 42, 0}, {P("Lipiodol+Nedaplatin"), 0, 43, 42}}));
  EXPECT_EQ((*model)->counters().reused - before.reused, 1);
}

TEST_F(DiffusionTest, ASensitivityHeadTellsDrugsApartAndTheirGenerationIsShared) {
  // Every drug in one saturating group, and pairs where one drug leaves far more tumor than
  // another: a head reading each drug by name learns the difference, the denoiser sees one group.
  DiffusionTrainOptions t = GroupedDrugHead(57, "response_sensitivity.pt");
  t.config.response_sensitivity = true;
  // The contrast between a crop's two drugs is learned (a grouped head sees none).
  const auto model = AnchoredItemHead(
      t, Pairs(t.config, {{"Lipiodol+Epirubicin", 0.8}, {"Lipiodol+Oxaliplatin", 0.3}}));
  ASSERT_NE(model, nullptr);
  EXPECT_TRUE(model->config().response_sensitivity);
  const PatientCase p = Phantom({{0, 0, 0}}, 10.0);
  // One plan alone, for what one generation costs.
  PatientCase other = p;
  other.id = "another phantom";
  ASSERT_TRUE(model->Simulate(other, {{P("Lipiodol+Epirubicin"), 0, 42, 0}}));
  const std::int64_t one = model->counters().sample_forwards;
  // The two drugs with one noise, in one call: generated once, each anchored to its own level.
  auto out = model->Simulate(
      p, {{P("Lipiodol+Epirubicin"), 0, 42, 0}, {P("Lipiodol+Oxaliplatin"), 0, 42, 0}});
  ASSERT_TRUE(out) << out.error().ToString();
  const DiffusionCounters after = model->counters();
  EXPECT_EQ(after.sample_forwards - one, one);
  EXPECT_EQ(after.reused, 0);
  EXPECT_LT(ViableSum((*out)[1]), ViableSum((*out)[0]) / 1.2);
  EXPECT_EQ(MaxDifference((*out)[0].post_ct.ToDense().data, (*out)[1].post_ct.ToDense().data), 0.0);
  // A request of the same items and noise later is a copy; another drug is not.
  auto again = model->Simulate(
      p, {{P("Lipiodol+Oxaliplatin"), 0, 43, 42}, {P("Lipiodol+Idarubicin"), 0, 44, 42}});
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(model->counters().reused, 1);
  EXPECT_EQ(ViableSum((*again)[0]), ViableSum((*out)[1]));
}

TEST_F(DiffusionTest, ADrugClassTermFollowsASignOfSensitivityAndItsDrugsShareAGeneration) {
  // Every drug in one saturating group. Raltitrexed (an antimetabolite) leaves less tumor than
  // Oxaliplatin (a platinum) in the three patients of low AFP and more in the three of high AFP:
  // neither the grouped head nor the denoiser can tell the two apart, the drug term (a class's
  // slope on AFP) can.
  const std::string ral = "Lipiodol+Raltitrexed", oxa = "Lipiodol+Oxaliplatin";
  DiffusionTrainOptions t = GroupedDrugHead(59, "response_drug_classes.pt");
  t.config.clinical = true;
  t.config.drug_classes = *ItemGroups(ActionBase::Default(), "class");
  const auto high_afp = [](int n) { return n >= 3; };
  auto pairs = PairsBy(t.config, {ral, oxa}, [&](const std::string& plan, int n) {
    return (plan == ral) == high_afp(n) ? 0.8 : 0.3;
  });
  for (std::size_t k = 0; k < pairs.size(); ++k) {  // two plans per patient
    pairs[k].covariates.afp_ng_ml = high_afp(int(k / 2)) ? 10000.0 : 10.0;
  }
  const auto model = AnchoredItemHead(t, pairs);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->config().drug_classes, t.config.drug_classes);
  // Served anchored, the order of the two drugs turns over with AFP; each pair of them is
  // generated once (a one-plan call's denoiser evaluations) and differs only in its residual.
  for (const double afp : {10.0, 10000.0}) {
    PatientCase p = Phantom({{0, 0, 0}}, 10.0);
    p.id = "phantom, AFP " + std::to_string(afp);
    p.covariates.afp_ng_ml = afp;
    const std::int64_t before = model->counters().sample_forwards;
    auto out = model->Simulate(p, {{P(ral), 0, 42, 0}, {P(oxa), 0, 42, 0}});
    ASSERT_TRUE(out) << out.error().ToString();
    const std::int64_t forwards = model->counters().sample_forwards - before;
    // A third drug of the same generation in a later call is pasted from the kept decoded crops:
    // not sampled again, the same CT. Cisplatin, a platinum the fit never saw, shares
    // Oxaliplatin's class offset and slopes, not Oxaliplatin's own offset.
    auto third = model->Simulate(p, {{P("Lipiodol+Cisplatin"), 0, 42, 0}});
    ASSERT_TRUE(third) << third.error().ToString();
    EXPECT_EQ(model->counters().sample_forwards - before, forwards);
    EXPECT_EQ(MaxDifference((*out)[0].post_ct.ToDense().data, (*third)[0].post_ct.ToDense().data),
              0.0);
    // On Oxaliplatin's side of Raltitrexed at either AFP: the flip is the class slopes'.
    EXPECT_EQ(ViableSum((*third)[0]) < ViableSum((*out)[0]), afp > 100.0) << p.id;
    auto alone = model->Simulate(Phantom({{0, 0, 0}}, 10.0), {{P(ral), 0, 42, 0}});
    ASSERT_TRUE(alone) << alone.error().ToString();
    EXPECT_EQ(model->counters().sample_forwards - before - forwards, forwards);
    EXPECT_EQ(MaxDifference((*out)[0].post_ct.ToDense().data, (*out)[1].post_ct.ToDense().data),
              0.0);
    if (afp > 100.0) {
      EXPECT_GT(ViableSum((*out)[0]), 1.2 * ViableSum((*out)[1])) << p.id;
    } else {
      EXPECT_LT(1.2 * ViableSum((*out)[0]), ViableSum((*out)[1])) << p.id;
    }
  }
}

TEST_F(DiffusionTest, ADrugTermFittedAloneTellsAClassesMembersApartAndKeepsTheNetwork) {
  // First a head without a drug term, fitted on an embolic's contrast; then its drug term alone
  // (response_drug_only) on two platinums, Nedaplatin leaving far more tumor than Cisplatin. A
  // class's offset and slopes cannot tell them apart, each drug's own offset can; the network,
  // and so the level of a plan without drugs, stays the first fit's.
  const std::string ned = "Lipiodol+Nedaplatin", cis = "Lipiodol+Cisplatin", pva = "Lipiodol+PVA";
  auto [t, d] = HeadThenItsDrugTerm(63, "response_before_drug_term.pt");
  d.out = (dir_->path() / "response_drug_term.pt").string();
  const auto drug_pairs = Pairs(d.config, {{ned, 0.9}, {cis, 0.5}});
  // Refused without a checkpoint to start from, or with denoiser steps; nothing is written.
  for (const auto& broken : {std::function<void(DiffusionTrainOptions&)>(
                                 [](DiffusionTrainOptions& o) { o.init_from.clear(); }),
                             std::function<void(DiffusionTrainOptions&)>(
                                 [](DiffusionTrainOptions& o) { o.denoiser_steps = 5; })}) {
    DiffusionTrainOptions bad = d;
    broken(bad);
    auto refused = TrainDiffusion(drug_pairs, {}, bad, {});
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(refused.error().message.find("drug term alone"), std::string::npos);
    EXPECT_FALSE(std::filesystem::exists(d.out));
  }
  auto fitted = TrainDiffusion(drug_pairs, {}, d, {});
  ASSERT_TRUE(fitted) << fitted.error().ToString();
  EXPECT_LT(fitted->response.train_contrast_rmse, 0.5 * fitted->response.val_no_contrast_rmse);
  DiffusionBackendOptions anchored = Options();
  anchored.anchor_level = true;
  anchored.model_path = t.out;
  auto before = CreateDiffusionDynamics(anchored);
  anchored.model_path = d.out;
  auto after = CreateDiffusionDynamics(anchored);
  ASSERT_TRUE(before && after);
  const PatientCase p = Phantom({{0, 0, 0}}, 10.0);
  const std::string mito = "Lipiodol+Mitomycin", pair = "Lipiodol+Mitomycin+Nedaplatin";
  auto out = (*after)->Simulate(p, {{P(ned), 0, 42, 0}, {P(cis), 0, 42, 0}, {P(pva), 0, 42, 0}});
  auto kept = (*before)->Simulate(p, {{P(pva), 0, 42, 0}});
  auto two = (*after)->Simulate(p, {{P(ned), 0, 42, 0}, {P(mito), 0, 42, 0}, {P(pair), 0, 42, 0}});
  ASSERT_TRUE(out && kept && two);
  EXPECT_GT(ViableSum((*out)[0]), 1.2 * ViableSum((*out)[1]));
  // The fit saw no plan with two drugs, so a second drug adds nothing of its own: the pair lies
  // strictly between its two drugs alone (a sum over drugs would count both).
  const auto [least, most] = std::minmax({ViableSum((*two)[0]), ViableSum((*two)[1])});
  EXPECT_LT(least, ViableSum((*two)[2]));
  EXPECT_LT(ViableSum((*two)[2]), most);
  EXPECT_EQ(ViableSum((*out)[2]), ViableSum((*kept)[0]));
  EXPECT_EQ(MaxDifference((*out)[2].post_ct.ToDense().data, (*kept)[0].post_ct.ToDense().data),
            0.0);
}

TEST_F(DiffusionTest, ADrugTermFittedAloneIsSolvedExactlySoAOneDrugClassCountsItsEffectOnce) {
  // With the head's network fixed the drug term is linear in its weights, and the fit solves it.
  // Mitomycin is alone in its class, so its class's offset and its own carry one effect. The
  // optimizer this replaced moved both in step and stopped early, giving Mitomycin twice what
  // the data said; a ridge on both would shrink it half as much as the others. Here Mitomycin
  // and Cisplatin leave the same tumor and Nedaplatin more, and the validation pairs show both
  // effects smaller, so the ridge chosen on them shrinks the term. Served anchored, Mitomycin
  // must still land on Cisplatin, not past it.
  const std::string ned = "Lipiodol+Nedaplatin", cis = "Lipiodol+Cisplatin";
  const std::string mito = "Lipiodol+Mitomycin";
  auto [t, d] = HeadThenItsDrugTerm(67, "response_before_exact_term.pt");
  d.out = (dir_->path() / "response_exact_term.pt").string();
  auto fitted = TrainDiffusion(Pairs(d.config, {{ned, 0.9}, {cis, 0.5}, {mito, 0.5}}),
                               Pairs(d.config, {{ned, 0.9}, {cis, 0.7}, {mito, 0.7}}), d, {});
  ASSERT_TRUE(fitted) << fitted.error().ToString();
  EXPECT_GT(fitted->response.drug_ridge, 0.0);
  DiffusionBackendOptions anchored = Options();
  anchored.anchor_level = true;
  anchored.model_path = d.out;
  auto model = CreateDiffusionDynamics(anchored);
  ASSERT_TRUE(model) << model.error().ToString();
  auto out = (*model)->Simulate(Phantom({{0, 0, 0}}, 10.0),
                                {{P(ned), 0, 42, 0}, {P(cis), 0, 42, 0}, {P(mito), 0, 42, 0}});
  ASSERT_TRUE(out) << out.error().ToString();
  const double gap = ViableSum((*out)[0]) - ViableSum((*out)[1]);
  EXPECT_GT(gap, 0.0);
  EXPECT_LT(std::abs(ViableSum((*out)[2]) - ViableSum((*out)[1])), 0.1 * gap)
      << "Nedaplatin " << ViableSum((*out)[0]) << ", Cisplatin " << ViableSum((*out)[1])
      << ", Mitomycin " << ViableSum((*out)[2]);
}

TEST_F(DiffusionTest, DrugTermsFittedAloneOnTwoCohortsAverageToTheMeanOfTheirTerms) {
  // One head, then its drug term fitted alone on two "cohorts" that disagree: in the first
  // Nedaplatin leaves more tumor than Cisplatin, in the second less. The average's term is the
  // mean of the two, so each drug's residual lies strictly between the two fits' (the residual
  // follows the level monotonically), and a plan without drugs keeps the head's residual.
  const std::string ned = "Lipiodol+Nedaplatin", cis = "Lipiodol+Cisplatin", pva = "Lipiodol+PVA";
  auto [t, d] = HeadThenItsDrugTerm(65, "response_before_average.pt");
  std::vector<std::string> fits;
  for (const auto& [name, levels] :
       {std::pair{"drug_term_a.pt", std::pair{0.9, 0.5}}, {"drug_term_b.pt", {0.5, 0.9}}}) {
    d.out = (dir_->path() / name).string();
    auto fitted =
        TrainDiffusion(Pairs(d.config, {{ned, levels.first}, {cis, levels.second}}), {}, d, {});
    ASSERT_TRUE(fitted) << fitted.error().ToString();
    fits.push_back(d.out);
  }
  const std::string out = (dir_->path() / "drug_term_average.pt").string();
  ASSERT_TRUE(AverageDrugTerms(fits, out, R"({"command": "test"})"));
  DiffusionBackendOptions anchored = Options();
  anchored.anchor_level = true;
  const PatientCase p = Phantom({{0, 0, 0}}, 10.0);
  const std::vector<SimulationRequest> plans = {
      {P(ned), 0, 42, 0}, {P(cis), 0, 42, 0}, {P(pva), 0, 42, 0}};
  std::vector<std::vector<double>> residuals;  // per model: Nedaplatin, Cisplatin, PVA
  for (const std::string& path : {fits[0], fits[1], out, t.out}) {
    anchored.model_path = path;
    auto model = CreateDiffusionDynamics(anchored);
    ASSERT_TRUE(model) << model.error().ToString();
    auto outcomes = (*model)->Simulate(p, plans);
    ASSERT_TRUE(outcomes) << outcomes.error().ToString();
    residuals.push_back({});
    for (const Outcome& o : *outcomes) residuals.back().push_back(ViableSum(o));
    if (path == out) {
      const auto meta = nlohmann::json::parse((*model)->metadata_json());
      EXPECT_EQ(meta.at("command"), "test");
      ASSERT_EQ(meta.at("drug_term_average_of").size(), 2u);
      EXPECT_EQ(meta["drug_term_average_of"][1].at("path"), fits[1]);
      EXPECT_EQ(meta["drug_term_average_of"][1].at("sha256").get<std::string>().size(), 64u);
    }
  }
  EXPECT_GT(residuals[0][0], residuals[0][1]);  // the two fits disagree
  EXPECT_LT(residuals[1][0], residuals[1][1]);
  for (int drug : {0, 1}) {
    const auto [least, most] = std::minmax(residuals[0][drug], residuals[1][drug]);
    EXPECT_LT(least, residuals[2][drug]) << drug;
    EXPECT_LT(residuals[2][drug], most) << drug;
  }
  EXPECT_EQ(residuals[2][2], residuals[3][2]);
  // Refused, and nothing written: one checkpoint; a first without a drug term; a checkpoint of
  // another config; a drug term fitted with its head (the networks differ); a damaged file.
  d.response_drug_only = false;
  d.out = (dir_->path() / "drug_term_with_head.pt").string();
  ASSERT_TRUE(TrainDiffusion(Pairs(d.config, {{ned, 0.9}, {cis, 0.5}}), {}, d, {}));
  const std::string damaged = (dir_->path() / "drug_term_damaged.pt").string();
  std::filesystem::copy_file(fits[1], damaged);
  std::filesystem::copy_file(fits[1] + ".sha256", damaged + ".sha256");
  std::filesystem::resize_file(damaged, std::filesystem::file_size(damaged) / 2);
  const std::string refused_out = (dir_->path() / "drug_term_refused.pt").string();
  for (const auto& [inputs, code, names] :
       {std::tuple{std::vector<std::string>{fits[0]}, ErrorCode::kInvalidArgument, "two"},
        {{t.out, fits[0]}, ErrorCode::kInvalidArgument, "no drug term"},
        {{fits[0], t.out}, ErrorCode::kMismatch, "drug_classes"},
        {{fits[0], d.out}, ErrorCode::kMismatch, "outside the drug term"},
        {{fits[0], damaged}, ErrorCode::kCorruptData, "drug_term_damaged.pt"}}) {
    auto refused = AverageDrugTerms(inputs, refused_out, "");
    ASSERT_FALSE(refused) << names;
    EXPECT_EQ(refused.error().code, code) << refused.error().ToString();
    EXPECT_NE(refused.error().ToString().find(names), std::string::npos)
        << refused.error().ToString();
    EXPECT_FALSE(std::filesystem::exists(refused_out));
  }
}

TEST_F(DiffusionTest, AnItemSizeHeadIsTrainedAndServedWithEachItemsSizeSlope) {
  // The drug leaves more of the three smaller tumors than the embolic, and less of the three
  // larger ones.
  const std::string drug = "Lipiodol+Epirubicin", embolic = "Lipiodol+PVA";
  DiffusionTrainOptions t = TinyTraining(61, 10, 4, 100);
  t.init_from = *model_path_;
  t.config.lesion_size = true;
  t.config.response_head = true;
  t.config.response_item_size = true;
  t.out = (dir_->path() / "response_item_size.pt").string();
  const auto pairs = PairsBy(t.config, {drug, embolic}, [&drug](const std::string& plan, int n) {
    return (plan == drug) == (n >= 3) ? 0.3 : 0.8;
  });
  auto tuned = TrainDiffusion(pairs, {}, t, {});
  ASSERT_TRUE(tuned) << tuned.error().ToString();
  DiffusionBackendOptions anchored = Options();
  anchored.model_path = t.out;
  anchored.anchor_level = true;
  auto model = CreateDiffusionDynamics(anchored);
  ASSERT_TRUE(model) << model.error().ToString();
  EXPECT_TRUE((*model)->config().response_item_size);
  // Served anchored, the head's levels set the residuals: the order of the two plans turns over
  // between the smallest training tumor's size and the largest's. (On six patients a head
  // without the slopes learns this too: the test is of the wider head's path, not of its gain,
  // which models/README.md measures.)
  const std::vector<SimulationRequest> both = {{P(drug), 0, 7, 0}, {P(embolic), 0, 7, 0}};
  auto small = (*model)->Simulate(Phantom({{0, 0, 0}}, 8.0), both);
  auto large = (*model)->Simulate(Phantom({{0, 0, 0}}, 13.0), both);
  ASSERT_TRUE(small) << small.error().ToString();
  ASSERT_TRUE(large) << large.error().ToString();
  EXPECT_GT(ViableSum((*small)[0]), 1.2 * ViableSum((*small)[1]));
  EXPECT_LT(1.2 * ViableSum((*large)[0]), ViableSum((*large)[1]));
}

TEST(AnchorResidualTest, ShiftsTheMovingFractionToTheTargetAndKeepsItsOrder) {
  const Geometry g = Geometry::Isotropic(2.0);  // 8 uL voxels
  const double voxel_ml = 8e-3;
  // The tumor: the first 32 voxels; outside it, two voxels of growth and 30 of nothing.
  DenseFloat mask({4, 4, 4}, g, 0.0f), start({4, 4, 4}, g, 0.0f);
  for (std::size_t x = 0; x < 32; ++x) {
    mask.data[x] = 1.0f;
    start.data[x] = x % 2 == 0 ? 0.3f : 0.6f;
  }
  start.data[2] = 0.0f;  // an empty voxel in the tumor can be filled too
  start.data[40] = start.data[41] = 0.2f;
  const auto sum_ml = [voxel_ml](const DenseFloat& f) {
    return std::accumulate(f.data.begin(), f.data.end(), 0.0) * voxel_ml;
  };
  for (double target_ml : {0.01, 0.08, 0.15, 0.25}) {
    DenseFloat f = start;
    auto reached = AnchorResidual(f, mask, voxel_ml, target_ml);
    ASSERT_TRUE(reached) << reached.error().ToString();
    EXPECT_NEAR(*reached, target_ml, 1e-9);
    EXPECT_NEAR(sum_ml(f), target_ml, 1e-5);
    EXPECT_LT(f.data[0], f.data[1]);  // the order is kept
    EXPECT_LT(f.data[2], f.data[0]);
    EXPECT_GT(f.data[2], 0.0f);
    EXPECT_LT(f.data[40], f.data[1]);  // growth moves with the tumor
    EXPECT_EQ(f.data[40], f.data[41]);
    for (std::size_t x = 42; x < 64; ++x) EXPECT_EQ(f.data[x], 0.0f);  // nothing stays nothing
  }
  // As near as it can: every moving voxel empty, or every one full.
  for (const auto& [target_ml, each] : {std::pair{0.0, 0.0}, std::pair{10.0, 1.0}}) {
    DenseFloat f = start;
    auto reached = AnchorResidual(f, mask, voxel_ml, target_ml);
    ASSERT_TRUE(reached);
    EXPECT_NEAR(*reached, 34 * each * voxel_ml, 1e-9);
    EXPECT_NEAR(f.data[5], each, 1e-6);
    EXPECT_NEAR(f.data[41], each, 1e-6);
  }
  // The level's inverse.
  EXPECT_NEAR(ResidualOfLevel(ResponseLevelFeature(12.5, 40.0), 40.0), 12.5, 1e-9);
  EXPECT_EQ(ResidualOfLevel(-50.0, 40.0), 0.0);
  // Refused: another lattice, a negative or non-finite target, a voxel of no volume.
  DenseFloat f = start;
  DenseFloat small({2, 2, 2}, g, 1.0f);
  EXPECT_EQ(AnchorResidual(f, small, voxel_ml, 0.1).error().code, ErrorCode::kMismatch);
  for (double bad : {-1.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
    EXPECT_EQ(AnchorResidual(f, mask, voxel_ml, bad).error().code, ErrorCode::kInvalidArgument);
  }
  EXPECT_EQ(AnchorResidual(f, mask, 0.0, 0.1).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(MaxDifference(f.data, start.data), 0.0);  // a refusal changes nothing
}

TEST(FollowAnchoredFractionTest, TheChangeMovesWithTheDeadShareAndNothingElseMoves) {
  const Geometry g = Geometry::Isotropic(2.0);
  // The tumor: the first 32 voxels, drawn as a linear mix whose dead tissue is 300 HU (Lipiodol)
  // above the voxel's pre-treatment HU. Outside it, a change that is not the tumor's.
  constexpr float kDead = 300.0f;
  DenseFloat mask({4, 4, 4}, g, 0.0f), generated({4, 4, 4}, g, 0.0f), change({4, 4, 4}, g, 5.0f);
  for (std::size_t x = 0; x < 32; ++x) {
    mask.data[x] = 1.0f;
    generated.data[x] = x < 8 ? 0.95f : x < 16 ? 0.7f : x < 24 ? 0.4f : 0.0f;
    change.data[x] = (1.0f - generated.data[x]) * kDead;
  }
  DenseFloat anchored = generated;
  for (std::size_t x = 0; x < 32; ++x)
    anchored.data[x] = std::clamp(generated.data[x] - 0.3f, 0.f, 1.f);
  anchored.data[40] = 0.5f;  // growth moved outside the tumor keeps its change
  DenseFloat moved = change;
  ASSERT_TRUE(FollowAnchoredFraction(moved, generated, anchored, mask));
  // Every tumor voxel of this linear world lands where the world would draw its new dead share:
  // from its own dead tissue at half dead and more, from the crop's (300 HU) below.
  for (std::size_t x = 0; x < 32; ++x) {
    EXPECT_NEAR(moved.data[x], (1.0f - anchored.data[x]) * kDead, 1e-3) << x;
  }
  for (std::size_t x = 32; x < 64; ++x) EXPECT_EQ(moved.data[x], 5.0f);
  // Unmoved, nothing changes; moved back, the change comes back.
  DenseFloat same = change;
  ASSERT_TRUE(FollowAnchoredFraction(same, generated, generated, mask));
  EXPECT_EQ(MaxDifference(same.data, change.data), 0.0);
  ASSERT_TRUE(FollowAnchoredFraction(moved, anchored, generated, mask));
  EXPECT_LT(MaxDifference(moved.data, change.data), 1e-3);
  // A crop with no voxel half dead has no dead tissue to copy: its change stays as drawn.
  DenseFloat viable = generated, kept = change;
  for (std::size_t x = 0; x < 32; ++x) viable.data[x] = 0.8f;
  ASSERT_TRUE(FollowAnchoredFraction(kept, viable, anchored, mask));
  EXPECT_EQ(MaxDifference(kept.data, change.data), 0.0);
  // Refused, changing nothing: another lattice.
  DenseFloat small({2, 2, 2}, g, 1.0f);
  EXPECT_EQ(FollowAnchoredFraction(kept, generated, anchored, small).error().code,
            ErrorCode::kMismatch);
  EXPECT_EQ(FollowAnchoredFraction(kept, small, anchored, mask).error().code, ErrorCode::kMismatch);
  EXPECT_EQ(MaxDifference(kept.data, change.data), 0.0);
}

TEST_F(DiffusionTest, TheResidualTermChangesWhatTheDenoiserLearnsAndIsRecorded) {
  // One fine-tune, seed and set of pairs, with and without the residual term.
  DiffusionTrainOptions t = TinyTraining(31, 10, 4, 100);
  t.init_from = *model_path_;
  const auto pairs = Pairs(t.config);
  t.out = (dir_->path() / "plain_loss.pt").string();
  auto plain = TrainDiffusion(pairs, {}, t, {});
  ASSERT_TRUE(plain) << plain.error().ToString();
  t.residual_weight = 4.0;
  t.out = (dir_->path() / "residual_loss.pt").string();
  auto weighted = TrainDiffusion(pairs, {}, t, {});
  ASSERT_TRUE(weighted) << weighted.error().ToString();
  // The reported validation loss is the v-loss alone in both, so it differs only because the
  // denoisers do.
  EXPECT_TRUE(std::isfinite(weighted->denoiser_val_loss));
  EXPECT_NE(weighted->denoiser_val_loss, plain->denoiser_val_loss);
  const nlohmann::json recorded = TrainingRecord(t.out);
  EXPECT_EQ(recorded.value("residual_weight", 0.0), 4.0);
  EXPECT_GE(recorded.value("residual_sd_ml", 0.0), 1.0);
  EXPECT_FALSE(
      TrainingRecord((dir_->path() / "plain_loss.pt").string()).contains("residual_weight"));
  ExpectWeightRefused(t, &DiffusionTrainOptions::residual_weight, pairs);
}

TEST_F(DiffusionTest, ThePairedPlanTermChangesWhatTheDenoiserLearnsAndNeedsTwoPlansOfACrop) {
  // Pairs() holds each phantom's crop under two plans: the term has partners to pair. The same
  // paired batches with a negligible weight and with a real one: only the term differs.
  DiffusionTrainOptions t = TinyTraining(37, 10, 4, 100);
  t.init_from = *model_path_;
  t.residual_weight = 1.0;
  t.pair_weight = 1e-12;
  const auto pairs = Pairs(t.config);
  t.out = (dir_->path() / "unpaired.pt").string();
  auto unpaired = TrainDiffusion(pairs, {}, t, {});
  ASSERT_TRUE(unpaired) << unpaired.error().ToString();
  t.pair_weight = 2.0;
  t.out = (dir_->path() / "paired.pt").string();
  auto paired = TrainDiffusion(pairs, {}, t, {});
  ASSERT_TRUE(paired) << paired.error().ToString();
  EXPECT_TRUE(std::isfinite(paired->denoiser_val_loss));
  EXPECT_NE(paired->denoiser_val_loss, unpaired->denoiser_val_loss);
  const nlohmann::json recorded = TrainingRecord(t.out);
  EXPECT_EQ(recorded.value("pair_weight", 0.0), 2.0);
  EXPECT_GE(recorded.value("pair_rms_ml", 0.0), 1.0);
  // One plan per crop (every second pair dropped): nothing to pair, refused before training.
  std::vector<DiffusionPair> single;
  for (std::size_t k = 0; k < pairs.size(); k += 2) single.push_back(pairs[k]);
  const auto lonely = TrainDiffusion(single, {}, t, {});
  ASSERT_FALSE(lonely);
  EXPECT_EQ(lonely.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(lonely.error().message.find("two plans"), std::string::npos) << lonely.error().message;
  // Two patients whose crops are alike are not partners: crops are matched within a patient.
  std::vector<DiffusionPair> strangers = single;
  strangers.push_back(single.front());
  strangers.back().patient = "another " + single.front().patient;
  strangers.back().plan = pairs[1].plan;  // the other plan
  EXPECT_FALSE(TrainDiffusion(strangers, {}, t, {}));
  ExpectWeightRefused(t, &DiffusionTrainOptions::pair_weight, pairs);
}

TEST_F(DiffusionTest, ThePairedPlanTermCanPairOnlyPlansOneItemApart) {
  DiffusionTrainOptions t = TinyTraining(37, 10, 4, 20);
  t.init_from = *model_path_;
  t.pair_weight = 1.0;
  t.pair_neighbours = true;
  // Pairs() holds each crop under Lipiodol+Epirubicin and Lipiodol+PVA: one item swapped.
  const auto pairs = Pairs(t.config);
  t.out = (dir_->path() / "neighbours.pt").string();
  auto swapped = TrainDiffusion(pairs, {}, t, {});
  ASSERT_TRUE(swapped) << swapped.error().ToString();
  EXPECT_TRUE(TrainingRecord(t.out).value("pair_neighbours", false));
  // One item removed (Lipiodol alone) is a neighbour too.
  auto with_second = [&](const std::string& plan) {
    std::vector<DiffusionPair> changed = pairs;
    for (std::size_t k = 1; k < changed.size(); k += 2) changed[k].plan = P(plan);
    return changed;
  };
  EXPECT_TRUE(TrainDiffusion(with_second("Lipiodol"), {}, t, {}));
  // Two items added (as many columns differ as in a swap, but not as many items), or one
  // removed and two added: no crop has a neighbour, refused before training; without
  // pair_neighbours the same pairs train.
  for (const char* far : {"Lipiodol+Epirubicin+PVA+NBCA", "Lipiodol+PVA+NBCA"}) {
    const auto refused = TrainDiffusion(with_second(far), {}, t, {});
    ASSERT_FALSE(refused) << far;
    EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(refused.error().message.find("one item apart"), std::string::npos)
        << refused.error().message;
  }
  t.pair_neighbours = false;
  EXPECT_TRUE(TrainDiffusion(with_second("Lipiodol+PVA+NBCA"), {}, t, {}));
  // Without a pair weight there is no term to choose pairs for.
  t.pair_neighbours = true;
  t.pair_weight = 0.0;
  const auto unweighted = TrainDiffusion(pairs, {}, t, {});
  ASSERT_FALSE(unweighted);
  EXPECT_EQ(unweighted.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(unweighted.error().message.find("pair weight"), std::string::npos)
      << unweighted.error().message;
}

TEST_F(DiffusionTest, DrugsOfOneGroupShareOneEmbedding) {
  const ActionBase& actions = ActionBase::Default();
  const std::vector<std::string>& items = Tiny().items;
  const auto at = [&](const std::vector<std::string>& groups, const std::string& item) {
    return groups[std::size_t(std::find(items.begin(), items.end(), item) - items.begin())];
  };
  // The groups come from the action base's public classes, never from the world's potencies.
  const auto by_class = ItemGroups(actions, "class");
  ASSERT_TRUE(by_class) << by_class.error().ToString();
  ASSERT_EQ(by_class->size(), items.size());
  EXPECT_EQ(at(*by_class, "Oxaliplatin"), "platinum");
  EXPECT_EQ(at(*by_class, "Nedaplatin"), "platinum");
  EXPECT_EQ(at(*by_class, "Epirubicin"), "anthracycline");
  EXPECT_EQ(at(*by_class, "Lipiodol"), "");
  const auto all = ItemGroups(actions, "all");
  ASSERT_TRUE(all);
  EXPECT_EQ(at(*all, "Epirubicin"), at(*all, "Oxaliplatin"));
  EXPECT_EQ(at(*all, "PVA"), "");
  EXPECT_TRUE(ItemGroups(actions, "none")->empty());
  const auto bogus = ItemGroups(actions, "potency");
  ASSERT_FALSE(bogus);
  EXPECT_EQ(bogus.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(bogus.error().message.find("potency"), std::string::npos);
  // Written only when set, read back, and one entry per item or refused.
  DiffusionConfig grouped = Tiny();
  EXPECT_EQ(nlohmann::json::parse(grouped.ToJson()).count("item_groups"), 0u);
  grouped.item_groups = *by_class;
  EXPECT_EQ(DiffusionConfig::FromJson(grouped.ToJson(), "g.pt")->item_groups, *by_class);
  grouped.item_groups.pop_back();
  EXPECT_FALSE(grouped.Validate());

  // Without groups the tiny model tells two platinum drugs apart; fine-tuned with them, it
  // cannot, while a drug of another class still differs. The checkpoint records the groups. Each
  // request is simulated alone, so equal embeddings give bit-identical outcomes (one thread); each
  // as another patient id, so the network computes it (equal requests of one patient are copied).
  const PatientCase p = Phantom({{0, 0, 0}});
  int calls = 0;
  const auto simulate = [&](DiffusionDynamics& model, const std::string& plan) {
    PatientCase again = p;
    again.id = "phantom " + std::to_string(++calls);
    auto out = model.Simulate(again, {{P(plan), 0, 42, 0}});
    EXPECT_TRUE(out) << out.error().ToString();
    return out ? out->front().post_ct.ToDense().data : std::vector<float>{};
  };
  auto base = Model();
  ASSERT_TRUE(base);
  EXPECT_GT(MaxDifference(simulate(*base, "Lipiodol+Oxaliplatin"),
                          simulate(*base, "Lipiodol+Nedaplatin")),
            0.0);
  DiffusionTrainOptions t = TinyTraining(17, 10, 4, 100);
  t.init_from = *model_path_;
  t.config.item_groups = *by_class;
  t.out = (dir_->path() / "grouped.pt").string();
  auto tuned = TrainDiffusion(Pairs(t.config), {}, t, {});
  ASSERT_TRUE(tuned) << tuned.error().ToString();
  DiffusionBackendOptions o = Options();
  o.model_path = t.out;
  auto model = CreateDiffusionDynamics(o);
  ASSERT_TRUE(model) << model.error().ToString();
  EXPECT_EQ((*model)->config().item_groups, *by_class);
  const std::vector<float> oxaliplatin = simulate(**model, "Lipiodol+Oxaliplatin");
  EXPECT_EQ(MaxDifference(oxaliplatin, simulate(**model, "Lipiodol+Nedaplatin")), 0.0);
  EXPECT_GT(MaxDifference(oxaliplatin, simulate(**model, "Lipiodol+Epirubicin")), 0.0);

  // A grouped teacher distils into an ungrouped student, and back: grouping changes no weight.
  t.init_from.clear();
  t.distill_from = t.out;
  t.config.item_groups.clear();
  t.denoiser_steps = 4;
  t.out = (dir_->path() / "ungrouped_student.pt").string();
  auto student = TrainDiffusion(Pairs(t.config), {}, t, {});
  ASSERT_TRUE(student) << student.error().ToString();
  t.distill_from = *model_path_;
  t.config.item_groups = *all;
  t.out = (dir_->path() / "grouped_student.pt").string();
  student = TrainDiffusion(Pairs(t.config), {}, t, {});
  ASSERT_TRUE(student) << student.error().ToString();
}

TEST_F(DiffusionTest, SaturatedGroupCountsOncePerPlan) {
  const auto all = ItemGroups(ActionBase::Default(), "all");
  ASSERT_TRUE(all);
  // Written only when set, read back, and refused without groups to count.
  DiffusionConfig config = Tiny();
  config.group_once = true;
  const Status ungrouped = config.Validate();
  ASSERT_FALSE(ungrouped);
  EXPECT_NE(ungrouped.error().message.find("group_once"), std::string::npos);
  config.item_groups = *all;
  ASSERT_TRUE(config.Validate());
  EXPECT_TRUE(DiffusionConfig::FromJson(config.ToJson(), "g.pt")->group_once);
  EXPECT_EQ(nlohmann::json::parse(Tiny().ToJson()).count("group_once"), 0u);

  // Fine-tuned with one saturating drug group, a second drug (of another class) changes nothing,
  // while the first still does. Each request is simulated alone (one thread), so equal
  // embeddings give bit-identical outcomes; each as another patient id, so the network computes
  // it (equal requests of one patient are copied, below).
  const PatientCase p = Phantom({{0, 0, 0}});
  const auto model = FineTuned(19, config, "saturated.pt");
  ASSERT_TRUE(model);
  EXPECT_TRUE(model->config().group_once);
  int calls = 0;
  const auto simulate = [&](const std::string& plan) {
    PatientCase again = p;
    again.id = "phantom " + std::to_string(++calls);
    auto out = model->Simulate(again, {{P(plan), 0, 42, 0}});
    EXPECT_TRUE(out) << out.error().ToString();
    return out ? out->front().post_ct.ToDense().data : std::vector<float>{};
  };
  const std::vector<float> one = simulate("Lipiodol+Oxaliplatin");
  EXPECT_EQ(MaxDifference(one, simulate("Lipiodol+Oxaliplatin+Epirubicin")), 0.0);
  EXPECT_GT(MaxDifference(one, simulate("Lipiodol")), 0.0);

  // So one patient's requests with equal keys and noise are generated once and copied, in one
  // call and across calls; each copy carries its own plan and sample index.
  const auto dense = [](const Outcome& o) { return o.post_ct.ToDense().data; };
  const int steps = model->sampler().steps;
  const SimulationRequest a{P("Lipiodol+Oxaliplatin"), 0, 42, 0};
  const SimulationRequest same_noise{P("Lipiodol+Nedaplatin"), 0, 7, 42};  // shared seed 42
  const SimulationRequest other_noise{P("Lipiodol+Oxaliplatin"), 1, 43, 0};
  const SimulationRequest no_drug{P("Lipiodol"), 0, 42, 0};
  DiffusionCounters before = model->counters();
  auto batch = model->Simulate(p, {a, same_noise, other_noise, no_drug});
  ASSERT_TRUE(batch) << batch.error().ToString();
  ASSERT_EQ(batch->size(), 4u);
  EXPECT_EQ(model->counters().reused - before.reused, 1);
  EXPECT_EQ(model->counters().decodes - before.decodes, 3 + 1);  // and the pre-treatment crop
  EXPECT_EQ(model->counters().sample_forwards - before.sample_forwards, 3 * steps);
  EXPECT_EQ(MaxDifference(dense((*batch)[0]), one), 0.0);
  EXPECT_EQ(MaxDifference(dense((*batch)[1]), one), 0.0);
  EXPECT_TRUE(CheckOutcome((*batch)[1], same_noise, p));
  EXPECT_EQ((*batch)[1].plan, same_noise.plan);
  EXPECT_GT(MaxDifference(dense((*batch)[2]), one), 0.0);
  EXPECT_GT(MaxDifference(dense((*batch)[3]), one), 0.0);
  // A copy is the caller's own: changing it changes no later copy.
  (*batch)[1].post_ct.SetValue(40, 40, 40, 5000.0f);
  (*batch)[1].viable_fraction->SetValue(40, 40, 40, 0.25f);
  before = model->counters();
  const SimulationRequest two_drugs{P("Lipiodol+Oxaliplatin+Epirubicin"), 1, 99, 43};
  auto later = model->Simulate(p, {same_noise, two_drugs});
  ASSERT_TRUE(later) << later.error().ToString();
  EXPECT_EQ(model->counters().reused - before.reused, 2);
  EXPECT_EQ(model->counters().sample_forwards, before.sample_forwards);
  EXPECT_EQ(MaxDifference(dense((*later)[0]), one), 0.0);
  EXPECT_EQ(MaxDifference(dense((*later)[1]), dense((*batch)[2])), 0.0);
  EXPECT_TRUE(CheckOutcome((*later)[1], two_drugs, p));
  // Another patient, or another sampler, generates again.
  PatientCase other = p;
  other.id = "another";
  before = model->counters();
  ASSERT_TRUE(model->Simulate(other, {a}));
  EXPECT_EQ(model->counters().reused, before.reused);
  SamplerConfig fewer = model->sampler();
  fewer.steps = steps - 1;
  model->set_sampler(fewer);
  before = model->counters();
  ASSERT_TRUE(model->Simulate(other, {a}));
  EXPECT_EQ(model->counters().sample_forwards - before.sample_forwards, steps - 1);
  // The same id and tumor grid with another CT grid is another patient too (PatientIdentity):
  // cropped, encoded and generated afresh.
  PatientCase rescanned = other;
  rescanned.ct = other.ct.DeepCopy();
  before = model->counters();
  ASSERT_TRUE(model->Simulate(rescanned, {a}));
  EXPECT_EQ(model->counters().reused, before.reused);
  EXPECT_EQ(model->counters().encodes - before.encodes, 1);
  before = model->counters();
  ASSERT_TRUE(model->Simulate(rescanned, {a}));
  EXPECT_EQ(model->counters().reused - before.reused, 1);
  EXPECT_EQ(model->counters().encodes, before.encodes);
}

TEST(GeneratorPlanKeyTest, NamesWhatThePlanEmbeddingReads) {
  const ActionBase& actions = ActionBase::Default();
  DiffusionConfig config = *DiffusionConfig::Preset("cpu", actions);
  const auto key = [&](const std::string& plan) { return GeneratorPlanKey(P(plan), config); };
  // No groups: every item by name.
  EXPECT_NE(key("Lipiodol+Oxaliplatin"), key("Lipiodol+Nedaplatin"));
  EXPECT_EQ(key("Lipiodol+PVA"), "Lipiodol+PVA+");
  // Drugs in their classes: two platinum drugs alike, one of each class not; counts matter.
  config.item_groups = *ItemGroups(actions, "class");
  EXPECT_EQ(key("Lipiodol+Oxaliplatin"), key("Lipiodol+Nedaplatin"));
  EXPECT_NE(key("Lipiodol+Oxaliplatin"), key("Lipiodol+Epirubicin"));
  EXPECT_NE(key("Lipiodol+Oxaliplatin"), key("Lipiodol+Oxaliplatin+Nedaplatin"));
  EXPECT_NE(key("Lipiodol+Oxaliplatin"), key("Lipiodol+Oxaliplatin+PVA"));
  // One saturating group: any one or two drugs alike, none not.
  config.item_groups = *ItemGroups(actions, "all");
  config.group_once = true;
  EXPECT_EQ(key("Lipiodol+Oxaliplatin"), key("Lipiodol+Epirubicin+Mitomycin"));
  EXPECT_NE(key("Lipiodol+Oxaliplatin"), key("Lipiodol"));
  // A response head reads the groups as the embedding does: the same key.
  config.response_head = true;
  EXPECT_EQ(key("Lipiodol+Oxaliplatin"), key("Lipiodol+Epirubicin"));
  config.item_groups.clear();
  config.group_once = false;
  EXPECT_EQ(key("Lipiodol+Oxaliplatin"), "Lipiodol+Oxaliplatin+");
  config.item_groups = *ItemGroups(actions, "all");
  config.response_head = false;
  // An item outside the vocabulary counts by name (the simulation refuses it).
  EXPECT_NE(GeneratorPlanKey(Plan({"Lipiodol", "Unobtainium"}), config), key("Lipiodol"));
}

TEST_F(DiffusionTest, BadInputGivesClearErrors) {
  auto model = Model();
  ASSERT_TRUE(model);
  const PatientCase p = Phantom({{0, 0, 0}});
  // An item outside the vocabulary.
  auto unknown = model->Simulate(p, {{Plan({"Lipiodol", "Unobtainium"}), 0, 1, 0}});
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(unknown.error().message.find("Unobtainium"), std::string::npos);
  // NaN in the CT.
  PatientCase nan = Phantom({{0, 0, 0}});
  nan.id = "NaN";
  nan.ct.SetValue(40, 40, 40, std::nanf(""));
  auto bad = model->Simulate(nan, {{P("Lipiodol"), 0, 1, 0}});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(bad.error().message.find("NaN"), std::string::npos);
  // A mask on another lattice.
  PatientCase shifted = Phantom({{0, 0, 0}});
  shifted.id = "shifted";
  Geometry g = shifted.tumor.geometry();
  g.origin += Eigen::Vector3d(0.5, 0, 0);
  ASSERT_TRUE(shifted.tumor.SetGeometry(g));
  auto mismatch = model->Simulate(shifted, {{P("Lipiodol"), 0, 1, 0}});
  ASSERT_FALSE(mismatch);
  EXPECT_EQ(mismatch.error().code, ErrorCode::kMismatch);
  // A checkpoint for another config.
  DiffusionBackendOptions o = Options();
  o.config = "cpu";
  auto other = CreateDiffusionDynamics(o);
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().code, ErrorCode::kMismatch);
  EXPECT_NE(other.error().message.find("crop_voxels"), std::string::npos);
  // Missing and corrupt files.
  o = Options();
  o.model_path = (dir_->path() / "missing.pt").string();
  EXPECT_EQ(CreateDiffusionDynamics(o).error().code, ErrorCode::kNotFound);
  o.model_path = (dir_->path() / "corrupt.pt").string();
  ASSERT_TRUE(WriteFileAtomic(o.model_path, "not a checkpoint"));
  const auto corrupt = CreateDiffusionDynamics(o);
  EXPECT_EQ(corrupt.error().code, ErrorCode::kCorruptData);
  // libtorch's cause in one line, without its C++ backtrace.
  EXPECT_EQ(corrupt.error().message.find("frame #"), std::string::npos) << corrupt.error().message;
  EXPECT_EQ(corrupt.error().message.find('\n'), std::string::npos) << corrupt.error().message;
  // Training data of the wrong size.
  DiffusionTrainOptions t;
  t.config = *DiffusionConfig::Preset("cpu", ActionBase::Default());
  EXPECT_EQ(TrainDiffusion(Pairs(Tiny()), {}, t, {}).error().code, ErrorCode::kMismatch);
}

TEST_F(DiffusionTest, AStateOfAnUnknownStageOrStepIsRefusedBeforeAnyStep) {
  // A negative or huge step trained for ever (about 2^31 steps), a string one exited 70.
  for (const std::string& text : {std::string(R"({"stage": "autoencoder", "step": -2000000000})"),
                                  std::string(R"({"stage": "autoencoder", "step": 1e300})"),
                                  std::string(R"({"stage": "autoencoder", "step": "x"})"),
                                  std::string(R"({"stage": "zzz", "step": 1})")}) {
    DiffusionTrainOptions o = TinyTraining(9, 4, 2, 2);
    o.state_dir = (dir_->path() / "bad_state").string();
    o.out = (dir_->path() / "bad_state.pt").string();
    fs::create_directories(o.state_dir);
    ASSERT_TRUE(WriteFileAtomic(o.state_dir + "/state.json", text));
    const auto refused = TrainDiffusion(Pairs(o.config), {}, o, {});
    ASSERT_FALSE(refused) << text;
    EXPECT_EQ(refused.error().code, ErrorCode::kCorruptData) << refused.error().message;
    EXPECT_NE(refused.error().message.find("bad_state"), std::string::npos)
        << refused.error().message;
    EXPECT_FALSE(fs::exists(o.out));
  }
}

TEST_F(DiffusionTest, TrainingResumesFromItsState) {
  DiffusionTrainOptions o = TinyTraining(9, 4, 2, 2);
  o.state_dir = (dir_->path() / "state").string();
  o.out = (dir_->path() / "resumed.pt").string();
  const auto pairs = Pairs(o.config);
  auto first = TrainDiffusion(pairs, {}, o, {});
  ASSERT_TRUE(first) << first.error().ToString();
  EXPECT_EQ(first->resumed_from_step, 0);
  o.denoiser_steps = 6;  // continue the same run for two more steps
  // Another guidance grid changes what is scored after training, not the run resumed.
  o.guidance_grid = {1.5, 4.0};
  int steps_seen = 0;
  auto second = TrainDiffusion(pairs, {}, o, [&](const DiffusionTrainProgress&) { ++steps_seen; });
  ASSERT_TRUE(second) << second.error().ToString();
  EXPECT_EQ(second->resumed_from_step, 8);
  // Guidance scales tried on validation, and the recommended one among them.
  ASSERT_EQ(second->guidance_scores.size(), o.guidance_grid.size());
  EXPECT_EQ(second->guidance_scores[0].guidance, 1.5);
  EXPECT_EQ(second->guidance_scores[1].guidance, 4.0);
  EXPECT_NE(std::find(o.guidance_grid.begin(), o.guidance_grid.end(), second->recommended_guidance),
            o.guidance_grid.end());
  // A grid with nothing to score, or a scale outside dynamics.guidance's range, is refused
  // before any step.
  for (const std::vector<double>& bad :
       {std::vector<double>{}, std::vector<double>{1.0, 25.0}, std::vector<double>{-1.0},
        std::vector<double>{std::nan("")}}) {
    DiffusionTrainOptions refused_options = o;
    refused_options.guidance_grid = bad;
    refused_options.out = (dir_->path() / "grid_refused.pt").string();
    refused_options.state_dir.clear();
    const auto refused = TrainDiffusion(pairs, {}, refused_options, {});
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(refused.error().message.find("guidance grid"), std::string::npos)
        << refused.error().message;
    EXPECT_FALSE(fs::exists(refused_options.out));
  }
  o.guidance_grid = DiffusionTrainOptions{}.guidance_grid;
  EXPECT_TRUE(std::isfinite(second->ae_val_residual_rel));
  EXPECT_EQ(steps_seen, 2);
  EXPECT_TRUE(fs::exists(o.out));

  // Another run's state is refused before any step, naming what differs, and left as it is:
  // another option, other data (one crop changed, its name kept), another architecture.
  const std::string state_file = o.state_dir + "/state.json";
  const std::string saved = *ReadFile(state_file);
  const auto refusal = [&](const DiffusionTrainOptions& other,
                           const std::vector<DiffusionPair>& data) {
    int ran = 0;
    auto r = TrainDiffusion(data, {}, other, [&](const DiffusionTrainProgress&) { ++ran; });
    EXPECT_EQ(ran, 0);
    EXPECT_EQ(*ReadFile(state_file), saved);
    if (r) ADD_FAILURE() << "another run's state was resumed";
    return r ? Error{} : r.error();
  };
  DiffusionTrainOptions other = o;
  other.denoiser_lr = 5e-4;
  Error e = refusal(other, pairs);
  EXPECT_EQ(e.code, ErrorCode::kMismatch);
  EXPECT_NE(e.message.find("denoiser_lr: the state has 0.001, this run has 0.0005"),
            std::string::npos)
      << e.message;
  auto changed = pairs;
  changed[3].post.mask.data[100] += 0.5f;
  e = refusal(o, changed);
  EXPECT_EQ(e.code, ErrorCode::kMismatch);
  EXPECT_NE(e.message.find("\n  data: the state has \""), std::string::npos) << e.message;
  other = o;
  other.config.lesion_size = true;
  e = refusal(other, pairs);
  EXPECT_NE(e.message.find("config.lesion_size: the state has (none), this run has true"),
            std::string::npos)
      << e.message;
  // A start checkpoint counts by its content.
  other = o;
  other.init_from = o.out;
  e = refusal(other, pairs);
  EXPECT_NE(e.message.find("init_from_sha256: the state has \"\", this run has \"" +
                           *Sha256File(o.out) + "\""),
            std::string::npos)
      << e.message;
  // Fewer steps than the state has done.
  other = o;
  other.denoiser_steps = 3;
  e = refusal(other, pairs);
  EXPECT_EQ(e.code, ErrorCode::kInvalidArgument);
  EXPECT_NE(e.message.find("denoiser step 6, past the 3 steps asked"), std::string::npos)
      << e.message;
  // The same run still continues; so does a state saved before runs were recorded.
  ASSERT_TRUE(WriteFileAtomic(state_file, R"({"stage": "denoiser", "step": 6})"));
  o.denoiser_steps = 7;
  auto third = TrainDiffusion(pairs, {}, o, {});
  ASSERT_TRUE(third) << third.error().ToString();
  EXPECT_EQ(third->resumed_from_step, 10);
  EXPECT_NE(ReadFile(state_file)->find("\"run\""), std::string::npos);
}

TEST_F(DiffusionTest, AResponseHeadRunResumedInsideTheDenoiserKeepsTheHeadItsStateHolds) {
  // The head is fitted once, before the denoiser's steps. A run resumed inside the denoiser
  // stage takes the head from its state and does not fit it again: it scores the same head.
  DiffusionTrainOptions o = TinyTraining(53, 4, 2, 100);
  o.config.response_head = true;
  o.state_dir = (dir_->path() / "head_state").string();
  o.out = (dir_->path() / "head_resumed.pt").string();
  const auto pairs = Pairs(o.config);
  int head_steps = 0;
  const auto count_head_steps = [&](const DiffusionTrainProgress& p) {
    head_steps += p.stage == "response";
  };
  auto first = TrainDiffusion(pairs, {}, o, count_head_steps);
  ASSERT_TRUE(first) << first.error().ToString();
  EXPECT_GT(head_steps, 0);
  head_steps = 0;
  o.denoiser_steps = 6;
  auto second = TrainDiffusion(pairs, {}, o, count_head_steps);
  ASSERT_TRUE(second) << second.error().ToString();
  EXPECT_EQ(second->resumed_from_step, 8);
  EXPECT_EQ(head_steps, 0);
  EXPECT_EQ(second->response.train_rmse, first->response.train_rmse);
  EXPECT_EQ(second->response.val_contrast_rmse, first->response.val_contrast_rmse);
  const nlohmann::json kept = TrainingRecord(o.out).at("response_head");
  EXPECT_EQ(kept.at("train_rmse").get<double>(), first->response.train_rmse) << kept.dump();
}

TEST_F(DiffusionTest, TrainsOnPairsMovedInBesideAValidationSplit) {
  // The CLI moves its training pairs in and the trainer drops their full-precision crops once it
  // has stacked them: what it records and scores afterwards must not read them.
  DiffusionTrainOptions o = TinyTraining(21, 3, 2, 3);
  o.out = (dir_->path() / "split.pt").string();
  std::vector<DiffusionPair> train = Pairs(o.config);
  const std::vector<DiffusionPair> validation(train.end() - 4, train.end());
  train.resize(train.size() - 4);
  auto report = TrainDiffusion(std::move(train), validation, o, {});
  ASSERT_TRUE(report) << report.error().ToString();
  ASSERT_EQ(report->guidance_scores.size(), o.guidance_grid.size());
  for (const GuidanceScore& g : report->guidance_scores) {
    EXPECT_TRUE(std::isfinite(g.residual_mae_ml)) << g.guidance;
  }
  DiffusionBackendOptions b = Options();
  b.model_path = o.out;
  auto model = CreateDiffusionDynamics(b);
  ASSERT_TRUE(model) << model.error().ToString();
  const nlohmann::json training = nlohmann::json::parse((*model)->metadata_json()).at("training");
  EXPECT_EQ(training.at("train_pairs"), 8);
  EXPECT_EQ(training.at("validation_pairs"), 4);
}

TEST_F(DiffusionTest, MachineTuringTestSeparatesDifferentCropsOnly) {
  Rng rng(3);
  const Geometry g = Geometry::Isotropic(1.0);
  // White noise, or noise constant over 2x2x2 blocks (a smoother texture, as a generator's).
  const auto noise = [&](float offset, bool blocky = false) {
    DenseFloat d({16, 16, 16}, g, 0.0f);
    for (float& v : d.data) v = float(0.2 * rng.Normal()) + offset;
    if (blocky) {
      for (int k = 0; k < 16; ++k)
        for (int j = 0; j < 16; ++j)
          for (int i = 0; i < 16; ++i) d.at(i, j, k) = d.at(i & ~1, j & ~1, k & ~1);
    }
    return d;
  };
  // Each patient has its own intensity; its real and synthetic crops share it, as a patient's
  // true and generated outcomes share its anatomy.
  std::vector<DenseFloat> real, same, shifted;
  std::vector<int> groups;
  for (int kind = 0; kind < 2; ++kind) {
    for (int n = 0; n < 24; ++n) groups.push_back(n);
  }
  for (int n = 0; n < 24; ++n) {
    const float patient = float(n % 6) * 0.3f - 0.75f;
    real.push_back(noise(patient));
    same.push_back(noise(patient));
    shifted.push_back(noise(patient, /*blocky=*/true));
  }
  auto separable = MachineTuringTest(real, shifted, groups, 3, 1, 1);
  ASSERT_TRUE(separable) << separable.error().ToString();
  EXPECT_GT(separable->auc, 0.8);
  EXPECT_EQ(separable->groups, 24);
  auto alike = MachineTuringTest(real, same, groups, 3, 1, 1);
  ASSERT_TRUE(alike);
  EXPECT_LT(alike->ci_low, 0.5);
  EXPECT_GT(alike->ci_high, 0.5);
  EXPECT_EQ(MachineTuringTest(real, {}, groups, 3, 1).error().code, ErrorCode::kInvalidArgument);
  const std::vector<int> short_groups(groups.begin(), groups.begin() + 10);
  EXPECT_EQ(MachineTuringTest(real, same, short_groups, 3, 1).error().code,
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace mewm::dynamics
