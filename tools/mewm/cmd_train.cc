// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm train survival|mechanistic`: fit the shipped non-deep models on a training cohort
// (`mewm train dynamics` and `drug-average` live in cmd_dynamics.cc, `mewm train policy` in
// cmd_policy.cc).
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "mewm/core/file_util.h"
#include "mewm/core/text.h"
#include "mewm/eval/evaluation.h"
#include "progress.h"

namespace mewm::cli {

Action RegisterTrain(CLI::App& app) {
  struct Options {
    std::string cohort, out, backend = "cox", ties = "efron", eval_cohort;
    double ridge = 1.0;
    bool quiet = false, force = false;
    std::string command;
    GeneratorOptions generator;
  };
  auto o = std::make_shared<Options>();
  app.require_subcommand(1);
  CLI::App* surv = app.add_subcommand("survival", "Fit a survival model on a training cohort");
  surv->add_option("--backend", o->backend, "Survival backend (cox)")
      ->check(CLI::IsMember({"cox"}))
      ->capture_default_str();
  surv->add_option("--ties", o->ties, "Cox tie handling: efron or breslow")
      ->check(CLI::IsMember({"efron", "breslow"}))
      ->capture_default_str();
  AddGeneratorOptions(surv, &o->generator);
  CLI::App* mech = app.add_subcommand(
      "mechanistic", "Fit the mechanistic planner's biology regression on a training cohort");
  mech->add_option("--ridge", o->ridge, "Ridge penalty on standardised features")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  Action dynamics = AddTrainDynamics(app);
  Action drug_average = AddTrainDrugAverage(app);
  Action policy_vlm = AddTrainPolicy(app);
  for (CLI::App* sub : {surv, mech}) {
    sub->add_option("--cohort", o->cohort, "Training cohort folder (mewm cohort generate)")
        ->required();
    sub->add_option("--out", o->out, "Model file to write (JSON)")->required();
    sub->add_option("--eval-cohort", o->eval_cohort,
                    "Held-out cohort: evaluate and store the numbers in the model file");
    sub->add_flag("--quiet", o->quiet, "No progress bar");
    AddForceFlag(sub, &o->force);
  }
  return [o, surv, dynamics, drug_average, policy_vlm]() -> int {
    if (const int rc = dynamics(); rc >= 0) return rc;
    if (const int rc = drug_average(); rc >= 0) return rc;
    if (const int rc = policy_vlm(); rc >= 0) return rc;
    if (auto free = CheckOutput("--out", o->out, o->force, {o->cohort, o->eval_cohort}); !free) {
      return Fail(free.error());
    }
    const std::string command =
        "mewm train " + std::string(surv->parsed() ? "survival" : "mechanistic") + " --cohort " +
        o->cohort + " --out " + o->out +
        (surv->parsed() ? " --backend " + o->backend + " --ties " + o->ties
                        : " --ridge " + std::to_string(o->ridge)) +
        (o->eval_cohort.empty() ? "" : " --eval-cohort " + o->eval_cohort) +
        (o->generator.model.empty()
             ? ""
             : " --generator " + o->generator.model + " --generator-steps " +
                   std::to_string(o->generator.steps) + " --generator-guidance " +
                   std::to_string(o->generator.guidance) + " --generator-seed " +
                   std::to_string(o->generator.seed) +
                   (o->generator.anchor_level ? " --generator-anchor-level" : ""));
    const auto [seed, data] = CohortProvenance(o->cohort);
    const auto progress = PatientProgress("reading patients", o->quiet);
    if (surv->parsed()) {
      auto generator = LoadGenerator(o->generator);
      if (!generator) return Fail(generator.error());
      const scenarios::OutcomeSource source{generator->get(), o->generator.seed};
      survival::ModelProvenance provenance{command, seed, data, "{}"};
      auto model = scenarios::TrainCoxSurvival(
          o->cohort, o->ties == "efron" ? survival::CoxTies::kEfron : survival::CoxTies::kBreslow,
          provenance, progress, source);
      if (!model) return Fail(model.error());
      std::cout << "fitted Cox model: " << (*model)->fit().iterations << " Newton steps, "
                << ((*model)->fit().converged ? "converged" : "NOT converged") << "\n";
      const auto& names = survival::CoxFeatureNames();
      const Eigen::VectorXd beta = (*model)->fit().Coefficients();
      for (std::size_t k = 0; k < names.size(); ++k) {
        std::printf("  %-22s %+.4f\n", names[k].c_str(), beta[Eigen::Index(k)]);
      }
      if (!o->eval_cohort.empty()) {
        auto eval =
            scenarios::EvaluateSurvival(**model, o->eval_cohort, o->cohort, progress, source);
        if (!eval) return Fail(eval.error());
        std::cout << eval->FormatTable();
        auto rebuilt =
            survival::CoxSurvival::Create((*model)->fit(), {command, seed, data, eval->ToJson()});
        if (!rebuilt) return Fail(rebuilt.error());
        *model = std::move(*rebuilt);
      }
      if (auto saved = (*model)->Save(o->out); !saved) return Fail(saved.error());
      std::cout << "wrote " << o->out << "\n";
      return 0;
    }
    auto fit = scenarios::TrainMechanisticCalibration(o->cohort, o->ridge, progress);
    if (!fit) return Fail(fit.error());
    fit->command = command;
    fit->seed = seed;
    fit->data = data;
    const auto& targets = dynamics::BiologyTargetNames();
    std::cout << "biology regression, training R^2 per target:\n";
    for (std::size_t t = 0; t < targets.size(); ++t) {
      std::printf("  %-32s R^2 %.3f  residual sd %.3f\n", targets[t].c_str(),
                  fit->r2()[Eigen::Index(t)], fit->residual_sd()[Eigen::Index(t)]);
    }
    if (auto saved = fit->Save(o->out); !saved) return Fail(saved.error());
    std::cout << "wrote " << o->out << "\n";
    return 0;
  };
}

}  // namespace mewm::cli
