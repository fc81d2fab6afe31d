// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include <iostream>

#include "commands.h"
#include "mewm/world/cohort.h"
#include "progress.h"

namespace mewm::cli {

Action RegisterCohort(CLI::App& app) {
  struct Options {
    int n = 0;
    std::uint64_t seed = 1;
    std::string out, dir, counterfactual_design = "random";
    int plans_per_patient = 0;
    bool force = false, no_nifti = false, quiet = false, strict = false;
    double spacing_mm = 1.0;
    int hu_patients = 20;
    int simulate = 0;
    std::vector<std::uint64_t> stats_seeds = {1, 2, 3};
    int visibility_plans = 8;
  };
  auto o = std::make_shared<Options>();
  app.require_subcommand(1);
  CLI::App* generate =
      app.add_subcommand("generate", "Generate a seeded synthetic HCC-TACE cohort");
  generate->add_option("--n", o->n, "Number of patients (>= 1)")->required();
  generate->add_option("--seed", o->seed, "Cohort seed; the same seed gives identical files")
      ->capture_default_str();
  generate->add_option("--out", o->out, "Output folder (must be empty unless --force)")->required();
  generate
      ->add_option("--plans-per-patient", o->plans_per_patient,
                   "Extra counterfactual plans simulated per patient (for training)")
      ->capture_default_str();
  generate
      ->add_option("--counterfactual-design", o->counterfactual_design,
                   "How the counterfactual plans are drawn: random; embolic-contrast (half of "
                   "them keep the administered plan's drugs with other embolics); or "
                   "item-contrast (a third keep the drugs, a third keep the embolics); or "
                   "drug-contrast (all keep the embolics, with other drugs)")
      ->check(CLI::IsMember({"random", "embolic-contrast", "item-contrast", "drug-contrast"}))
      ->capture_default_str();
  generate->add_option("--spacing", o->spacing_mm, "CT voxel size in mm")->capture_default_str();
  generate->add_flag("--force", o->force, "Replace the cohort in a non-empty output folder");
  generate->add_flag("--no-nifti", o->no_nifti, "Write .vdb files only");
  generate->add_flag("--quiet", o->quiet, "No progress bar");

  CLI::App* stats = app.add_subcommand("stats", "Print the world-validity figures of a cohort");
  stats->add_option("DIR", o->dir, "Cohort folder");
  stats->add_option("--simulate", o->simulate,
                    "Instead of a folder: simulate this many patients in memory (no images)");
  stats
      ->add_option("--seed", o->stats_seeds,
                   "Seeds for --simulate (repeat or comma-separate; each is a separate world "
                   "sample, judged on its own)")
      ->delimiter(',')
      ->capture_default_str();
  stats
      ->add_option("--visibility-plans", o->visibility_plans,
                   "With --simulate: plans per patient rendered and read back by the image-only "
                   "residual estimate (0 = skip)")
      ->capture_default_str();
  stats->add_option("--hu-patients", o->hu_patients, "Patients whose images are measured for HU")
      ->capture_default_str();
  stats->add_flag("--strict", o->strict, "Exit 1 when a validity check fails");

  return [o, generate]() -> int {
    if (generate->parsed()) {
      scenarios::CohortOptions options;
      options.n = o->n;
      options.seed = o->seed;
      options.out_dir = o->out;
      options.force = o->force;
      options.write_nifti = !o->no_nifti;
      options.world.spacing_mm = o->spacing_mm;
      options.world.counterfactual_plans = o->plans_per_patient;
      auto design = scenarios::ParseCounterfactualDesign(o->counterfactual_design);
      if (!design) return Fail(design.error());
      options.world.counterfactual_design = *design;
      ProgressBar bar("cohort", o->n, o->quiet);
      options.progress = [&bar](int done, int) { bar.Update(done); };
      Status generated = scenarios::GenerateCohort(options, ActionBase::Default());
      bar.Finish();
      if (!generated) return Fail(generated.error());
      std::cout << "wrote " << o->n << " patients to " << o->out << "\n";
      return 0;
    }
    if (o->dir.empty() == (o->simulate == 0)) {
      return Fail(Error{ErrorCode::kInvalidArgument, "cohort stats takes a DIR or --simulate N"});
    }
    if (!o->dir.empty()) {
      auto computed = scenarios::ComputeCohortStats(o->dir, o->hu_patients);
      if (!computed) return Fail(computed.error().WithContext("cohort stats"));
      std::cout << computed->Format();
      return o->strict && !computed->Failures().empty() ? 1 : 0;
    }
    // A world is judged on several seeds: one sample can pass or fail a check by chance.
    int failed = 0;
    for (const std::uint64_t seed : o->stats_seeds) {
      auto computed = scenarios::SimulateWorldStats(scenarios::WorldConfig{}, ActionBase::Default(),
                                                    seed, o->simulate, o->visibility_plans);
      if (!computed) return Fail(computed.error().WithContext("cohort stats"));
      std::cout << computed->Format();
      const auto failures = computed->Failures();
      failed += failures.empty() ? 0 : 1;
      for (const std::string& f : failures) std::cout << "  seed " << seed << ": " << f << "\n";
    }
    std::cout << "passed on " << o->stats_seeds.size() - std::size_t(failed) << " of "
              << o->stats_seeds.size() << " seeds\n";
    return o->strict && failed > 0 ? 1 : 0;
  };
}

}  // namespace mewm::cli
