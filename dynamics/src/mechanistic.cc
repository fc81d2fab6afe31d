// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/dynamics/mechanistic.h"

#include <openvdb/tools/Interpolation.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>

#include "mewm/core/crop.h"
#include "mewm/core/seed.h"
#include "mewm/tace/tumor_features.h"

namespace mewm::dynamics {
namespace {

constexpr double kNecrosisHu = 20.0;     // hypodense necrosis
constexpr double kViableHuFloor = 40.0;  // below this a tumor voxel counts as necrotic
constexpr double kGrowthHu = 80.0;       // viable tumor grown into liver (washout, portal phase)
constexpr int kSubsamples = 3;           // per axis, for partial-volume density
constexpr double kLipiodolHu = 450.0;    // fully retained Lipiodol in dead tumor tissue
constexpr double kPeripheryMm = 2.0;     // decay length of the collateral supply at the margin
/// Drug kill saturates: the rates of several drugs add up to at most this (1/day), so a second
/// drug adds less than the first.
constexpr double kDrugCap = 0.12;

/// Drug retention time constant (days); the Lipiodol emulsion doubles it.
double DrugTau(bool lipiodol) { return lipiodol ? 8.0 : 4.0; }

struct PlanEffect {
  double drug_rate = 0.0;  ///< saturated sum of potency x sensitivity (1/day, full delivery)
  bool lipiodol = false;
  /// Share of the peripheral collateral supply the plan still reaches (liquid agents penetrate
  /// further than particles): 0 = none, 1 = all.
  double penetration = 0.0;
  std::vector<ItemPhysics> embolics;
};

Expected<PlanEffect> EffectOf(const Plan& plan, const TumorBiology& biology) {
  PlanEffect effect;
  double drug_sum = 0.0;
  for (const auto& item : plan.items()) {
    MEWM_TRY(const ItemPhysics p, PhysicsOf(item));
    if (!p.drug_class.empty()) {
      const auto cls = std::find(kDrugClasses.begin(), kDrugClasses.end(), p.drug_class);
      drug_sum += p.potency * biology.sensitivity[std::size_t(cls - kDrugClasses.begin())];
    } else {
      if (p.lipiodol) effect.lipiodol = true;
      effect.penetration = std::max(effect.penetration, p.penetration);
      effect.embolics.push_back(p);
    }
  }
  effect.drug_rate = kDrugCap * (1.0 - std::exp(-drug_sum / kDrugCap));
  return effect;
}

/// Ischemic kill rate of one embolic at time t (days), before the tissue's dependence factor.
double IschemiaRate(const ItemPhysics& e, double t, double diameter_mm) {
  if (t >= e.duration_days) return 0.0;
  double rate = e.ischemia;
  if (e.duration_days > 1e8) rate *= std::exp(-t / 25.0);  // collaterals take over
  return rate * std::clamp(1.0 + e.size_slope * (diameter_mm - 35.0), 0.1, 1.4);
}

/// Share of a tissue voxel's volume that retains Lipiodol where it dies: it follows the arterial
/// supply, which the pre-treatment CT shows (so an image reader can predict it).
float LipiodolUptake(float perfusion) { return std::clamp(0.25f + 0.75f * perfusion, 0.0f, 1.0f); }

/// exp(-depth / kPeripheryMm) for every voxel of `tissue`, depth being a chamfer distance (mm)
/// to the nearest voxel outside it; 0 outside.
std::vector<float> PeripheryOf(const std::vector<bool>& tissue, const Index3& n, double h) {
  const float big = 1e9f;
  std::vector<float> d(tissue.size());
  for (std::size_t x = 0; x < d.size(); ++x) d[x] = tissue[x] ? big : 0.0f;
  const auto at = [&](std::int64_t i, std::int64_t j, std::int64_t k) {
    return std::size_t(i + n[0] * (j + n[1] * k));
  };
  // Two raster passes over the 26-neighbourhood (half each way): a 3-4-5-like chamfer.
  for (int pass = 0; pass < 2; ++pass) {
    const int dir = pass == 0 ? 1 : -1;
    for (std::int64_t kk = 0; kk < n[2]; ++kk) {
      const std::int64_t k = pass == 0 ? kk : n[2] - 1 - kk;
      for (std::int64_t jj = 0; jj < n[1]; ++jj) {
        const std::int64_t j = pass == 0 ? jj : n[1] - 1 - jj;
        for (std::int64_t ii = 0; ii < n[0]; ++ii) {
          const std::int64_t i = pass == 0 ? ii : n[0] - 1 - ii;
          float& here = d[at(i, j, k)];
          if (here == 0.0f) continue;
          for (int dk = -1; dk <= 0; ++dk) {
            for (int dj = -1; dj <= 1; ++dj) {
              for (int di = -1; di <= 1; ++di) {
                // Neighbours already visited in this pass: earlier in raster order.
                if (dk == 0 && (dj > 0 || (dj == 0 && di >= 0))) continue;
                const std::int64_t a = i + dir * di, b = j + dir * dj, c = k + dir * dk;
                const double step = h * std::sqrt(double(di * di + dj * dj + dk * dk));
                // Beyond the lattice counts as outside the tissue.
                const float there = (a < 0 || b < 0 || c < 0 || a >= n[0] || b >= n[1] || c >= n[2])
                                        ? 0.0f
                                        : d[at(a, b, c)];
                here = std::min(here, float(there + step));
              }
            }
          }
        }
      }
    }
  }
  std::vector<float> periphery(d.size(), 0.0f);
  for (std::size_t x = 0; x < d.size(); ++x) {
    // Depth is measured from the boundary between voxels, half a voxel outside the first one.
    if (tissue[x]) periphery[x] = float(std::exp(-std::max(0.0, d[x] - 0.5 * h) / kPeripheryMm));
  }
  return periphery;
}

TumorBiology Perturb(const TumorBiology& b, const MechanisticConfig& config, std::uint64_t seed) {
  const auto& sd = config.sample_log_sd;
  const bool per_parameter = std::any_of(sd.begin(), sd.end(), [](double v) { return v > 0.0; });
  if (seed == 0 || (!per_parameter && config.sample_sigma <= 0.0)) return b;
  Rng rng(seed);
  TumorBiology p = b;
  if (per_parameter) {
    // Log-normal (logit-normal for vascularity) draws with one spread per parameter.
    p.proliferation_per_day =
        std::min(0.45, p.proliferation_per_day * std::exp(sd[0] * rng.Normal()));
    p.infiltration_mm2_per_day =
        std::min(9.0, p.infiltration_mm2_per_day * std::exp(sd[1] * rng.Normal()));
    const double v = std::clamp(b.vascularity, 1e-4, 1.0 - 1e-4);
    p.vascularity = 1.0 / (1.0 + std::exp(-(std::log(v / (1.0 - v)) + sd[2] * rng.Normal())));
    for (std::size_t k = 0; k < p.sensitivity.size(); ++k) {
      p.sensitivity[k] = std::min(50.0, p.sensitivity[k] * std::exp(sd[3 + k] * rng.Normal()));
    }
    p.pattern_seed = DeriveSeed(seed, "collateral-pattern");  // where it spares is unknown
    return p;
  }
  const double sigma = config.sample_sigma;
  p.pattern_seed = DeriveSeed(seed, "collateral-pattern");
  p.proliferation_per_day *= std::exp(sigma * rng.Normal());
  p.infiltration_mm2_per_day *= std::exp(sigma * rng.Normal());
  for (double& s : p.sensitivity) s *= std::exp(sigma * rng.Normal());
  p.vascularity = std::clamp(b.vascularity + 0.5 * sigma * rng.Normal(), 0.0, 1.0);
  return p;
}

}  // namespace

Expected<std::vector<TumorField>> BuildTumorFields(const PatientCase& patient,
                                                   const MechanisticConfig& config) {
  if (!(config.grid_mm > 0.0) || !(config.margin_mm >= 0.0)) {
    return MakeError(ErrorCode::kInvalidArgument, "mechanistic grid_mm must be > 0, margin >= 0");
  }
  // Lesion labels present in the mask.
  std::map<std::int32_t, std::int64_t> counts;
  for (auto it = patient.tumor.grid().cbeginValueOn(); it; ++it) {
    if (*it != 0) counts[*it] += std::int64_t(it.getVoxelCount());
  }
  if (counts.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "patient '" + patient.id + "': tumor mask is empty, nothing to simulate");
  }
  const Geometry& g = patient.ct.geometry();
  const double voxel_ml = g.spacing.prod() / 1000.0;
  std::vector<TumorField> fields;
  for (const auto& [label, count] : counts) {
    MEWM_TRY(const WorldBox box, LabelWorldBox(patient.tumor, label));
    // Box in the patient's index frame (direction-aligned), padded by the margin.
    const Eigen::Vector3d a = g.WorldToIndex(box.min), b = g.WorldToIndex(box.max);
    const Eigen::Vector3d lo = a.cwiseMin(b), hi = a.cwiseMax(b);
    const Eigen::Vector3d lo_mm =
        lo.cwiseProduct(g.spacing) - Eigen::Vector3d::Constant(config.margin_mm);
    const Eigen::Vector3d hi_mm =
        hi.cwiseProduct(g.spacing) + Eigen::Vector3d::Constant(config.margin_mm);
    Index3 dims;
    for (int k = 0; k < 3; ++k) {
      dims[k] = std::max<std::int64_t>(
          3, std::int64_t(std::ceil((hi_mm[k] - lo_mm[k]) / config.grid_mm)) + 1);
    }
    Geometry fg;
    fg.direction = g.direction;
    fg.spacing = Eigen::Vector3d::Constant(config.grid_mm);
    fg.origin = g.origin + g.direction * lo_mm;
    TumorField field;
    field.label = label;
    field.density = DenseFloat(dims, fg, 0.0f);
    field.perfusion = DenseFloat(dims, fg, 0.0f);
    field.diameter_mm = EquivalentDiameterMm(double(count) * voxel_ml);
    auto ct = patient.ct.grid().getConstAccessor();
    auto labels = patient.tumor.grid().getConstAccessor();
    const double step = 1.0 / kSubsamples;
    for (std::int64_t k = 0; k < dims[2]; ++k) {
      for (std::int64_t j = 0; j < dims[1]; ++j) {
        for (std::int64_t i = 0; i < dims[0]; ++i) {
          int tumor = 0, viable = 0;
          double viable_hu = 0.0;
          for (int s = 0; s < kSubsamples * kSubsamples * kSubsamples; ++s) {
            const Eigen::Vector3d sub(
                double(i) - 0.5 + step * (s % kSubsamples + 0.5),
                double(j) - 0.5 + step * ((s / kSubsamples) % kSubsamples + 0.5),
                double(k) - 0.5 + step * (s / (kSubsamples * kSubsamples) + 0.5));
            const Eigen::Vector3d idx = g.WorldToIndex(fg.IndexToWorld(sub));
            const openvdb::Vec3R v(idx[0], idx[1], idx[2]);
            if (openvdb::tools::PointSampler::sample(labels, v) != label) continue;
            ++tumor;
            const double hu = openvdb::tools::BoxSampler::sample(ct, v);
            if (hu >= kViableHuFloor) {
              ++viable;
              viable_hu += hu;
            }
          }
          if (tumor == 0) continue;
          const double n = double(kSubsamples * kSubsamples * kSubsamples);
          field.density.at(i, j, k) = float(viable / n);
          if (viable > 0) {
            // Enhancement above necrosis, normalised so a brightly enhancing rim (~120 HU) is 1.
            field.perfusion.at(i, j, k) =
                float(std::clamp((viable_hu / viable - kViableHuFloor) / 80.0, 0.0, 1.0));
          }
        }
      }
    }
    std::vector<bool> tissue(field.density.data.size());
    for (std::size_t x = 0; x < tissue.size(); ++x) {
      tissue[x] = field.density.data[x] > 0.0f || field.perfusion.data[x] > 0.0f;
    }
    field.periphery = field.density;
    field.periphery.data = PeripheryOf(tissue, dims, config.grid_mm);
    fields.push_back(std::move(field));
  }
  return fields;
}

namespace {

/// Runs `visit(i, j, k, x)` over every tissue voxel of a field (density or perfusion above 0),
/// `x` being its linear index.
template <typename Visit>
void ForEachTissueVoxel(const TumorField& field, Visit&& visit) {
  const Index3 n = field.density.dims;
  for (std::int64_t k = 0; k < n[2]; ++k) {
    for (std::int64_t j = 0; j < n[1]; ++j) {
      for (std::int64_t i = 0; i < n[0]; ++i) {
        const auto x = std::size_t(i + n[0] * (j + n[1] * k));
        if (field.density.data[x] > 0.0f || field.perfusion.data[x] > 0.0f) visit(i, j, k, x);
      }
    }
  }
}

/// The key of a field's collateral pattern for a biology's (nonzero) pattern seed.
std::uint64_t PatternKey(const TumorField& field, std::uint64_t pattern_seed) {
  return DeriveSeed(pattern_seed, {std::uint64_t(field.label)});
}

/// The collateral pattern's smooth noise at voxel (i, j, k) of a field, given its PatternKey.
double CollateralNoise(const TumorField& field, std::uint64_t pattern, std::int64_t i,
                       std::int64_t j, std::int64_t k) {
  const Eigen::Vector3d w =
      field.density.geometry.IndexToWorld(Eigen::Vector3d(double(i), double(j), double(k)));
  return ValueNoise(pattern, w[0], w[1], w[2], 6.0);
}

/// Per tumor voxel: how much drug reaches it, how much it depends on arterial supply, and its
/// Lipiodol uptake (zero without Lipiodol). Outside tumor tissue all three are 0.
struct DeliveryMaps {
  std::vector<float> delivery, dependence, lipiodol;
};

DeliveryMaps MapDelivery(const TumorField& field, const TumorBiology& bio,
                         const PlanEffect& effect) {
  const std::vector<float>& perf = field.perfusion.data;
  const std::vector<float>& periphery = field.periphery.data;
  // Delivery of drugs and dependence on arterial supply, per voxel (tumor tissue only). A
  // collateral (portal) supply that particles do not cut and drugs reach less spares the
  // margin and, in a smooth hidden pattern, patches inside; more so in hypovascular tumors.
  // Liquid agents reach part of it. The result is the classic residual: a rim and nodules.
  const double vasc = bio.vascularity;
  const double margin = 0.7 * std::pow(1.0 - vasc, 1.5);
  // Patches where the smooth pattern exceeds this level keep their supply: about half of a
  // hypovascular tumor, none of a hypervascular one (v > 0.7).
  const double level = -0.5 + 1.75 * vasc;
  const std::size_t size = field.density.data.size();
  const bool tabulated =
      field.pattern_seed == bio.pattern_seed && field.pattern.size() == size && size > 0;
  const std::uint64_t pattern = PatternKey(field, bio.pattern_seed);
  DeliveryMaps m{std::vector<float>(size), std::vector<float>(size),
                 std::vector<float>(size, 0.0f)};
  ForEachTissueVoxel(field, [&](std::int64_t i, std::int64_t j, std::int64_t k, std::size_t x) {
    double spared = margin * periphery[x];
    if (bio.pattern_seed != 0) {
      const double noise = tabulated ? field.pattern[x] : CollateralNoise(field, pattern, i, j, k);
      const double t = std::clamp((noise - level) / 0.2 + 0.5, 0.0, 1.0);
      spared += t * t * (3.0 - 2.0 * t);  // smoothstep: patches are spared or not
    }
    spared = std::clamp(spared, 0.0, 1.0) * (1.0 - effect.penetration);
    m.delivery[x] = float((0.3 + 0.7 * perf[x]) * (0.5 + 0.5 * vasc) * (1.0 - 0.5 * spared));
    m.dependence[x] = float((0.4 + 0.6 * perf[x]) * (0.4 + 0.6 * vasc) * (1.0 - spared));
    if (effect.lipiodol) m.lipiodol[x] = LipiodolUptake(perf[x]);
  });
  return m;
}

/// Integrates the reaction-diffusion model over `steps` steps of `dt` days from the density `u`
/// (in place): diffusion, logistic growth, and the kill of drug and ischemia. false when
/// `cancelled` stopped it before the last step.
bool Integrate(const TumorBiology& bio, const PlanEffect& effect, const DeliveryMaps& m,
               const Index3 n, double h, double dt, int steps, double diameter_mm,
               const std::function<bool()>& cancelled, std::vector<float>& u) {
  std::vector<float> next(u.size());
  const double drug_boost = effect.lipiodol ? 1.3 : 1.0;
  const double tau = DrugTau(effect.lipiodol);
  const std::int64_t sy = n[0], sz = n[0] * n[1];
  // One row at a time in two passes: the diffusion and growth update, then the kill. The first
  // pass has no branch in its interior, so the compiler vectorizes it; the second calls exp()
  // only where there is a kill and tissue left. Every voxel's arithmetic is the same expression
  // in the same order as a single voxel loop, so the result is bit for bit the same.
  if (u.empty()) return true;  // a field with no voxels has nothing to integrate
  const auto row_size = static_cast<std::size_t>(n[0]);
  std::vector<double> grown(row_size), kill(row_size);
  for (int s = 0; s < steps; ++s) {
    if (cancelled && cancelled()) return false;
    const double t = (s + 0.5) * dt;
    const double drug = effect.drug_rate * drug_boost * std::exp(-t / tau);
    double ischemia = 0.0;
    for (const auto& e : effect.embolics) ischemia += IschemiaRate(e, t, diameter_mm);
    const double growth = bio.proliferation_per_day * dt;
    const double diffusion = bio.infiltration_mm2_per_day * dt / (h * h);
    const auto grow = [&](double c, double lap) {
      const double v = c + diffusion * lap;
      return v + growth * v * (1.0 - v);
    };
    for (std::int64_t k = 0; k < n[2]; ++k) {
      for (std::int64_t j = 0; j < n[1]; ++j) {
        const std::int64_t base = n[0] * (j + n[1] * k);
        const float* row = &u[std::size_t(base)];
        // Zero-flux boundary: a missing neighbour mirrors the centre voxel or row.
        const float* ym = j > 0 ? row - sy : row;
        const float* yp = j + 1 < n[1] ? row + sy : row;
        const float* zm = k > 0 ? row - sz : row;
        const float* zp = k + 1 < n[2] ? row + sz : row;
        const float* delivery = &m.delivery[std::size_t(base)];
        const float* dependence = &m.dependence[std::size_t(base)];
        // Voxel i with its x neighbours xm and xp.
        const auto update = [&](std::int64_t i, double xm, double xp) {
          const double c = row[i];
          grown[std::size_t(i)] = grow(c, xm + xp + ym[i] + yp[i] + zm[i] + zp[i] - 6.0 * c);
        };
        // The row's ends mirror the centre voxel for a missing neighbour; the interior has both.
        const std::int64_t last = n[0] - 1;
        update(0, row[0], last > 0 ? row[1] : row[0]);
        for (std::int64_t i = 1; i < last; ++i) update(i, row[i - 1], row[i + 1]);
        if (last > 0) update(last, row[last - 1], row[last]);
        for (std::int64_t i = 0; i < n[0]; ++i) {
          kill[std::size_t(i)] = drug * delivery[i] + ischemia * dependence[i];
        }
        // Kill integrated exactly over the step (stable for any rate). Empty voxels stay 0.
        for (std::size_t i = 0; i < row_size; ++i) {
          if (kill[i] > 0.0 && grown[i] != 0.0) grown[i] *= std::exp(-kill[i] * dt);
        }
        float* out = &next[std::size_t(base)];
        for (std::size_t i = 0; i < row_size; ++i) out[i] = float(std::clamp(grown[i], 0.0, 1.0));
      }
    }
    u.swap(next);
  }
  return true;
}

}  // namespace

void TabulateCollateralPattern(std::vector<TumorField>& fields, std::uint64_t pattern_seed) {
  for (TumorField& field : fields) {
    field.pattern_seed = pattern_seed;
    field.pattern.clear();
    if (pattern_seed == 0) continue;
    field.pattern.assign(field.density.data.size(), 0.0);
    const std::uint64_t pattern = PatternKey(field, pattern_seed);
    ForEachTissueVoxel(field, [&](std::int64_t i, std::int64_t j, std::int64_t k, std::size_t x) {
      field.pattern[x] = CollateralNoise(field, pattern, i, j, k);
    });
  }
}

Expected<ResponseSummary> SimulateResponse(const std::vector<TumorField>& fields,
                                           const TumorBiology& biology_in, const Plan& plan,
                                           char child_pugh, const MechanisticConfig& config,
                                           std::uint64_t sample_seed,
                                           std::vector<FieldResponse>* responses,
                                           const std::function<bool()>& cancelled) {
  MEWM_RETURN_IF_ERROR(biology_in.Validate());
  if (!(config.follow_up_days > 0.0) || !(config.max_dt_days > 0.0)) {
    return MakeError(ErrorCode::kInvalidArgument, "follow_up_days and max_dt_days must be > 0");
  }
  const TumorBiology bio = Perturb(biology_in, config, sample_seed);
  MEWM_TRY(const PlanEffect effect, EffectOf(plan, bio));
  ResponseSummary summary;
  MEWM_TRY(summary.toxicity, PlanToxicity(plan, child_pugh));
  if (responses != nullptr) responses->clear();
  double covered = 0.0, tumor_voxels = 0.0;
  for (const TumorField& field : fields) {
    const Index3 n = field.density.dims;
    const double h = field.density.geometry.spacing[0];
    const double voxel_ml = std::pow(h, 3) / 1000.0;
    // Explicit diffusion is stable for dt <= h^2 / (6 D); keep a 10% safety margin.
    double dt = config.max_dt_days;
    if (bio.infiltration_mm2_per_day > 0.0)
      dt = std::min(dt, 0.9 * h * h / (6.0 * bio.infiltration_mm2_per_day));
    dt = std::min(dt, 0.5 / std::max(bio.proliferation_per_day, 1e-9));
    const int steps = std::max(1, int(std::ceil(config.follow_up_days / dt)));
    dt = config.follow_up_days / steps;

    // A fresh `u` each call; clang-tidy mistakes the move at the end for a later iteration's.
    // NOLINTNEXTLINE(bugprone-use-after-move)
    std::vector<float> u = field.density.data;
    DeliveryMaps maps = MapDelivery(field, bio, effect);
    if (!Integrate(bio, effect, maps, n, h, dt, steps, field.diameter_mm, cancelled, u)) {
      return MakeError(ErrorCode::kCancelled, "the simulation was cancelled");
    }
    double pre = 0.0, post = 0.0, pre_mask = 0.0, post_mask = 0.0;
    const auto threshold = float(config.viable_threshold);
    for (std::size_t x = 0; x < u.size(); ++x) {
      pre += field.density.data[x];
      post += u[x];
      pre_mask += field.density.data[x] >= threshold ? 1.0 : 0.0;
      post_mask += u[x] >= threshold ? 1.0 : 0.0;
      if (field.density.data[x] > 0.5f) {
        tumor_voxels += 1.0;
        if (maps.lipiodol[x] > 0.2f) covered += 1.0;
      }
    }
    summary.pre_viable_ml += pre * voxel_ml;
    summary.post_viable_ml += post * voxel_ml;
    summary.pre_mask_ml += pre_mask * voxel_ml;
    summary.post_mask_ml += post_mask * voxel_ml;
    if (responses != nullptr) {
      FieldResponse r{field.density, field.density};
      r.density.data = std::move(u);
      r.lipiodol.data = std::move(maps.lipiodol);
      responses->push_back(std::move(r));
    }
  }
  summary.lipiodol_coverage = tumor_voxels > 0 ? covered / tumor_voxels : 0.0;
  return summary;
}

Expected<Outcome> RenderOutcome(const PatientCase& patient, const std::vector<TumorField>& fields,
                                const std::vector<FieldResponse>& responses, const Plan& plan,
                                int sample_index, std::uint64_t seed,
                                const MechanisticConfig& config) {
  if (fields.size() != responses.size()) {
    return MakeError(ErrorCode::kInvalidArgument, "one response per tumor field expected");
  }
  Outcome out{plan, sample_index, patient.ct.DeepCopy(),
              LabelVolume(patient.ct.geometry(), patient.ct.extent(), "viable")};
  const Geometry& g = patient.ct.geometry();
  auto ct = out.post_ct.grid().getAccessor();
  out.viable_fraction =
      Volume(openvdb::FloatGrid::create(0.0f), patient.ct.geometry(), patient.ct.extent());
  out.viable_fraction->set_name("viable_fraction");
  auto fraction = out.viable_fraction->grid().getAccessor();
  auto viable = out.viable.grid().getAccessor();
  auto tumor = patient.tumor.grid().getConstAccessor();
  for (std::size_t f = 0; f < fields.size(); ++f) {
    const TumorField& field = fields[f];
    const FieldResponse& r = responses[f];
    const Geometry& fg = field.density.geometry;
    // The field's box in patient voxels.
    Eigen::Vector3d lo = Eigen::Vector3d::Constant(1e300), hi = -lo;
    for (int corner = 0; corner < 8; ++corner) {
      const Eigen::Vector3d c((corner & 1) ? double(field.density.dims[0] - 1) : 0.0,
                              (corner & 2) ? double(field.density.dims[1] - 1) : 0.0,
                              (corner & 4) ? double(field.density.dims[2] - 1) : 0.0);
      const Eigen::Vector3d v = g.WorldToIndex(fg.IndexToWorld(c));
      lo = lo.cwiseMin(v);
      hi = hi.cwiseMax(v);
    }
    for (auto k = std::int64_t(std::ceil(lo[2])); k <= std::int64_t(std::floor(hi[2])); ++k) {
      for (auto j = std::int64_t(std::ceil(lo[1])); j <= std::int64_t(std::floor(hi[1])); ++j) {
        for (auto i = std::int64_t(std::ceil(lo[0])); i <= std::int64_t(std::floor(hi[0])); ++i) {
          if (i < 0 || j < 0 || k < 0 || i >= patient.ct.extent()[0] ||
              j >= patient.ct.extent()[1] || k >= patient.ct.extent()[2]) {
            continue;
          }
          const openvdb::Coord ijk{int(i), int(j), int(k)};
          const Eigen::Vector3d c =
              fg.WorldToIndex(g.IndexToWorld(Eigen::Vector3d(double(i), double(j), double(k))));
          const double u = SampleTrilinear(r.density, c);
          const double lip = SampleTrilinear(r.lipiodol, c);
          const bool was_tumor = tumor.getValue(ijk) == field.label;
          const std::uint64_t counter =
              std::uint64_t(i) + 0x100000ULL * (std::uint64_t(j) + 0x100000ULL * std::uint64_t(k));
          const double before = ct.getValue(ijk);
          const bool is_viable = u >= config.viable_threshold;
          double hu = before;
          if (was_tumor && before >= kViableHuFloor) {
            // Viable tissue keeps its enhancement in proportion to its density; the dead part is
            // necrosis holding the Lipiodol it retained, so residual tumor is a deposit defect.
            const double dead = kNecrosisHu + 8.0 * HashNormal(seed, counter) + kLipiodolHu * lip;
            hu = u * before + (1.0 - u) * dead;
          } else if (!was_tumor && u > 0.0) {
            hu = before + u * (kGrowthHu - before) + 12.0 * u * HashNormal(seed, counter);
          }
          ct.setValueOn(ijk, float(hu));
          if (is_viable) viable.setValueOn(ijk, 1);
          if (u > 0.01) fraction.setValueOn(ijk, float(std::min(u, 1.0)));
        }
      }
    }
  }
  return out;
}

Expected<double> EstimateResidualFromImage(const PatientCase& pre, const Volume& post_ct,
                                           const MechanisticConfig& config) {
  MEWM_TRY(const std::vector<TumorField> fields, BuildTumorFields(pre, config));
  return EstimateResidualFromImage(pre, fields, post_ct);
}

Expected<double> EstimateResidualFromImage(const PatientCase& pre,
                                           const std::vector<TumorField>& fields,
                                           const Volume& post_ct) {
  if (post_ct.extent() != pre.ct.extent() ||
      !post_ct.geometry().ApproxEquals(pre.ct.geometry(), 1e-4)) {
    return MakeError(ErrorCode::kMismatch, "patient '" + pre.id +
                                               "': the post-treatment CT is not on the "
                                               "pre-treatment CT's lattice");
  }
  // The Lipiodol each field would retain, from its pre-treatment perfusion.
  std::map<std::int32_t, std::pair<const TumorField*, DenseFloat>> uptake;
  for (const TumorField& field : fields) {
    DenseFloat lip = field.perfusion;
    for (std::size_t x = 0; x < lip.data.size(); ++x) {
      const bool tissue = field.density.data[x] > 0.0f || field.perfusion.data[x] > 0.0f;
      lip.data[x] = tissue ? LipiodolUptake(field.perfusion.data[x]) : 0.0f;
    }
    uptake.emplace(field.label, std::make_pair(&field, std::move(lip)));
  }
  const Geometry& g = pre.ct.geometry();
  auto before = pre.ct.grid().getConstAccessor();
  auto after = post_ct.grid().getConstAccessor();
  // Enhancing pre-treatment tumor voxels, each with its fraction of Lipiodol uptake.
  struct Voxel {
    double pre, post, lip;
  };
  std::vector<Voxel> voxels;
  std::int64_t deposits = 0;
  for (auto it = pre.tumor.grid().cbeginValueOn(); it; ++it) {
    const auto found = uptake.find(*it);
    if (*it == 0 || found == uptake.end()) continue;
    const openvdb::CoordBBox box = it.getBoundingBox();  // a voxel, or a (rare) tile
    for (auto voxel = box.begin(); voxel; ++voxel) {
      const openvdb::Coord ijk = *voxel;
      const double hu0 = before.getValue(ijk), hu1 = after.getValue(ijk);
      if (hu0 < kViableHuFloor) continue;  // necrotic before treatment: nothing to read
      const Eigen::Vector3d c = found->second.first->density.geometry.WorldToIndex(
          g.IndexToWorld(Eigen::Vector3d(ijk.x(), ijk.y(), ijk.z())));
      voxels.push_back({hu0, hu1, SampleTrilinear(found->second.second, c)});
      if (hu1 > 200.0 && hu0 < 150.0) ++deposits;
    }
  }
  // Lipiodol is on the image when a visible share of the tumor shows deposits.
  const bool lipiodol = double(deposits) > 0.005 * double(voxels.size());
  double viable = 0.0;
  for (const Voxel& v : voxels) {
    const double dead = kNecrosisHu + (lipiodol ? kLipiodolHu * v.lip : 0.0);
    if (std::abs(v.pre - dead) < 10.0) continue;  // no contrast between the two states
    viable += (v.post - dead) / (v.pre - dead);
  }
  return std::max(0.0, viable) * g.spacing.prod() / 1000.0;
}

Expected<std::unique_ptr<MechanisticDynamics>> MechanisticDynamics::Create(
    const MechanisticConfig& config, BiologySource biology) {
  if (!biology)
    return MakeError(ErrorCode::kInvalidArgument, "mechanistic dynamics needs a biology source");
  if (!(config.grid_mm > 0.0) || !(config.follow_up_days > 0.0) || !(config.max_dt_days > 0.0) ||
      !(config.sample_sigma >= 0.0) ||
      std::any_of(config.sample_log_sd.begin(), config.sample_log_sd.end(),
                  [](double v) { return !(v >= 0.0 && v < 5.0); }) ||
      !(config.viable_threshold > 0.0 && config.viable_threshold < 1.0)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "mechanistic config: grid_mm, follow_up_days, max_dt_days must be > 0, "
                     "sample_sigma >= 0, sample_log_sd in [0, 5), viable_threshold in (0, 1)");
  }
  return std::unique_ptr<MechanisticDynamics>(new MechanisticDynamics(config, std::move(biology)));
}

Expected<std::vector<Outcome>> MechanisticDynamics::Simulate(
    const PatientCase& patient, const std::vector<SimulationRequest>& requests) {
  if (!cached_patient_.Matches(patient)) {
    cached_patient_.Forget();
    MEWM_TRY(cached_biology_, biology_(patient));
    MEWM_TRY(cached_fields_, BuildTumorFields(patient, config_));
    cached_patient_.Remember(patient);
  }
  const TumorBiology& biology = cached_biology_;
  const std::vector<TumorField>& fields = cached_fields_;
  // Requests are independent: solve and render them in parallel, each into its own slot, so the
  // result never depends on the thread count.
  std::vector<std::optional<Outcome>> slots(requests.size());
  std::vector<std::optional<Error>> errors(requests.size());
  tbb::parallel_for(std::size_t(0), requests.size(), [&](std::size_t n) {
    const SimulationRequest& request = requests[n];
    std::vector<FieldResponse> responses;
    // The biology draw uses the shared seed when there is one: every plan with this sample index
    // then acts on the same simulated patient (common random numbers).
    auto solved = SimulateResponse(
        fields, biology, request.plan, patient.covariates.child_pugh, config_,
        request.shared_seed != 0 ? request.shared_seed : request.seed, &responses, cancelled_);
    if (!solved) {
      errors[n] = solved.error();
      return;
    }
    auto outcome = RenderOutcome(patient, fields, responses, request.plan, request.sample_index,
                                 request.seed, config_);
    if (!outcome) {
      errors[n] = outcome.error();
      return;
    }
    slots[n] = std::move(*outcome);
  });
  solves_ += std::int64_t(requests.size());
  std::vector<Outcome> outcomes;
  outcomes.reserve(requests.size());
  for (std::size_t n = 0; n < requests.size(); ++n) {
    if (errors[n]) return *errors[n];
    outcomes.push_back(std::move(*slots[n]));
  }
  return outcomes;
}

Status TumorBiology::Validate() const {
  const auto bad = [](const std::string& what) {
    return MakeError(ErrorCode::kInvalidArgument, "tumor biology: " + what);
  };
  if (!(proliferation_per_day >= 0.0 && proliferation_per_day < 0.5)) {
    return bad("proliferation must be in [0, 0.5) per day");
  }
  if (!(infiltration_mm2_per_day >= 0.0 && infiltration_mm2_per_day < 10.0)) {
    return bad("infiltration must be in [0, 10) mm^2/day");
  }
  for (double s : sensitivity) {
    if (!(s >= 0.0 && s < 100.0)) return bad("sensitivities must be in [0, 100)");
  }
  if (!(vascularity >= 0.0 && vascularity <= 1.0)) return bad("vascularity must be in [0, 1]");
  return {};
}

}  // namespace mewm::dynamics
