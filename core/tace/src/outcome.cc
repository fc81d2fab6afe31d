// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/tace/outcome.h"

#include <algorithm>

namespace mewm {

double ViableVolumeMl(const Outcome& outcome) {
  const Eigen::Vector3d& s = outcome.viable.geometry().spacing;
  if (outcome.viable_fraction) {
    double sum = 0.0;
    for (auto it = outcome.viable_fraction->grid().cbeginValueOn(); it; ++it) {
      sum += double(std::clamp(*it, 0.0f, 1.0f)) * double(it.getVoxelCount());
    }
    return sum * s.prod() / 1000.0;
  }
  return double(CountLabel(outcome.viable)) * s.prod() / 1000.0;
}

Status CheckOutcome(const Outcome& outcome, const SimulationRequest& request,
                    const PatientCase& patient) {
  const std::string what = "outcome " + request.plan.ToString() + " #" +
                           std::to_string(request.sample_index) + " for patient '" + patient.id +
                           "'";
  if (outcome.plan != request.plan || outcome.sample_index != request.sample_index) {
    return MakeError(ErrorCode::kInvalidArgument, what + " answers another request (" +
                                                      outcome.plan.ToString() + " #" +
                                                      std::to_string(outcome.sample_index) + ")");
  }
  const auto on_lattice = [&](const auto& volume) {
    return volume.extent() == patient.ct.extent() &&
           volume.geometry().ApproxEquals(patient.ct.geometry(), 1e-4);
  };
  if (!on_lattice(outcome.post_ct) || !on_lattice(outcome.viable) ||
      (outcome.viable_fraction && !on_lattice(*outcome.viable_fraction))) {
    return MakeError(ErrorCode::kMismatch, what + " is not on the patient's CT lattice");
  }
  return {};
}

}  // namespace mewm
