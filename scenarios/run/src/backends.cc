// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/run/backends.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "mewm/core/text.h"
#include "mewm/dynamics/calibration.h"
#include "mewm/dynamics/mechanistic.h"
#include "mewm/policy/guideline.h"
#include "mewm/policy/vlm.h"
#include "mewm/run/scenario.h"
#include "mewm/survival/cox_survival.h"

namespace mewm::scenarios {
namespace {

/// An integer key within [lo, hi] into an int field.
void ReadInt(BackendTableReader& r, const std::string& key, std::int64_t lo, std::int64_t hi,
             int* out) {
  std::int64_t v = *out;
  if (r.Take(r.table().GetInt(key, *out, lo, hi), &v)) *out = int(v);
}

Backend<policy::PolicyModel> GuidelineBackend() {
  return {"guideline",
          {"max_drugs", "max_embolics"},
          [](BackendTableReader& r, ScenarioSpec& s) {
            ReadInt(r, "max_drugs", 2, 64, &s.guideline.max_drugs);
            ReadInt(r, "max_embolics", 1, 64, &s.guideline.max_embolics);
          },
          [](const ScenarioSpec& s) -> Expected<std::unique_ptr<policy::PolicyModel>> {
            MEWM_TRY(auto policy, policy::GuidelinePolicy::Create(s.actions, s.guideline));
            return std::unique_ptr<policy::PolicyModel>(std::move(policy));
          }};
}

Backend<policy::PolicyModel> VlmBackend(policy::VlmFactory factory) {
  return {
      "vlm",
      {"checkpoint", "top_k", "device", "threads", "contraindications", "inputs"},
      [](BackendTableReader& r, ScenarioSpec& s) {
        const ConfigTable& t = r.table();
        r.Path("checkpoint", &s.vlm.checkpoint);
        ReadInt(r, "top_k", 1, 64, &s.vlm.top_k);
        ReadInt(r, "threads", 0, 256, &s.vlm.threads);
        r.Take(t.GetString("device", std::string()), &s.vlm.device);
        r.Take(t.GetBool("contraindications", true), &s.vlm.contraindications);
        r.Take(t.GetEnum("inputs", {"both", "image", "note"}, std::string("both")), &s.vlm.inputs);
      },
      [factory = std::move(factory)](
          const ScenarioSpec& s) -> Expected<std::unique_ptr<policy::PolicyModel>> {
        if (!factory) {
          return MakeError(ErrorCode::kUnsupported,
                           "this binary was built without the vlm policy backend (link "
                           "mewm::policy_vlm and pass policy::VlmFactoryFunction() to "
                           "BackendRegistry::Builtin)");
        }
        policy::VlmOptions options = s.vlm;
        if (options.device.empty()) options.device = s.device;
        options.grammar.drug_horizon = s.planner.drug_horizon;
        options.grammar.embolic_horizon = s.planner.embolic_horizon;
        options.grammar.protocol = s.protocol;
        return factory(options, s.actions);
      }};
}

Backend<policy::PolicyModel> OpenAiBackend() {
  return {"openai",
          {"endpoint", "model", "api_key_env", "top_k", "images", "response_format", "temperature",
           "timeout_s", "max_retries", "max_repairs", "deadline_s", "max_backoff_s",
           "max_answer_bytes", "contraindications"},
          [](BackendTableReader& r, ScenarioSpec& s) {
            const ConfigTable& t = r.table();
            policy::OpenAiOptions& o = s.openai;
            r.Take(t.GetString("endpoint"), &o.endpoint);
            r.Take(t.GetString("model"), &o.model);
            r.Take(t.GetString("api_key_env", o.api_key_env), &o.api_key_env);
            ReadInt(r, "top_k", 1, 20, &o.top_k);
            r.Take(t.GetBool("images", o.images), &o.images);
            r.Take(t.GetEnum("response_format", {"json_object", "json_schema", "none"},
                             o.response_format),
                   &o.response_format);
            r.Take(t.GetDouble("temperature", o.temperature, 0.0, 2.0), &o.temperature);
            r.Take(t.GetDouble("timeout_s", o.timeout_s, 0.01, 3600.0), &o.timeout_s);
            ReadInt(r, "max_retries", 0, 20, &o.max_retries);
            ReadInt(r, "max_repairs", 0, 10, &o.max_repairs);
            r.Take(t.GetDouble("deadline_s", o.deadline_s, 0.01, 86400.0), &o.deadline_s);
            r.Take(t.GetDouble("max_backoff_s", o.max_backoff_s, 0.0, 600.0), &o.max_backoff_s);
            std::int64_t bytes = o.max_answer_bytes;
            if (r.Take(t.GetInt("max_answer_bytes", bytes, 1024, std::int64_t(1) << 30), &bytes)) {
              o.max_answer_bytes = bytes;
            }
            r.Take(t.GetBool("contraindications", o.contraindications), &o.contraindications);
            if (!o.endpoint.empty() && !o.model.empty()) {
              if (auto valid = o.Validate(); !valid) r.Problem(valid.error().message);
            }
          },
          [](const ScenarioSpec& s) -> Expected<std::unique_ptr<policy::PolicyModel>> {
            policy::OpenAiOptions options = s.openai;
            options.grammar.drug_horizon = s.planner.drug_horizon;
            options.grammar.embolic_horizon = s.planner.embolic_horizon;
            options.grammar.protocol = s.protocol;
            return policy::CreateOpenAiPolicy(options, s.actions);
          }};
}

Backend<dynamics::DynamicsModel> MechanisticBackend() {
  return {"mechanistic",
          {"calibration", "uncertainty", "sample_sigma", "grid_mm", "follow_up_days"},
          [](BackendTableReader& r, ScenarioSpec& s) {
            const ConfigTable& t = r.table();
            r.Path("calibration", &s.calibration);
            dynamics::MechanisticConfig& m = s.mechanistic;
            std::string uncertainty;
            if (r.Take(t.GetEnum("uncertainty", {"calibrated", "fixed"}, std::string("calibrated")),
                       &uncertainty)) {
              s.calibrated_uncertainty = uncertainty == "calibrated";
            }
            r.Take(t.GetDouble("sample_sigma", m.sample_sigma, 0.0, 2.0), &m.sample_sigma);
            r.Take(t.GetDouble("grid_mm", m.grid_mm, 0.5, 8.0), &m.grid_mm);
            r.Take(t.GetDouble("follow_up_days", m.follow_up_days, 1.0, 365.0), &m.follow_up_days);
          },
          [](const ScenarioSpec& s) -> Expected<std::unique_ptr<dynamics::DynamicsModel>> {
            auto loaded = dynamics::BiologyRegression::Load(s.calibration);
            if (!loaded) return loaded.error().WithContext("dynamics.calibration");
            const dynamics::BiologyRegression& calibration = *loaded;
            dynamics::MechanisticConfig config = s.mechanistic;
            if (s.calibrated_uncertainty) {
              // Samples follow the calibration's predictive spread instead of a fixed sigma.
              for (std::size_t k = 0; k < config.sample_log_sd.size(); ++k) {
                config.sample_log_sd[k] = std::min(4.0, calibration.residual_sd()[Eigen::Index(k)]);
              }
            }
            MEWM_TRY(auto model,
                     dynamics::MechanisticDynamics::Create(config, calibration.AsSource()));
            return std::unique_ptr<dynamics::DynamicsModel>(std::move(model));
          }};
}

Backend<dynamics::DynamicsModel> DiffusionBackend(dynamics::DiffusionFactory factory) {
  return {"diffusion",
          {"model", "config", "steps", "eta", "guidance", "blend_margin_mm", "anchor_level"},
          [](BackendTableReader& r, ScenarioSpec& s) {
            // The learned backend: a checkpoint, its preset and the DDIM sampler.
            const ConfigTable& t = r.table();
            r.Path("model", &s.diffusion.model_path);
            r.Take(t.GetEnum("config", {"cpu", "mewm"}, std::string("cpu")), &s.diffusion.config);
            dynamics::SamplerConfig& sampler = s.diffusion.sampler;
            ReadInt(r, "steps", 1, 1000, &sampler.steps);
            r.Take(t.GetDouble("eta", sampler.eta, 0.0, 1.0), &sampler.eta);
            r.Take(t.GetDouble("guidance", sampler.guidance, 0.0, dynamics::kMaxGuidance),
                   &sampler.guidance);
            r.Take(t.GetDouble("blend_margin_mm", s.diffusion.blend_margin_mm, 0.0, 50.0),
                   &s.diffusion.blend_margin_mm);
            r.Take(t.GetBool("anchor_level", false), &s.diffusion.anchor_level);
          },
          [factory = std::move(factory)](
              const ScenarioSpec& s) -> Expected<std::unique_ptr<dynamics::DynamicsModel>> {
            if (!factory) {
              return MakeError(ErrorCode::kUnsupported,
                               "this binary was built without the diffusion dynamics backend "
                               "(link mewm::dynamics_diffusion and pass "
                               "dynamics::DiffusionFactoryFunction() to BackendRegistry::Builtin)");
            }
            dynamics::DiffusionBackendOptions options = s.diffusion;
            options.actions = s.actions;
            options.device = s.device;
            // MeWM's loop as released samples with 200 ancestral steps; `reference` reproduces it.
            if (s.planner.search == SearchMode::kReference) {
              options.sampler = dynamics::ReferenceSampler();
            }
            return factory(options);
          }};
}

Backend<survival::SurvivalModel> CoxBackend() {
  return {"cox",
          {"model"},
          [](BackendTableReader& r, ScenarioSpec& s) { r.Path("model", &s.survival_model); },
          [](const ScenarioSpec& s) -> Expected<std::unique_ptr<survival::SurvivalModel>> {
            auto model = survival::CoxSurvival::Load(s.survival_model);
            if (!model) return model.error().WithContext("survival.model");
            return std::unique_ptr<survival::SurvivalModel>(std::move(*model));
          }};
}

template <typename Model>
Status AddTo(std::vector<Backend<Model>>& list, Backend<Model> backend, BackendFamily family) {
  for (const Backend<Model>& b : list) {
    if (b.name == backend.name) {
      return MakeError(ErrorCode::kInvalidArgument, std::string(FamilyName(family)) + " backend '" +
                                                        backend.name + "' is registered twice");
    }
  }
  list.push_back(std::move(backend));
  return {};
}

template <typename Model>
const Backend<Model>* Find(const std::vector<Backend<Model>>& list, const std::string& name) {
  for (const Backend<Model>& b : list) {
    if (b.name == name) return &b;
  }
  return nullptr;
}

template <typename Model>
std::vector<std::string> NamesOf(const std::vector<Backend<Model>>& list) {
  std::vector<std::string> names;
  for (const Backend<Model>& b : list) names.push_back(b.name);
  return names;
}

template <typename Model>
Expected<std::unique_ptr<Model>> Create(const std::vector<Backend<Model>>& list,
                                        BackendFamily family, const std::string& name,
                                        const ScenarioSpec& spec) {
  const Backend<Model>* backend = Find(list, name);
  if (backend == nullptr) {
    return MakeError(ErrorCode::kInvalidArgument, std::string(FamilyName(family)) +
                                                      ".backend = \"" + name +
                                                      "\" is not one of this binary's backends (" +
                                                      Join(NamesOf(list), ", ") + ")");
  }
  return backend->create(spec);
}

}  // namespace

const char* FamilyName(BackendFamily family) {
  switch (family) {
    case BackendFamily::kPolicy:
      return "policy";
    case BackendFamily::kDynamics:
      return "dynamics";
    case BackendFamily::kSurvival:
      return "survival";
  }
  return "?";
}

void BackendRegistry::SetSyntheticCohorts(SyntheticCohortSource source) {
  synthetic_cohorts_ = std::move(source);
}

Status BackendRegistry::PrepareSyntheticCohort(const CohortSpec& cohort, const ActionBase& actions,
                                               const std::string& dir,
                                               const std::function<void(int, int)>& progress,
                                               const std::function<bool()>& cancelled) const {
  if (!synthetic_cohorts_) {
    return MakeError(ErrorCode::kUnsupported,
                     "this binary has no synthetic world, so it cannot prepare the synthetic "
                     "cohort in '" +
                         dir +
                         "' (its main plugs one in with "
                         "BackendRegistry::SetSyntheticCohorts); use a manifest cohort");
  }
  return synthetic_cohorts_(cohort, actions, dir, progress, cancelled);
}

BackendRegistry BackendRegistry::Builtin(dynamics::DiffusionFactory diffusion,
                                         policy::VlmFactory vlm) {
  BackendRegistry registry;
  registry.policies_ = {GuidelineBackend(), VlmBackend(std::move(vlm)), OpenAiBackend()};
  registry.dynamics_ = {MechanisticBackend(), DiffusionBackend(std::move(diffusion))};
  registry.survival_ = {CoxBackend()};
  return registry;
}

Status BackendRegistry::Add(Backend<policy::PolicyModel> backend) {
  return AddTo(policies_, std::move(backend), BackendFamily::kPolicy);
}
Status BackendRegistry::Add(Backend<dynamics::DynamicsModel> backend) {
  return AddTo(dynamics_, std::move(backend), BackendFamily::kDynamics);
}
Status BackendRegistry::Add(Backend<survival::SurvivalModel> backend) {
  return AddTo(survival_, std::move(backend), BackendFamily::kSurvival);
}

std::vector<std::string> BackendRegistry::Names(BackendFamily family) const {
  switch (family) {
    case BackendFamily::kPolicy:
      return NamesOf(policies_);
    case BackendFamily::kDynamics:
      return NamesOf(dynamics_);
    case BackendFamily::kSurvival:
      return NamesOf(survival_);
  }
  return {};
}

void BackendRegistry::Read(BackendFamily family, const std::string& name,
                           BackendTableReader& reader, ScenarioSpec& spec) const {
  const auto read = [&](const auto& list) {
    if (const auto* backend = Find(list, name)) {
      backend->read(reader, spec);
    } else {
      reader.Problem(reader.table().WhereKey("backend") + ": " + FamilyName(family) +
                     ".backend = \"" + name + "\" is not one of " + Join(NamesOf(list), ", "));
    }
  };
  switch (family) {
    case BackendFamily::kPolicy:
      return read(policies_);
    case BackendFamily::kDynamics:
      return read(dynamics_);
    case BackendFamily::kSurvival:
      return read(survival_);
  }
}

Expected<std::unique_ptr<policy::PolicyModel>> BackendRegistry::CreatePolicy(
    const ScenarioSpec& spec) const {
  return Create(policies_, BackendFamily::kPolicy, spec.policy_backend, spec);
}

Expected<std::unique_ptr<dynamics::DynamicsModel>> BackendRegistry::CreateDynamics(
    const ScenarioSpec& spec) const {
  return Create(dynamics_, BackendFamily::kDynamics, spec.dynamics_backend, spec);
}

Expected<std::unique_ptr<survival::SurvivalModel>> BackendRegistry::CreateSurvival(
    const ScenarioSpec& spec) const {
  return Create(survival_, BackendFamily::kSurvival, spec.survival_backend, spec);
}

}  // namespace mewm::scenarios
