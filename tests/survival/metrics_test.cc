// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Reference numbers are worked out by hand in the comments (no lifelines or scikit-survival on the
// build machine).
#include "mewm/survival/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace mewm::survival {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

template <typename T>
void ExpectInvalid(const Expected<T>& result) {
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code, ErrorCode::kInvalidArgument) << result.error().ToString();
}

// A small censored cohort used by the IPCW tests (times in months).
//   subject:  A    B    C    D    E
//   time:     1    2    3    4    5
//   event:    no   yes  no   yes  no
//   risk:     0.1  0.9  0.2  0.3  0.8
// Reverse Kaplan-Meier of the same records (the censoring distribution G):
//   t=1: 5 at risk, 1 censored   -> G = 4/5
//   t=3: 3 at risk, 1 censored   -> G = 4/5 * 2/3 = 8/15
//   t=5: 1 at risk, 1 censored   -> G = 0
// Event weights 1/G(t-): B (t=2) 5/4, D (t=4) 15/8.
std::vector<SurvivalRecord> CensoredCohort() {
  return {{1.0, false}, {2.0, true}, {3.0, false}, {4.0, true}, {5.0, false}};
}
std::vector<double> CensoredCohortRisk() { return {0.1, 0.9, 0.2, 0.3, 0.8}; }

TEST(KaplanMeierTest, MatchesTheTextbookLeukemiaEstimate) {
  // 6-MP arm of Freireich et al. (1963), the classic KM example (e.g. Kleinbaum & Klein,
  // "Survival Analysis", ch. 2): weeks of remission, '+' censored:
  // 6 6 6 6+ 7 9+ 10 10+ 11+ 13 16 17+ 19+ 20+ 22 23 25+ 32+ 32+ 34+ 35+
  const std::vector<SurvivalRecord> y = {
      {6, true},   {6, true},   {6, true},   {6, false},  {7, true},   {9, false},  {10, true},
      {10, false}, {11, false}, {13, true},  {16, true},  {17, false}, {19, false}, {20, false},
      {22, true},  {23, true},  {25, false}, {32, false}, {32, false}, {34, false}, {35, false}};
  auto km = FitKaplanMeier(y);
  ASSERT_TRUE(km) << km.error().ToString();
  const std::vector<double> times = {6, 7, 10, 13, 16, 22, 23};
  const std::vector<int> at_risk = {21, 17, 15, 12, 11, 7, 6};
  const std::vector<int> events = {3, 1, 1, 1, 1, 1, 1};
  EXPECT_EQ(km->times, times);
  EXPECT_EQ(km->at_risk, at_risk);
  EXPECT_EQ(km->events, events);
  // Textbook table: 0.857 0.807 0.753 0.690 0.627 0.538 0.448.
  const std::vector<double> textbook = {0.857, 0.807, 0.753, 0.690, 0.627, 0.538, 0.448};
  ASSERT_EQ(km->survival.size(), textbook.size());
  double s = 1.0;
  for (std::size_t k = 0; k < textbook.size(); ++k) {
    s *= 1.0 - double(events[k]) / double(at_risk[k]);
    EXPECT_DOUBLE_EQ(km->survival[k], s);
    EXPECT_NEAR(km->survival[k], textbook[k], 5e-4);
  }
  EXPECT_DOUBLE_EQ(km->At(0.0), 1.0);
  EXPECT_DOUBLE_EQ(km->At(5.99), 1.0);
  EXPECT_DOUBLE_EQ(km->At(6.0), km->survival[0]);  // right-continuous
  EXPECT_DOUBLE_EQ(km->At(12.0), km->survival[2]);
  EXPECT_DOUBLE_EQ(km->At(100.0), km->survival.back());
  auto median = MedianSurvival(*km);
  ASSERT_TRUE(median);
  EXPECT_DOUBLE_EQ(*median, 23.0);
}

TEST(KaplanMeierTest, AllCensoredGivesAFlatCurveWithoutMedian) {
  auto km = FitKaplanMeier({{3.0, false}, {5.0, false}});
  ASSERT_TRUE(km);
  EXPECT_TRUE(km->times.empty());
  EXPECT_DOUBLE_EQ(km->At(10.0), 1.0);
  auto median = MedianSurvival(*km);
  ASSERT_FALSE(median);
  EXPECT_EQ(median.error().code, ErrorCode::kNotFound);
}

TEST(KaplanMeierTest, MedianIsTheFirstTimeAtOrBelowHalf) {
  // Two subjects, both die: S = 1/2 at t=2 exactly, so the median is 2.
  auto km = FitKaplanMeier({{2.0, true}, {4.0, true}});
  ASSERT_TRUE(km);
  EXPECT_DOUBLE_EQ(*MedianSurvival(*km), 2.0);
}

TEST(KaplanMeierTest, RejectsEmptyNegativeAndNonFiniteTimes) {
  ExpectInvalid(FitKaplanMeier({}));
  ExpectInvalid(FitKaplanMeier({{1.0, true}, {-1.0, true}}));
  ExpectInvalid(FitKaplanMeier({{kNaN, true}}));
  ExpectInvalid(FitKaplanMeier({{kInf, false}}));
}

TEST(HarrellCTest, CountsTiesAndCensoringByHand) {
  //   subject:  A    B    C    D    E
  //   time:     2    4    4    6    6
  //   event:    yes  no   yes  yes  yes
  //   risk:     0.9  0.5  0.5  0.8  0.3
  // Comparable pairs (i had the event first, or tied in time with j censored):
  //   A-B 1, A-C 1, A-D 1, A-E 1            (A has the highest risk and dies first)
  //   C-B 0.5  (same time, B censored: comparable; equal risk: half)
  //   C-D 0    (C died first with the lower risk)
  //   C-E 1
  //   D-E not comparable (both events at t=6); B and E censored/last.
  // C = (4 + 0.5 + 0 + 1) / 7 = 5.5 / 7.
  const std::vector<SurvivalRecord> y = {
      {2.0, true}, {4.0, false}, {4.0, true}, {6.0, true}, {6.0, true}};
  auto c = HarrellC({0.9, 0.5, 0.5, 0.8, 0.3}, y);
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_DOUBLE_EQ(*c, 5.5 / 7.0);
}

TEST(HarrellCTest, PerfectRiskScoresOneAndReversedRiskScoresZero) {
  const std::vector<SurvivalRecord> y = {{1.0, true}, {2.0, true}, {3.0, false}, {4.0, true}};
  EXPECT_DOUBLE_EQ(*HarrellC({4.0, 3.0, 2.0, 1.0}, y), 1.0);
  EXPECT_DOUBLE_EQ(*HarrellC({1.0, 2.0, 3.0, 4.0}, y), 0.0);
  EXPECT_DOUBLE_EQ(*HarrellC({1.0, 1.0, 1.0, 1.0}, y), 0.5);
}

TEST(HarrellCTest, RejectsBadInputAndDataWithoutComparablePairs) {
  const std::vector<SurvivalRecord> y = {{1.0, true}, {2.0, true}};
  ExpectInvalid(HarrellC({1.0}, y));                                  // size mismatch
  ExpectInvalid(HarrellC({}, {}));                                    // empty
  ExpectInvalid(HarrellC({1.0, kNaN}, y));                            // non-finite risk
  ExpectInvalid(HarrellC({1.0, 2.0}, {{1.0, true}, {kInf, true}}));   // non-finite time
  ExpectInvalid(HarrellC({1.0, 2.0}, {{1.0, true}, {-2.0, true}}));   // negative time
  ExpectInvalid(HarrellC({1.0, 2.0}, {{1.0, false}, {2.0, false}}));  // all censored
  ExpectInvalid(HarrellC({1.0, 2.0}, {{3.0, true}, {3.0, true}}));    // tied events only
  ExpectInvalid(HarrellC({1.0, 2.0}, {{1.0, false}, {3.0, true}}));   // censored before event
  auto none = HarrellC({1.0}, {{1.0, true}});
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().message.find("no comparable pairs"), std::string::npos);
}

TEST(UnoCTest, EqualsHarrellWhenTheTrainingSetIsUncensored) {
  // With no training censoring G = 1, so every weight is 1 and, with tau past every time, the
  // sums are Harrell's, even though the test set itself is censored.
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<SurvivalRecord> test, train;
  std::vector<double> risk;
  for (int i = 0; i < 200; ++i) {
    test.push_back({10.0 * u(rng), u(rng) < 0.6});
    train.push_back({10.0 * u(rng), true});
    risk.push_back(u(rng) - test.back().time / 10.0);
  }
  auto harrell = HarrellC(risk, test);
  auto uno = UnoC(risk, test, train, 11.0);
  ASSERT_TRUE(harrell && uno);
  EXPECT_DOUBLE_EQ(*uno, *harrell);
  EXPECT_GT(*harrell, 0.6);
}

TEST(UnoCTest, WeightsEventsByInverseSquaredCensoringSurvival) {
  // CensoredCohort. Comparable pairs: B-C 1, B-D 1, B-E 1 (B dies first, highest risk); D-E 0.
  // Harrell: 3 / 4. Uno weights G(t-)^-2: B (5/4)^2 = 25/16, D (15/8)^2 = 225/64.
  //   C_uno = 3 * 25/16 / (3 * 25/16 + 225/64) = 300 / 525 = 4/7.
  // With tau = 3 only B (t=2 < 3) counts: C_uno = 1.
  const auto y = CensoredCohort();
  const auto risk = CensoredCohortRisk();
  EXPECT_DOUBLE_EQ(*HarrellC(risk, y), 0.75);
  auto uno = UnoC(risk, y, y, 10.0);
  ASSERT_TRUE(uno) << uno.error().ToString();
  EXPECT_DOUBLE_EQ(*uno, 4.0 / 7.0);
  EXPECT_DOUBLE_EQ(*UnoC(risk, y, y, 3.0), 1.0);
}

TEST(UnoCTest, RejectsBadTauShortFollowUpAndNoPairsBelowTau) {
  const auto y = CensoredCohort();
  const auto risk = CensoredCohortRisk();
  ExpectInvalid(UnoC(risk, y, y, 0.0));
  ExpectInvalid(UnoC(risk, y, y, -1.0));
  ExpectInvalid(UnoC(risk, y, y, kNaN));
  ExpectInvalid(UnoC(risk, y, {}, 10.0));              // empty training set
  ExpectInvalid(UnoC(risk, y, {{-1.0, true}}, 10.0));  // bad training time
  ExpectInvalid(UnoC({0.1}, y, y, 10.0));              // size mismatch
  ExpectInvalid(UnoC(risk, y, y, 1.5));                // no event before tau
  // Training set censored at t=1 only: G = 0 from t=1 on, so B's weight (t=2) is undefined.
  auto short_follow_up = UnoC(risk, y, {{1.0, false}}, 10.0);
  ExpectInvalid(short_follow_up);
  EXPECT_NE(short_follow_up.error().message.find("G(t-) is 0"), std::string::npos);
}

/// A curve that drops from 1 to `after` at `time`.
RiskScore Step(double time, double after) { return RiskScore{1.0, {time}, {after}}; }

/// A flat curve S(t) = s (a step at t = 0).
RiskScore Flat(double s) { return RiskScore{1.0, {0.0}, {s}}; }

TEST(BrierScoreTest, PerfectPredictorScoresZeroOnUncensoredData) {
  const std::vector<SurvivalRecord> y = {{2, true}, {4, true}, {6, true}, {8, true}, {10, true}};
  std::vector<RiskScore> perfect;
  for (const auto& r : y) perfect.push_back(Step(r.time, 0.0));
  auto ibs = IntegratedBrierScore(perfect, y, y, {1.0, 3.0, 5.0, 7.0, 9.0});
  ASSERT_TRUE(ibs) << ibs.error().ToString();
  EXPECT_NEAR(*ibs, 0.0, 1e-15);
  // A flat 0.5 is wrong by 0.5 for everyone at every time.
  std::vector<RiskScore> coin(y.size(), Flat(0.5));
  EXPECT_NEAR(*IntegratedBrierScore(coin, y, y, {1.0, 3.0, 5.0, 7.0, 9.0}), 0.25, 1e-15);
}

TEST(BrierScoreTest, WeightsCasesAndControlsByInverseCensoringSurvival) {
  // CensoredCohort at t = 3.5 with every S_i(3.5) = 0.6:
  //   case B (t=2 <= 3.5, event): 0.6^2 / G(2-) = 0.36 * 5/4 = 0.45
  //   A (t=1) and C (t=3) censored before 3.5: weight 0
  //   controls D, E (t > 3.5): 0.4^2 / G(3.5) = 0.16 * 15/8 = 0.3 each
  //   BS = (0.45 + 0.3 + 0.3) / 5 = 0.21
  const auto y = CensoredCohort();
  const std::vector<RiskScore> predicted(y.size(), Flat(0.6));
  auto bs = BrierScore(predicted, y, y, 3.5);
  ASSERT_TRUE(bs) << bs.error().ToString();
  EXPECT_NEAR(*bs, 0.21, 1e-12);
}

TEST(BrierScoreTest, IntegratedScoreIsTheTrapezoidOverTheGrid) {
  const auto y = CensoredCohort();
  std::vector<RiskScore> predicted;
  for (const auto& r : y) predicted.push_back(RiskScore{1.0, {0.5 * r.time, r.time}, {0.9, 0.2}});
  const std::vector<double> grid = {0.5, 2.5, 3.5, 4.5};
  std::vector<double> bs;
  for (const double t : grid) {
    auto b = BrierScore(predicted, y, y, t);
    ASSERT_TRUE(b) << b.error().ToString();
    bs.push_back(*b);
  }
  double area = 0.0;
  for (std::size_t k = 1; k < grid.size(); ++k) {
    area += 0.5 * (bs[k] + bs[k - 1]) * (grid[k] - grid[k - 1]);
  }
  auto ibs = IntegratedBrierScore(predicted, y, y, grid);
  ASSERT_TRUE(ibs) << ibs.error().ToString();
  EXPECT_NEAR(*ibs, area / 4.0, 1e-14);
}

TEST(BrierScoreTest, RejectsBadGridsCurvesAndShortFollowUp) {
  const auto y = CensoredCohort();
  const std::vector<RiskScore> ok(y.size(), Flat(0.5));
  ExpectInvalid(BrierScore({Flat(0.5)}, y, y, 2.0));     // size mismatch
  ExpectInvalid(BrierScore({}, {}, y, 2.0));             // empty test set
  ExpectInvalid(BrierScore(ok, y, {}, 2.0));             // empty training set
  ExpectInvalid(BrierScore(ok, y, y, -1.0));             // negative time
  ExpectInvalid(BrierScore(ok, y, y, kNaN));             // non-finite time
  ExpectInvalid(IntegratedBrierScore(ok, y, y, {2.0}));  // one time
  ExpectInvalid(IntegratedBrierScore(ok, y, y, {2.0, 2.0}));
  ExpectInvalid(IntegratedBrierScore(ok, y, y, {3.0, 2.0}));
  ExpectInvalid(IntegratedBrierScore(ok, y, y, {1.0, kInf}));
  auto bad_curve = ok;
  bad_curve[3] = RiskScore{1.0, {1.0, 2.0}, {0.5, 0.9}};  // survival rises
  auto bs = BrierScore(bad_curve, y, y, 3.5);
  ExpectInvalid(bs);
  EXPECT_NE(bs.error().message.find("predicted[3]"), std::string::npos);
  // Training follow-up ends at t=1 (censored): G(3.5) = 0, so controls cannot be weighted.
  ExpectInvalid(BrierScore(ok, y, {{1.0, false}}, 3.5));
}

TEST(TimeDependentAucTest, PerfectlySeparatingRiskScoresOne) {
  const std::vector<SurvivalRecord> y = {{1, true}, {2, true}, {3, false}, {5, true}, {7, false}};
  EXPECT_DOUBLE_EQ(*TimeDependentAuc({9.0, 8.0, 0.5, 1.0, 2.0}, y, y, 2.5), 1.0);
  EXPECT_DOUBLE_EQ(*TimeDependentAuc({1.0, 1.0, 1.0, 1.0, 1.0}, y, y, 2.5), 0.5);
  EXPECT_DOUBLE_EQ(*TimeDependentAuc({0.0, 0.1, 0.5, 1.0, 2.0}, y, y, 2.5), 0.0);
}

TEST(TimeDependentAucTest, WeightsCasesByInverseCensoringSurvival) {
  // CensoredCohort at t = 4.5: cases B (risk 0.9, weight 5/4) and D (risk 0.3, weight 15/8);
  // the only control is E (risk 0.8). B > E counts, D < E does not:
  //   AUC = (5/4) / (5/4 + 15/8) = 0.4   (unweighted it would be 0.5)
  const auto y = CensoredCohort();
  auto auc = TimeDependentAuc(CensoredCohortRisk(), y, y, 4.5);
  ASSERT_TRUE(auc) << auc.error().ToString();
  EXPECT_DOUBLE_EQ(*auc, 0.4);
}

TEST(TimeDependentAucTest, RejectsTimesWithoutCasesOrControls) {
  const auto y = CensoredCohort();
  const auto risk = CensoredCohortRisk();
  ExpectInvalid(TimeDependentAuc(risk, y, y, 1.5));  // no event by 1.5
  ExpectInvalid(TimeDependentAuc(risk, y, y, 5.0));  // nobody beyond 5
  ExpectInvalid(TimeDependentAuc(risk, y, y, -1.0));
  ExpectInvalid(TimeDependentAuc(risk, y, y, kNaN));
  ExpectInvalid(TimeDependentAuc({1.0}, y, y, 3.0));
  ExpectInvalid(TimeDependentAuc(risk, y, {}, 3.0));
  ExpectInvalid(TimeDependentAuc(risk, y, {{1.0, false}}, 4.5));  // G(2-) = 0 for case B
}

}  // namespace
}  // namespace mewm::survival
