// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The model backends a binary offers: for each of policy, dynamics and survival, the backend
// names, the scenario keys each accepts, how its table is validated and how its model is
// created. One BackendRegistry is built once (BackendRegistry::Builtin, by the binary's main) and
// passed down to the scenario parser, the runner, the server and the commands; nothing else
// dispatches on a backend's name. Adding a backend is one entry in backends.cc (or one Add call
// from the library that implements it).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mewm/core/config.h"
#include "mewm/core/expected.h"
#include "mewm/dynamics/diffusion.h"
#include "mewm/dynamics/dynamics_model.h"
#include "mewm/policy/policy_model.h"
#include "mewm/policy/vlm.h"
#include "mewm/survival/survival_model.h"
#include "mewm/tace/action_base.h"

namespace mewm::scenarios {

struct CohortSpec;
struct ScenarioSpec;

/// Prepares the synthetic cohort a scenario's cohort table describes in folder `dir`: reuses the
/// cohort there when it is that one (seed, n and spacing), else generates it. `progress` gets
/// (done, total) after each patient and may be empty; `cancelled` is polled and true stops it
/// with kCancelled. The synthetic world provides it (SyntheticWorldCohorts in mewm/world/cohort.h):
/// the run library does not link the world, so a synthetic cohort reaches a run through the
/// registry, like a backend, and a binary without the world runs manifest cohorts only.
using SyntheticCohortSource = std::function<Status(
    const CohortSpec& cohort, const ActionBase& actions, const std::string& dir,
    const std::function<void(int, int)>& progress, const std::function<bool()>& cancelled)>;

enum class BackendFamily { kPolicy, kDynamics, kSurvival };

/// "policy", "dynamics" or "survival": the scenario table of the family.
const char* FamilyName(BackendFamily family);

/// What a backend's table reader works with: its scenario table, the parser's list of problems
/// (every problem is reported, not only the first) and its input-path reader (files are confined
/// by the caller's check before they are looked at, then must be regular files).
class BackendTableReader {
 public:
  virtual ~BackendTableReader() = default;
  virtual const ConfigTable& table() const = 0;
  virtual void Problem(const std::string& message) = 0;
  /// Reads key `key` as an input file; false (with a problem recorded) when it is absent,
  /// refused or names no regular file.
  virtual bool Path(const std::string& key, std::string* out) = 0;

  /// Stores a value, or records its error as a problem.
  template <typename T>
  bool Take(Expected<T> value, T* out) {
    if (!value) {
      Problem(value.error().message);
      return false;
    }
    *out = std::move(*value);
    return true;
  }
};

/// One backend of the family whose models are `Model`.
template <typename Model>
struct Backend {
  std::string name;               ///< the value of `<family>.backend`
  std::vector<std::string> keys;  ///< the other keys its table accepts (documentation, errors)
  /// Validates the table's keys into the spec (its backend options); unknown keys are refused
  /// by the parser afterwards.
  std::function<void(BackendTableReader&, ScenarioSpec&)> read;
  /// The model for a parsed spec.
  std::function<Expected<std::unique_ptr<Model>>(const ScenarioSpec&)> create;
};

class BackendRegistry {
 public:
  /// The shipped backends: policy guideline and vlm; dynamics mechanistic and diffusion; survival
  /// cox. The diffusion and vlm backends need libtorch: `diffusion` and `vlm` create their models
  /// (main passes dynamics::DiffusionFactoryFunction from mewm::dynamics_diffusion and
  /// policy::VlmFactoryFunction from mewm::policy_vlm). Without them, such scenarios still parse,
  /// and creating the model is kUnsupported.
  static BackendRegistry Builtin(dynamics::DiffusionFactory diffusion = {},
                                 policy::VlmFactory vlm = {});

  /// Adds a backend; kInvalidArgument when its family already has one of that name.
  Status Add(Backend<policy::PolicyModel> backend);
  Status Add(Backend<dynamics::DynamicsModel> backend);
  Status Add(Backend<survival::SurvivalModel> backend);

  /// Plugs in the synthetic cohort source (replacing any earlier one).
  void SetSyntheticCohorts(SyntheticCohortSource source);
  /// Whether a synthetic cohort source is plugged in.
  bool HasSyntheticCohorts() const { return static_cast<bool>(synthetic_cohorts_); }
  /// Prepares a synthetic cohort through the plugged-in source; kUnsupported when there is none.
  Status PrepareSyntheticCohort(const CohortSpec& cohort, const ActionBase& actions,
                                const std::string& dir,
                                const std::function<void(int, int)>& progress,
                                const std::function<bool()>& cancelled) const;

  /// The backend names of a family, in the order they were added.
  std::vector<std::string> Names(BackendFamily family) const;

  /// Reads the table of `family` for backend `name` into `spec` (every problem to `reader`).
  /// An unknown name is a problem naming the known ones.
  void Read(BackendFamily family, const std::string& name, BackendTableReader& reader,
            ScenarioSpec& spec) const;

  /// The models of a parsed spec, by its policy_backend, dynamics_backend and survival_backend.
  Expected<std::unique_ptr<policy::PolicyModel>> CreatePolicy(const ScenarioSpec& spec) const;
  Expected<std::unique_ptr<dynamics::DynamicsModel>> CreateDynamics(const ScenarioSpec& spec) const;
  Expected<std::unique_ptr<survival::SurvivalModel>> CreateSurvival(const ScenarioSpec& spec) const;

 private:
  std::vector<Backend<policy::PolicyModel>> policies_;
  std::vector<Backend<dynamics::DynamicsModel>> dynamics_;
  std::vector<Backend<survival::SurvivalModel>> survival_;
  SyntheticCohortSource synthetic_cohorts_;
};

}  // namespace mewm::scenarios
