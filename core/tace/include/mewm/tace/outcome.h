// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Simulation requests and outcomes: the value types that flow from the dynamics stage to the
// survival stage, the planner and the stream.
#pragma once

#include <cstdint>
#include <optional>

#include "mewm/core/expected.h"
#include "mewm/tace/action_base.h"
#include "mewm/tace/patient.h"

namespace mewm {

/// One simulation to run.
struct SimulationRequest {
  Plan plan;
  int sample_index = 0;
  std::uint64_t seed = 0;  ///< derived by the caller from (run seed, patient, plan, sample index)
  /// Seed of the sample's patient-level draws (e.g. the tumor's biology), shared by every plan
  /// with the same sample index so that plans are compared on the same simulated patients
  /// (common random numbers). 0: backends use `seed` alone.
  std::uint64_t shared_seed = 0;
};

/// A simulated post-treatment state.
struct Outcome {
  Plan plan;
  int sample_index = 0;
  Volume post_ct;      ///< post-treatment CT on the patient's lattice, HU
  LabelVolume viable;  ///< viable-tumor mask on the same lattice
  /// Soft viable-tumor fraction in [0, 1] on the same lattice, when the model has one (the
  /// mechanistic density, a generator's soft mask channel); `viable` thresholds it at 0.5. Partial
  /// kill shows here and not in the mask.
  std::optional<Volume> viable_fraction = std::nullopt;
};

/// Viable tumor volume of an outcome in millilitres (voxel count x voxel volume).
/// Residual viable tumor in mL: the integral of viable_fraction when present, else the mask volume.
double ViableVolumeMl(const Outcome& outcome);

/// kMismatch when the outcome's grids are not on the patient's CT lattice; kInvalidArgument when
/// its plan or sample index differ from the request's.
Status CheckOutcome(const Outcome& outcome, const SimulationRequest& request,
                    const PatientCase& patient);

}  // namespace mewm
