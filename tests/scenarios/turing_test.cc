// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The Turing-test statistics on hand-built inputs (no files): scoring, agreement, the leak audit.
#include "mewm/eval/turing.h"

#include <gtest/gtest.h>

#include <cmath>

#include "mewm/core/seed.h"

namespace mewm::scenarios {
namespace {

TuringKey PairKey(int n) {
  TuringKey key;
  key.design = TuringDesign::kPair;
  for (int i = 0; i < n; ++i) {
    const std::string id = "T" + std::to_string(100 + i);
    key.cases[id] = {id, "P" + std::to_string(i), "Lipiodol", i % 2 == 0 ? "A" : "B"};
  }
  return key;
}

TuringAnswer Answer(const std::string& reader, const std::string& id, const std::string& answer,
                    int confidence) {
  TuringAnswer a;
  a.reader = reader;
  a.case_id = id;
  a.answer = answer;
  a.confidence = confidence;
  return a;
}

// Pair design, 10 cases: reader "r" right on 7 (Wilson interval by hand from the formula,
// [0.3967781, 0.8922087]; the implementation is checked against R's prop.test for 8/10 in
// core's StatsTest; exact binomial p by hand: 2 * 176 / 1024 = 0.34375). Its confidence is 5 when
// right and 1 when wrong, so the signed scores rank every case where A is synthetic above every
// case where B is, except the wrong ones: AUC by hand.
TEST(TuringScoreTest, PairDesignAccuracyWilsonBinomialAndAuc) {
  const TuringKey key = PairKey(10);
  std::map<std::string, std::vector<TuringAnswer>> answers;
  int i = 0;
  for (const auto& [id, truth] : key.cases) {
    const bool right = i < 7;
    const std::string other = truth.truth == "A" ? "B" : "A";
    answers["r"].push_back(Answer("r", id, right ? truth.truth : other, right ? 5 : 1));
    ++i;
  }
  const TuringScores s = ScoreReaders(key, answers, 500, 3);
  ASSERT_EQ(s.readers.size(), 1u);
  const ReaderScore& r = s.readers[0];
  EXPECT_EQ(r.accuracy.k, 7);
  EXPECT_NEAR(r.accuracy.lo, 0.3967781, 1e-6);
  EXPECT_NEAR(r.accuracy.hi, 0.8922087, 1e-6);
  EXPECT_NEAR(r.binomial_p, 0.34375, 1e-12);
  EXPECT_EQ(r.sensitivity.n, 0);  // no sensitivity in the pair design
  // Cases 0..6 right (+5 when A is synthetic, -5 when B), 7..9 wrong (+-1 the other way).
  // Positives (A synthetic: cases 0,2,4,6,8): scores +5,+5,+5,+5,-1. Negatives (1,3,5,7,9):
  // -5,-5,-5,+1,+1. Pairs won: the four +5 beat all 5 negatives (20); -1 beats the three -5 (3)
  // and loses to both +1. AUC = 23 / 25.
  EXPECT_NEAR(r.auc, 23.0 / 25.0, 1e-12);
  // One reader: the bootstrap CI collapses onto the accuracy; no agreement statistics.
  EXPECT_DOUBLE_EQ(s.pooled.lo, 0.7);
  EXPECT_DOUBLE_EQ(s.pooled.hi, 0.7);
  EXPECT_TRUE(std::isnan(s.fleiss_kappa));
}

// The by-reader bootstrap: two readers at 100% and 0% on 10 cases each. A resample takes both
// readers twice (1/4), one of each (1/2), so its pooled accuracy is 0, 0.5 or 1 with
// probabilities 1/4, 1/2, 1/4: the 95% percentile interval is [0, 1], not the Wilson interval
// of 10/20 answers that treats answers as independent.
TEST(TuringScoreTest, PooledIntervalResamplesReaders) {
  const TuringKey key = PairKey(10);
  std::map<std::string, std::vector<TuringAnswer>> answers;
  for (const auto& [id, truth] : key.cases) {
    answers["good"].push_back(Answer("good", id, truth.truth, 4));
    answers["bad"].push_back(Answer("bad", id, truth.truth == "A" ? "B" : "A", 4));
  }
  const TuringScores s = ScoreReaders(key, answers, 2000, 1);
  EXPECT_DOUBLE_EQ(s.pooled.value, 0.5);
  EXPECT_DOUBLE_EQ(s.pooled.lo, 0.0);
  EXPECT_DOUBLE_EQ(s.pooled.hi, 1.0);
  // Perfect disagreement between the two: Cohen's kappa = -1 when both use both categories
  // equally (p_o = 0, p_e = 0.5).
  ASSERT_EQ(s.cohen.size(), 1u);
  EXPECT_NEAR(s.cohen[0].kappa, -1.0, 1e-12);
}

TuringFeatures Features(int patients, std::uint64_t seed, double leak) {
  TuringFeatures f;
  Rng rng(seed);
  for (int p = 0; p < patients; ++p) {
    for (int label = 0; label < 2; ++label) {
      f.label.push_back(label);
      f.group.push_back(p);
      f.metadata.push_back({rng.Normal() + leak * label, rng.Normal(), 7.0});
      f.histogram.push_back({rng.Normal(), rng.Normal()});
      f.noise.push_back({rng.Normal()});
    }
  }
  return f;
}

TEST(TuringAuditTest, FlagsMetadataThatTellsTheClass) {
  auto clean = AuditTuringExport(Features(20, 4, 0.0), 5, 1);
  ASSERT_TRUE(clean) << clean.error().message;
  EXPECT_FALSE(clean->metadata_leak) << clean->FormatTable();
  EXPECT_EQ(clean->rows[0].dims, 2);  // the constant column is dropped
  EXPECT_LT(clean->rows[0].lo, 0.5);
  auto leaky = AuditTuringExport(Features(20, 4, 3.0), 5, 1);
  ASSERT_TRUE(leaky) << leaky.error().message;
  EXPECT_TRUE(leaky->metadata_leak) << leaky->FormatTable();
  EXPECT_GT(leaky->rows[0].auc, 0.9);
  EXPECT_NE(leaky->FormatTable().find("LEAK"), std::string::npos);
  // Fewer patients than folds is an error, not a number.
  EXPECT_FALSE(AuditTuringExport(Features(3, 4, 0.0), 5, 1));
}

TEST(TuringAnswerTest, ReaderIdsAndAnswerLinesAreValidated) {
  EXPECT_TRUE(ValidReaderId("reader_1-a"));
  EXPECT_FALSE(ValidReaderId(""));
  EXPECT_FALSE(ValidReaderId("-x"));
  EXPECT_FALSE(ValidReaderId("../k"));
  EXPECT_FALSE(ValidReaderId(std::string(65, 'a')));
  TuringManifest m;
  m.dir = "study";
  m.key_sha256 = "abc";
  m.cases.push_back({"T001", {{"", "cases/T001.nii.gz", "cases/T001.vdb", "cases/T001.png"}}});
  const std::string ok =
      R"({"case":"T001","answer":"real","confidence":2,"seconds":3,"time":"t","key_sha256":"abc"})";
  auto a = ParseAnswerLine(ok, m, "r", "r.jsonl:4");
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(a->confidence, 2);
  const auto parsed = ParseAnswerLine(AnswerToJsonLine(*a), m, "r", "x");
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->answer, "real");
  auto bad = ParseAnswerLine(R"({"case":"T001"})", m, "r", "r.jsonl:4");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message.rfind("r.jsonl:4: ", 0), 0u) << bad.error().message;
}

}  // namespace
}  // namespace mewm::scenarios
