// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm train policy` and `mewm eval policy`: the VLM policy (mewm::policy_vlm), trained on
// synthetic cohorts' retrospective outcomes and scored alone against a held-out cohort's truth.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "mewm/core/file_util.h"
#include "mewm/eval/policy_eval.h"
#include "mewm/policy/vlm_backend.h"
#include "mewm/run/cohort_source.h"

namespace mewm::cli {
namespace {

using nlohmann::json;

/// Every patient of a synthetic cohort as a training example: what the model reads, and the
/// true hazard of every plan from truth/truth.json (training only).
Expected<std::vector<policy::VlmTrainingExample>> ReadTrainingCohort(
    const std::string& dir, const std::function<void(int, int)>& progress) {
  MEWM_TRY(const std::vector<scenarios::CohortEntry> entries, scenarios::ReadSyntheticCohort(dir));
  MEWM_TRY(const std::string truth_path, scenarios::SyntheticTruthPath(dir));
  MEWM_TRY(const std::string text, ReadFile(truth_path));
  json truth;
  try {
    truth = json::parse(text);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, "'" + truth_path + "': " + e.what());
  }
  const ActionBase& actions = ActionBase::Default();
  std::vector<policy::VlmTrainingExample> out;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    MEWM_TRY(const PatientCase patient, scenarios::LoadPatient(entries[i]));
    policy::VlmTrainingExample ex;
    MEWM_TRY(ex.input, policy::MakeVlmInput(patient));
    try {
      for (const auto& [plan, risk] :
           truth.at("patients").at(patient.id).at("plan_risks").items()) {
        MEWM_TRY(Plan p, actions.ParsePlan(plan));
        ex.plan_risks.emplace_back(std::move(p), risk.get<double>());
      }
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kCorruptData,
                       "'" + truth_path + "', patient '" + patient.id + "': " + e.what());
    }
    out.push_back(std::move(ex));
    if (progress) progress(int(i) + 1, int(entries.size()));
  }
  return out;
}

}  // namespace

Action AddTrainPolicy(CLI::App& train_app) {
  struct Options {
    std::vector<std::string> cohorts;
    std::string out;
    policy::VlmTrainOptions train;
    bool quiet = false, force = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = train_app.add_subcommand(
      "policy",
      "Train the VLM policy on synthetic cohorts: listwise over each patient's lowest-hazard "
      "plans");
  sub->add_option("--cohort", o->cohorts, "Training cohort folder (repeat for several)")
      ->required();
  sub->add_option("--out", o->out, "Checkpoint to write (.pt); its state goes to OUT.state/")
      ->required();
  sub->add_option("--seed", o->train.seed, "Seed of initialisation, split, batches, dropout")
      ->capture_default_str();
  sub->add_option("--epochs", o->train.epochs, "Epochs")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  sub->add_option("--batch", o->train.batch, "Patients per batch")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  sub->add_option("--lr", o->train.lr, "AdamW learning rate")->capture_default_str();
  sub->add_option("--list-size", o->train.list_size, "Plans per patient in the listwise loss")
      ->check(CLI::Range(1, 512))
      ->capture_default_str();
  sub->add_option("--temperature", o->train.temperature,
                  "Target weights softmax(-(ln HR - ln HR_best) / T)")
      ->capture_default_str();
  sub->add_option("--threads", o->train.threads, "libtorch threads (0 = all)")
      ->check(CLI::Range(0, 256))
      ->capture_default_str();
  sub->add_flag("--resume", o->train.resume,
                "Continue from OUT.state/ (same options and data; more epochs extend it, another "
                "run's state is refused)");
  sub->add_flag("--quiet", o->quiet, "No progress lines");
  AddForceFlag(sub, &o->force);
  return [o, sub]() -> int {
    if (!sub->parsed()) return -1;
    if (auto free = CheckOutput("--out", o->out, o->force, o->cohorts); !free) {
      return Fail(free.error());
    }
    // OUT.state/ is another run's resumable state (or someone's files): kept unless --resume
    // continues it or --force replaces it. Anything there but a folder is never ours: refused
    // now, not when the first epoch's state is written.
    const std::string state = o->out + ".state";
    const auto state_status = std::filesystem::symlink_status(state);
    if (std::filesystem::exists(state_status) && !std::filesystem::is_directory(state_status)) {
      return Fail(Error{ErrorCode::kInvalidArgument,
                        "'" + state +
                            "' exists and is not a folder: the training state goes there "
                            "(choose another --out, or move it)"});
    }
    if (!o->train.resume && !o->force && std::filesystem::exists(state_status)) {
      return Fail(Error{ErrorCode::kInvalidArgument,
                        "'" + state +
                            "' exists (an earlier run's training state): pass --resume "
                            "to continue it or --force to start afresh over it"});
    }
    std::vector<policy::VlmTrainingExample> examples;
    json data = json::array();
    for (const std::string& dir : o->cohorts) {
      auto part = ReadTrainingCohort(dir, PatientProgress("reading " + dir, o->quiet));
      if (!part) return Fail(part.error());
      const auto [seed, description] = CohortProvenance(dir);
      data.push_back(
          {{"cohort", dir}, {"seed", seed}, {"data", description}, {"patients", part->size()}});
      for (auto& ex : *part) examples.push_back(std::move(ex));
    }
    char numbers[160];
    std::snprintf(numbers, sizeof(numbers),
                  " --seed %llu --epochs %d --batch %d --lr %g --list-size %d --temperature %g",
                  static_cast<unsigned long long>(o->train.seed), o->train.epochs, o->train.batch,
                  o->train.lr, o->train.list_size, o->train.temperature);
    std::string command = "mewm train policy";
    for (const std::string& dir : o->cohorts) command += " --cohort " + dir;
    command += " --out " + o->out + numbers;
    o->train.out = o->out;
    o->train.metadata_json = json{{"command", command}, {"data", data}}.dump();
    const auto report =
        policy::TrainVlm(examples, ActionBase::Default(), o->train, [&](const policy::VlmEpoch& e) {
          if (o->quiet) return;
          std::printf("epoch %3d  train loss %.4f  val loss %.4f  val top-1 (listed) %.3f\n",
                      e.epoch, e.train_loss, e.val_loss, e.val_top1);
          std::fflush(stdout);
        });
    if (!report) return Fail(report.error());
    std::printf(
        "wrote %s with the weights of epoch %d (lowest validation loss): %lld parameters, "
        "%d train + %d validation patients, %.1f s",
        o->out.c_str(), report->best_epoch, static_cast<long long>(report->parameters),
        report->train_patients, report->validation_patients, report->seconds);
    if (report->resumed_from_epoch > 0) {
      std::printf(" (resumed after epoch %d)", report->resumed_from_epoch);
    }
    std::printf("\n");
    return 0;
  };
}

Action AddEvalPolicy(CLI::App& eval_app) {
  struct Options {
    std::string cohort, checkpoint, json_out;
    int top_k = 10, max_patients = 0, threads = 1;
    bool ablations = false, json = false, quiet = false, force = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = eval_app.add_subcommand(
      "policy",
      "Score the VLM policy alone (first plan, top-K recall, validity, findings, latency) "
      "against a synthetic cohort's truth, next to the guideline, majority and random plans");
  sub->add_option("--cohort", o->cohort, "Held-out synthetic cohort")->required();
  sub->add_option("--checkpoint", o->checkpoint, "VLM checkpoint (mewm train policy)")->required();
  sub->add_option("--top-k", o->top_k, "Plans proposed per patient")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  sub->add_option("--max-patients", o->max_patients, "Only the first N patients (0 = all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  sub->add_option("--threads", o->threads, "libtorch threads (0 = all)")
      ->check(CLI::Range(0, 256))
      ->capture_default_str();
  sub->add_flag("--ablations", o->ablations,
                "Also score the model with the note blanked (image only) and with the image "
                "blanked (note only)");
  sub->add_flag("--json", o->json, "Print the numbers as JSON on stdout instead of the table");
  sub->add_option("--json-out", o->json_out, "Also write the numbers as JSON to this file");
  sub->add_flag("--quiet", o->quiet, "No progress bar");
  AddForceFlag(sub, &o->force);
  return [o, sub]() -> int {
    if (!sub->parsed()) return -1;
    if (auto free = CheckOutput("--json-out", o->json_out, o->force, {o->cohort, o->checkpoint});
        !free) {
      return Fail(free.error());
    }
    const ActionBase& actions = ActionBase::Default();
    std::vector<std::unique_ptr<policy::PolicyModel>> models;
    std::vector<std::pair<std::string, policy::PolicyModel*>> named;
    std::vector<std::string> inputs = {"both"};
    if (o->ablations) inputs = {"both", "image", "note"};
    for (const std::string& in : inputs) {
      policy::VlmOptions options;
      options.checkpoint = o->checkpoint;
      options.top_k = o->top_k;
      options.threads = o->threads;
      options.inputs = in;
      auto model = policy::CreateVlmPolicy(options, actions);
      if (!model) return Fail(model.error());
      named.emplace_back(in == "both" ? "vlm" : "vlm (" + in + " only)", model->get());
      models.push_back(std::move(*model));
    }
    scenarios::PolicyEvalOptions options;
    options.cohort_dir = o->cohort;
    options.max_patients = o->max_patients;
    options.progress = PatientProgress("evaluating", o->quiet || o->json);
    auto eval = scenarios::EvaluatePolicies(named, actions, options);
    if (!eval) return Fail(eval.error());
    std::error_code ec;
    const auto bytes = std::filesystem::file_size(o->checkpoint, ec);
    std::string table = eval->FormatTable();
    if (!ec) {
      char size[96];
      std::snprintf(size, sizeof(size), "checkpoint %s: %.2f MB\n", o->checkpoint.c_str(),
                    double(bytes) / 1e6);
      table += size;
    }
    const std::string json_text = eval->ToJson();
    if (!o->json_out.empty()) {
      if (auto s = WriteFileAtomic(o->json_out, json_text + "\n"); !s) return Fail(s.error());
    }
    std::cout << (o->json ? json_text + "\n" : table);
    return 0;
  };
}

}  // namespace mewm::cli
