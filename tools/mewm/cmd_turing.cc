// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm turing export | audit | score | simulate-readers | serve`: the Turing-test reader study
// (docs/TURING.md).
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "mewm/core/crop.h"
#include "mewm/core/file_util.h"
#include "mewm/core/nifti_io.h"
#include "mewm/dynamics/diffusion_backend.h"
#include "mewm/eval/turing.h"
#include "mewm/run/runner.h"
#include "mewm/run/scenario.h"
#include "progress.h"

namespace mewm::cli {
namespace {

Action AddExport(CLI::App& turing, const BackendRegistry& backends) {
  struct Options {
    std::string cohort, backend = "mechanistic", model, out, key, design = "single";
    std::string calibration = "models/mechanistic_calibration.json";
    std::uint64_t seed = 1;
    int n = 40, steps = 10;
    double guidance = 1.0, crop_mm = 96.0;
    bool quiet = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = turing.add_subcommand(
      "export", "Write blinded real-vs-synthetic post-treatment CT cases and a separate key");
  sub->add_option("--cohort", o->cohort,
                  "Cohort with follow-up: a synthetic cohort folder or a manifest CSV with "
                  "post and administered_plan columns")
      ->required();
  sub->add_option("--dynamics-backend", o->backend, "Generator of the synthetic outcomes")
      ->check(CLI::IsMember({"mechanistic", "diffusion"}))
      ->capture_default_str();
  sub->add_option("--model", o->model, "Diffusion checkpoint (diffusion backend)");
  sub->add_option("--calibration", o->calibration, "Mechanistic calibration")
      ->capture_default_str();
  sub->add_option("--steps", o->steps, "Diffusion DDIM steps")->capture_default_str();
  sub->add_option("--guidance", o->guidance, "Diffusion guidance scale")->capture_default_str();
  sub->add_option("--seed", o->seed, "Seed of the samples, the case IDs and the A/B order")
      ->capture_default_str();
  sub->add_option("--n", o->n, "Cases (single: n/2 patients, each real and synthetic)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--design", o->design,
                  "single (real or synthetic?) or pair (which is synthetic?)")
      ->check(CLI::IsMember({"single", "pair"}))
      ->capture_default_str();
  sub->add_option("--crop-mm", o->crop_mm, "Edge of the crop around the tumor, mm")
      ->capture_default_str();
  sub->add_option("--out", o->out, "Export folder (readers see it)")->required();
  sub->add_option("--key", o->key, "Answer key to write, outside the export folder")->required();
  sub->add_flag("--quiet", o->quiet, "No progress bar");
  return [o, sub, &backends]() -> int {
    if (!sub->parsed()) return -1;
    scenarios::ScenarioSpec spec;
    spec.dynamics_backend = o->backend;
    spec.calibration = o->calibration;
    std::string description = o->backend;
    if (o->backend == "diffusion") {
      if (o->model.empty()) {
        return Fail(Error{ErrorCode::kInvalidArgument,
                          "--dynamics-backend diffusion needs --model CHECKPOINT"});
      }
      spec.diffusion.model_path = o->model;
      spec.diffusion.config = "";
      spec.diffusion.sampler.steps = o->steps;
      spec.diffusion.sampler.guidance = o->guidance;
      description += " " + o->model + " (" + std::to_string(o->steps) + " steps, guidance " +
                     std::to_string(o->guidance) + ")";
    } else {
      description += " " + o->calibration;
    }
    auto model = backends.CreateDynamics(spec);
    if (!model) return Fail(model.error());
    scenarios::TuringExportOptions options;
    options.cohort = o->cohort;
    options.out = o->out;
    options.key = o->key;
    options.n = o->n;
    options.seed = o->seed;
    options.crop_mm = o->crop_mm;
    options.backend_description = description;
    auto design = scenarios::ParseTuringDesign(o->design);
    if (!design) return Fail(design.error());
    options.design = *design;
    auto result = scenarios::ExportTuringCases(options, **model, ActionBase::Default(),
                                               PatientProgress("simulating patients", o->quiet));
    if (!result) return Fail(result.error());
    std::printf(
        "wrote %d %s cases (%d volumes of %d patients) to %s in %.1f s\n"
        "key %s (SHA-256 %s, recorded in %s/manifest.json); keep it away from readers\n",
        result->cases, o->design.c_str(), result->volumes, result->patients, o->out.c_str(),
        result->seconds, o->key.c_str(), result->key_sha256.c_str(), o->out.c_str());
    return 0;
  };
}

/// Reads the manifest and the key of an export, the key checked against the manifest.
Expected<std::pair<scenarios::TuringManifest, scenarios::TuringKey>> ReadStudy(
    const std::string& dir, const std::string& key_path) {
  MEWM_TRY(scenarios::TuringManifest manifest, scenarios::ReadTuringManifest(dir));
  MEWM_TRY(scenarios::TuringKey key, scenarios::ReadTuringKey(key_path, manifest));
  return std::make_pair(std::move(manifest), std::move(key));
}

Action AddAudit(CLI::App& turing) {
  struct Options {
    std::string dir, key, json_out;
    int folds = 5;
    std::uint64_t seed = 1;
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = turing.add_subcommand(
      "audit",
      "Leak check: can simple classifiers tell the classes apart from file metadata, HU "
      "histograms or noise spectra? Exit 1 when file metadata is not at chance");
  sub->add_option("DIR", o->dir, "Export folder")->required();
  sub->add_option("--key", o->key, "The export's key.json")->required();
  sub->add_option("--folds", o->folds, "Cross-validation folds (by patient)")
      ->check(CLI::Range(2, 20))
      ->capture_default_str();
  sub->add_option("--seed", o->seed, "Seed of the folds and the bootstrap")->capture_default_str();
  sub->add_option("--json-out", o->json_out, "Also write the table as JSON");
  AddForceFlag(sub, &o->force);
  return [o, sub]() -> int {
    if (!sub->parsed()) return -1;
    // Not inside the export either: readers see that folder.
    if (auto free = CheckOutput("--json-out", o->json_out, o->force, {o->key, o->dir}); !free) {
      return Fail(free.error());
    }
    auto study = ReadStudy(o->dir, o->key);
    if (!study) return Fail(study.error());
    auto features = scenarios::ExtractTuringFeatures(study->first, study->second);
    if (!features) return Fail(features.error());
    auto audit = scenarios::AuditTuringExport(*features, o->folds, o->seed);
    if (!audit) return Fail(audit.error());
    std::cout << audit->FormatTable();
    if (!o->json_out.empty()) {
      if (auto w = WriteFileAtomic(o->json_out, audit->ToJson() + "\n"); !w) return Fail(w.error());
    }
    if (audit->metadata_leak) {
      std::cerr << "mewm: error: " << o->dir
                << ": file metadata tells real from synthetic (AUC CI above 0.5); the export "
                   "is not blind\n";
      return 1;
    }
    return 0;
  };
}

/// The machine Turing test of `mewm eval dynamics` (a small 3D CNN, patient-grouped folds and
/// bootstrap) on the exported volumes, windowed as the networks see CT ([-175, 600] HU).
Expected<dynamics::TuringTestResult> MachineTest(const scenarios::TuringManifest& manifest,
                                                 const scenarios::TuringKey& key, int folds,
                                                 std::uint64_t seed) {
  std::vector<DenseFloat> real, synthetic;
  std::vector<int> real_group, synthetic_group;
  std::map<std::string, int> patients;
  for (const scenarios::TuringCase& c : manifest.cases) {
    const scenarios::TuringKeyCase& truth = key.cases.at(c.id);
    const int group = patients.emplace(truth.patient, int(patients.size())).first->second;
    for (const scenarios::TuringVolume& v : c.volumes) {
      MEWM_TRY(DenseFloat image,
               ReadNifti((std::filesystem::path(manifest.dir) / v.nifti).string()));
      WindowToUnit(image, HuWindow{});
      const bool is_synthetic = manifest.design == scenarios::TuringDesign::kSingle
                                    ? truth.truth == "synthetic"
                                    : truth.truth == v.label;
      (is_synthetic ? synthetic : real).push_back(std::move(image));
      (is_synthetic ? synthetic_group : real_group).push_back(group);
    }
  }
  std::vector<int> groups = real_group;
  groups.insert(groups.end(), synthetic_group.begin(), synthetic_group.end());
  return dynamics::MachineTuringTest(real, synthetic, groups, folds, seed);
}

Action AddScore(CLI::App& turing) {
  struct Options {
    std::string dir, key, answers, json_out, plot;
    bool json = false, machine = false, force = false;
    int bootstrap = 2000, folds = 5;
    std::uint64_t seed = 1;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = turing.add_subcommand(
      "score", "Score readers' answers: accuracy, sensitivity, specificity, AUC, kappas");
  sub->add_option("DIR", o->dir, "Export folder")->required();
  sub->add_option("--key", o->key, "The export's key.json")->required();
  sub->add_option("--answers", o->answers, "Folder of <reader>.jsonl files (default DIR/answers)");
  sub->add_flag("--json", o->json, "Print JSON instead of the table");
  sub->add_option("--json-out", o->json_out, "Also write the scores as JSON");
  sub->add_option("--plot", o->plot, "Write a PNG of per-reader accuracy with CIs");
  AddForceFlag(sub, &o->force);
  sub->add_option("--bootstrap", o->bootstrap, "Reader bootstrap resamples")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  sub->add_option("--seed", o->seed, "Bootstrap and machine-test seed")->capture_default_str();
  sub->add_flag("--machine", o->machine,
                "Also run eval dynamics's machine Turing test (3D CNN) on the exported volumes");
  sub->add_option("--folds", o->folds, "Folds of the machine test (by patient)")
      ->check(CLI::Range(2, 20))
      ->capture_default_str();
  return [o, sub]() -> int {
    if (!sub->parsed()) return -1;
    const std::string answers_dir =
        o->answers.empty() ? (std::filesystem::path(o->dir) / "answers").string() : o->answers;
    if (auto free = CheckOutputs({{"--json-out", o->json_out}, {"--plot", o->plot}}, o->force,
                                 {o->key, o->dir, answers_dir});
        !free) {
      return Fail(free.error());
    }
    auto study = ReadStudy(o->dir, o->key);
    if (!study) return Fail(study.error());
    auto answers = scenarios::ReadAnswers(answers_dir, study->first);
    if (!answers) return Fail(answers.error());
    if (answers->empty() && !o->machine) {
      // A table of no readers read as a finished study (exit 0) when the answers were elsewhere.
      return Fail(Error{ErrorCode::kNotFound,
                        answers_dir + ": no answers to score (no <reader>.jsonl holding an "
                                      "answer); --answers names another folder, --machine runs "
                                      "the machine test alone"});
    }
    const scenarios::TuringScores scores =
        scenarios::ScoreReaders(study->second, *answers, o->bootstrap, o->seed);
    nlohmann::json json = nlohmann::json::parse(scores.ToJson());
    std::string table = scores.FormatTable();
    if (o->machine) {
      auto machine = MachineTest(study->first, study->second, o->folds, o->seed);
      if (!machine) return Fail(machine.error());
      char line[256];
      std::snprintf(line, sizeof line,
                    "machine Turing test (eval dynamics's 3D CNN, %d patient-grouped folds): AUC "
                    "%.3f [%.3f, %.3f] over %d real and %d synthetic volumes of %d patients\n",
                    machine->folds, machine->auc, machine->ci_low, machine->ci_high, machine->real,
                    machine->synthetic, machine->groups);
      table += line;
      json["machine_turing_test"] = {{"auc", machine->auc},
                                     {"ci95", {machine->ci_low, machine->ci_high}},
                                     {"ci_method", "patient-cluster bootstrap"},
                                     {"real", machine->real},
                                     {"synthetic", machine->synthetic},
                                     {"folds", machine->folds},
                                     {"patients", machine->groups}};
    }
    std::cout << (o->json ? json.dump(2) + "\n" : table);
    if (!o->json_out.empty()) {
      if (auto w = WriteFileAtomic(o->json_out, json.dump(2) + "\n"); !w) return Fail(w.error());
    }
    if (!o->plot.empty()) {
      if (auto w = scenarios::PlotReaderAccuracy(scores, o->plot); !w) return Fail(w.error());
    }
    return 0;
  };
}

Action AddSimulateReaders(CLI::App& turing) {
  struct Options {
    std::string dir, key, out;
    std::uint64_t seed = 1;
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = turing.add_subcommand(
      "simulate-readers",
      "Write the answers of three simulated readers (a guesser, the machine classifier, the HU "
      "histogram) to show what the statistics separate");
  sub->add_option("DIR", o->dir, "Export folder")->required();
  sub->add_option("--key", o->key, "The export's key.json")->required();
  sub->add_option("--out", o->out, "Answers folder to write (default DIR/answers)");
  sub->add_option("--seed", o->seed, "Seed")->capture_default_str();
  AddForceFlag(sub, &o->force);
  return [o, sub]() -> int {
    if (!sub->parsed()) return -1;
    auto study = ReadStudy(o->dir, o->key);
    if (!study) return Fail(study.error());
    auto features = scenarios::ExtractTuringFeatures(study->first, study->second);
    if (!features) return Fail(features.error());
    auto readers = scenarios::SimulateReaders(study->first, study->second, *features, o->seed);
    if (!readers) return Fail(readers.error());
    const std::string out =
        o->out.empty() ? (std::filesystem::path(o->dir) / "answers").string() : o->out;
    // A human reader may have chosen one of these ids: their answers are never replaced unasked.
    // (A folder not there yet is created below, empty.)
    std::error_code ec;
    if (std::filesystem::is_directory(out, ec)) {
      for (const auto& [reader, list] : *readers) {
        const std::string path = (std::filesystem::path(out) / (reader + ".jsonl")).string();
        if (auto free = CheckOutput("--out", path, o->force, {o->key}); !free) {
          return Fail(free.error());
        }
      }
    }
    std::filesystem::create_directories(out, ec);
    for (const auto& [reader, list] : *readers) {
      std::string text;
      for (const scenarios::TuringAnswer& a : list) text += scenarios::AnswerToJsonLine(a) + "\n";
      const std::string path = (std::filesystem::path(out) / (reader + ".jsonl")).string();
      if (auto w = WriteFileAtomic(path, text); !w) return Fail(w.error());
      std::printf("wrote %zu answers of simulated reader '%s' to %s\n", list.size(), reader.c_str(),
                  path.c_str());
    }
    return 0;
  };
}

}  // namespace

Action RegisterTuring(CLI::App& app, const BackendRegistry& backends) {
  app.require_subcommand(1);
  std::vector<Action> actions = {AddExport(app, backends), AddAudit(app), AddScore(app),
                                 AddSimulateReaders(app), AddTuringServe(app)};
  return [actions]() -> int {
    for (const Action& a : actions) {
      const int code = a();
      if (code >= 0) return code;
    }
    return 2;
  };
}

}  // namespace mewm::cli
