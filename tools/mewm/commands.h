// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Each subcommand registers its flags on the CLI11 app and returns the function that runs it. The
// functions return an exit code; they print errors themselves (file and problem named).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/dynamics/dynamics_model.h"
#include "mewm/run/backends.h"

namespace mewm::cli {

using Action = std::function<int()>;
using scenarios::BackendRegistry;

// Commands that parse scenarios or create models take the binary's one backend registry (built in
// main; it outlives every action).

Action RegisterInspect(CLI::App& app);
Action RegisterConvert(CLI::App& app);
Action RegisterImport(CLI::App& app);
Action RegisterRender(CLI::App& app);
Action RegisterBench(CLI::App& app, const BackendRegistry& backends);
Action RegisterCohort(CLI::App& app);
Action RegisterRun(CLI::App& app, const BackendRegistry& backends);
Action RegisterMerge(CLI::App& app);
Action RegisterTrain(CLI::App& app);
Action RegisterEval(CLI::App& app, const BackendRegistry& backends);
/// Adds `dynamics` under `train`; the action returns -1 when that subcommand was not chosen.
Action AddTrainDynamics(CLI::App& train);
/// `drug-average` under `train` (cmd_dynamics.cc), likewise.
Action AddTrainDrugAverage(CLI::App& train);
/// `train policy` and `eval policy` (cmd_policy.cc), likewise.
Action AddTrainPolicy(CLI::App& train);
Action AddEvalPolicy(CLI::App& eval);
/// `eval dynamics` and `bench dynamics`, likewise.
Action AddEvalDynamics(CLI::App& eval, const BackendRegistry& backends);
Action AddBenchDynamics(CLI::App& bench, const BackendRegistry& backends);
Action RegisterServe(CLI::App& app, const BackendRegistry& backends);
Action RegisterSubmit(CLI::App& app);
Action RegisterWatch(CLI::App& app);
Action RegisterStatus(CLI::App& app);
Action RegisterCancel(CLI::App& app);
Action RegisterKeygen(CLI::App& app);
/// `mewm turing export | audit | score | simulate-readers | serve` (cmd_turing.cc).
Action RegisterTuring(CLI::App& app, const BackendRegistry& backends);
/// `turing serve` (cmd_turing_serve.cc): the reader-study web page.
Action AddTuringServe(CLI::App& turing);

/// A diffusion generator for `train survival` and `eval survival --generator` (cmd_dynamics.cc).
struct GeneratorOptions {
  std::string model;  ///< diffusion checkpoint; "" = score the true outcomes
  int steps = 10;
  double guidance = 1.0;
  std::uint64_t seed = 1;
  bool anchor_level = false;  ///< DiffusionBackendOptions::anchor_level
};
/// Registers --generator, --generator-steps, --generator-guidance, --generator-seed and
/// --generator-anchor-level.
void AddGeneratorOptions(CLI::App* sub, GeneratorOptions* options);
/// The generator named by the options, or nullptr when none is.
Expected<std::unique_ptr<dynamics::DynamicsModel>> LoadGenerator(const GeneratorOptions& options);

/// `mewm bench stream` (cmd_bench_stream.cc): server path vs raw PUB/SUB.
int RunStreamBench(int events, const std::string& json_path);

/// Prints "mewm: error: <message>" to stderr and returns 1.
int Fail(const Error& error);

/// kInvalidArgument when the output `out` of option `flag` is one of the command's inputs or lies
/// inside one (a cohort folder, an answer key, a folder of answers): writing it would replace what
/// the command reads and did not create (`train survival --out COHORT/manifest.json` destroyed
/// its training cohort). Empty outputs and inputs are skipped.
Status RefuseOutputInInputs(const std::string& flag, const std::string& out,
                            const std::vector<std::string>& inputs);

/// Registers `--force` on `sub`: let the command replace output files that exist.
void AddForceFlag(CLI::App* sub, bool* force);

/// The checks every output file of a command passes before the command does any work, so a long
/// run never fails at its end and a path typed by mistake loses nothing. For output `out` of
/// option `flag` (skipped when empty): RefuseOutputInInputs; kInvalidArgument when it exists and
/// `force` is false (commands replace a file only when asked); CheckWritable.
Status CheckOutput(const std::string& flag, const std::string& out, bool force,
                   const std::vector<std::string>& inputs = {});
/// CheckOutput for each (flag, path) of a command that writes several files, after refusing two
/// of them naming one file (the second written would replace the first).
Status CheckOutputs(const std::vector<std::pair<std::string, std::string>>& outputs, bool force,
                    const std::vector<std::string>& inputs = {});

/// A synthetic cohort's generator seed and a description of it (size, counterfactual plans, world
/// version) from its manifest.json and truth/truth.json (the seed), for model provenance; ("", dir)
/// when there is none.
std::pair<std::string, std::string> CohortProvenance(const std::string& dir);

/// A progress callback (done, total) that shows a bar for each pass over a cohort.
std::function<void(int, int)> PatientProgress(const std::string& label, bool quiet);

}  // namespace mewm::cli
