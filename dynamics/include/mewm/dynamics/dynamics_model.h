// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The dynamics stage: simulate the post-treatment CT and viable tumor for candidate plans.
//   input:  PatientCase, a batch of SimulationRequests (plan, sample index, seed)
//   output: one Outcome per request, in request order
// Backends: `mechanistic` (reaction-diffusion; the synthetic world's truth) and `diffusion`
// (learned 3D latent diffusion, in the mewm::dynamics_diffusion library).
//
// Determinism contract: an outcome depends only on (patient, plan, seed), never on which other
// requests share its batch, so the planner may memoise and batch freely.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/tace/action_base.h"
#include "mewm/tace/outcome.h"
#include "mewm/tace/patient.h"

namespace mewm::dynamics {

using mewm::Outcome;
using mewm::SimulationRequest;

/// A dynamics backend. Resource type: not copyable; created by its backend's factory.
class DynamicsModel {
 public:
  virtual ~DynamicsModel() = default;
  DynamicsModel() = default;
  DynamicsModel(const DynamicsModel&) = delete;
  DynamicsModel& operator=(const DynamicsModel&) = delete;

  /// Simulates every request for one patient, as one batch where the backend can.
  virtual Expected<std::vector<Outcome>> Simulate(
      const PatientCase& patient, const std::vector<SimulationRequest>& requests) = 0;
  /// Units of backend work done so far (mechanistic: PDE solves; diffusion: denoiser forwards),
  /// so planners can report model evaluations next to simulations.
  virtual std::int64_t evaluations() const = 0;
  /// Backend name, e.g. "mechanistic".
  virtual std::string name() const = 0;
  /// How much image context around the tumor's bounding box the backend reads, in mm. Planners
  /// hand it the patient cut to at least this neighbourhood (outcomes then copy less).
  virtual double context_margin_mm() const { return 0.0; }
  /// Polled during Simulate, possibly from several threads at once (it must be thread-safe);
  /// once it returns true, a backend that honours it stops the batch and Simulate returns
  /// kCancelled. Empty: never cancelled. The default ignores it.
  // NOLINTNEXTLINE(performance-unnecessary-value-param): the overriders keep their copy
  virtual void set_cancelled(std::function<bool()> cancelled) { (void)cancelled; }
};

}  // namespace mewm::dynamics
