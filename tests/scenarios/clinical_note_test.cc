// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/world/clinical_note.h"

#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "../core/test_env.h"
#include "mewm/core/seed.h"
#include "mewm/core/vdb_io.h"
#include "mewm/dynamics/calibration.h"
#include "mewm/run/cohort_source.h"

namespace mewm::scenarios {
namespace {

namespace fs = std::filesystem;

/// What a note states, read back with the patterns the templates use; empty where it is silent.
struct ParsedNote {
  std::optional<int> age;
  std::optional<double> afp;
  std::optional<char> child_pugh;
  std::optional<int> cp_score;
  std::optional<char> bclc;
  std::optional<int> ecog;
  std::optional<double> diameter_mm;
  std::optional<int> lesions;
  std::optional<bool> vascular_invasion;
};

std::optional<std::smatch> Search(const std::string& text, const std::regex& re) {
  std::smatch m;
  if (!std::regex_search(text, m, re)) return std::nullopt;
  return m;
}

int WordNumber(const std::string& w) {
  static const std::map<std::string, int> kWords = {{"one", 1},  {"two", 2},  {"three", 3},
                                                    {"four", 4}, {"five", 5}, {"six", 6}};
  auto it = kWords.find(w);
  return it != kWords.end() ? it->second : std::stoi(w);
}

ParsedNote Parse(const std::string& note) {
  static const std::regex kAge(R"((\d{2})-year-old|Age/sex: (\d{2})/|^(\d{2})[MF],)");
  static const std::regex kAfp(
      R"((?:AFP|alpha-fetoprotein)(?: is| was| measured|:)? ([0-9][0-9,]*(?:\.[0-9]+)?)(?: x 10\^([0-9]))?)",
      std::regex::icase);
  static const std::regex kChild(
      R"((?:Child-Pugh|Child-Turcotte-Pugh|Child|CP)(?: class)?[- ]([ABC])(\d{1,2})?\b)");
  static const std::regex kScoreClass(R"(score (\d{1,2}) \(class ([ABC])\))");
  static const std::regex kScore(R"(\(score (\d{1,2})\)|\((\d{1,2}) points\))");
  static const std::regex kBclc(R"(BCLC\)?(?: stage)?[- ]([0ABCD])\b)");
  static const std::regex kEcog(R"((?:ECOG(?: PS| performance status)?|\bPS):? ([0-4])\b)");
  static const std::regex kDiameter(R"((\d+(?:\.\d)?) (cm|mm)\b)");
  static const std::regex kSolitary(R"(\b(?:solitary|single) (?:\d|lesion|nodule|tumor|mass))");
  static const std::regex kCount(
      R"(\b(one|two|three|four|five|six|\d) (?:lesions|nodules|tumors|foci)\b)");
  static const std::regex kInvasion(
      R"(tumor thrombus|macrovascular invasion of|branch PVTT|portal vein invasion)");
  static const std::regex kNoInvasion(
      R"(no macrovascular invasion|no PVTT|portal vein patent|no vascular invasion)");
  ParsedNote p;
  if (auto m = Search(note, kAge)) {
    for (int g = 1; g <= 3; ++g) {
      if ((*m)[g].matched) p.age = std::stoi((*m)[g].str());
    }
  }
  if (auto m = Search(note, kAfp)) {
    std::string digits = (*m)[1].str();
    digits.erase(std::remove(digits.begin(), digits.end(), ','), digits.end());
    double value = std::stod(digits);
    if ((*m)[2].matched) value *= std::pow(10.0, std::stoi((*m)[2].str()));
    p.afp = value;
  }
  if (auto m = Search(note, kScoreClass)) {
    p.cp_score = std::stoi((*m)[1].str());
    p.child_pugh = (*m)[2].str()[0];
  } else if (auto c = Search(note, kChild)) {
    p.child_pugh = (*c)[1].str()[0];
    if ((*c)[2].matched) p.cp_score = std::stoi((*c)[2].str());
  }
  if (auto m = Search(note, kScore)) {
    p.cp_score = std::stoi((*m)[(*m)[1].matched ? 1 : 2].str());
  }
  if (auto m = Search(note, kBclc)) p.bclc = (*m)[1].str()[0];
  if (auto m = Search(note, kEcog)) p.ecog = std::stoi((*m)[1].str());
  if (auto m = Search(note, kDiameter)) {
    p.diameter_mm = std::stod((*m)[1].str()) * ((*m)[2].str() == "cm" ? 10.0 : 1.0);
  }
  if (Search(note, kSolitary)) {
    p.lesions = 1;
  } else if (auto m = Search(note, kCount)) {
    p.lesions = WordNumber((*m)[1].str());
  } else if (auto mf = Search(note, std::regex(R"(multifocal disease \((\d) )"))) {
    p.lesions = std::stoi((*mf)[1].str());
  }
  if (Search(note, kNoInvasion)) {
    p.vascular_invasion = false;
  } else if (Search(note, kInvasion)) {
    p.vascular_invasion = true;
  }
  return p;
}

class ClinicalNoteTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    world_ = new SyntheticWorld(*SyntheticWorld::Create(WorldConfig{}, ActionBase::Default()));
  }
  static void TearDownTestSuite() {
    delete world_;
    world_ = nullptr;
  }
  /// `n` patients of a cohort seed used nowhere else (Sample is cheap: nothing is rendered).
  static std::vector<SyntheticPatient> Patients(int n, std::uint64_t seed = 20261130) {
    std::vector<SyntheticPatient> patients;
    for (int i = 0; i < n; ++i) patients.push_back(world_->Sample(seed, i));
    return patients;
  }
  static SyntheticWorld* world_;
};
SyntheticWorld* ClinicalNoteTest::world_ = nullptr;

TEST_F(ClinicalNoteTest, IsAPureFunctionOfThePatient) {
  const SyntheticPatient a = world_->Sample(5, 2);
  EXPECT_EQ(ClinicalNote(a), ClinicalNote(world_->Sample(5, 2)));
  EXPECT_NE(ClinicalNote(a), ClinicalNote(world_->Sample(5, 3)));
  // The hidden biology does not enter the note.
  SyntheticPatient other = a;
  other.biology.proliferation_per_day *= 3.0;
  other.biology.sensitivity = {9.0, 0.1, 0.1, 9.0};
  other.biology.vascularity = 0.01;
  EXPECT_EQ(ClinicalNote(a), ClinicalNote(other));
  const std::string note = ClinicalNote(a);
  ASSERT_FALSE(note.empty());
  EXPECT_EQ(note.back(), '\n');
  EXPECT_LT(note.size(), 2000u);
}

TEST_F(ClinicalNoteTest, VariesTemplatesSynonymsFormatsAndOmissions) {
  std::map<std::string, int> seen;
  std::set<std::string> distinct;
  const auto count = [&](const std::string& what, bool yes) { seen[what] += yes ? 1 : 0; };
  const std::vector<SyntheticPatient> patients = Patients(200);
  for (const SyntheticPatient& p : patients) {
    const std::string note = ClinicalNote(p);
    distinct.insert(note);
    count("template: letter", note.rfind("Dear ", 0) == 0);
    count("template: form", note.find("\nAge/sex: ") != std::string::npos ||
                                note.find("\nPatient: ") != std::string::npos);
    count("template: shorthand", std::regex_search(note, std::regex(R"(^\d{2}[MF][,.])")));
    count("template: board", note.find("\nAssessment: ") != std::string::npos);
    count("synonym: HCC", note.find("HCC") != std::string::npos);
    count("synonym: hepatocellular carcinoma",
          note.find("epatocellular carcinoma") != std::string::npos);
    count("synonym: liver cancer", note.find("iver cancer") != std::string::npos);
    count("AFP with thousands separator", std::regex_search(note, std::regex(R"(\d,\d{3} )")));
    count("AFP in scientific notation", note.find(" x 10^") != std::string::npos);
    count("AFP without unit", std::regex_search(note, std::regex(R"(AFP \d+(\.\d)?\.)")));
    count("AFP in µg/L", note.find("µg/L") != std::string::npos);
    count("diameter in cm", std::regex_search(note, std::regex(R"(\d\.\d cm)")));
    count("diameter in mm", std::regex_search(note, std::regex(R"(\d mm)")));
    const ParsedNote parsed = Parse(note);
    count("omits ECOG", !parsed.ecog);
    count("omits BCLC", !parsed.bclc);
    count("omits AFP", !parsed.afp);
    count("omits the Child-Pugh score", parsed.child_pugh && !parsed.cp_score);
    count("states the Child-Pugh score", bool(parsed.cp_score));
    count("omits prior treatment",
          !std::regex_search(note, std::regex("prior|previous|naive|ablation|resection|ectomy",
                                              std::regex::icase)));
  }
  EXPECT_EQ(distinct.size(), patients.size());
  for (const auto& [what, n] : seen) {
    // AFP >= 1000 ng/mL (about 5% of patients) is the only value written with a separator or
    // in scientific notation.
    const bool rare =
        what.find("separator") != std::string::npos || what.find("scientific") != std::string::npos;
    EXPECT_GE(n, rare ? 1 : 5) << what << " occurs in " << n << " of 200 notes";
    if (what.rfind("template", 0) == 0) {
      EXPECT_GE(n, 25) << what;
    }
  }
  // The same facts come in more than one order.
  std::set<std::string> orders;
  for (const SyntheticPatient& p : patients) {
    const std::string note = ClinicalNote(p);
    if (note.find("\nAge/sex: ") == std::string::npos &&
        note.find("\nPatient: ") == std::string::npos) {
      continue;
    }
    std::string order;
    std::size_t at = note.find('\n', note.find('\n') + 1);
    while (at != std::string::npos && at + 1 < note.size()) {
      order += note.substr(at + 1, 2) + "|";
      at = note.find('\n', at + 1);
    }
    orders.insert(order);
  }
  EXPECT_GE(orders.size(), 10u);
}

TEST_F(ClinicalNoteTest, StatedFactsMatchTheCovariates) {
  int ages = 0, afps = 0, classes = 0, stages = 0, diameters = 0, counts = 0, ecogs = 0;
  for (const SyntheticPatient& p : Patients(200)) {
    const std::string note = ClinicalNote(p);
    const Covariates& c = p.covariates;
    const ParsedNote n = Parse(note);
    if (n.age) {
      ++ages;
      EXPECT_EQ(*n.age, int(std::floor(c.age_years))) << note;
    }
    if (n.afp) {
      ++afps;
      EXPECT_NEAR(*n.afp, c.afp_ng_ml, 0.051 * c.afp_ng_ml + 0.05) << note;
    }
    if (n.child_pugh) {
      ++classes;
      EXPECT_EQ(*n.child_pugh, c.child_pugh) << note;
    }
    if (n.cp_score) {
      const int lo = c.child_pugh == 'A' ? 5 : c.child_pugh == 'B' ? 7 : 10;
      const int hi = c.child_pugh == 'A' ? 6 : c.child_pugh == 'B' ? 9 : 15;
      EXPECT_GE(*n.cp_score, lo) << note;
      EXPECT_LE(*n.cp_score, hi) << note;
    }
    if (n.bclc) {
      ++stages;
      EXPECT_EQ(*n.bclc, c.bclc_stage) << note;
    }
    if (n.ecog) {
      ++ecogs;
      EXPECT_LE(*n.ecog, c.bclc_stage == 'C' ? 2 : 0) << note;
    }
    if (n.diameter_mm) {
      ++diameters;
      EXPECT_NEAR(*n.diameter_mm, c.max_diameter_mm, 0.51) << note;
    }
    if (n.lesions) {
      ++counts;
      EXPECT_EQ(*n.lesions, c.lesion_count) << note;
    }
    if (n.vascular_invasion) {
      EXPECT_EQ(*n.vascular_invasion, c.vascular_invasion) << note;
    }
    if (c.vascular_invasion) {
      EXPECT_EQ(n.vascular_invasion, std::optional<bool>(true)) << note;
    }
    static const std::regex kSex(
        R"(\b(man|male|gentleman|woman|female|lady)\b|Age/sex: \d+/([MF])|^\d{2}([MF]))");
    const auto sex = Search(note, kSex);
    ASSERT_TRUE(sex) << note;
    const std::string said = (*sex)[1].matched   ? (*sex)[1].str()
                             : (*sex)[2].matched ? (*sex)[2].str()
                                                 : (*sex)[3].str();
    const bool male = said == "man" || said == "male" || said == "gentleman" || said == "M";
    EXPECT_EQ(male, c.sex == Covariates::Sex::kMale) << note;
  }
  // Most notes state most facts (the parsers are not vacuous).
  for (int stated : {ages, afps, classes, stages, diameters, counts, ecogs}) EXPECT_GE(stated, 140);
  EXPECT_EQ(ages, 200);
}

TEST_F(ClinicalNoteTest, SaysNothingHidden) {
  std::vector<std::string> forbidden = {"sensitiv", "prolifer", "infiltrat", "vascularity",
                                        "seed",     "truth",    "optimal",   "hazard",
                                        "biology",  "platinum", "anthracyc", "antimetab",
                                        "survival", "outcome",  "risk"};
  std::vector<std::string> items;
  for (const ActionItem& item : ActionBase::Default().items()) {
    items.push_back(item.name);
    for (const std::string& alias : item.aliases) items.push_back(alias);
  }
  const auto lower = [](std::string s) {
    for (char& ch : s) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    return s;
  };
  for (const SyntheticPatient& p : Patients(200)) {
    const std::string note = lower(ClinicalNote(p));
    for (const std::string& word : forbidden) {
      EXPECT_EQ(note.find(word), std::string::npos) << word << " in\n" << note;
    }
    for (const std::string& item : items) {
      EXPECT_FALSE(std::regex_search(note, std::regex("\\b" + lower(item) + "\\b")))
          << item << " in\n"
          << note;
    }
    EXPECT_EQ(note.find(std::to_string(p.seed)), std::string::npos);
    EXPECT_EQ(note.find(lower(p.administered.ToString())), std::string::npos);
  }
}

// ---------------------------------------------------------------------------------------------
// The leak test: no hidden quantity is better predicted from the note than from the covariates.

/// The visible covariates as regression features.
Eigen::RowVectorXd CovariateFeatures(const Covariates& c) {
  Eigen::RowVectorXd x(10);
  x << c.age_years, c.sex == Covariates::Sex::kMale, c.child_pugh == 'B', c.child_pugh == 'C',
      c.bclc_stage == 'A', c.bclc_stage == 'C', std::log10(std::max(c.afp_ng_ml, 0.1)),
      c.lesion_count, std::log(std::max(c.max_diameter_mm, 1.0)), c.vascular_invasion;
  return x;
}

constexpr int kHashedWords = 256;

/// What a reader can take from the note: the numbers it states (with presence flags) and hashed
/// indicators of its words.
Eigen::RowVectorXd NoteFeatures(const std::string& note) {
  const ParsedNote n = Parse(note);
  Eigen::RowVectorXd x = Eigen::RowVectorXd::Zero(18 + kHashedWords);
  int k = 0;
  const auto add = [&](bool present, double value) {
    x[k++] = present;
    x[k++] = present ? value : 0.0;
  };
  add(n.age.has_value(), n.age.value_or(0));
  add(n.afp.has_value(), std::log10(std::max(n.afp.value_or(1.0), 0.1)));
  add(n.child_pugh.has_value(), n.child_pugh.value_or('A') - 'A');
  add(n.cp_score.has_value(), n.cp_score.value_or(0));
  add(n.bclc.has_value(), n.bclc.value_or('A') - 'A');
  add(n.ecog.has_value(), n.ecog.value_or(0));
  add(n.diameter_mm.has_value(), std::log(std::max(n.diameter_mm.value_or(1.0), 1.0)));
  add(n.lesions.has_value(), n.lesions.value_or(0));
  add(n.vascular_invasion.has_value(), n.vascular_invasion.value_or(false));
  std::string word;
  for (std::size_t i = 0; i <= note.size(); ++i) {
    const char ch = i < note.size() ? note[i] : ' ';
    if (std::isalnum(static_cast<unsigned char>(ch))) {
      word += char(std::tolower(static_cast<unsigned char>(ch)));
    } else if (!word.empty()) {
      x[18 + int(HashString(word) % kHashedWords)] = 1.0;
      word.clear();
    }
  }
  return x;
}

/// Out-of-fold R^2 of a ridge regression of y on X (standardised on each training fold), with K
/// interleaved folds. The first `free` columns (the covariates) carry a light fixed penalty (1);
/// the others (the note's) carry the best of a grid of penalties, up to one large enough to
/// silence them, so a note that adds nothing scores about as the covariates alone and one that
/// leaks scores higher. Picking the best penalty on the same folds favours the note slightly.
double CrossValidatedR2(const Eigen::MatrixXd& X, const Eigen::VectorXd& y, Eigen::Index free,
                        int folds = 5) {
  double best = -1e9;
  for (double ridge : {1.0, 10.0, 100.0, 1e3, 1e4, 1e6}) {
    if (free == X.cols() && ridge != 1.0) break;
    Eigen::VectorXd penalty = Eigen::VectorXd::Constant(X.cols(), ridge);
    penalty.head(free).setConstant(1.0);
    Eigen::VectorXd predicted(y.size());
    for (int f = 0; f < folds; ++f) {
      std::vector<Eigen::Index> train, test;
      for (Eigen::Index i = 0; i < y.size(); ++i) (i % folds == f ? test : train).push_back(i);
      Eigen::MatrixXd Xt(Eigen::Index(train.size()), X.cols());
      Eigen::VectorXd yt(Eigen::Index(train.size()));
      for (std::size_t r = 0; r < train.size(); ++r) {
        Xt.row(Eigen::Index(r)) = X.row(train[r]);
        yt[Eigen::Index(r)] = y[train[r]];
      }
      const Eigen::RowVectorXd mean = Xt.colwise().mean();
      Eigen::RowVectorXd scale =
          ((Xt.rowwise() - mean).colwise().squaredNorm() / double(Xt.rows())).cwiseSqrt();
      for (Eigen::Index c = 0; c < scale.size(); ++c) {
        if (scale[c] < 1e-12) scale[c] = 1.0;
      }
      const Eigen::MatrixXd Z = (Xt.rowwise() - mean).array().rowwise() / scale.array();
      const double intercept = yt.mean();
      Eigen::MatrixXd A = Z.transpose() * Z;
      A.diagonal() += penalty;
      const Eigen::VectorXd w = A.ldlt().solve(Z.transpose() * (yt.array() - intercept).matrix());
      for (Eigen::Index i : test) {
        const Eigen::RowVectorXd z = (X.row(i) - mean).array() / scale.array();
        predicted[i] = intercept + z.dot(w);
      }
    }
    const double total = (y.array() - y.mean()).square().sum();
    best = std::max(best, 1.0 - (y - predicted).squaredNorm() / total);
  }
  return best;
}

TEST_F(ClinicalNoteTest, NoHiddenQuantityIsBetterPredictedFromTheNoteThanFromTheCovariates) {
  // Margin: the largest gain allowed. The note restates the covariates (rounded, sometimes as
  // words such as "normal") and adds facts drawn independently of the biology, so any gain is
  // noise: over cohort seeds 1-6, the 42 gains lie in [-0.000, +0.031] (median +0.001).
  constexpr double kMargin = 0.05;
  const int n = 300;
  const std::vector<SyntheticPatient> patients = Patients(n);
  const auto& targets = dynamics::BiologyTargetNames();
  Eigen::MatrixXd covariates(n, 10), with_note(n, 10 + 18 + kHashedWords),
      leaky(n, 10 + 18 + kHashedWords);
  Eigen::MatrixXd Y(n, Eigen::Index(targets.size()));
  for (int i = 0; i < n; ++i) {
    const SyntheticPatient& p = patients[std::size_t(i)];
    Y.row(i) = dynamics::BiologyTargets(p.biology).transpose();
    const std::string note = ClinicalNote(p);
    covariates.row(i) = CovariateFeatures(p.covariates);
    with_note.row(i) << covariates.row(i), NoteFeatures(note);
    // A positive control: the same note with the one word that a careless referral would add,
    // describing the arterial enhancement (which the hidden vascularity drives). The test must
    // see this leak.
    const bool hypervascular = p.biology.vascularity > 0.5;
    leaky.row(i) << covariates.row(i),
        NoteFeatures(note + (hypervascular ? " Hypervascular.\n" : " Hypovascular.\n"));
  }
  for (Eigen::Index t = 0; t < Y.cols(); ++t) {
    const double base = CrossValidatedR2(covariates, Y.col(t), 10);
    const double note = CrossValidatedR2(with_note, Y.col(t), 10);
    std::printf("leak test: %-28s R2 covariates %.3f, covariates + note %.3f (gain %+.3f)\n",
                targets[std::size_t(t)].c_str(), base, note, note - base);
    EXPECT_LE(note - base, kMargin) << targets[std::size_t(t)];
  }
  const double base = CrossValidatedR2(covariates, Y.col(2), 10);
  const double leaked = CrossValidatedR2(leaky, Y.col(2), 10);
  std::printf("leak test: positive control (logit vascularity) R2 %.3f -> %.3f\n", base, leaked);
  EXPECT_GT(leaked - base, 2 * kMargin);
}

// ---------------------------------------------------------------------------------------------
// Notes in a manifest CSV.

class ManifestNoteTest : public testing::VdbTest {
 protected:
  void SetUp() override {
    const Geometry g = Geometry::Isotropic(2.0);
    DenseLabel tumor({8, 8, 8}, g, 0);
    tumor.at(3, 3, 3) = 1;
    VolumeSet set;
    set.scalars.emplace("ct", Volume(g, {8, 8, 8}, "ct"));
    set.labels.emplace("tumor", *LabelVolume::FromDense(tumor, "tumor"));
    fs::create_directories(dir_.File("cohort"));
    ASSERT_TRUE(WriteVdb(dir_.File("cohort/p.vdb"), set));
  }
  /// A manifest with one patient whose note column reads `note`.
  std::string Manifest(const std::string& note) {
    const std::string path = dir_.File("cohort/patients.csv");
    std::ofstream(path) << "patient_id,ct,tumor,age_years,sex,child_pugh,bclc_stage,afp_ng_ml,"
                           "lesion_count,max_diameter_mm,vascular_invasion,note\n"
                        << "HCC-1,p.vdb,p.vdb,64,M,A,B,230,2,58,0," << note << "\n";
    return path;
  }
  testing::TempDir dir_;
};

TEST_F(ManifestNoteTest, ReadsTheNoteOfEachPatient) {
  std::ofstream(dir_.File("cohort/notes.txt")) << "64M, HBV cirrhosis, CP-A5.\n";
  auto entries = ReadManifest(Manifest("notes.txt"));
  ASSERT_TRUE(entries) << entries.error().message;
  ASSERT_EQ(entries->size(), 1u);
  auto patient = LoadPatient(entries->front());
  ASSERT_TRUE(patient) << patient.error().message;
  EXPECT_EQ(patient->note, "64M, HBV cirrhosis, CP-A5.\n");
  // The column is optional, and an empty field means no note.
  auto none = ReadManifest(Manifest(""));
  ASSERT_TRUE(none) << none.error().message;
  auto without = LoadPatient(none->front());
  ASSERT_TRUE(without) << without.error().message;
  EXPECT_TRUE(without->note.empty());
}

TEST_F(ManifestNoteTest, AMissingOrOversizedNoteFailsThePatientNamingTheFile) {
  auto entries = ReadManifest(Manifest("absent.txt"));
  ASSERT_TRUE(entries) << entries.error().message;
  auto missing = LoadPatient(entries->front());
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  EXPECT_NE(missing.error().message.find("absent.txt"), std::string::npos)
      << missing.error().message;
  EXPECT_NE(missing.error().message.find("HCC-1"), std::string::npos);

  std::ofstream(dir_.File("cohort/big.txt")) << std::string(kMaxNoteBytes + 1, 'x');
  entries = ReadManifest(Manifest("big.txt"));
  ASSERT_TRUE(entries) << entries.error().message;
  auto big = LoadPatient(entries->front());
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(big.error().message.find("big.txt"), std::string::npos) << big.error().message;
  std::ofstream(dir_.File("cohort/limit.txt")) << std::string(kMaxNoteBytes, 'x');
  entries = ReadManifest(Manifest("limit.txt"));
  ASSERT_TRUE(entries);
  EXPECT_TRUE(LoadPatient(entries->front()));

  fs::create_directories(dir_.File("cohort/folder.txt"));
  entries = ReadManifest(Manifest("folder.txt"));
  ASSERT_TRUE(entries);
  auto folder = LoadPatient(entries->front());
  ASSERT_FALSE(folder);
  EXPECT_EQ(folder.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(ManifestNoteTest, ANoteOutsideTheManifestFolderIsRefused) {
  std::ofstream(dir_.File("outside.txt")) << "elsewhere\n";
  fs::create_symlink(dir_.File("outside.txt"), dir_.File("cohort/link.txt"));
  for (const std::string& note :
       {std::string("../outside.txt"), dir_.File("outside.txt"), std::string("link.txt")}) {
    auto entries = ReadManifest(Manifest(note));
    ASSERT_FALSE(entries) << note;
    EXPECT_EQ(entries.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(entries.error().message.find("outside the cohort's folder"), std::string::npos)
        << entries.error().message;
    EXPECT_NE(entries.error().message.find("patients.csv:2"), std::string::npos)
        << entries.error().message;
  }
  // An absolute path inside the folder is fine.
  std::ofstream(dir_.File("cohort/inside.txt")) << "inside\n";
  auto entries = ReadManifest(Manifest(dir_.File("cohort/inside.txt")));
  ASSERT_TRUE(entries) << entries.error().message;
  EXPECT_EQ(LoadPatient(entries->front())->note, "inside\n");
}

}  // namespace
}  // namespace mewm::scenarios
