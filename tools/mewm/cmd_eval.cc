// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm eval plans RUN_DIR... [--against OTHER_RUN...]` and `mewm eval survival`: the numbers the
// project reports.
#include <iostream>

#include "commands.h"
#include "mewm/core/file_util.h"
#include "mewm/core/render.h"
#include "mewm/eval/evaluation.h"

namespace mewm::cli {

Action RegisterEval(CLI::App& app, const BackendRegistry& backends) {
  struct Options {
    std::vector<std::string> run_dirs, against;
    std::string json_out, model, cohort, train, plot;
    bool json = false, force = false;
    GeneratorOptions generator;
  };
  auto o = std::make_shared<Options>();
  app.require_subcommand(1);
  CLI::App* plans = app.add_subcommand(
      "plans", "Compare a run's chosen plans with the synthetic truth, next to baselines");
  plans
      ->add_option("RUN_DIR", o->run_dirs,
                   "Results folder of mewm run (several only with --against)")
      ->required();
  plans->add_option("--against", o->against,
                    "Instead: compare RUN_DIR (A) with this run (B) of the same cohort, patient "
                    "by patient, with bootstrap intervals of the differences A - B. With several "
                    "RUN_DIRs, one run each, in order: the pairs' patients pooled");
  CLI::App* surv =
      app.add_subcommand("survival", "C-index, Brier score and AUC of a survival model");
  surv->add_option("--model", o->model, "Survival model file (cox)")->required();
  surv->add_option("--cohort", o->cohort, "Held-out cohort folder")->required();
  surv->add_option("--train-cohort", o->train,
                   "Training cohort (censoring distribution for Uno's C and Brier)")
      ->required();
  surv->add_option("--plot", o->plot,
                   "Also write the observed Kaplan-Meier curve against the predicted curves "
                   "as this PNG");
  AddGeneratorOptions(surv, &o->generator);
  Action dynamics = AddEvalDynamics(app, backends);
  Action policy_vlm = AddEvalPolicy(app);
  for (CLI::App* sub : {plans, surv}) {
    sub->add_flag("--json", o->json, "Print the numbers as JSON on stdout instead of the table");
    sub->add_option("--json-out", o->json_out, "Also write the numbers as JSON to this file");
    AddForceFlag(sub, &o->force);
  }
  return [o, plans, dynamics, policy_vlm]() -> int {
    if (const int rc = dynamics(); rc >= 0) return rc;
    if (const int rc = policy_vlm(); rc >= 0) return rc;
    // The outputs are checked before anything is read. A report may go into a run's folder
    // (the demo keeps it there), not into a cohort.
    if (auto free = CheckOutputs({{"--json-out", o->json_out}, {"--plot", o->plot}}, o->force,
                                 {o->model, o->cohort, o->train});
        !free) {
      return Fail(free.error());
    }
    std::string table, json;
    if (plans->parsed() && (o->run_dirs.size() > 1 || !o->against.empty())) {
      if (o->run_dirs.size() != o->against.size()) {
        return Fail(Error{ErrorCode::kInvalidArgument,
                          std::to_string(o->run_dirs.size()) + " runs to compare against " +
                              std::to_string(o->against.size()) +
                              ": give --against one run for each RUN_DIR"});
      }
      std::vector<std::pair<std::string, std::string>> runs;
      for (std::size_t k = 0; k < o->run_dirs.size(); ++k) {
        runs.emplace_back(o->run_dirs[k], o->against[k]);
      }
      auto comparison = scenarios::ComparePlanRuns(runs);
      if (!comparison) return Fail(comparison.error());
      table = comparison->FormatTable();
      json = comparison->ToJson();
    } else if (plans->parsed()) {
      auto eval = scenarios::EvaluatePlans(o->run_dirs.front());
      if (!eval) return Fail(eval.error());
      table = eval->FormatTable();
      json = eval->ToJson();
    } else {
      auto model = survival::CoxSurvival::Load(o->model);
      if (!model) return Fail(model.error());
      auto generator = LoadGenerator(o->generator);
      if (!generator) return Fail(generator.error());
      auto eval = scenarios::EvaluateSurvival(**model, o->cohort, o->train, {},
                                              {generator->get(), o->generator.seed});
      if (!eval) return Fail(eval.error());
      table = eval->FormatTable();
      json = eval->ToJson();
      if (!o->plot.empty()) {
        auto image = eval->Plot();
        if (!image) return Fail(image.error());
        if (auto written = WritePng(o->plot, *image); !written) return Fail(written.error());
        table += "wrote " + o->plot + "\n";
      }
    }
    std::cout << (o->json ? json + "\n" : table);
    if (!o->json_out.empty()) {
      if (auto written = WriteFileAtomic(o->json_out, json + "\n"); !written) {
        return Fail(written.error());
      }
    }
    return 0;
  };
}

}  // namespace mewm::cli
