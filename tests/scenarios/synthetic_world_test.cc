// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/world/synthetic_world.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "../core/test_env.h"
#include "mewm/core/file_util.h"
#include "mewm/core/vdb_io.h"
#include "mewm/eval/dynamics_data.h"
#include "mewm/run/cohort_source.h"
#include "mewm/world/clinical_note.h"
#include "mewm/world/cohort.h"

namespace mewm::scenarios {
namespace {

namespace fs = std::filesystem;

/// A coarse world (2 mm voxels) so that tests render in a fraction of a second.
WorldConfig SmallWorld() {
  WorldConfig c;
  c.spacing_mm = 2.0;
  return c;
}

/// The small world drawing `plans` counterfactual plans per patient by `design`.
Expected<SyntheticWorld> DesignWorld(CounterfactualDesign design, int plans) {
  WorldConfig c = SmallWorld();
  c.counterfactual_plans = plans;
  c.counterfactual_design = design;
  return SyntheticWorld::Create(c, ActionBase::Default());
}

/// A plan's drugs (first) and its other items (second), each in the plan's order.
std::pair<std::vector<std::string>, std::vector<std::string>> SplitDrugs(const Plan& plan) {
  const std::vector<std::string> drugs = ActionBase::Default().Drugs();
  std::pair<std::vector<std::string>, std::vector<std::string>> out;
  for (const std::string& item : plan.items()) {
    const bool drug = std::find(drugs.begin(), drugs.end(), item) != drugs.end();
    (drug ? out.first : out.second).push_back(item);
  }
  return out;
}

/// One of a patient's counterfactual plans is valid, differs from the administered plan and is
/// drawn once.
void ExpectNewValidPlan(const SyntheticPatient& p, const Plan& plan) {
  EXPECT_NE(plan, p.administered);
  EXPECT_TRUE(ActionBase::Default().Validate(plan)) << plan.ToString();
  EXPECT_EQ(std::count(p.counterfactual.begin(), p.counterfactual.end(), plan), 1);
}

class SyntheticWorldTest : public testing::VdbTest {
 protected:
  SyntheticWorld world_ = *SyntheticWorld::Create(SmallWorld(), ActionBase::Default());
};

TEST_F(SyntheticWorldTest, PatientsArePureFunctionsOfSeedAndIndex) {
  const SyntheticPatient a = world_.Sample(7, 3), b = world_.Sample(7, 3), c = world_.Sample(7, 4);
  EXPECT_EQ(a.id, "P0004");
  EXPECT_EQ(a.seed, b.seed);
  EXPECT_EQ(a.biology.sensitivity, b.biology.sensitivity);
  EXPECT_EQ(a.administered, b.administered);
  EXPECT_NE(a.seed, c.seed);
  EXPECT_TRUE(a.covariates.Validate());
  EXPECT_TRUE(ActionBase::Default().Validate(a.administered));
}

TEST_F(SyntheticWorldTest, CovariateMarginalsArePlausibleForTace) {
  int male = 0, child_a = 0, multi = 0;
  double age = 0.0, log_afp = 0.0;
  const int n = 400;
  for (int i = 0; i < n; ++i) {
    const Covariates c = world_.Sample(11, i).covariates;
    male += c.sex == Covariates::Sex::kMale;
    child_a += c.child_pugh == 'A';
    multi += c.lesion_count > 1;
    age += c.age_years;
    log_afp += std::log10(c.afp_ng_ml);
  }
  EXPECT_NEAR(double(male) / n, 0.82, 0.06);
  EXPECT_NEAR(double(child_a) / n, 0.70, 0.07);
  EXPECT_NEAR(double(multi) / n, 0.45, 0.07);
  EXPECT_NEAR(age / n, 62.0, 2.0);
  EXPECT_NEAR(log_afp / n, 1.5, 0.2);
}

TEST_F(SyntheticWorldTest, TumorRegionRenderMatchesTheFullRenderThere) {
  const SyntheticPatient p = world_.Sample(3, 0);
  auto full = world_.Render(p);
  auto region = world_.Render(p, true);
  ASSERT_TRUE(full && region);
  EXPECT_TRUE(full->Validate()) << full->Validate().error().ToString();
  int compared = 0;
  for (auto it = region->ct.grid().cbeginValueOn(); it; ++it) {
    ASSERT_EQ(*it, full->ct.grid().getConstAccessor().getValue(it.getCoord()));
    ++compared;
  }
  EXPECT_GT(compared, 1000);
  EXPECT_EQ(CountLabel(region->tumor), CountLabel(full->tumor));
  // Air stays the sparse background.
  EXPECT_EQ(full->ct.GetValue(0, 0, 0), -1000.0f);
  EXPECT_LT(full->ct.ActiveVoxelCount(),
            full->ct.extent()[0] * full->ct.extent()[1] * full->ct.extent()[2]);
  for (std::size_t l = 0; l < p.lesions.size(); ++l)
    EXPECT_GT(CountLabel(full->tumor, int(l + 1)), 0);
}

TEST_F(SyntheticWorldTest, EveryLesionIsCentredInsideTheAbdomen) {
  // The liver and its lesions are drawn only below the fat and the muscle wall (depth under the
  // skin of the body's elliptic section >= fat + 12 mm). A lesion centred in the wall was drawn
  // partly or not at all: patient 15 of seed 3803 had one lesion and an empty tumor mask, and
  // generating that cohort failed.
  int lesions = 0;
  for (std::uint64_t seed : {1u, 2u, 3u, 3803u}) {
    for (int i = 0; i < 150; ++i) {
      const SyntheticPatient p = world_.Sample(seed, i);
      ASSERT_FALSE(p.lesions.empty()) << p.id;
      EXPECT_EQ(p.covariates.lesion_count, int(p.lesions.size()));
      const AnatomySpec& a = p.anatomy;
      for (const LesionSpec& l : p.lesions) {
        const double bx = l.center_mm[0] / a.body_radii_mm[0];
        const double by = l.center_mm[1] / a.body_radii_mm[1];
        const double depth = (1.0 - std::hypot(bx, by)) * a.body_radii_mm.minCoeff();
        EXPECT_GE(depth, a.fat_mm + 12.0) << "seed " << seed << " " << p.id;
        ++lesions;
      }
    }
  }
  EXPECT_GT(lesions, 900);
  const SyntheticPatient p = world_.Sample(3803, 14);
  auto region = world_.Render(p, true);
  ASSERT_TRUE(region) << region.error().ToString();
  for (std::size_t l = 0; l < p.lesions.size(); ++l) {
    EXPECT_GT(CountLabel(region->tumor, int(l + 1)), 0) << "lesion " << l + 1;
  }
}

TEST_F(SyntheticWorldTest, TruthFindsTheMinimumOverEveryValidPlan) {
  const SyntheticPatient p = world_.Sample(5, 1);
  auto region = world_.Render(p, true);
  ASSERT_TRUE(region);
  auto truth = world_.Truth(p, *region);
  ASSERT_TRUE(truth) << truth.error().ToString();
  ASSERT_EQ(truth->plans.size(), world_.plans().size());
  for (const PlanTruth& t : truth->plans) EXPECT_GE(t.risk, truth->plans[truth->optimal].risk);
  EXPECT_EQ(truth->plans[truth->administered].plan, p.administered);
  EXPECT_GT(truth->event_time_months, 0.0);
  EXPECT_GT(truth->pre_viable_ml, 0.0);
}

TEST_F(SyntheticWorldTest, EmbolicContrastShowsThePatientsDrugsWithOtherEmbolics) {
  const auto drugs_of = [](const Plan& plan) { return SplitDrugs(plan).first; };
  auto a = DesignWorld(CounterfactualDesign::kRandom, 7),
       b = DesignWorld(CounterfactualDesign::kEmbolicContrast, 7);
  ASSERT_TRUE(a && b);
  int same_drugs_random = 0;
  for (int i = 0; i < 20; ++i) {
    const SyntheticPatient r = a->Sample(9, i), c = b->Sample(9, i);
    // The plans are drawn last: the patient is the same under both designs.
    EXPECT_EQ(r.administered, c.administered);
    EXPECT_EQ(r.covariates.age_years, c.covariates.age_years);
    EXPECT_EQ(r.covariates.max_diameter_mm, c.covariates.max_diameter_mm);
    ASSERT_EQ(r.lesions.size(), c.lesions.size());
    ASSERT_EQ(c.counterfactual.size(), 7u);
    int same = 0;
    for (std::size_t k = 0; k < c.counterfactual.size(); ++k) {
      const Plan& plan = c.counterfactual[k];
      ExpectNewValidPlan(c, plan);
      const bool kept = drugs_of(plan) == drugs_of(c.administered);
      same += kept;
      // The first ceil(7/2) = 4 keep the drugs (every drug set has at least 4 other embolic
      // choices), then come the random plans.
      if (k < 4) {
        EXPECT_TRUE(kept) << plan.ToString() << " against " << c.administered.ToString();
      }
    }
    EXPECT_GE(same, 4);
    for (const Plan& plan : r.counterfactual)
      same_drugs_random += drugs_of(plan) == drugs_of(r.administered);
  }
  // Uniform draws rarely keep the drugs.
  EXPECT_LT(same_drugs_random, 20);
  EXPECT_EQ(*ParseCounterfactualDesign("embolic-contrast"), CounterfactualDesign::kEmbolicContrast);
  EXPECT_EQ(ToString(CounterfactualDesign::kRandom), "random");
  const auto bad = ParseCounterfactualDesign("contrast");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(bad.error().message.find("embolic-contrast"), std::string::npos);
}

TEST_F(SyntheticWorldTest, ItemContrastShowsThePatientsDrugsAndItsEmbolicsWithOtherItems) {
  auto a = DesignWorld(CounterfactualDesign::kEmbolicContrast, 8),
       b = DesignWorld(CounterfactualDesign::kItemContrast, 8);
  ASSERT_TRUE(a && b);
  int drug_changes_embolic_design = 0;
  for (int i = 0; i < 20; ++i) {
    const SyntheticPatient e = a->Sample(9, i), c = b->Sample(9, i);
    EXPECT_EQ(e.administered, c.administered);
    ASSERT_EQ(c.counterfactual.size(), 8u);
    const auto given = SplitDrugs(c.administered);
    for (std::size_t k = 0; k < c.counterfactual.size(); ++k) {
      const Plan& plan = c.counterfactual[k];
      ExpectNewValidPlan(c, plan);
      const auto parts = SplitDrugs(plan);
      // ceil(8/3) = 3 keep the drugs and change the embolics, then 3 keep the embolics and
      // change the drugs (every plan has at least 3 such neighbours), then 2 random plans.
      if (k < 3) {
        EXPECT_TRUE(parts.first == given.first && parts.second != given.second) << plan.ToString();
      } else if (k < 6) {
        EXPECT_TRUE(parts.second == given.second && parts.first != given.first) << plan.ToString();
      }
    }
    for (const Plan& plan : e.counterfactual)
      drug_changes_embolic_design += SplitDrugs(plan).second == given.second;
  }
  // The embolic-contrast design rarely shows a patient's embolics with other drugs.
  EXPECT_LT(drug_changes_embolic_design, 20);
  EXPECT_EQ(*ParseCounterfactualDesign("item-contrast"), CounterfactualDesign::kItemContrast);
  EXPECT_EQ(ToString(CounterfactualDesign::kItemContrast), "item-contrast");
  EXPECT_EQ(ToString(CounterfactualDesign::kEmbolicContrast), "embolic-contrast");
}

TEST_F(SyntheticWorldTest, DrugContrastKeepsThePatientsEmbolicsAndChangesOnlyTheDrugs) {
  auto a = DesignWorld(CounterfactualDesign::kItemContrast, 7),
       b = DesignWorld(CounterfactualDesign::kDrugContrast, 7);
  ASSERT_TRUE(a && b);
  std::set<std::string> drug_sets;
  for (int i = 0; i < 20; ++i) {
    const SyntheticPatient item = a->Sample(9, i), c = b->Sample(9, i);
    EXPECT_EQ(item.administered, c.administered);  // the design draws after the patient
    ASSERT_EQ(c.counterfactual.size(), 7u);
    const auto given = SplitDrugs(c.administered);
    for (const Plan& plan : c.counterfactual) {
      ExpectNewValidPlan(c, plan);
      const auto parts = SplitDrugs(plan);
      EXPECT_EQ(parts.second, given.second) << plan.ToString();
      EXPECT_NE(parts.first, given.first) << plan.ToString();
      std::string key;
      for (const std::string& d : parts.first) key += d + "+";
      drug_sets.insert(key);
    }
  }
  // Drawn at random among the 45 other drug sets, not the same few.
  EXPECT_GT(drug_sets.size(), 30u);
  EXPECT_EQ(*ParseCounterfactualDesign("drug-contrast"), CounterfactualDesign::kDrugContrast);
  EXPECT_EQ(ToString(CounterfactualDesign::kDrugContrast), "drug-contrast");
  const auto bad = ParseCounterfactualDesign("drugs");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("drug-contrast"), std::string::npos);
}

TEST_F(SyntheticWorldTest, BadConfigsAreRejected) {
  WorldConfig c = SmallWorld();
  c.spacing_mm = 0.0;
  EXPECT_FALSE(SyntheticWorld::Create(c, ActionBase::Default()));
  c = SmallWorld();
  c.counterfactual_plans = 1000;
  EXPECT_FALSE(SyntheticWorld::Create(c, ActionBase::Default()));
}

class CohortTest : public testing::VdbTest {
 protected:
  CohortOptions Options(const std::string& out, int n) {
    CohortOptions o;
    o.n = n;
    o.seed = 42;
    o.out_dir = out;
    o.world = SmallWorld();
    o.world.counterfactual_plans = 1;
    return o;
  }
  testing::TempDir dir_;
};

TEST_F(CohortTest, SameSeedGivesByteIdenticalCohorts) {
  const std::string a = dir_.File("a"), b = dir_.File("b");
  ASSERT_TRUE(GenerateCohort(Options(a, 2), ActionBase::Default()));
  ASSERT_TRUE(GenerateCohort(Options(b, 2), ActionBase::Default()));
  int files = 0;
  for (const auto& entry : fs::recursive_directory_iterator(a)) {
    if (!entry.is_regular_file()) continue;
    const fs::path rel = fs::relative(entry.path(), a);
    ASSERT_EQ(*ReadFile(entry.path().string()), *ReadFile((fs::path(b) / rel).string())) << rel;
    ++files;
  }
  // .mewm-cohort, manifest, clinical, outcomes, truth/truth.json + per patient: pre.vdb, 3 NIfTI,
  // post vdb + 2 NIfTI, note under patients/; truth.json and 1 counterfactual under
  // truth/patients/.
  EXPECT_EQ(files, 5 + 2 * 10);
  for (const char* name :
       {"manifest.json", "clinical.csv", "outcomes.csv", "truth/truth.json",
        "patients/P0001/pre.vdb", "patients/P0002/post_administered.vdb",
        "patients/P0001/pre_ct.nii.gz", "patients/P0001/tumor.nii.gz",
        "truth/patients/P0001/truth.json", "truth/patients/P0002/post_cf1.vdb"}) {
    EXPECT_TRUE(fs::exists(fs::path(a) / name)) << name;
  }
  // Nothing hidden beside what the planner reads.
  for (const char* name :
       {"truth.json", "patients/P0001/truth.json", "patients/P0002/post_cf1.vdb"}) {
    EXPECT_FALSE(fs::exists(fs::path(a) / name)) << name;
  }
  // The clinical note: written per patient, named by the manifest, loaded with the patient.
  auto entries = ReadSyntheticCohort(a);
  ASSERT_TRUE(entries) << entries.error().message;
  ASSERT_EQ(entries->size(), 2u);
  EXPECT_EQ(entries->at(1).note, (fs::path(a) / "patients/P0002/note.txt").string());
  auto patient = LoadPatient(entries->at(1));
  ASSERT_TRUE(patient) << patient.error().message;
  auto world = SyntheticWorld::Create(Options(a, 2).world, ActionBase::Default());
  ASSERT_TRUE(world);
  EXPECT_EQ(patient->note, ClinicalNote(world->Sample(42, 1)));
  // A cohort written before notes existed has none; a manifest naming a note outside the cohort
  // is refused.
  std::string manifest = *ReadFile(b + "/manifest.json"), without, outside = manifest;
  std::istringstream lines(manifest);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("\"note\"") == std::string::npos) without += line + "\n";
  }
  ASSERT_TRUE(WriteFileAtomic(b + "/manifest.json", without));
  auto old = ReadSyntheticCohort(b);
  ASSERT_TRUE(old) << old.error().message;
  EXPECT_TRUE(old->at(0).note.empty());
  EXPECT_TRUE(LoadPatient(old->at(0))->note.empty());
  outside.replace(outside.find("patients/P0001/note.txt"), 23, "../elsewhere.txt");
  ASSERT_TRUE(WriteFileAtomic(b + "/manifest.json", outside));
  auto refused = ReadSyntheticCohort(b);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("outside the cohort's folder"), std::string::npos)
      << refused.error().message;
  // So is an image outside it (training read another cohort's), and a patient listed twice (the
  // second took the first one's clinical row), and a clinical row given twice.
  std::string image_outside = manifest;
  image_outside.replace(image_outside.find("patients/P0001/pre.vdb"), 22,
                        "../a/patients/P0001/pre.vdb");
  ASSERT_TRUE(WriteFileAtomic(b + "/manifest.json", image_outside));
  refused = ReadSyntheticCohort(b);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("image '../a/patients/P0001/pre.vdb' lies outside"),
            std::string::npos)
      << refused.error().message;
  // The follow-up image is confined where it is read (training, evaluation): a planning run
  // must not touch it even to resolve it.
  std::string post_outside = manifest;
  post_outside.replace(post_outside.find("patients/P0001/post_administered.vdb"), 36,
                       "../a/patients/P0001/post_administered.vdb");
  ASSERT_TRUE(WriteFileAtomic(b + "/manifest.json", post_outside));
  EXPECT_TRUE(ReadSyntheticCohort(b));
  refused = ReadSyntheticCohortWithOutcomes(b);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("lies outside the cohort's folder"), std::string::npos)
      << refused.error().message;
  nlohmann::json twice = nlohmann::json::parse(manifest);
  twice["patients"].push_back(twice["patients"][0]);
  ASSERT_TRUE(WriteFileAtomic(b + "/manifest.json", twice.dump()));
  refused = ReadSyntheticCohort(b);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("lists patient 'P0001' twice"), std::string::npos)
      << refused.error().message;
  ASSERT_TRUE(WriteFileAtomic(b + "/manifest.json", manifest));
  const std::string clinical = *ReadFile(b + "/clinical.csv");
  const std::string first_row = clinical.substr(
      clinical.find('\n') + 1, clinical.find('\n', clinical.find('\n') + 1) - clinical.find('\n'));
  ASSERT_TRUE(WriteFileAtomic(b + "/clinical.csv", clinical + first_row));
  refused = ReadSyntheticCohort(b);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("two rows for patient 'P0001'"), std::string::npos)
      << refused.error().message;
  ASSERT_TRUE(WriteFileAtomic(b + "/clinical.csv", clinical));
  EXPECT_TRUE(ReadSyntheticCohort(b));
}

TEST_F(CohortTest, RefusesBadRequestsAndLeavesNoTemporaryFolders) {
  const std::string out = dir_.File("c");
  EXPECT_FALSE(GenerateCohort(Options(out, 0), ActionBase::Default()));
  ASSERT_TRUE(GenerateCohort(Options(out, 1), ActionBase::Default()));
  auto again = GenerateCohort(Options(out, 1), ActionBase::Default());
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().message.find("--force"), std::string::npos);
  CohortOptions forced = Options(out, 1);
  forced.force = true;
  EXPECT_TRUE(GenerateCohort(forced, ActionBase::Default()));
  for (const char* parent : {"patients", "truth/patients"}) {
    for (const auto& entry : fs::directory_iterator(fs::path(out) / parent)) {
      EXPECT_EQ(entry.path().filename().string().rfind(".tmp", 0), std::string::npos);
    }
  }
  ASSERT_TRUE(WriteFileAtomic(dir_.File("file"), "x"));
  EXPECT_FALSE(GenerateCohort(Options(dir_.File("file"), 1), ActionBase::Default()));
  EXPECT_FALSE(GenerateCohort(Options("/proc/mewm-cannot-write", 1), ActionBase::Default()));
}

TEST_F(CohortTest, ForceReplacesOnlyACohortMewmWrote) {
  // A folder of someone's own files, with a patients/ folder: force must not touch it.
  const std::string mine = dir_.File("mine");
  fs::create_directories(mine + "/patients/P0001");
  ASSERT_TRUE(WriteFileAtomic(mine + "/patients/P0001/scan.nii.gz", "precious"));
  ASSERT_TRUE(WriteFileAtomic(mine + "/manifest.json", "{\"generator\": \"someone else\"}"));
  CohortOptions forced = Options(mine, 1);
  forced.force = true;
  auto refused = GenerateCohort(forced, ActionBase::Default());
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(refused.error().message.find("not a cohort written by mewm"), std::string::npos)
      << refused.error().message;
  EXPECT_EQ(*ReadFile(mine + "/patients/P0001/scan.nii.gz"), "precious");
  EXPECT_FALSE(fs::exists(mine + "/" + kCohortMarker));
  EXPECT_FALSE(IsEmptyOrMewmCohort(mine));
  // An empty folder, a finished cohort and one whose generation was cut short (marker only) are
  // mewm's to replace.
  fs::create_directories(dir_.File("empty"));
  EXPECT_TRUE(IsEmptyOrMewmCohort(dir_.File("empty")));
  EXPECT_TRUE(IsEmptyOrMewmCohort(dir_.File("missing")));
  const std::string cut = dir_.File("cut");
  fs::create_directories(cut + "/patients/.tmp-P0001-1");
  ASSERT_TRUE(WriteFileAtomic(cut + "/" + kCohortMarker,
                              "{\"generator\": \"" + std::string(kCohortGenerator) + "\"}"));
  EXPECT_TRUE(IsEmptyOrMewmCohort(cut));
  CohortOptions again = Options(cut, 1);
  again.force = true;
  ASSERT_TRUE(GenerateCohort(again, ActionBase::Default()));
  EXPECT_TRUE(fs::exists(cut + "/manifest.json"));
  EXPECT_TRUE(IsEmptyOrMewmCohort(cut));
  fs::remove(fs::path(cut) / kCohortMarker);  // a cohort written before the marker existed
  EXPECT_TRUE(IsEmptyOrMewmCohort(cut));
  // Files the user put beside the cohort, even inside truth/, survive a forced regeneration; the
  // old layout's top-level truth.json is the cohort's and goes.
  ASSERT_TRUE(WriteFileAtomic(cut + "/notes.txt", "mine"));
  ASSERT_TRUE(WriteFileAtomic(cut + "/truth/notes.txt", "mine too"));
  ASSERT_TRUE(WriteFileAtomic(cut + "/truth.json", "{}"));
  ASSERT_TRUE(GenerateCohort(again, ActionBase::Default()));
  EXPECT_EQ(*ReadFile(cut + "/notes.txt"), "mine");
  EXPECT_EQ(*ReadFile(cut + "/truth/notes.txt"), "mine too");
  EXPECT_FALSE(fs::exists(cut + "/truth.json"));
  EXPECT_TRUE(fs::exists(cut + "/truth/truth.json"));
  EXPECT_TRUE(fs::exists(cut + "/truth/patients/P0001/truth.json"));
  // A file of the user's inside the cohort's patient folders, or a link there, stops the
  // replacement before anything is removed: the cohort and the file stay as they were.
  const std::string manifest = *ReadFile(cut + "/manifest.json");
  for (const std::string& planted :
       {cut + "/patients/P0001/my_segmentation.nii.gz", cut + "/truth/patients/P0001/notes.md",
        cut + "/patients/readme.txt", cut + "/patients/P0001/post_cf1.vdb.bak"}) {
    ASSERT_TRUE(WriteFileAtomic(planted, "mine"));
    auto kept = GenerateCohort(again, ActionBase::Default());
    ASSERT_FALSE(kept) << planted;
    EXPECT_EQ(kept.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(kept.error().message.find("'" + planted + "' "), std::string::npos)
        << kept.error().message;
    EXPECT_EQ(*ReadFile(planted), "mine");
    EXPECT_EQ(*ReadFile(cut + "/manifest.json"), manifest);
    EXPECT_TRUE(fs::exists(cut + "/patients/P0001/pre.vdb"));
    fs::remove(planted);
  }
  fs::create_directories(dir_.File("elsewhere"));
  ASSERT_TRUE(WriteFileAtomic(dir_.File("elsewhere/scan.nii.gz"), "precious"));
  fs::create_directory_symlink(dir_.File("elsewhere"), cut + "/patients/P0002");
  ASSERT_FALSE(GenerateCohort(again, ActionBase::Default()));
  EXPECT_EQ(*ReadFile(dir_.File("elsewhere/scan.nii.gz")), "precious");
  fs::remove(cut + "/patients/P0002");
  // What a cohort wrote alone is replaced, the first layout's names included.
  ASSERT_TRUE(WriteFileAtomic(cut + "/patients/P0001/post_cf3.vdb", "old layout"));
  ASSERT_TRUE(GenerateCohort(again, ActionBase::Default()));
  EXPECT_FALSE(fs::exists(cut + "/patients/P0001/post_cf3.vdb"));
  // A folder with only a truth/ of someone else's is not a cohort either.
  const std::string theirs = dir_.File("theirs");
  fs::create_directories(theirs + "/truth");
  ASSERT_TRUE(
      WriteFileAtomic(theirs + "/truth/truth.json", "{\"generator\": \"mewm synthetic world\"}"));
  EXPECT_FALSE(IsEmptyOrMewmCohort(theirs));
  CohortOptions over = Options(theirs, 1);
  over.force = true;
  EXPECT_FALSE(GenerateCohort(over, ActionBase::Default()));
  EXPECT_TRUE(fs::exists(theirs + "/truth/truth.json"));
  // A cohort whose truth/ links to another cohort's: refused, and the other cohort keeps its
  // truth (it was removed through the link, then written over).
  const std::string other = dir_.File("other");
  CohortOptions second = Options(other, 1);
  ASSERT_TRUE(GenerateCohort(second, ActionBase::Default()));
  const std::string other_truth = *ReadFile(other + "/truth/truth.json");
  fs::remove_all(cut + "/truth");
  fs::create_directory_symlink(other + "/truth", cut + "/truth");
  auto linked = GenerateCohort(again, ActionBase::Default());
  ASSERT_FALSE(linked);
  EXPECT_NE(linked.error().message.find("is a symbolic link"), std::string::npos)
      << linked.error().message;
  EXPECT_EQ(*ReadFile(other + "/truth/truth.json"), other_truth);
  EXPECT_TRUE(fs::exists(other + "/truth/patients/P0001/truth.json"));
}

/// The leak check on the files: no seed (the cohort's or a patient's, as a number or as a
/// key) in anything the planner may read, and the outcomes apart from the covariates.
TEST_F(CohortTest, NoSeedAndNoOutcomeBesideThePlannersFiles) {
  const std::string out = dir_.File("seedless");
  CohortOptions o = Options(out, 2);
  o.seed = 8675309123457ull;  // a number that cannot appear by chance
  o.write_nifti = false;
  ASSERT_TRUE(GenerateCohort(o, ActionBase::Default()));
  // The truth keeps the seeds for reproducibility.
  auto truth = ReadFile(out + "/truth/truth.json");
  ASSERT_TRUE(truth);
  const nlohmann::json t = nlohmann::json::parse(*truth);
  EXPECT_EQ(t.at("generation").at("seed").get<std::string>(), std::to_string(o.seed));
  std::vector<std::string> secrets = {std::to_string(o.seed)};
  for (const auto& [id, seed] : t.at("generation").at("patient_seeds").items()) {
    secrets.push_back(seed.get<std::string>());
  }
  ASSERT_EQ(secrets.size(), 3u);
  for (const char* name :
       {"manifest.json", "clinical.csv", ".mewm-cohort", "patients/P0001/pre.vdb",
        "patients/P0002/pre.vdb", "patients/P0001/post_administered.vdb"}) {
    auto text = ReadFile(out + "/" + name);
    ASSERT_TRUE(text) << name;
    EXPECT_EQ(text->find("seed"), std::string::npos) << name;
    for (const std::string& secret : secrets) {
      EXPECT_EQ(text->find(secret), std::string::npos) << name << " holds " << secret;
    }
  }
  auto pre = ReadVdb(out + "/patients/P0001/pre.vdb");
  ASSERT_TRUE(pre);
  EXPECT_EQ(pre->metadata.provenance_json.find("seed"), std::string::npos)
      << pre->metadata.provenance_json;
  EXPECT_NE(pre->metadata.provenance_json.find(kCohortGenerator), std::string::npos);
  // clinical.csv: baseline covariates only; outcomes.csv: the plan given and the follow-up.
  const std::string clinical = *ReadFile(out + "/clinical.csv");
  for (const char* column : {"administered_plan", "time_months", "event"}) {
    EXPECT_EQ(clinical.find(column), std::string::npos) << column;
  }
  EXPECT_EQ(
      ReadFile(out + "/outcomes.csv")->rfind("patient_id,administered_plan,time_months,event\n", 0),
      0u);
  // The planner's reader has no outcome; training's reader has all of them.
  auto planner = ReadSyntheticCohort(out);
  ASSERT_TRUE(planner) << planner.error().ToString();
  ASSERT_EQ(planner->size(), 2u);
  EXPECT_TRUE((*planner)[0].administered.empty());
  EXPECT_FALSE((*planner)[0].survival.has_value());
  auto training = ReadSyntheticCohortWithOutcomes(out);
  ASSERT_TRUE(training) << training.error().ToString();
  EXPECT_EQ((*training)[1].administered,
            t.at("patients").at("P0002").at("administered_plan").get<std::string>());
  ASSERT_TRUE((*training)[1].survival.has_value());
  EXPECT_NEAR((*training)[1].survival->time,
              t.at("patients").at("P0002").at("event_time_months").get<double>(), 1e-6);
  // Dynamics data: the administered image beside the planner's files, counterfactuals in truth/.
  auto outcomes = ReadPlanOutcomes(out, ActionBase::Default());
  ASSERT_TRUE(outcomes) << outcomes.error().ToString();
  ASSERT_EQ(outcomes->at("P0001").size(), 2u);
  EXPECT_NE(outcomes->at("P0001")[0].post.find("patients/P0001/post_administered.vdb"),
            std::string::npos);
  EXPECT_NE(outcomes->at("P0001")[1].post.find("truth/patients/P0001/post_cf1.vdb"),
            std::string::npos);
  EXPECT_TRUE(fs::exists(outcomes->at("P0001")[1].post));
  // Training pairs on centred crops and on the crops the backend serves. With 32 mm crops every
  // lesion wider than 16 mm is tiled: more pairs, as many under each plan, each reading the whole
  // lesion's diameter, and tiles off the lesion's centre that no centred pair holds.
  dynamics::DiffusionConfig small;
  small.crop_voxels = 32;
  small.spacing_mm = 1.0;
  auto centred = BuildDiffusionPairs(out, small, ActionBase::Default(), PairCrops::kCentred);
  auto serving = BuildDiffusionPairs(out, small, ActionBase::Default(), PairCrops::kServing);
  ASSERT_TRUE(centred) << centred.error().ToString();
  ASSERT_TRUE(serving) << serving.error().ToString();
  EXPECT_GT(serving->size(), centred->size());
  std::map<std::pair<std::string, std::string>, int> crops_per_plan;
  int off_centre = 0;  // tiles whose crop no centred pair has
  for (const dynamics::DiffusionPair& pair : *serving) {
    ++crops_per_plan[{pair.patient, pair.plan.ToString()}];
    const bool whole_lesion =
        std::any_of(centred->begin(), centred->end(), [&](const dynamics::DiffusionPair& c) {
          return c.patient == pair.patient && c.lesion_diameter_mm == pair.lesion_diameter_mm;
        });
    EXPECT_TRUE(whole_lesion) << pair.patient << " " << pair.lesion_diameter_mm;
    off_centre += std::none_of(centred->begin(), centred->end(), [&](const auto& c) {
      return c.patient == pair.patient && c.pre.ct.data == pair.pre.ct.data;
    });
  }
  EXPECT_GT(off_centre, 0);
  EXPECT_EQ(crops_per_plan.size(), 4u);  // 2 patients x 2 plans
  // Crops too small to tile a lesion: the serving layout is refused, naming the patient and the
  // crop; the centred one still cuts its crops.
  small.crop_voxels = 16;
  auto untileable = BuildDiffusionPairs(out, small, ActionBase::Default(), PairCrops::kServing);
  ASSERT_FALSE(untileable);
  EXPECT_EQ(untileable.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(untileable.error().message.find("too small to tile"), std::string::npos)
      << untileable.error().ToString();
  EXPECT_NE(untileable.error().ToString().find("P000"), std::string::npos)
      << untileable.error().ToString();
  EXPECT_TRUE(BuildDiffusionPairs(out, small, ActionBase::Default(), PairCrops::kCentred));
  for (const auto& [key, n] : crops_per_plan) {
    EXPECT_EQ(n, crops_per_plan.at({key.first, outcomes->at(key.first)[0].plan.ToString()}));
  }
  // The runner recognises the cohort of a seed from its covariates alone.
  EXPECT_TRUE(IsCohortOf(out, o, ActionBase::Default()));
  CohortOptions other = o;
  other.seed = o.seed + 1;
  EXPECT_FALSE(IsCohortOf(out, other, ActionBase::Default()));
  other = o;
  other.n = 3;
  EXPECT_FALSE(IsCohortOf(out, other, ActionBase::Default()));
}

TEST_F(CohortTest, AnOldLayoutCohortIsRefusedWithAClearMessage) {
  // Layout 1: seed in the manifest, truth.json beside it, no "layout" key.
  const std::string old = dir_.File("v1");
  fs::create_directories(old);
  ASSERT_TRUE(WriteFileAtomic(old + "/manifest.json",
                              "{\"generator\": \"mewm synthetic world\", \"world_version\": \"1\", "
                              "\"seed\": \"3\", \"n\": 1, \"patients\": [{\"id\": \"P0001\", "
                              "\"pre\": \"patients/P0001/pre.vdb\", \"post_administered\": "
                              "\"patients/P0001/post_administered.vdb\", \"administered_plan\": "
                              "\"lipiodol\", \"counterfactual\": []}]}"));
  ASSERT_TRUE(WriteFileAtomic(old + "/truth.json", "{\"seed\": \"3\", \"patients\": {}}"));
  ASSERT_TRUE(WriteFileAtomic(old + "/clinical.csv",
                              "patient_id,age_years,sex,child_pugh,bclc_stage,afp_ng_ml,"
                              "lesion_count,max_diameter_mm,vascular_invasion,administered_plan,"
                              "time_months,event\nP0001,60,M,A,B,30,1,40,0,\"lipiodol\",12,1\n"));
  const auto expect_old = [&](const Error& e, const std::string& who) {
    EXPECT_EQ(e.code, ErrorCode::kMismatch) << who << ": " << e.ToString();
    EXPECT_NE(e.message.find("'" + old + "'"), std::string::npos) << who << ": " << e.message;
    EXPECT_NE(e.message.find("old layout"), std::string::npos) << who << ": " << e.message;
    EXPECT_NE(e.message.find("mewm cohort generate --force --out " + old), std::string::npos)
        << who << ": " << e.message;
  };
  auto planner = ReadSyntheticCohort(old);
  ASSERT_FALSE(planner);
  expect_old(planner.error(), "ReadSyntheticCohort");
  auto training = ReadSyntheticCohortWithOutcomes(old);
  ASSERT_FALSE(training);
  expect_old(training.error(), "ReadSyntheticCohortWithOutcomes");
  auto stats = ComputeCohortStats(old);
  ASSERT_FALSE(stats);
  expect_old(stats.error(), "ComputeCohortStats");
  auto outcomes = ReadPlanOutcomes(old, ActionBase::Default());
  ASSERT_FALSE(outcomes);
  expect_old(outcomes.error(), "ReadPlanOutcomes");
  // The dynamics evaluation refuses it the same way, and fewer than one sample per plan first.
  const dynamics::DiffusionConfig crops;
  auto eval = EvaluateDynamics(old, {}, ActionBase::Default(), crops, {}, 1);
  ASSERT_FALSE(eval);
  expect_old(eval.error(), "EvaluateDynamics");
  auto no_samples = EvaluateDynamics(old, {}, ActionBase::Default(), crops, {}, 1, {}, 0, {}, 0);
  ASSERT_FALSE(no_samples);
  EXPECT_EQ(no_samples.error().code, ErrorCode::kInvalidArgument) << no_samples.error().ToString();
  EXPECT_NE(no_samples.error().message.find("samples per plan"), std::string::npos);
  CohortOptions o = Options(old, 1);
  EXPECT_FALSE(IsCohortOf(old, o, ActionBase::Default()));
  // It is mewm's, so --force replaces it (the runner does the same).
  EXPECT_TRUE(IsEmptyOrMewmCohort(old));
}

TEST_F(CohortTest, CancelStopsGenerationInsideAPatientAndLeavesNoCompleteCohort) {
  // A forced regeneration over a complete cohort, cancelled after a few polls (inside the first
  // patients' rendering): kCancelled, no manifest (the old one is gone too), no temporary folders.
  const std::string out = dir_.File("cancelled");
  ASSERT_TRUE(GenerateCohort(Options(out, 2), ActionBase::Default()));
  CohortOptions o = Options(out, 4);
  o.force = true;
  std::atomic<int> polls{0};
  o.cancelled = [&] { return ++polls > 3; };
  const Status generated = GenerateCohort(o, ActionBase::Default());
  ASSERT_FALSE(generated);
  EXPECT_EQ(generated.error().code, ErrorCode::kCancelled) << generated.error().message;
  EXPECT_NE(generated.error().message.find("cancelled"), std::string::npos);
  EXPECT_FALSE(fs::exists(fs::path(out) / "manifest.json"));
  for (const auto& entry : fs::directory_iterator(fs::path(out) / "patients")) {
    EXPECT_EQ(entry.path().filename().string().rfind(".tmp", 0), std::string::npos);
  }
  // The world's long steps stop on their own too.
  auto world = SyntheticWorld::Create(SmallWorld(), ActionBase::Default());
  ASSERT_TRUE(world);
  const SyntheticPatient p = world->Sample(1, 0);
  auto rendered = world->Render(p, false, [] { return true; });
  ASSERT_FALSE(rendered);
  EXPECT_EQ(rendered.error().code, ErrorCode::kCancelled);
  auto full = world->Render(p);
  ASSERT_TRUE(full);
  auto truth = world->Truth(p, *full, [] { return true; });
  ASSERT_FALSE(truth);
  EXPECT_EQ(truth.error().code, ErrorCode::kCancelled);
}

TEST_F(CohortTest, ImagesFallInPortalVenousHuBands) {
  const std::string out = dir_.File("hu");
  CohortOptions o = Options(out, 6);
  o.write_nifti = false;
  o.world.counterfactual_plans = 0;
  ASSERT_TRUE(GenerateCohort(o, ActionBase::Default()));
  auto stats = ComputeCohortStats(out, 6);
  ASSERT_TRUE(stats) << stats.error().ToString();
  EXPECT_EQ(stats->hu_patients, 6);
  EXPECT_GE(stats->liver_hu, 90.0);  // portal-venous phase
  EXPECT_LE(stats->liver_hu, 125.0);
  EXPECT_GE(stats->viable_tumor_hu, 60.0);
  EXPECT_LE(stats->viable_tumor_hu, 130.0);
  EXPECT_GE(stats->necrosis_hu, 0.0);
  EXPECT_LE(stats->necrosis_hu, 40.0);
  EXPECT_GT(stats->lipiodol_hu, 200.0);
  EXPECT_EQ(stats->air_hu, -1000.0);
}

TEST_F(CohortTest, StatsOfACorruptCohortAreErrors) {
  auto none = ComputeCohortStats(dir_.File("none"));
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code, ErrorCode::kNotFound);
  ASSERT_TRUE(WriteFileAtomic(dir_.File("manifest.json"),
                              "{\"generator\": \"mewm synthetic world\", \"layout\": 2}"));
  fs::create_directories(dir_.File("truth"));
  ASSERT_TRUE(WriteFileAtomic(dir_.File("truth/truth.json"), "{\"patients\": {\"P1\": {}}}"));
  auto r = ComputeCohortStats(dir_.path().string());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(r.error().message.find("truth/truth.json"), std::string::npos) << r.error().message;
}

}  // namespace
}  // namespace mewm::scenarios
