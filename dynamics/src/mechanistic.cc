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

namespace mewm::dynamics {
namespace {

constexpr double kNecrosisHu = 20.0;     // hypodense necrosis
constexpr double kViableHuFloor = 40.0;  // below this a tumor voxel counts as necrotic
constexpr double kNewGrowthHu = 95.0;    // viable tumor that grew into liver
constexpr int kSubsamples = 3;           // per axis, for partial-volume density

/// Drug retention time constant (days); the Lipiodol emulsion doubles it.
double DrugTau(bool lipiodol) { return lipiodol ? 8.0 : 4.0; }

struct PlanEffect {
  double drug_rate = 0.0;  ///< sum of potency x sensitivity (1/day at full delivery)
  bool lipiodol = false;
  std::vector<ItemPhysics> embolics;
};

Expected<PlanEffect> EffectOf(const Plan& plan, const TumorBiology& biology) {
  PlanEffect effect;
  for (const auto& item : plan.items()) {
    MEWM_TRY(const ItemPhysics p, PhysicsOf(item));
    if (!p.drug_class.empty()) {
      const auto cls = std::find(kDrugClasses.begin(), kDrugClasses.end(), p.drug_class);
      effect.drug_rate += p.potency * biology.sensitivity[std::size_t(cls - kDrugClasses.begin())];
    } else {
      if (p.lipiodol) effect.lipiodol = true;
      effect.embolics.push_back(p);
    }
  }
  return effect;
}

/// Ischemic kill rate of one embolic at time t (days), before the tissue's dependence factor.
double IschemiaRate(const ItemPhysics& e, double t, double diameter_mm) {
  if (t >= e.duration_days) return 0.0;
  double rate = e.ischemia;
  if (e.duration_days > 1e8) rate *= std::exp(-t / 20.0);  // collaterals take over
  if (e.ischemia > 0.5) {
    // Ablation (alcohol) reaches less of a large tumor.
    rate *= std::clamp(1.3 - diameter_mm / 50.0, 0.1, 1.0);
  }
  return rate;
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
    return p;
  }
  const double sigma = config.sample_sigma;
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
    field.diameter_mm = std::cbrt(6.0 * double(count) * voxel_ml * 1000.0 / M_PI);
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
    fields.push_back(std::move(field));
  }
  return fields;
}

Expected<ResponseSummary> SimulateResponse(const std::vector<TumorField>& fields,
                                           const TumorBiology& biology_in, const Plan& plan,
                                           char child_pugh, const MechanisticConfig& config,
                                           std::uint64_t sample_seed,
                                           std::vector<FieldResponse>* responses) {
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
    std::vector<float> u = field.density.data, next(u.size());
    const std::vector<float>& perf = field.perfusion.data;
    // Delivery of drugs and dependence on arterial supply, per voxel (tumor tissue only).
    const double vasc = bio.vascularity;
    std::vector<float> delivery(u.size()), dependence(u.size()), lipiodol(u.size(), 0.0f);
    for (std::size_t x = 0; x < u.size(); ++x) {
      const bool tissue = field.density.data[x] > 0.0f || perf[x] > 0.0f;
      delivery[x] = tissue ? float((0.3 + 0.7 * perf[x]) * (0.5 + 0.5 * vasc)) : 0.0f;
      dependence[x] = tissue ? float(perf[x] * (0.3 + 0.7 * vasc)) : 0.0f;
      if (effect.lipiodol && tissue)
        lipiodol[x] = float(std::clamp(perf[x] * (0.4 + 0.8 * vasc), 0.0, 1.0));
    }
    const double drug_boost = effect.lipiodol ? 1.3 : 1.0;
    const double tau = DrugTau(effect.lipiodol);
    const std::int64_t sy = n[0], sz = n[0] * n[1];
    for (int s = 0; s < steps; ++s) {
      const double t = (s + 0.5) * dt;
      const double drug = effect.drug_rate * drug_boost * std::exp(-t / tau);
      double ischemia = 0.0;
      for (const auto& e : effect.embolics) ischemia += IschemiaRate(e, t, field.diameter_mm);
      const double growth = bio.proliferation_per_day * dt;
      const double diffusion = bio.infiltration_mm2_per_day * dt / (h * h);
      for (std::int64_t k = 0; k < n[2]; ++k) {
        for (std::int64_t j = 0; j < n[1]; ++j) {
          const std::int64_t base = n[0] * (j + n[1] * k);
          const float* row = &u[std::size_t(base)];
          // Zero-flux boundary: a missing neighbour mirrors the centre row.
          const float* ym = j > 0 ? row - sy : row;
          const float* yp = j + 1 < n[1] ? row + sy : row;
          const float* zm = k > 0 ? row - sz : row;
          const float* zp = k + 1 < n[2] ? row + sz : row;
          for (std::int64_t i = 0; i < n[0]; ++i) {
            const double c = row[i];
            const double xm = i > 0 ? row[i - 1] : c;
            const double xp = i + 1 < n[0] ? row[i + 1] : c;
            const double lap = xm + xp + ym[i] + yp[i] + zm[i] + zp[i] - 6.0 * c;
            const std::size_t x = std::size_t(base + i);
            if (c == 0.0 && lap == 0.0) {  // empty margin stays empty
              next[x] = 0.0f;
              continue;
            }
            double v = c + diffusion * lap;
            v += growth * v * (1.0 - v);
            // Kill integrated exactly over the step (stable for any rate).
            const double kill = drug * delivery[x] + ischemia * dependence[x];
            if (kill > 0.0) v *= std::exp(-kill * dt);
            next[x] = float(std::clamp(v, 0.0, 1.0));
          }
        }
      }
      u.swap(next);
    }
    double pre = 0.0, post = 0.0;
    for (std::size_t x = 0; x < u.size(); ++x) {
      pre += field.density.data[x];
      post += u[x];
      if (field.density.data[x] > 0.5f) {
        tumor_voxels += 1.0;
        if (lipiodol[x] > 0.2f) covered += 1.0;
      }
    }
    summary.pre_viable_ml += pre * voxel_ml;
    summary.post_viable_ml += post * voxel_ml;
    if (responses != nullptr) {
      FieldResponse r{field.density, field.density};
      r.density.data = std::move(u);
      r.lipiodol.data = std::move(lipiodol);
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
          double hu = ct.getValue(ijk);
          const bool is_viable = u >= config.viable_threshold;
          if (was_tumor && !is_viable) {
            hu = kNecrosisHu + 8.0 * HashNormal(seed, counter);
          } else if (!was_tumor && is_viable) {
            hu = kNewGrowthHu + 12.0 * HashNormal(seed, counter);
          }
          // Lipiodol stays where the tumor died; residual viable tumor shows as a deposit defect,
          // the classic look of incomplete response after cTACE.
          if (was_tumor && !is_viable && lip > 0.15) hu += 200.0 + 400.0 * std::min(lip, 1.0);
          ct.setValueOn(ijk, float(hu));
          if (is_viable) viable.setValueOn(ijk, 1);
          if (u > 0.01) fraction.setValueOn(ijk, float(std::min(u, 1.0)));
        }
      }
    }
  }
  return out;
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
  if (cached_id_.empty() || cached_id_ != patient.id ||
      cached_tumor_ != patient.tumor.grid_ptr().get()) {
    cached_id_.clear();
    MEWM_TRY(cached_biology_, biology_(patient));
    MEWM_TRY(cached_fields_, BuildTumorFields(patient, config_));
    cached_id_ = patient.id;
    cached_tumor_ = patient.tumor.grid_ptr().get();
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
    auto solved =
        SimulateResponse(fields, biology, request.plan, patient.covariates.child_pugh, config_,
                         request.shared_seed != 0 ? request.shared_seed : request.seed, &responses);
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
