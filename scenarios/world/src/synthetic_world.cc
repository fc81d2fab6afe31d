// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/world/synthetic_world.h"

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <Eigen/Geometry>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <optional>

#include "mewm/core/seed.h"
#include "mewm/tace/plan_space.h"

namespace mewm::scenarios {
namespace {

constexpr double kAirHu = -1000.0;

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

double ValueNoise(std::uint64_t seed, const Eigen::Vector3d& p, double scale_mm) {
  return mewm::ValueNoise(seed, p[0], p[1], p[2], scale_mm);
}

double SegmentDistance(const Eigen::Vector3d& p, const Eigen::Vector3d& a,
                       const Eigen::Vector3d& b) {
  const Eigen::Vector3d ab = b - a;
  const double t = std::clamp((p - a).dot(ab) / std::max(ab.squaredNorm(), 1e-12), 0.0, 1.0);
  return (a + t * ab - p).norm();
}

Eigen::Matrix3d RandomRotation(Rng& rng) {
  Eigen::Quaterniond q(rng.Normal(), rng.Normal(), rng.Normal(), rng.Normal());
  q.normalize();
  return q.toRotationMatrix();
}

/// Normalised ellipsoid radius of p for a lesion, with its boundary irregularity.
double LesionRadius(const LesionSpec& l, const Eigen::Vector3d& p) {
  const Eigen::Vector3d q = (l.axes.transpose() * (p - l.center_mm)).cwiseQuotient(l.radii_mm);
  return q.norm() * (1.0 + l.deform * ValueNoise(l.shape_seed, p, 10.0));
}

/// Shares one cancellation among a loop's worker threads: once any of them sees `cancelled`,
/// every later poll says stop without calling it again.
class CancelLatch {
 public:
  explicit CancelLatch(const CancelFn& cancelled) : cancelled_(cancelled) {}
  bool Poll() {
    if (stop_.load(std::memory_order_relaxed)) return true;
    if (cancelled_ && cancelled_()) stop_.store(true, std::memory_order_relaxed);
    return stop_.load(std::memory_order_relaxed);
  }
  bool stopped() const { return stop_.load(std::memory_order_relaxed); }

 private:
  const CancelFn& cancelled_;
  std::atomic<bool> stop_{false};
};

Plan DrawAdministeredPlan(Rng& rng, const ActionBase& actions, const std::vector<Plan>& valid) {
  // Physicians' habits: popular drugs, usually one or two, often a gelatin sponge.
  static const std::vector<std::pair<const char*, double>> kDrugs = {
      {"Epirubicin", 3}, {"Pirarubicin", 2}, {"Oxaliplatin", 2},
      {"Lobaplatin", 2}, {"Raltitrexed", 2}, {"Cisplatin", 1},
      {"Idarubicin", 1}, {"Nedaplatin", 1},  {"Mitomycin", 1}};
  static const std::vector<std::pair<const char*, double>> kEmbolics = {{"", 0.25},
                                                                        {"Gelatin Sponge", 0.45},
                                                                        {"PVA", 0.2},
                                                                        {"NBCA", 0.05},
                                                                        {"Absolute Alcohol", 0.05}};
  const auto pick = [&](const std::vector<std::pair<const char*, double>>& table) {
    double total = 0;
    for (const auto& e : table) total += e.second;
    double u = rng.Uniform() * total;
    for (const auto& e : table) {
      if ((u -= e.second) < 0) return std::string(e.first);
    }
    return std::string(table.back().first);
  };
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const double u = rng.Uniform();
    const int n_drugs = u < 0.1 ? 0 : u < 0.6 ? 1 : 2;
    std::vector<std::string> items = {"Lipiodol"};
    for (int d = 0; d < n_drugs; ++d) items.push_back(pick(kDrugs));
    const std::string embolic = pick(kEmbolics);
    if (!embolic.empty()) items.push_back(embolic);
    Plan plan(items);
    if (int(plan.size()) != 1 + n_drugs + (embolic.empty() ? 0 : 1)) continue;  // drug drawn twice
    if (!actions.Violations(plan).empty()) continue;
    if (std::binary_search(valid.begin(), valid.end(), plan)) return plan;
  }
  return valid.front();
}

}  // namespace

Expected<CounterfactualDesign> ParseCounterfactualDesign(const std::string& text) {
  if (text == "random") return CounterfactualDesign::kRandom;
  if (text == "embolic-contrast") return CounterfactualDesign::kEmbolicContrast;
  if (text == "item-contrast") return CounterfactualDesign::kItemContrast;
  if (text == "drug-contrast") return CounterfactualDesign::kDrugContrast;
  return MakeError(ErrorCode::kInvalidArgument,
                   "unknown counterfactual design '" + text +
                       "' (random, embolic-contrast, item-contrast or drug-contrast)");
}

std::string ToString(CounterfactualDesign design) {
  switch (design) {
    case CounterfactualDesign::kEmbolicContrast:
      return "embolic-contrast";
    case CounterfactualDesign::kItemContrast:
      return "item-contrast";
    case CounterfactualDesign::kDrugContrast:
      return "drug-contrast";
    case CounterfactualDesign::kRandom:
      break;
  }
  return "random";
}

Status WorldConfig::Validate() const {
  if (!(spacing_mm >= 0.3 && spacing_mm <= 5.0)) {
    return MakeError(ErrorCode::kInvalidArgument, "world spacing must be in [0.3, 5] mm");
  }
  if (!(fov_mm.minCoeff() >= 64.0 && fov_mm.maxCoeff() <= 600.0)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "world field of view must be in [64, 600] mm per axis");
  }
  if (!(weibull_shape > 0 && weibull_scale_months > 0 && censor_min_months > 0 &&
        censor_max_months >= censor_min_months)) {
    return MakeError(ErrorCode::kInvalidArgument, "world survival parameters must be positive");
  }
  if (counterfactual_plans < 0) {
    return MakeError(ErrorCode::kInvalidArgument, "plans per patient must be >= 0");
  }
  return {};
}

Geometry WorldConfig::CtGeometry() const {
  const Index3 e = CtExtent();
  Geometry g = Geometry::Isotropic(spacing_mm);
  g.origin =
      -0.5 * spacing_mm * Eigen::Vector3d(double(e[0] - 1), double(e[1] - 1), double(e[2] - 1));
  return g;
}

Index3 WorldConfig::CtExtent() const {
  return {std::int64_t(std::lround(fov_mm[0] / spacing_mm)),
          std::int64_t(std::lround(fov_mm[1] / spacing_mm)),
          std::int64_t(std::lround(fov_mm[2] / spacing_mm))};
}

Expected<SyntheticWorld> SyntheticWorld::Create(const WorldConfig& config,
                                                const ActionBase& actions) {
  MEWM_RETURN_IF_ERROR(config.Validate());
  MEWM_TRY(std::vector<Plan> plans,
           EnumeratePlans(actions, config.drug_horizon, config.embolic_horizon));
  if (plans.empty()) return MakeError(ErrorCode::kInvalidArgument, "the plan space is empty");
  for (const Plan& p : plans) {
    for (const auto& item : p.items()) MEWM_RETURN_IF_ERROR(PhysicsOf(item));
  }
  if (config.counterfactual_plans >= int(plans.size())) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "plans per patient must be below the " + std::to_string(plans.size()) + " valid plans");
  }
  return SyntheticWorld(config, actions, std::move(plans));
}

namespace {

/// A synthetic patient's hidden latent factors (standard normal), drawn first.
struct HiddenFactors {
  double z_p = 0, z_d = 0, z_v = 0, z_pt = 0, z_an = 0, z_am = 0, z_mi = 0;
};

/// Draws the hidden factors, in the order z_p, z_d, z_v, z_pt, z_an, z_am, z_mi.
HiddenFactors DrawHiddenFactors(Rng& rng) {
  HiddenFactors z;
  z.z_p = rng.Normal();
  z.z_d = rng.Normal();
  z.z_v = rng.Normal();
  z.z_pt = rng.Normal();
  z.z_an = rng.Normal();
  z.z_am = rng.Normal();
  z.z_mi = rng.Normal();
  return z;
}

/// The tumour biology the hidden factors imply (no draws).
dynamics::TumorBiology BiologyOf(const HiddenFactors& z, std::uint64_t patient_seed) {
  dynamics::TumorBiology b;
  b.proliferation_per_day = 0.02 * std::exp(0.6 * z.z_p);
  b.infiltration_mm2_per_day = 0.08 * std::exp(1.1 * z.z_d);
  b.vascularity = Sigmoid(1.2 * z.z_v);
  b.sensitivity = {std::exp(0.8 * z.z_pt), std::exp(0.8 * z.z_an), std::exp(0.8 * z.z_am),
                   std::exp(0.8 * z.z_mi)};
  b.pattern_seed = DeriveSeed(patient_seed, "collateral-pattern");
  return b;
}

/// Draws the body, liver, CT noise and five hepatic vessels from the hilum.
AnatomySpec DrawAnatomy(Rng& rng) {
  AnatomySpec a;
  a.body_radii_mm = {135 + 8 * rng.Normal(), 105 + 6 * rng.Normal()};
  a.fat_mm = rng.Uniform(10, 24);
  a.liver_center_mm = {-48 + 3 * rng.Normal(), -8 + 3 * rng.Normal(), 3 * rng.Normal()};
  a.liver_radii_mm = {72 + 4 * rng.Normal(), 64 + 4 * rng.Normal(), 60 + 4 * rng.Normal()};
  // Portal-venous phase: the liver parenchyma enhances to about 105 HU.
  a.liver_hu = std::clamp(105 + 6 * rng.Normal(), 90.0, 120.0);
  a.noise_sd = rng.Uniform(10, 20);
  a.texture_seed = rng.NextU64();
  const Eigen::Vector3d hilum = a.liver_center_mm + Eigen::Vector3d(25, 10, -12);
  for (int v = 0; v < 5; ++v) {
    const Eigen::Vector3d dir =
        Eigen::Vector3d(rng.Normal(), rng.Normal(), rng.Normal()).normalized();
    a.vessels.push_back({hilum, a.liver_center_mm + 0.8 * dir.cwiseProduct(a.liver_radii_mm),
                         rng.Uniform(2.0, 5.0), 170 + 8 * rng.Normal()});
  }
  return a;
}

/// How deep world point `w` lies below the skin of the body's elliptic cross-section, in mm
/// (negative outside the body: air).
double BodyDepthMm(const AnatomySpec& a, const Eigen::Vector3d& w) {
  const double bx = w[0] / a.body_radii_mm[0], by = w[1] / a.body_radii_mm[1];
  return (1.0 - std::sqrt(bx * bx + by * by)) * a.body_radii_mm.minCoeff();
}

/// Whether a point `depth_mm` below the skin is inside the abdomen, below the fat and the muscle
/// wall: only there are the liver and its lesions drawn.
bool Visceral(const AnatomySpec& a, double depth_mm) { return depth_mm >= a.fat_mm + 12.0; }

/// Draws a centre for lesion `s` inside the liver, clear of every lesion already `placed`, and
/// inside the abdomen (a centre in the wall would leave the lesion mostly or wholly undrawn). A
/// lesion that finds no room shrinks by 15% every 40 tries; false after 200 tries.
bool PlaceLesion(Rng& rng, const AnatomySpec& a, const std::vector<LesionSpec>& placed_lesions,
                 LesionSpec& s) {
  bool placed = false;
  for (int attempt = 0; attempt < 200 && !placed; ++attempt) {
    if (attempt > 0 && attempt % 40 == 0) s.radii_mm *= 0.85;
    const double reach = std::max(0.0, 0.75 - s.radii_mm.maxCoeff() / a.liver_radii_mm.minCoeff());
    const Eigen::Vector3d dir =
        Eigen::Vector3d(rng.Normal(), rng.Normal(), rng.Normal()).normalized();
    s.center_mm =
        a.liver_center_mm + reach * std::cbrt(rng.Uniform()) * dir.cwiseProduct(a.liver_radii_mm);
    placed = Visceral(a, BodyDepthMm(a, s.center_mm));
    for (const LesionSpec& other : placed_lesions) {
      // The deformed boundaries reach (1 + deform) times the largest radius at most.
      const double extent = s.radii_mm.maxCoeff() * (1.0 + s.deform) +
                            other.radii_mm.maxCoeff() * (1.0 + other.deform);
      placed = placed && (s.center_mm - other.center_mm).norm() > extent + 4.0;
    }
  }
  return placed;
}

/// The lesions drawn for a patient (those that found room) and the largest one's diameter.
struct DrawnLesions {
  std::vector<LesionSpec> lesions;
  double d1 = 0.0;  ///< the first (largest) lesion's drawn diameter, mm
};

/// Draws one to three lesions, the largest first: size, shape, place, necrotic core, rim and
/// texture; lesions that find no room are dropped, so the count always matches the label image.
DrawnLesions DrawLesions(Rng& rng, const HiddenFactors& z, const dynamics::TumorBiology& b,
                         const AnatomySpec& a) {
  DrawnLesions out;
  const double u_count = rng.Uniform();
  // Drawn counts; lesions that find no room are dropped below, which brings the share of
  // multifocal patients down to about 45%.
  const int count = u_count < 0.40 ? 1 : u_count < 0.75 ? 2 : 3;
  const double d1 = std::clamp(std::exp(std::log(45.0) + 0.45 * rng.Normal()), 12.0, 110.0);
  out.d1 = d1;
  const double z_an_seen = 0.6 * z.z_an + 0.8 * rng.Normal();
  for (int l = 0; l < count; ++l) {
    LesionSpec s;
    const double d = l == 0 ? d1 : std::max(6.0, d1 * rng.Uniform(0.2, 0.7));
    for (int k = 0; k < 3; ++k)
      s.radii_mm[k] = 0.5 * d * std::clamp(1.0 + 0.15 * rng.Normal(), 0.7, 1.3);
    s.axes = RandomRotation(rng);
    s.deform = std::clamp(0.08 + 0.05 * (0.7 * z.z_d + 0.7 * rng.Normal()), 0.02, 0.25);
    const bool placed = PlaceLesion(rng, a, out.lesions, s);
    const bool core =
        d >= 15.0 && rng.Bernoulli(Sigmoid(0.2 + 0.8 * z_an_seen + (d > 40 ? 0.5 : 0.0)));
    s.core_fraction = core ? std::clamp(0.35 + 0.1 * z_an_seen, 0.15, 0.6) : 0.0;
    s.rim_mm = rng.Uniform(1.5, 3.5);
    s.rim_hu = 100 + 25 * b.vascularity + 4 * rng.Normal();
    s.interior_hu = 62 + 35 * b.vascularity + 5 * rng.Normal();
    s.texture_sd = std::clamp(7 + 3 * (0.6 * z.z_pt + 0.8 * rng.Normal()), 2.0, 15.0);
    s.shape_seed = rng.NextU64();
    if (placed) out.lesions.push_back(s);
  }
  return out;
}

/// Draws the clinical covariates, partly driven by the hidden biology and the lesions.
Covariates DrawCovariates(Rng& rng, const HiddenFactors& z, int lesion_count, double d1) {
  Covariates c;
  c.age_years = std::clamp(62 + 9 * rng.Normal() + 2.5 * z.z_mi, 30.0, 88.0);
  c.sex = rng.Bernoulli(0.82) ? Covariates::Sex::kMale : Covariates::Sex::kFemale;
  const double u_cp = rng.Uniform();
  c.child_pugh = u_cp < 0.70 ? 'A' : u_cp < 0.97 ? 'B' : 'C';
  c.afp_ng_ml = std::pow(
      10.0, std::clamp(1.5 + 0.75 * z.z_p - 0.35 * z.z_am + 0.55 * rng.Normal(), 0.3, 5.0));
  c.lesion_count = lesion_count;
  c.max_diameter_mm = d1;
  c.vascular_invasion =
      rng.Bernoulli(Sigmoid(-1.6 + 0.9 * z.z_d + 0.4 * z.z_p + 0.015 * (d1 - 45)));
  if (c.vascular_invasion) {
    c.bclc_stage = 'C';
  } else if (c.lesion_count == 1 && d1 < 50 && c.child_pugh == 'A' && rng.Bernoulli(0.6)) {
    c.bclc_stage = 'A';
  } else {
    c.bclc_stage = 'B';
  }
  return c;
}

/// The items of a plan split by role, each part in the plan's order.
struct ItemsByRole {
  std::vector<std::string> drugs;   ///< among the action base's drugs
  std::vector<std::string> others;  ///< Lipiodol and the embolics
};

ItemsByRole SplitByRole(const Plan& plan, const std::vector<std::string>& drugs) {
  ItemsByRole out;
  for (const std::string& item : plan.items()) {
    const bool drug = std::find(drugs.begin(), drugs.end(), item) != drugs.end();
    (drug ? out.drugs : out.others).push_back(item);
  }
  return out;
}

/// Appends to `out` up to `count` plans of `plans` in random order (a partial Fisher-Yates
/// shuffle) that `keep` accepts, skipping `administered` and plans already in `out`.
void DrawKeeping(Rng& rng, const std::vector<Plan>& plans, const Plan& administered,
                 std::size_t count, const std::function<bool(const Plan&)>& keep,
                 std::vector<Plan>& out) {
  std::vector<Plan> pool;
  for (const Plan& p : plans) {
    if (p != administered && keep(p) && std::find(out.begin(), out.end(), p) == out.end())
      pool.push_back(p);
  }
  const std::size_t take = std::min(pool.size(), count);
  for (std::size_t k = 0; k < take; ++k) {
    const auto pick = std::size_t(rng.UniformInt(std::int64_t(k), std::int64_t(pool.size()) - 1));
    std::swap(pool[k], pool[pick]);
    out.push_back(pool[k]);
  }
}

/// Draws `count` distinct plans of `plans`, none of them `administered` (see
/// CounterfactualDesign).
std::vector<Plan> DrawCounterfactualPlans(Rng& rng, const ActionBase& actions,
                                          const std::vector<Plan>& plans, const Plan& administered,
                                          int count, CounterfactualDesign design) {
  std::vector<Plan> counterfactual;
  const std::vector<std::string> all_drugs = actions.Drugs();
  const ItemsByRole given = SplitByRole(administered, all_drugs);
  const auto same_drugs = [&](const Plan& p) {
    return SplitByRole(p, all_drugs).drugs == given.drugs;
  };
  const auto same_others = [&](const Plan& p) {
    return SplitByRole(p, all_drugs).others == given.others;
  };
  if (design == CounterfactualDesign::kEmbolicContrast) {
    DrawKeeping(rng, plans, administered, std::size_t(count + 1) / 2, same_drugs, counterfactual);
  } else if (design == CounterfactualDesign::kItemContrast) {
    const std::size_t third = std::size_t(count + 2) / 3;
    DrawKeeping(rng, plans, administered, third, same_drugs, counterfactual);
    DrawKeeping(rng, plans, administered, third, same_others, counterfactual);
  } else if (design == CounterfactualDesign::kDrugContrast) {
    DrawKeeping(rng, plans, administered, std::size_t(count), same_others, counterfactual);
  }
  while (int(counterfactual.size()) < count) {
    const Plan& candidate = plans[std::size_t(rng.UniformInt(0, std::int64_t(plans.size()) - 1))];
    if (candidate != administered && std::find(counterfactual.begin(), counterfactual.end(),
                                               candidate) == counterfactual.end()) {
      counterfactual.push_back(candidate);
    }
  }
  return counterfactual;
}

}  // namespace

SyntheticPatient SyntheticWorld::Sample(std::uint64_t cohort_seed, int index) const {
  SyntheticPatient p;
  char id[16];
  std::snprintf(id, sizeof(id), "P%04d", index + 1);
  p.id = id;
  p.seed = DeriveSeed(cohort_seed, {std::uint64_t(index)});
  Rng rng(p.seed);
  // One stream, drawn in this order: hidden factors, anatomy, lesions, covariates, plans.
  const HiddenFactors z = DrawHiddenFactors(rng);
  p.biology = BiologyOf(z, p.seed);
  p.anatomy = DrawAnatomy(rng);
  DrawnLesions drawn = DrawLesions(rng, z, p.biology, p.anatomy);
  p.lesions = std::move(drawn.lesions);
  p.covariates = DrawCovariates(rng, z, int(p.lesions.size()), drawn.d1);
  p.administered = DrawAdministeredPlan(rng, actions_, plans_);
  p.counterfactual =
      DrawCounterfactualPlans(rng, actions_, plans_, p.administered, config_.counterfactual_plans,
                              config_.counterfactual_design);
  return p;
}

namespace {

/// The index boxes to render: one box around each lesion (with `pad` mm), or the whole CT.
std::vector<IndexBox> RenderBoxes(const SyntheticPatient& p, bool tumor_region_only, double pad,
                                  const Geometry& g, const Index3& extent) {
  std::vector<IndexBox> boxes;
  if (tumor_region_only) {
    for (const LesionSpec& l : p.lesions) {
      const double r = l.radii_mm.maxCoeff() * (1.0 + l.deform) + pad;
      const Eigen::Vector3d lo = g.WorldToIndex(l.center_mm - Eigen::Vector3d::Constant(r));
      const Eigen::Vector3d hi = g.WorldToIndex(l.center_mm + Eigen::Vector3d::Constant(r));
      IndexBox box;
      for (int k = 0; k < 3; ++k) {
        box.min[k] = std::max<std::int64_t>(0, std::int64_t(std::floor(lo[k])));
        box.max[k] = std::min<std::int64_t>(extent[k] - 1, std::int64_t(std::ceil(hi[k])));
      }
      boxes.push_back(box);
    }
  } else {
    boxes.push_back(IndexBox{{0, 0, 0}, {extent[0] - 1, extent[1] - 1, extent[2] - 1}});
  }
  return boxes;
}

/// The axial (x, y) centres of the spine, aorta and inferior vena cava of a body.
struct BodyLandmarks {
  Eigen::Vector2d spine, aorta, ivc;
};

/// One voxel's noise-free HU and labels.
struct VoxelTissue {
  double hu = 0.0;
  std::int32_t liver = 0, tumor = 0;
};

/// HU of the body outside the liver at world point `w`, `depth` mm below the skin: fat, muscle
/// wall, mottled bowel, then spine, aorta and IVC over them.
double BodyHu(const AnatomySpec& a, const BodyLandmarks& marks, const Eigen::Vector3d& w,
              double depth) {
  double hu;
  if (depth < a.fat_mm) {
    hu = -100 + 10 * ValueNoise(a.texture_seed + 3, w, 8.0);  // subcutaneous fat
  } else if (depth < a.fat_mm + 12.0) {
    hu = 48 + 6 * ValueNoise(a.texture_seed + 4, w, 6.0);  // abdominal wall muscle
  } else {
    // Bowel and mesenteric fat, mottled.
    hu = -20 + 60 * ValueNoise(a.texture_seed + 5, w, 14.0);
  }
  const Eigen::Vector2d xy(w[0], w[1]);
  const double ds = (xy - marks.spine).norm();
  if (ds < 17.0) hu = ds > 13.5 ? 650.0 : 260.0;     // vertebral cortex and body
  if ((xy - marks.aorta).norm() < 11.0) hu = 160.0;  // portal-venous phase
  if ((xy - marks.ivc).norm() < 10.5) hu = 150.0;
  return hu;
}

/// Paints the lesions over `t` at world point `w` (a later lesion over an earlier one): necrotic
/// core, enhancing rim or textured interior, each also liver.
void PaintLesions(const std::vector<LesionSpec>& lesions, const Eigen::Vector3d& w,
                  VoxelTissue& t) {
  for (std::size_t l = 0; l < lesions.size(); ++l) {
    const LesionSpec& s = lesions[l];
    if ((w - s.center_mm).norm() > s.radii_mm.maxCoeff() * (1.0 + s.deform) + 1.0) continue;
    const double rho = LesionRadius(s, w);
    if (rho >= 1.0) continue;
    t.tumor = std::int32_t(l + 1);
    t.liver = 1;
    const double depth_mm = (1.0 - rho) * s.radii_mm.minCoeff();
    if (s.core_fraction > 0.0 && rho < s.core_fraction) {
      t.hu = 20.0 + 4.0 * ValueNoise(s.shape_seed + 9, w, 5.0);  // necrotic core
    } else if (depth_mm < s.rim_mm) {
      t.hu = s.rim_hu;  // enhancing rim
    } else {
      t.hu = s.interior_hu + s.texture_sd * ValueNoise(s.shape_seed + 7, w, 4.0);
    }
  }
}

/// The tissue at world point `w`, or nothing outside the body (air, the sparse background).
std::optional<VoxelTissue> TissueAt(const SyntheticPatient& p, const BodyLandmarks& marks,
                                    const Eigen::Vector3d& w) {
  const AnatomySpec& a = p.anatomy;
  const double depth = BodyDepthMm(a, w);
  if (depth < 0.0) return std::nullopt;  // air: the sparse background
  VoxelTissue t;
  t.hu = BodyHu(a, marks, w, depth);
  // The liver and its lesions are intra-abdominal: never in the fat or muscle wall.
  if (!Visceral(a, depth)) return t;
  const Eigen::Vector3d q = (w - a.liver_center_mm).cwiseQuotient(a.liver_radii_mm);
  if (q.norm() < 1.25 && q.norm() * (1.0 + 0.08 * ValueNoise(a.texture_seed, w, 30.0)) < 1.0) {
    t.liver = 1;
    t.hu = a.liver_hu + 6.0 * ValueNoise(a.texture_seed + 1, w, 6.0);
    for (const auto& v : a.vessels) {
      if (SegmentDistance(w, v.a, v.b) < v.radius_mm) t.hu = v.hu;
    }
  }
  PaintLesions(p.lesions, w, t);
  return t;
}

}  // namespace

Expected<PatientCase> SyntheticWorld::Render(const SyntheticPatient& p, bool tumor_region_only,
                                             const CancelFn& cancelled) const {
  const Geometry g = config_.CtGeometry();
  const Index3 extent = config_.CtExtent();
  const std::vector<IndexBox> boxes = RenderBoxes(
      p, tumor_region_only, config_.mechanistic.margin_mm + 3.0 * config_.spacing_mm, g, extent);
  const AnatomySpec& a = p.anatomy;
  const std::uint64_t noise_seed = DeriveSeed(p.seed, "ct-noise");
  const BodyLandmarks marks{Eigen::Vector2d(0.0, 0.62 * a.body_radii_mm[1]),
                            Eigen::Vector2d(18.0, 0.38 * a.body_radii_mm[1]),
                            Eigen::Vector2d(-24.0, 0.30 * a.body_radii_mm[1])};

  Volume ct_volume(g, extent, "ct");
  LabelVolume tumor_volume(g, extent, "tumor"), liver_volume(g, extent, "liver");
  CancelLatch cancel(cancelled);
  for (const IndexBox& box : boxes) {
    const Index3 n = box.extent();
    std::vector<float> ct(std::size_t(n[0] * n[1] * n[2]), float(kAirHu));
    std::vector<std::int32_t> liver(ct.size(), 0), tumor(ct.size(), 0);
    tbb::parallel_for(
        tbb::blocked_range<std::int64_t>(box.min[2], box.max[2] + 1),
        [&](const tbb::blocked_range<std::int64_t>& range) {
          for (std::int64_t k = range.begin(); k != range.end(); ++k) {
            if (cancel.Poll()) return;  // a slice at 0.5 mm is ~0.26 M voxels: a short wait
            for (std::int64_t j = box.min[1]; j <= box.max[1]; ++j) {
              for (std::int64_t i = box.min[0]; i <= box.max[0]; ++i) {
                const Eigen::Vector3d w =
                    g.IndexToWorld(Eigen::Vector3d(double(i), double(j), double(k)));
                const std::optional<VoxelTissue> t = TissueAt(p, marks, w);
                if (!t) continue;
                // The noise is keyed by the voxel's index in the whole CT, whatever box is
                // rendered.
                const std::uint64_t voxel = std::uint64_t(i + extent[0] * (j + extent[1] * k));
                const std::size_t at = std::size_t(
                    (i - box.min[0]) + n[0] * ((j - box.min[1]) + n[1] * (k - box.min[2])));
                ct[at] = float(t->hu + a.noise_sd * HashNormal(noise_seed, voxel));
                if (ct[at] == float(kAirHu)) ct[at] = float(kAirHu + 1.0);
                liver[at] = t->liver;
                tumor[at] = t->tumor;
              }
            }
          }
        });
    if (cancel.stopped()) {
      return MakeError(ErrorCode::kCancelled, "rendering patient " + p.id + " was cancelled");
    }
    MEWM_RETURN_IF_ERROR(ct_volume.CopyFromDense(box, ct));
    MEWM_RETURN_IF_ERROR(tumor_volume.CopyFromDense(box, tumor));
    MEWM_RETURN_IF_ERROR(liver_volume.CopyFromDense(box, liver));
  }
  return PatientCase{p.id, std::move(ct_volume), std::move(tumor_volume), std::move(liver_volume),
                     p.covariates};
}

double SyntheticWorld::LinearPredictor(const SyntheticPatient& p, double post_viable_ml,
                                       double toxicity) const {
  const Covariates& c = p.covariates;
  const double cp = c.child_pugh == 'A' ? 0.0 : c.child_pugh == 'B' ? 0.45 : 0.9;
  const double bclc = c.bclc_stage == 'C' ? 0.35 : c.bclc_stage == 'B' ? 0.0 : -0.3;
  // The hidden biology's own progression: faster-growing tumors recur sooner, whatever the image
  // showed at follow-up (z_p, the proliferation's standard-normal latent).
  const double z_p = std::log(p.biology.proliferation_per_day / 0.02) / 0.6;
  return 0.80 * std::log1p(post_viable_ml) - 3.15 + 0.30 * (std::log10(c.afp_ng_ml) - 1.5) + cp +
         bclc + 0.35 * (c.vascular_invasion ? 1.0 : 0.0) + 0.015 * (c.age_years - 62.0) +
         0.25 * z_p + toxicity;
}

Expected<PatientTruth> SyntheticWorld::Truth(const SyntheticPatient& p, const PatientCase& rendered,
                                             const CancelFn& cancelled) const {
  MEWM_TRY(std::vector<dynamics::TumorField> fields,
           dynamics::BuildTumorFields(rendered, config_.mechanistic));
  dynamics::TabulateCollateralPattern(fields, p.biology.pattern_seed);
  return Truth(p, fields, cancelled);
}

Expected<PatientTruth> SyntheticWorld::Truth(const SyntheticPatient& p,
                                             const std::vector<dynamics::TumorField>& fields,
                                             const CancelFn& cancelled) const {
  PatientTruth truth;
  truth.plans.resize(plans_.size());
  std::vector<std::optional<Error>> errors(plans_.size());
  std::vector<double> pre(plans_.size()), pre_mask(plans_.size());
  CancelLatch cancel(cancelled);
  tbb::parallel_for(std::size_t(0), plans_.size(), [&](std::size_t n) {
    if (cancel.Poll()) return;  // one plan's PDE runs on the 2 mm response grid: milliseconds
    auto r = dynamics::SimulateResponse(fields, p.biology, plans_[n], p.covariates.child_pugh,
                                        config_.mechanistic, /*sample_seed=*/0, nullptr);
    if (!r) {
      errors[n] = r.error();
      return;
    }
    pre[n] = r->pre_viable_ml;
    pre_mask[n] = r->pre_mask_ml;
    PlanTruth& t = truth.plans[n];
    t = PlanTruth{plans_[n],
                  r->post_viable_ml,
                  r->post_mask_ml,
                  r->toxicity,
                  LinearPredictor(p, r->post_viable_ml, r->toxicity),
                  0.0};
    t.risk = std::exp(t.linear_predictor);
  });
  if (cancel.stopped()) {
    return MakeError(ErrorCode::kCancelled, "the truth of patient " + p.id + " was cancelled");
  }
  for (const auto& e : errors) {
    if (e) return *e;
  }
  truth.pre_viable_ml = pre.front();
  truth.pre_mask_ml = pre_mask.front();
  for (std::size_t n = 0; n < truth.plans.size(); ++n) {
    if (truth.plans[n].risk < truth.plans[truth.optimal].risk) truth.optimal = n;
    if (truth.plans[n].plan == p.administered) truth.administered = n;
  }
  // Weibull proportional hazards: S(t) = exp(-(t / scale)^shape * exp(eta)).
  Rng rng(DeriveSeed(p.seed, "survival"));
  double u;
  do {
    u = rng.Uniform();
  } while (u <= 0.0);
  const double eta = truth.plans[truth.administered].linear_predictor;
  const double t_event = config_.weibull_scale_months *
                         std::pow(-std::log(u) / std::exp(eta), 1.0 / config_.weibull_shape);
  const double t_censor = rng.Uniform(config_.censor_min_months, config_.censor_max_months);
  truth.event = t_event <= t_censor;
  truth.event_time_months = std::min(t_event, t_censor);
  return truth;
}

}  // namespace mewm::scenarios
