// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/streaming/admission.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <limits>
#include <vector>

#include "mewm/dynamics/mechanistic.h"
#include "mewm/tace/plan_space.h"
#include "mewm/world/synthetic_world.h"

namespace mewm::streaming {
namespace {

// Measured on the 2-core VM (docs/PROTOCOL.md "Admission limits"), rounded up: a synthetic
// patient's pre.vdb + post_administered.vdb took 4.9 bytes per CT voxel and a run's
// post_chosen.vdb 2.5; generating 2 patients at 1 mm (7.2 M voxels each) took 16.4 s of wall time
// (1.1 us per voxel and patient), and planning them at beams x samples = 20 took 17.3 s (0.43 s per
// beam x sample and patient). They catch orders of magnitude; they do not predict a run. The NIfTI
// copies of results.nifti (post_chosen_ct.nii.gz, post_chosen_labels.nii.gz) took 2.5 bytes per
// voxel more (2 patients at 1 mm, 2026-11-30).
constexpr double kCohortBytesPerVoxel = 6.0;
constexpr double kResultBytesPerVoxel = 3.0;
constexpr double kResultNiftiBytesPerVoxel = 3.0;
constexpr double kGenerateSecondsPerVoxel = 1.5e-6;
// Simulations per beam x sample: beam search with the shipped action base and horizons 2/2 ran 216
// simulations at 5 x 4 (10.8 each), MeWM's reference loop 384 (19.2), counted by `mewm bench
// dynamics`. Planning took 0.43 s per beam x sample above, so 0.04 s per simulation, rounded up.
constexpr std::uint64_t kSimulationsPerBeamSample = 11;
constexpr std::uint64_t kReferenceSimulationsPerBeamSample = 20;
constexpr double kPlanSecondsPerSimulation = 0.05;

/// What the search simulates per patient (CostEstimate::simulations).
std::uint64_t Simulations(const scenarios::ScenarioSpec& spec) {
  const auto samples = std::uint64_t(std::max(0, spec.planner.samples));
  switch (spec.planner.search) {
    case scenarios::SearchMode::kExhaustive: {
      const std::uint64_t plans = PlanSpaceBound(spec.actions, spec.planner.drug_horizon,
                                                 spec.planner.embolic_horizon, spec.protocol);
      return samples == 0 || plans <= std::numeric_limits<std::uint64_t>::max() / samples
                 ? plans * samples
                 : std::numeric_limits<std::uint64_t>::max();
    }
    case scenarios::SearchMode::kReference:
      return std::uint64_t(std::max(0, spec.planner.beams)) * samples *
             kReferenceSimulationsPerBeamSample;
    case scenarios::SearchMode::kBeam:
      break;
  }
  return std::uint64_t(std::max(0, spec.planner.beams)) * samples * kSimulationsPerBeamSample;
}

std::string Gb(double bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f GB", bytes / 1e9);
  return text;
}

std::string Hours(double seconds) {
  // Three significant digits: at one decimal, 150 s over a 7 s limit read "0.0 h over 0.0 h".
  char text[32];
  std::snprintf(text, sizeof(text), "%.3g h", seconds / 3600.0);
  return text;
}

}  // namespace

CostEstimate EstimateCost(const scenarios::ScenarioSpec& spec) {
  CostEstimate cost;
  cost.beam_samples = spec.planner.beams * spec.planner.samples;
  cost.simulations = Simulations(spec);
  if (spec.cohort.source != scenarios::CohortSpec::Source::kSynthetic) return cost;
  scenarios::WorldConfig world;  // the runner generates with the default world at this spacing
  world.spacing_mm = spec.cohort.spacing_mm;
  cost.patients = spec.cohort.n;
  double voxels = 1.0;
  if (world.spacing_mm > 0.0) {
    const Index3 extent = world.CtExtent();  // the CT lattice the world renders
    for (int axis = 0; axis < 3; ++axis) voxels *= double(std::max<std::int64_t>(1, extent[axis]));
  }
  cost.voxels = std::uint64_t(voxels);
  const double n = double(cost.patients);
  const double result_bytes =
      kResultBytesPerVoxel + (spec.results.nifti ? kResultNiftiBytesPerVoxel : 0.0);
  cost.disk_bytes = std::uint64_t(n * voxels * (kCohortBytesPerVoxel + result_bytes));
  // The per-simulation figure was measured with the mechanistic defaults. Its PDE solve grows
  // with the grid's voxels and with the days simulated (and its CFL-limited steps with a finer
  // grid too, left out): a 0.5 mm grid over 365 days ran about 230 times longer, and was admitted
  // at the defaults' estimate.
  double per_simulation = kPlanSecondsPerSimulation;
  if (spec.dynamics_backend == "mechanistic") {
    const dynamics::MechanisticConfig defaults;
    const double finer = defaults.grid_mm / std::max(spec.mechanistic.grid_mm, 1e-3);
    per_simulation *= std::max(1.0, finer * finer * finer) *
                      std::max(1.0, spec.mechanistic.follow_up_days / defaults.follow_up_days);
  }
  cost.seconds =
      n * (voxels * kGenerateSecondsPerVoxel + double(cost.simulations) * per_simulation);
  return cost;
}

Status CheckAdmission(const CostEstimate& cost, const AdmissionLimits& limits) {
  std::vector<std::string> over;
  if (limits.max_patients > 0 && cost.patients > limits.max_patients) {
    over.push_back("patients: cohort.n = " + std::to_string(cost.patients) +
                   " is over the limit of " + std::to_string(limits.max_patients) +
                   " (--max-patients)");
  }
  if (limits.max_voxels > 0 && cost.voxels > limits.max_voxels) {
    over.push_back("voxels: " + std::to_string(cost.voxels) +
                   " CT voxels per patient (field of view / cohort.spacing_mm) is over the limit "
                   "of " +
                   std::to_string(limits.max_voxels) + " (--max-voxels)");
  }
  if (limits.max_beam_samples > 0 && cost.beam_samples > limits.max_beam_samples) {
    over.push_back("beams x samples: planner.beams x planner.samples = " +
                   std::to_string(cost.beam_samples) + " is over the limit of " +
                   std::to_string(limits.max_beam_samples) + " (--max-beam-samples)");
  }
  // Outcomes per patient, bounded at what the costliest search (the reference loop) simulates at
  // the beams x samples limit. Beam and reference searches are bounded by beams x samples
  // already; this bounds exhaustive search, whose cost is the plan space x samples.
  const std::uint64_t max_simulations =
      std::uint64_t(std::max(0, limits.max_beam_samples)) * kReferenceSimulationsPerBeamSample;
  if (max_simulations > 0 && cost.simulations > max_simulations &&
      cost.beam_samples <= limits.max_beam_samples) {
    over.push_back("simulations: an estimated " + std::to_string(cost.simulations) +
                   " outcomes per patient is over the limit of " + std::to_string(max_simulations) +
                   " (--max-beam-samples x " + std::to_string(kReferenceSimulationsPerBeamSample) +
                   ", what the reference search simulates at that limit)");
  }
  if (limits.max_disk_bytes > 0 && cost.disk_bytes > limits.max_disk_bytes) {
    over.push_back("disk: an estimated " + Gb(double(cost.disk_bytes)) + " is over the limit of " +
                   Gb(double(limits.max_disk_bytes)) + " (--max-disk-gb)");
  }
  if (limits.max_seconds > 0 && cost.seconds > limits.max_seconds) {
    over.push_back("time: an estimated " + Hours(cost.seconds) + " is over the limit of " +
                   Hours(limits.max_seconds) + " (--max-hours)");
  }
  if (over.empty()) return {};
  std::string message = "the scenario is over the server's admission limits:";
  for (const std::string& line : over) message += "\n  " + line;
  return MakeError(ErrorCode::kInvalidArgument, message);
}

}  // namespace mewm::streaming
