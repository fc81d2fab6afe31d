// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/tace/patient.h"

#include <gtest/gtest.h>

#include <memory>

#include "../core/test_env.h"
#include "mewm/tace/outcome.h"
#include "mewm/tace/patient_identity.h"

namespace mewm {
namespace {

class PatientTest : public testing::VdbTest {
 protected:
  static PatientCase Case() {
    const Geometry g = Geometry::Isotropic(2.0);
    DenseLabel tumor({8, 8, 8}, g, 0);
    tumor.at(3, 3, 3) = 1;
    tumor.at(4, 3, 3) = 1;
    return PatientCase{"P1", Volume(g, {8, 8, 8}, "ct"), *LabelVolume::FromDense(tumor, "tumor"),
                       std::nullopt, Covariates{}};
  }
};

TEST_F(PatientTest, IdentityIsTheIdCovariatesAndTheVeryGridsAndHoldsThem) {
  PatientIdentity identity;
  const PatientCase original = Case();
  EXPECT_FALSE(identity.Matches(original));  // nothing remembered yet
  identity.Remember(original);
  EXPECT_TRUE(identity.Matches(original));
  EXPECT_TRUE(identity.Matches(PatientCase(original)));  // a copy shares the grids
  PatientCase other = original;
  other.id = "P2";
  EXPECT_FALSE(identity.Matches(other));
  other = original;
  other.tumor = original.tumor.DeepCopy();  // equal voxels, another grid
  EXPECT_FALSE(identity.Matches(other));
  other = original;
  other.ct = original.ct.DeepCopy();  // the old key read the tumor grid alone
  EXPECT_FALSE(identity.Matches(other));
  other = original;
  other.liver = original.tumor;
  EXPECT_FALSE(identity.Matches(other));
  other = original;
  other.covariates.afp_ng_ml = 400.0;
  EXPECT_FALSE(identity.Matches(other));
  // It keeps the grids alive, so no other patient's grid can be given their address.
  std::weak_ptr<const openvdb::Int32Grid> tumor;
  {
    PatientCase temporary = Case();
    tumor = temporary.tumor.grid_ptr();
    identity.Remember(temporary);
  }
  EXPECT_FALSE(tumor.expired());
  identity.Forget();
  EXPECT_TRUE(tumor.expired());
  EXPECT_FALSE(identity.Matches(original));
}

TEST_F(PatientTest, AValidCasePasses) {
  PatientCase c = Case();
  c.covariates.age_years = 64;
  EXPECT_TRUE(c.Validate());
}

TEST_F(PatientTest, MismatchedMaskEmptyTumorAndBadCovariatesAreNamed) {
  PatientCase c = Case();
  c.liver = LabelVolume(Geometry::Isotropic(1.0), {8, 8, 8}, "liver");
  auto mismatch = c.Validate();
  ASSERT_FALSE(mismatch);
  EXPECT_EQ(mismatch.error().code, ErrorCode::kMismatch);
  EXPECT_NE(mismatch.error().message.find("patient 'P1'"), std::string::npos);
  EXPECT_NE(mismatch.error().message.find("'liver'"), std::string::npos);

  c = Case();
  c.tumor = LabelVolume(c.ct.geometry(), {8, 8, 8}, "tumor");
  auto empty = c.Validate();
  ASSERT_FALSE(empty);
  EXPECT_NE(empty.error().message.find("tumor mask is empty"), std::string::npos);

  c = Case();
  c.covariates.child_pugh = 'D';
  auto cp = c.Validate();
  ASSERT_FALSE(cp);
  EXPECT_NE(cp.error().message.find("Child-Pugh"), std::string::npos);
  c.covariates = Covariates{};
  c.covariates.afp_ng_ml = -1;
  EXPECT_FALSE(c.Validate());
  c.covariates = Covariates{};
  c.covariates.bclc_stage = 'E';
  EXPECT_FALSE(c.Validate());
}

TEST_F(PatientTest, OutcomeVolumeAndChecks) {
  const PatientCase c = Case();
  Outcome o{Plan({"Lipiodol"}), 0, c.ct, c.tumor};
  EXPECT_DOUBLE_EQ(ViableVolumeMl(o), 2 * 8.0 / 1000.0);
  SimulationRequest request{Plan({"Lipiodol"}), 0, 1, 0};
  EXPECT_TRUE(CheckOutcome(o, request, c));
  request.sample_index = 1;
  EXPECT_FALSE(CheckOutcome(o, request, c));
  request.sample_index = 0;
  o.viable = LabelVolume(Geometry::Isotropic(1.0), {8, 8, 8}, "viable");
  auto off = CheckOutcome(o, request, c);
  ASSERT_FALSE(off);
  EXPECT_EQ(off.error().code, ErrorCode::kMismatch);
}

}  // namespace
}  // namespace mewm
