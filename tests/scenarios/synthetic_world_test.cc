// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/scenarios/synthetic_world.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <set>
#include <sstream>

#include "../core/test_env.h"
#include "mewm/core/file_util.h"
#include "mewm/scenarios/clinical_note.h"
#include "mewm/scenarios/cohort.h"
#include "mewm/scenarios/cohort_source.h"

namespace mewm::scenarios {
namespace {

namespace fs = std::filesystem;

/// A coarse world (2 mm voxels) so that tests render in a fraction of a second.
WorldConfig SmallWorld() {
  WorldConfig c;
  c.spacing_mm = 2.0;
  return c;
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
  // .mewm-cohort, manifest, clinical, truth + per patient: pre.vdb, 3 NIfTI, post vdb + 2 NIfTI,
  // 1 counterfactual, truth, note.
  EXPECT_EQ(files, 4 + 2 * 10);
  for (const char* name : {"manifest.json", "clinical.csv", "truth.json", "patients/P0001/pre.vdb",
                           "patients/P0002/post_administered.vdb", "patients/P0002/post_cf1.vdb",
                           "patients/P0001/pre_ct.nii.gz", "patients/P0001/tumor.nii.gz"}) {
    EXPECT_TRUE(fs::exists(fs::path(a) / name)) << name;
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
  for (const auto& entry : fs::directory_iterator(fs::path(out) / "patients")) {
    EXPECT_EQ(entry.path().filename().string().rfind(".tmp", 0), std::string::npos);
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
  ASSERT_TRUE(GenerateCohort(again, ActionBase::Default()));
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
  EXPECT_GE(stats->liver_hu, 45.0);
  EXPECT_LE(stats->liver_hu, 75.0);
  EXPECT_GE(stats->viable_tumor_hu, 60.0);
  EXPECT_LE(stats->viable_tumor_hu, 130.0);
  EXPECT_GE(stats->necrosis_hu, 0.0);
  EXPECT_LE(stats->necrosis_hu, 40.0);
  EXPECT_GT(stats->lipiodol_hu, 200.0);
  EXPECT_EQ(stats->air_hu, -1000.0);
}

TEST_F(CohortTest, StatsOfACorruptCohortAreErrors) {
  EXPECT_FALSE(ComputeCohortStats(dir_.File("none")));
  ASSERT_TRUE(WriteFileAtomic(dir_.File("truth.json"), "{\"patients\": {\"P1\": {}}}"));
  auto r = ComputeCohortStats(dir_.path().string());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kCorruptData);
}

}  // namespace
}  // namespace mewm::scenarios
