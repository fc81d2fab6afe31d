// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Admission control for submitted scenarios (docs/PROTOCOL.md "Admission limits"): what a run
// would cost, estimated from its scenario alone before it is queued, and the check of that
// estimate against the server's AdmissionLimits. Nothing here reads a file.
#pragma once

#include <cstdint>
#include <string>

#include "mewm/core/expected.h"
#include "mewm/run/scenario.h"
#include "mewm/streaming/protocol.h"

namespace mewm::streaming {

/// A submitted run's cost, estimated. A manifest cohort's size and images are the operator's own
/// files, unknown here: its patients, voxels, disk and time are 0 (not estimated).
struct CostEstimate {
  int patients = 0;          ///< synthetic cohort.n
  std::uint64_t voxels = 0;  ///< CT voxels per synthetic patient (the world's FOV / spacing)
  int beam_samples = 0;      ///< planner beams x samples
  /// Outcomes the search simulates per patient: beams x samples x 11 for beam search (216 for the
  /// shipped 5 x 4, measured), x 20 for the reference loop (384), and for exhaustive search every
  /// plan of the space (PlanSpaceBound) x samples.
  std::uint64_t simulations = 0;
  std::uint64_t disk_bytes = 0;  ///< the generated cohort plus the run's results
  double seconds = 0.0;          ///< generation plus planning, on a 2-core machine
};

/// Estimates a scenario's cost (a pure function of the spec; see docs/PROTOCOL.md for the
/// measured constants behind disk and time).
CostEstimate EstimateCost(const scenarios::ScenarioSpec& spec);

/// kInvalidArgument naming every limit the estimate exceeds (limit = 0: none), with the estimate,
/// the limit and the `mewm serve` flag that sets it; ok otherwise. The beams x samples limit also
/// bounds the simulations per patient, at what the reference search simulates at that limit, so
/// that an exhaustive search (whose beams do not count) is bounded too.
Status CheckAdmission(const CostEstimate& cost, const AdmissionLimits& limits);

}  // namespace mewm::streaming
