// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm train dynamics`, `mewm eval dynamics` and `mewm bench dynamics`: the learned diffusion
// dynamics, trained and measured by the project's own commands.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <utility>

#include "commands.h"
#include "mewm/core/file_util.h"
#include "mewm/core/text.h"
#include "mewm/dynamics/diffusion_backend.h"
#include "mewm/eval/dynamics_data.h"
#include "mewm/planner/planner.h"
#include "mewm/run/runner.h"
#include "mewm/run/scenario.h"
#include "progress.h"

namespace mewm::cli {

namespace {

/// `mewm train dynamics`'s options.
struct TrainDynamicsOptions {
  std::string cohort, out, config = "cpu", state_dir, distill_from, init_from,
                           drug_sharing = "none", device = "cpu";
  double distill_guidance = 2.0;
  std::uint64_t seed = 1;
  int ae_steps = 1500, denoiser_steps = 1500, decoder_steps = 0, ae_batch = 8, denoiser_batch = 12,
      threads = 0;
  double validation_fraction = 0.1, residual_weight = 0.0, pair_weight = 0.0;
  std::vector<double> guidance_grid = dynamics::DiffusionTrainOptions{}.guidance_grid;
  bool lesion_size = false, item_size = false, item_enhancement = false, clinical = false,
       drug_saturate = false, decoder_pre = false, texture = false, pair_neighbours = false,
       serving_crops = false, response_head = false, response_sensitivity = false,
       response_item_size = false, response_drug_classes = false, response_drug_only = false;
  bool quiet = false, force = false;
};

/// Adds the options that name the training data and the checkpoint written.
void AddTrainInputOutputOptions(CLI::App* sub, TrainDynamicsOptions* o) {
  sub->add_option("--cohort", o->cohort,
                  "Training cohort (mewm cohort generate --plans-per-patient K)")
      ->required();
  sub->add_option("--out", o->out, "Checkpoint to write (.pt)")->required();
  AddForceFlag(sub, &o->force);
}

/// Adds the architecture, seed and optimisation schedule options.
void AddTrainScheduleOptions(CLI::App* sub, TrainDynamicsOptions* o) {
  sub->add_option("--config", o->config, "Architecture preset: cpu or mewm")
      ->check(CLI::IsMember({"cpu", "mewm"}))
      ->capture_default_str();
  sub->add_option("--seed", o->seed, "Seed of initialisation, batches and noise")
      ->capture_default_str();
  sub->add_option("--ae-steps", o->ae_steps, "Autoencoder steps")->capture_default_str();
  sub->add_option("--denoiser-steps", o->denoiser_steps, "Denoiser steps")->capture_default_str();
  sub->add_option("--decoder-steps", o->decoder_steps,
                  "Decoder fine-tune steps after the autoencoder: the encoder frozen, the decoder "
                  "learns the change the backend pastes (CT, viable fraction, residual). With "
                  "--init-from and --denoiser-steps 0 only the checkpoint's decoder changes (a "
                  "distilled one's too)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  sub->add_option("--ae-batch", o->ae_batch, "Autoencoder batch")->capture_default_str();
  sub->add_option("--denoiser-batch", o->denoiser_batch, "Denoiser batch")->capture_default_str();
  sub->add_option("--distill-from", o->distill_from,
                  "Guidance distillation: a trained checkpoint whose denoiser learns to predict "
                  "its guided output in one pass (its autoencoder is kept; --ae-steps unused)")
      ->check(CLI::ExistingFile);
  sub->add_option("--init-from", o->init_from,
                  "Fine-tuning: start from this trained checkpoint, keep its autoencoder and "
                  "latent scale (--ae-steps unused) and train its denoiser --denoiser-steps more "
                  "steps on --cohort")
      ->check(CLI::ExistingFile);
  sub->add_option("--distill-guidance", o->distill_guidance,
                  "The teacher's guidance scale to distil (with --distill-from)")
      ->check(CLI::Range(1.0, double(dynamics::kMaxGuidance)))
      ->capture_default_str();
  sub->add_flag("--lesion-size", o->lesion_size,
                "The plan embedding also reads the equivalent diameter of the lesion each crop "
                "is centred on (a teacher distilled needs it too; --init-from may add it to a "
                "checkpoint without it)");
  sub->add_flag("--item-size", o->item_size,
                "Each plan item also gets its own size slope, so two items can trade places as "
                "the lesion grows (needs --lesion-size; --init-from may add it to a checkpoint "
                "without it)");
  sub->add_flag("--item-enhancement", o->item_enhancement,
                "Each plan item also gets its own slope on the tumor's arterial enhancement (a "
                "visible sign of its vascularity), so two items can trade places as it changes "
                "(--init-from may add it to a checkpoint without it)");
  sub->add_flag("--response-head", o->response_head,
                "A response head (a small network over the plan, the tumor's enhancement and size, "
                "the covariates read and the tumor's share of the crop) learns how much tumor each "
                "plan leaves, and the denoiser generates the outcome at that level (--init-from "
                "may add it to a checkpoint without it)");
  sub->add_flag("--response-sensitivity", o->response_sensitivity,
                "The response head reads each drug by name, even within a --drug-sharing group, "
                "and the tumor's signs of drug sensitivity (HU heterogeneity, necrotic share); "
                "the denoiser still sees the groups, and an anchored outcome takes the head's "
                "level for its own drugs (needs --response-head; a head without it is fitted "
                "afresh)");
  sub->add_flag("--response-item-size", o->response_item_size,
                "The response head also reads each plan item times the lesion's size, so each "
                "item's effect on the level has its own size slope and two items can trade "
                "places as the lesion grows (needs --response-head and --lesion-size; a head "
                "without it is fitted afresh)");
  sub->add_flag("--response-drug-classes", o->response_drug_classes,
                "The response head adds a drug term to the level: each drug class's offset plus "
                "its linear slope on the tumor's signs of sensitivity (HU heterogeneity, "
                "necrotic share) and the patient's AFP and age, plus each drug's own offset, "
                "averaged over the plan's drugs, and a learned weight for a second drug; the "
                "denoiser and the head's network still see the --drug-sharing groups, and an "
                "anchored outcome takes the level of its own drugs (needs --response-head and "
                "--clinical; the term starts at zero, so a head fitted without it starts where "
                "it was)");
  sub->add_flag("--response-drug-only", o->response_drug_only,
                "With --response-drug-classes, fit the drug term alone: the head's network stays "
                "the --init-from checkpoint's, and the term, linear in its weights, is solved "
                "exactly as a ridge regression of the level's contrasts between each crop's "
                "plans, the ridge weight chosen on validation (needs --denoiser-steps 0; for a "
                "cohort generated with --counterfactual-design drug-contrast, whose plans differ "
                "in their drugs alone)");
  sub->add_option("--residual-weight", o->residual_weight,
                  "Adds to the denoiser's loss this weight times the squared error of the "
                  "residual tumor its prediction implies once decoded (mL, to first order, over "
                  "the SD of the training residuals), so that how much tumor is left counts, not "
                  "only the image (0 = the v-loss alone; not with --distill-from)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  CLI::Option* pair_weight =
      sub->add_option("--pair-weight", o->pair_weight,
                      "Draws the denoiser's batches in pairs (one crop of one patient under two "
                      "plans, the same noise) and adds this weight times the squared error of the "
                      "difference between their residuals, so that the contrast between plans "
                      "counts (0 = none; needs several plans per patient; not with --distill-from)")
          ->check(CLI::NonNegativeNumber)
          ->capture_default_str();
  sub->add_flag("--pair-neighbours", o->pair_neighbours,
                "With --pair-weight: pairs only plans one item apart (one added, removed or "
                "swapped), so that small contrasts such as one embolic agent against another "
                "are not outweighed by pairs that differ by tens of mL")
      ->needs(pair_weight);
  sub->add_flag("--serving-crops", o->serving_crops,
                "Cuts the training pairs on the crops the backend generates on, so a lesion "
                "larger than a crop is tiled and each tile seen off-centre as when serving "
                "(default: one crop centred on each lesion, as every shipped checkpoint)");
  sub->add_flag("--clinical", o->clinical,
                "The plan embedding also reads the patient's AFP, vascular invasion and age "
                "(--init-from may add them to a checkpoint without them)");
  sub->add_option("--drug-sharing", o->drug_sharing,
                  "Drugs that share one plan embedding, and that a --response-head reads as "
                  "one (unless --response-sensitivity): none, class (the action base's drug "
                  "classes) or all (every drug alike; drugs then differ only by what the "
                  "survival model reads, such as toxicity). --init-from and --distill-from may "
                  "start from a checkpoint that shares otherwise")
      ->check(CLI::IsMember({"none", "class", "all"}))
      ->capture_default_str();
  sub->add_flag("--drug-saturate", o->drug_saturate,
                "Each drug group counts once per plan, however many of its drugs the plan holds "
                "(needs --drug-sharing class or all)");
  sub->add_flag("--decoder-pre", o->decoder_pre,
                "The decoder also reads the pre-treatment crop at full resolution (new weights, "
                "trained by --decoder-steps; --init-from may add it to a checkpoint without it)");
  sub->add_flag("--texture", o->texture,
                "Fit the voxel-scale CT texture the decoder cannot carry (per voxel, by its "
                "pre-treatment HU: necrosis that stays dark beside retained Lipiodol, fresh "
                "noise) on the training pairs after training; with --init-from, --denoiser-steps 0 "
                "and --decoder-steps 0, only that");
}

/// Adds the validation split, resumable state, threads and progress options.
void AddTrainRuntimeOptions(CLI::App* sub, TrainDynamicsOptions* o) {
  sub->add_option("--validation-fraction", o->validation_fraction,
                  "Patients held out for validation (the last ones)")
      ->check(CLI::Range(0.0, 0.5))
      ->capture_default_str();
  sub->add_option("--guidance-grid", o->guidance_grid,
                  "Guidance scales scored on the validation patients after training, comma "
                  "separated; the best is recommended. Each samples every validation pair, so "
                  "fewer finish sooner (a distilled student scores 1 alone)")
      ->delimiter(',')
      ->check(CLI::Range(0.0, double(dynamics::kMaxGuidance)))
      ->capture_default_str();
  sub->add_option("--state-dir", o->state_dir,
                  "Resumable training state; a rerun with the same folder, options and cohort "
                  "continues (more steps extend it); another run's state is refused");
  sub->add_option("--threads", o->threads, "libtorch threads (0 = all cores)")
      ->check(CLI::Range(0, 256))
      ->capture_default_str();
  sub->add_option("--device", o->device,
                  "Where the networks train: cpu, cuda or cuda:N (a CUDA build of mewm); the "
                  "checkpoint loads on any device")
      ->capture_default_str();
  sub->add_flag("--quiet", o->quiet, "No progress bars");
}

/// Checks that the checkpoint and the training state (its folder created) can be written, so a
/// run fails now rather than after an hour of training.
Status CheckTrainOutputs(const TrainDynamicsOptions& o) {
  MEWM_RETURN_IF_ERROR(CheckOutput("--out", o.out, o.force, {o.cohort}));
  MEWM_RETURN_IF_ERROR(RefuseOutputInInputs("--state-dir", o.state_dir, {o.cohort}));
  if (!o.state_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(o.state_dir, ec);
    const std::string probe = (std::filesystem::path(o.state_dir) / "state.json").string();
    if (auto writable = CheckWritable(probe); !writable) {
      return writable.error().WithContext("--state-dir");
    }
  }
  return {};
}

/// The training and validation crop pairs (validation: the cohort's last patients).
struct TrainValPairs {
  std::vector<dynamics::DiffusionPair> train, val;
};

/// Splits the cohort into training and validation patients, reads their crop pairs and prints
/// how many there are.
Expected<TrainValPairs> ReadTrainValPairs(const TrainDynamicsOptions& o,
                                          const dynamics::DiffusionConfig& config,
                                          const ActionBase& actions) {
  MEWM_TRY(const auto entries, scenarios::ReadSyntheticCohort(o.cohort));
  const int n_val = int(double(entries.size()) * o.validation_fraction);
  std::vector<std::string> train_ids, val_ids;
  for (std::size_t k = 0; k < entries.size(); ++k) {
    (int(k) >= int(entries.size()) - n_val ? val_ids : train_ids).push_back(entries[k].id);
  }
  const scenarios::PairCrops crops =
      o.serving_crops ? scenarios::PairCrops::kServing : scenarios::PairCrops::kCentred;
  TrainValPairs pairs;
  MEWM_TRY(pairs.train,
           scenarios::BuildDiffusionPairs(o.cohort, config, actions, crops, train_ids,
                                          PatientProgress("reading training crops", o.quiet)));
  if (!val_ids.empty()) {
    MEWM_TRY(pairs.val,
             scenarios::BuildDiffusionPairs(o.cohort, config, actions, crops, val_ids,
                                            PatientProgress("reading validation crops", o.quiet)));
  }
  std::cout << pairs.train.size() << " training and " << pairs.val.size()
            << " validation crop pairs (" << train_ids.size() << " + " << val_ids.size()
            << " patients)\n";
  return pairs;
}

/// Guidance scales as --guidance-grid reads them: "1,2.5".
std::string JoinGrid(const std::vector<double>& grid) {
  std::vector<std::string> scales;
  for (double g : grid) scales.push_back(nlohmann::json(g).dump());
  return Join(scales, ",");
}

/// TrainDiffusion's options from the command line, with the command and the cohort's
/// provenance as the checkpoint's metadata.
dynamics::DiffusionTrainOptions TrainOptionsOf(const TrainDynamicsOptions& o,
                                               const dynamics::DiffusionConfig& config) {
  const std::string command =
      "mewm train dynamics --cohort " + o.cohort + " --out " + o.out + " --config " + o.config +
      " --seed " + std::to_string(o.seed) + " --ae-steps " + std::to_string(o.ae_steps) +
      " --denoiser-steps " + std::to_string(o.denoiser_steps) +
      (o.decoder_steps > 0 ? " --decoder-steps " + std::to_string(o.decoder_steps) : "") +
      " --ae-batch " + std::to_string(o.ae_batch) + " --denoiser-batch " +
      std::to_string(o.denoiser_batch) +
      (o.distill_from.empty() ? ""
                              : " --distill-from " + o.distill_from + " --distill-guidance " +
                                    nlohmann::json(o.distill_guidance).dump()) +
      (o.init_from.empty() ? "" : " --init-from " + o.init_from) +
      (o.lesion_size ? " --lesion-size" : "") + (o.item_size ? " --item-size" : "") +
      (o.item_enhancement ? " --item-enhancement" : "") + (o.clinical ? " --clinical" : "") +
      (o.response_head ? " --response-head" : "") +
      (o.response_sensitivity ? " --response-sensitivity" : "") +
      (o.response_item_size ? " --response-item-size" : "") +
      (o.response_drug_classes ? " --response-drug-classes" : "") +
      (o.response_drug_only ? " --response-drug-only" : "") +
      (o.drug_sharing == "none" ? "" : " --drug-sharing " + o.drug_sharing) +
      (o.drug_saturate ? " --drug-saturate" : "") + (o.decoder_pre ? " --decoder-pre" : "") +
      (o.texture ? " --texture" : "") +
      (o.residual_weight > 0.0 ? " --residual-weight " + nlohmann::json(o.residual_weight).dump()
                               : "") +
      (o.pair_weight > 0.0 ? " --pair-weight " + nlohmann::json(o.pair_weight).dump() : "") +
      (o.pair_neighbours ? " --pair-neighbours" : "") +
      (o.serving_crops ? " --serving-crops" : "") +
      (o.device == "cpu" ? "" : " --device " + o.device) +
      (o.guidance_grid == dynamics::DiffusionTrainOptions{}.guidance_grid
           ? ""
           : " --guidance-grid " + JoinGrid(o.guidance_grid));
  const auto [cohort_seed, data] = CohortProvenance(o.cohort);
  dynamics::DiffusionTrainOptions options;
  options.config = config;
  options.seed = o.seed;
  options.ae_steps = o.ae_steps;
  options.denoiser_steps = o.denoiser_steps;
  options.decoder_steps = o.decoder_steps;
  options.ae_batch = o.ae_batch;
  options.denoiser_batch = o.denoiser_batch;
  options.state_dir = o.state_dir;
  options.distill_from = o.distill_from;
  options.distill_guidance = o.distill_guidance;
  options.init_from = o.init_from;
  options.fit_texture = o.texture;
  options.response_drug_only = o.response_drug_only;
  options.residual_weight = o.residual_weight;
  options.pair_weight = o.pair_weight;
  options.pair_neighbours = o.pair_neighbours;
  options.threads = o.threads;
  options.device = o.device;
  options.guidance_grid = o.guidance_grid;
  options.out = o.out;
  options.metadata_json =
      nlohmann::json{{"command", command}, {"seed", o.seed}, {"data", data}}.dump();
  return options;
}

/// Prints the trained model's validation scores, the recommended guidance and where it went.
void PrintTrainReport(const dynamics::DiffusionTrainReport& report, const std::string& out) {
  std::printf(
      "autoencoder: validation CT L1 %.4f (window units), mask Dice %.3f, residual error of "
      "reconstructions %.1f%%\n"
      "denoiser: validation v-loss %.4f, latent scale %.3f\n",
      report.ae_val_l1_ct, report.ae_val_mask_dice, 100.0 * report.ae_val_residual_rel,
      report.denoiser_val_loss, report.latent_scale);
  for (const dynamics::GuidanceScore& g : report.guidance_scores) {
    std::printf(
        "  guidance %.1f on validation (10 DDIM steps): residual Spearman %+.3f, "
        "residual MAE %.2f mL per crop\n",
        g.guidance, g.spearman, g.residual_mae_ml);
  }
  if (const dynamics::ResponseHeadFit& r = report.response; r.val_rmse > 0.0) {
    std::printf(
        "response head: level RMS error %.3f on training, %.3f on validation (a constant "
        "level: %.3f); contrast between a crop's plans %.3f on training, %.3f on validation "
        "(none: %.3f)\n"
        "  with the true level in place of the head's (guidance 1): residual Spearman %+.3f, "
        "residual MAE %.2f mL per crop\n",
        r.train_rmse, r.val_rmse, r.val_constant_rmse, r.train_contrast_rmse, r.val_contrast_rmse,
        r.val_no_contrast_rmse, r.true_level_spearman, r.true_level_mae_ml);
    if (r.drug_ridge > 0.0)
      std::printf("  drug term solved with ridge weight %.3g\n", r.drug_ridge);
  }
  if (report.texture_bins > 0) {
    std::printf(
        "texture: %d bins fitted; inside the tumor it adds %.1f HU (mean |offset|) and "
        "%.1f HU of noise (RMS)\n",
        report.texture_bins, report.texture_tumor_offset_hu, report.texture_tumor_noise_hu);
  }
  std::printf(
      "recommended guidance %.1f (set dynamics.guidance in the scenario)\n"
      "trained in %.0f s%s; wrote %s\n",
      report.recommended_guidance, report.seconds,
      report.resumed_from_step > 0
          ? (" (resumed at step " + std::to_string(report.resumed_from_step) + ")").c_str()
          : "",
      out.c_str());
}

}  // namespace

Action AddTrainDynamics(CLI::App& train_app) {
  auto o = std::make_shared<TrainDynamicsOptions>();
  CLI::App* sub = train_app.add_subcommand(
      "dynamics",
      "Train the diffusion dynamics (autoencoder, then denoiser) on a cohort with "
      "counterfactual plans");
  AddTrainInputOutputOptions(sub, o.get());
  AddTrainScheduleOptions(sub, o.get());
  AddTrainRuntimeOptions(sub, o.get());
  return [o, sub]() -> int {
    if (!sub->parsed()) return -1;
    // Fail now, not after an hour of training, when the outputs cannot be written or the device
    // cannot be used.
    if (auto usable = dynamics::CheckDevice(o->device); !usable) {
      return Fail(usable.error().WithContext("--device"));
    }
    if (auto writable = CheckTrainOutputs(*o); !writable) return Fail(writable.error());
    const ActionBase& actions = ActionBase::Default();
    auto config = dynamics::DiffusionConfig::Preset(o->config, actions);
    if (!config) return Fail(config.error());
    config->lesion_size = o->lesion_size;
    config->item_size = o->item_size;
    config->item_enhancement = o->item_enhancement;
    config->clinical = o->clinical;
    config->response_head = o->response_head;
    config->response_sensitivity = o->response_sensitivity;
    config->response_item_size = o->response_item_size;
    auto groups = dynamics::ItemGroups(actions, o->drug_sharing);
    if (!groups) return Fail(groups.error());
    config->item_groups = *groups;
    config->group_once = o->drug_saturate;
    if (o->response_drug_classes) {
      auto classes = dynamics::ItemGroups(actions, "class");
      if (!classes) return Fail(classes.error());
      config->drug_classes = *classes;
    }
    config->decoder_pre = o->decoder_pre;
    if (auto valid = config->Validate(); !valid) return Fail(valid.error());
    auto pairs = ReadTrainValPairs(*o, *config, actions);
    if (!pairs) return Fail(pairs.error());
    const dynamics::DiffusionTrainOptions options = TrainOptionsOf(*o, *config);
    std::unique_ptr<ProgressBar> bar;
    std::string stage;
    const auto progress = [&](const dynamics::DiffusionTrainProgress& p) {
      if (stage != p.stage) {
        if (bar) bar->Finish();
        stage = p.stage;
        bar = std::make_unique<ProgressBar>("training " + p.stage, p.total, o->quiet);
      }
      bar->Update(p.step);
      if (p.val_loss >= 0.0) {
        std::printf("  %s step %d/%d: loss %.4f, validation %.4f\n", p.stage.c_str(), p.step,
                    p.total, p.loss, p.val_loss);
        std::fflush(stdout);
      }
    };
    auto report = dynamics::TrainDiffusion(std::move(pairs->train), pairs->val, options, progress);
    if (bar) bar->Finish();
    if (!report) return Fail(report.error());
    PrintTrainReport(*report, o->out);
    return 0;
  };
}

Action AddTrainDrugAverage(CLI::App& train_app) {
  struct Options {
    std::vector<std::string> checkpoints;
    std::string out;
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = train_app.add_subcommand(
      "drug-average",
      "Average the drug terms of diffusion checkpoints fitted alone (--response-drug-only) from "
      "one checkpoint on different cohorts: the mean of their terms, with less of each cohort's "
      "noise than any one fit");
  sub->add_option("checkpoints", o->checkpoints,
                  "Two or more drug-term fits that differ in nothing but their drug terms")
      ->required()
      ->check(CLI::ExistingFile);
  sub->add_option("--out", o->out, "Checkpoint to write")->required();
  AddForceFlag(sub, &o->force);
  return [o, sub]() -> int {
    if (!sub->parsed()) return -1;
    if (auto free = CheckOutput("--out", o->out, o->force, o->checkpoints); !free) {
      return Fail(free.error());
    }
    const std::string command =
        "mewm train drug-average --out " + o->out + " " + Join(o->checkpoints, " ");
    if (auto written = dynamics::AverageDrugTerms(o->checkpoints, o->out,
                                                  nlohmann::json{{"command", command}}.dump());
        !written) {
      return Fail(written.error());
    }
    std::printf("averaged the drug terms of %zu checkpoints; wrote %s\n", o->checkpoints.size(),
                o->out.c_str());
    return 0;
  };
}

void AddGeneratorOptions(CLI::App* sub, GeneratorOptions* options) {
  sub->add_option("--generator", options->model,
                  "Diffusion checkpoint: use its outcomes of the administered plans instead of "
                  "the true post-treatment images");
  sub->add_option("--generator-steps", options->steps, "Its DDIM steps")->capture_default_str();
  sub->add_option("--generator-guidance", options->guidance, "Its guidance scale")
      ->capture_default_str();
  sub->add_option("--generator-seed", options->seed, "Run seed of its samples")
      ->capture_default_str();
  sub->add_flag("--generator-anchor-level", options->anchor_level,
                "Move each generated residual to its response head's prediction (a checkpoint "
                "trained with --response-head)");
}

Expected<std::unique_ptr<dynamics::DynamicsModel>> LoadGenerator(const GeneratorOptions& options) {
  if (options.model.empty()) return std::unique_ptr<dynamics::DynamicsModel>();
  dynamics::DiffusionBackendOptions o;
  o.model_path = options.model;
  o.config = "";
  o.sampler.steps = options.steps;
  o.sampler.guidance = options.guidance;
  o.anchor_level = options.anchor_level;
  MEWM_TRY(auto model, dynamics::CreateDiffusionDynamics(o));
  return std::unique_ptr<dynamics::DynamicsModel>(std::move(model));
}

Action AddEvalDynamics(CLI::App& eval_app, const BackendRegistry& backends) {
  struct Options {
    std::string cohort, model, against, calibration = "models/mechanistic_calibration.json";
    std::string json_out;
    std::string config = "cpu", device = "cpu";
    dynamics::SamplerConfig sampler;
    std::uint64_t seed = 1;
    int folds = 5, threads = 0, patients = 0, samples = 1;
    bool quiet = false, json = false, force = false, anchor_level = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = eval_app.add_subcommand(
      "dynamics",
      "Fidelity of the diffusion dynamics against the truth, next to the identity and "
      "mechanistic baselines");
  sub->add_option("--cohort", o->cohort,
                  "Held-out cohort with counterfactual plans (--plans-per-patient K)")
      ->required();
  sub->add_option("--model", o->model, "Diffusion checkpoint")->required();
  sub->add_option("--against", o->against,
                  "Also score this diffusion checkpoint (method \"against\"; same config, "
                  "sampler and sample seeds) and compare the two patient by patient, --model "
                  "minus --against, with bootstrap intervals");
  sub->add_option("--config", o->config,
                  "Preset the checkpoint must match: cpu or mewm (\"\" = the checkpoint's own)")
      ->check(CLI::IsMember({"", "cpu", "mewm"}))
      ->capture_default_str();
  sub->add_option("--calibration", o->calibration,
                  "Mechanistic baseline's calibration (\"\" to skip the baseline)")
      ->capture_default_str();
  sub->add_option("--steps", o->sampler.steps, "DDIM steps")->capture_default_str();
  sub->add_option("--eta", o->sampler.eta, "DDIM eta")->capture_default_str();
  sub->add_option("--guidance", o->sampler.guidance, "Classifier-free guidance scale")
      ->capture_default_str();
  sub->add_option("--seed", o->seed, "Run seed of the sample seeds and the Turing test")
      ->capture_default_str();
  sub->add_flag("--anchor-level", o->anchor_level,
                "Move each generated residual to the response head's prediction for its plan "
                "(a checkpoint trained with --response-head; both models with --against)");
  sub->add_option("--folds", o->folds, "Cross-validation folds of the Turing test")
      ->check(CLI::Range(2, 20))
      ->capture_default_str();
  sub->add_option("--threads", o->threads, "libtorch threads (0 = all cores)")
      ->check(CLI::Range(0, 256))
      ->capture_default_str();
  sub->add_option("--device", o->device,
                  "Where the generator runs: cpu, cuda or cuda:N (a CUDA build of mewm)")
      ->capture_default_str();
  sub->add_option("--patients", o->patients, "Only the first N patients (0 = all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  sub->add_option("--samples", o->samples,
                  "Samples per plan, seeded as the planner's; the residual figures read their "
                  "mean, the images the first")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  sub->add_flag("--json", o->json,
                "Print the numbers as JSON on stdout instead of the table (with each patient's "
                "residual figures)");
  sub->add_option("--json-out", o->json_out, "Also write the numbers as JSON to this file");
  sub->add_flag("--quiet", o->quiet, "No progress bar");
  AddForceFlag(sub, &o->force);
  return [o, sub, &backends]() -> int {
    if (!sub->parsed()) return -1;
    if (auto free = CheckOutput("--json-out", o->json_out, o->force,
                                {o->cohort, o->model, o->against, o->calibration});
        !free) {
      return Fail(free.error());
    }
    const ActionBase& actions = ActionBase::Default();
    dynamics::DiffusionBackendOptions options;
    options.model_path = o->model;
    options.config = o->config;
    options.sampler = o->sampler;
    options.threads = o->threads;
    options.device = o->device;
    options.anchor_level = o->anchor_level;
    auto diffusion = dynamics::CreateDiffusionDynamics(options);
    if (!diffusion) return Fail(diffusion.error());
    std::unique_ptr<dynamics::DiffusionDynamics> against;
    if (!o->against.empty()) {
      options.model_path = o->against;
      auto loaded = dynamics::CreateDiffusionDynamics(options);
      if (!loaded) return Fail(loaded.error());
      against = std::move(*loaded);
    }
    std::vector<std::pair<std::string, dynamics::DynamicsModel*>> methods;
    std::unique_ptr<dynamics::DynamicsModel> mechanistic;
    if (!o->calibration.empty()) {
      scenarios::ScenarioSpec spec;
      spec.dynamics_backend = "mechanistic";
      spec.calibration = o->calibration;
      auto loaded = backends.CreateDynamics(spec);
      if (!loaded) return Fail(loaded.error());
      mechanistic = std::move(*loaded);
      methods.emplace_back("mechanistic", mechanistic.get());
    }
    methods.emplace_back("diffusion", diffusion->get());
    if (against) methods.emplace_back("against", against.get());
    const int folds = o->folds, threads = o->threads;
    const std::uint64_t seed = o->seed;
    const scenarios::TuringTest turing = [=](const std::vector<DenseFloat>& real,
                                             const std::vector<DenseFloat>& synthetic,
                                             const std::vector<int>& groups) {
      return dynamics::MachineTuringTest(real, synthetic, groups, folds, seed, threads);
    };
    auto eval = scenarios::EvaluateDynamics(
        o->cohort, methods, actions, (*diffusion)->config(), turing, o->seed,
        PatientProgress("simulating patients", o->quiet), o->patients,
        [&](const PatientCase& patient, const Outcome& truth) {
          return (*diffusion)->Reconstruct(patient, truth);
        },
        o->samples);
    if (!eval) return Fail(eval.error());
    if (against) {
      auto paired = scenarios::CompareDynamicsMethods(*eval, "diffusion", "against");
      if (!paired) return Fail(paired.error());
      eval->paired = *paired;
    }
    if (o->json) {
      std::cout << eval->ToJson() << "\n";
    } else {
      std::cout << eval->FormatTable();
      std::printf("diffusion sampler: %d DDIM steps, eta %.2f, guidance %.2f\n", o->sampler.steps,
                  o->sampler.eta, o->sampler.guidance);
    }
    if (!o->json_out.empty()) {
      if (auto written = WriteFileAtomic(o->json_out, eval->ToJson() + "\n"); !written) {
        return Fail(written.error());
      }
    }
    return 0;
  };
}

namespace {

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// 1. The denoiser against a raw oneDNN conv3d, and against torch's default dispatch, at the
/// serving batch and at batch 1. Returns the batch-1 figures, which project the reference loop.
Expected<dynamics::DiffusionSpeed> BenchDenoiser(dynamics::DiffusionDynamics& m, int batch,
                                                 int iterations, nlohmann::json& out) {
  MEWM_TRY(const dynamics::DiffusionSpeed speed,
           dynamics::MeasureDenoiserSpeed(m, batch, iterations));
  std::printf(
      "denoiser at batch %d: %.2f ms/step, %.2f GFLOP/step, %.1f GFLOP/s\n"
      "raw %s: %.1f GFLOP/s -> denoiser reaches %.0f%% of it\n"
      "torch's default conv3d dispatch: %.2f ms/step (%.1fx slower)\n",
      speed.batch, speed.denoiser_ms_per_step, speed.denoiser_gflop_per_step, speed.denoiser_gflops,
      speed.raw_conv_shape.c_str(), speed.raw_conv_gflops,
      100.0 * speed.denoiser_gflops / speed.raw_conv_gflops, speed.default_dispatch_ms_per_step,
      speed.default_dispatch_ms_per_step / speed.denoiser_ms_per_step);
  MEWM_TRY(const dynamics::DiffusionSpeed one, dynamics::MeasureDenoiserSpeed(m, 1, iterations));
  out["denoiser"] = {{"batch", speed.batch},
                     {"ms_per_step", speed.denoiser_ms_per_step},
                     {"gflop_per_step", speed.denoiser_gflop_per_step},
                     {"gflops", speed.denoiser_gflops},
                     {"raw_conv_gflops", speed.raw_conv_gflops},
                     {"raw_conv_shape", speed.raw_conv_shape},
                     {"fraction_of_raw", speed.denoiser_gflops / speed.raw_conv_gflops},
                     {"default_dispatch_ms_per_step", speed.default_dispatch_ms_per_step},
                     {"batch1_ms_per_step", one.denoiser_ms_per_step},
                     {"batch1_default_dispatch_ms_per_step", one.default_dispatch_ms_per_step}};
  std::printf("batch 1: %.2f ms/step (default dispatch %.2f ms)\n", one.denoiser_ms_per_step,
              one.default_dispatch_ms_per_step);
  return one;
}

/// 2. Outcomes per second, end to end (encode, DDIM, decode, paste) on a fresh model: 4 plans x
/// 4 samples. Returns the patient's number of lesion crops.
Expected<std::int64_t> BenchEndToEnd(const dynamics::DiffusionBackendOptions& options,
                                     const scenarios::ScenarioSpec& spec,
                                     const PatientCase& patient, nlohmann::json& out) {
  MEWM_TRY(auto fresh, dynamics::CreateDiffusionDynamics(options));
  std::vector<SimulationRequest> requests;
  for (const std::string text : {"Lipiodol", "Epirubicin+Lipiodol", "Gelatin Sponge+Lipiodol",
                                 "Epirubicin+Gelatin Sponge+Lipiodol"}) {
    MEWM_TRY(const Plan plan, spec.actions.ParsePlan(text));
    for (int s = 0; s < 4; ++s) {
      requests.push_back({plan, s, scenarios::Planner::SampleSeed(1, patient.id, plan, s), 0});
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  MEWM_RETURN_IF_ERROR(fresh->Simulate(patient, requests));
  const double wall = Seconds(t0);
  std::printf("end to end: %zu outcomes in %.2f s = %.2f outcomes/s (%d steps, %d crop(s))\n",
              requests.size(), wall, double(requests.size()) / wall, fresh->sampler().steps,
              int(fresh->counters().encodes));
  out["end_to_end"] = {{"outcomes", requests.size()},
                       {"seconds", wall},
                       {"outcomes_per_s", double(requests.size()) / wall}};
  return std::max<std::int64_t>(1, fresh->counters().encodes);
}

/// 3. Compute per decision: beam search (batched, memoised, DDIM) against the reference loop
/// (batch 1, no memo, 200 ancestral steps), for one patient.
Status BenchDecision(const dynamics::DiffusionBackendOptions& options,
                     const scenarios::ScenarioSpec& spec, const BackendRegistry& backends,
                     const PatientCase& patient, std::int64_t crops, double batch1_ms,
                     nlohmann::json& out) {
  MEWM_TRY(auto policy_model, backends.CreatePolicy(spec));
  MEWM_TRY(const policy::Proposal proposal, policy_model->Propose(patient));
  MEWM_TRY(auto survival, backends.CreateSurvival(spec));
  const auto decide =
      [&](scenarios::SearchMode mode, const dynamics::SamplerConfig& sampler,
          bool reuse =
              true) -> Expected<std::pair<scenarios::PlanDecision, dynamics::DiffusionCounters>> {
    dynamics::DiffusionBackendOptions model_options = options;
    model_options.reuse_outcomes = reuse;
    MEWM_TRY(auto fresh, dynamics::CreateDiffusionDynamics(model_options));
    fresh->set_sampler(sampler);
    scenarios::PlannerSpec ps = spec.planner;
    ps.search = mode;
    MEWM_TRY(auto planner, scenarios::Planner::Create(ps, spec.actions, spec.protocol, spec.require,
                                                      spec.forbid, *fresh, *survival));
    MEWM_TRY(auto decision, planner.Plan(patient, proposal, spec.seed));
    return std::make_pair(decision, fresh->counters());
  };
  const dynamics::SamplerConfig full = dynamics::ReferenceSampler();
  MEWM_TRY(const auto beam, decide(scenarios::SearchMode::kBeam, options.sampler));
  // The same decision generating every request, as before outcomes were shared.
  MEWM_TRY(const auto unshared, decide(scenarios::SearchMode::kBeam, options.sampler, false));
  // The reference loop at 200 steps would take tens of minutes on 2 cores. It runs here with a
  // 2-step ancestral sampler: its Simulate calls and requests are exact, and each call is one
  // request, so 200 steps cost exactly 200 batch-1 forwards per simulation and lesion crop (the
  // beam's count is per crop too). Its wall time is projected with the measured batch-1 forward.
  dynamics::SamplerConfig short_reference = full;
  short_reference.steps = 2;
  MEWM_TRY(const auto reference, decide(scenarios::SearchMode::kReference, short_reference));
  const auto& bc = beam.first.counters;
  const auto& rc = reference.first.counters;
  const std::int64_t ref_forwards = rc.simulations * full.steps * crops;
  const double ref_wall =
      rc.search_seconds + double(rc.simulations * crops) * (full.steps - 2) * batch1_ms * 1e-3;
  const double forward_ratio = double(ref_forwards) / double(beam.second.forwards);
  const double latent_ratio = double(ref_forwards) / double(beam.second.sample_forwards);
  std::printf(
      "compute per decision (B=%d, T=%d, horizons %d/%d, %lld lesion crop(s)):\n"
      "  %-28s %12s %14s %16s %10s\n"
      "  %-28s %12lld %14lld %16lld %10.1f\n"
      "  %-28s %12lld %14lld %16lld %10.1f (projected)\n"
      "  reference / beam: %.1fx denoiser forwards, %.1fx latent evaluations, %.1fx wall time\n",
      spec.planner.beams, spec.planner.samples, spec.planner.drug_horizon,
      spec.planner.embolic_horizon, static_cast<long long>(crops), "search", "simulations",
      "denoiser calls", "latent evals", "wall s",
      ("beam (" + std::to_string(options.sampler.steps) + "-step DDIM)").c_str(),
      static_cast<long long>(bc.simulations), static_cast<long long>(beam.second.forwards),
      static_cast<long long>(beam.second.sample_forwards), bc.search_seconds,
      "reference (200 ancestral)", static_cast<long long>(rc.simulations),
      static_cast<long long>(ref_forwards), static_cast<long long>(ref_forwards), ref_wall,
      forward_ratio, latent_ratio, ref_wall / bc.search_seconds);
  const auto& uc = unshared.first.counters;
  std::printf(
      "  shared outcomes: %lld of %lld simulations copied from an equal request; without "
      "sharing %lld latent evaluations, %.1f s (%.2fx the time); plan %s, without %s\n",
      static_cast<long long>(beam.second.reused), static_cast<long long>(bc.simulations),
      static_cast<long long>(unshared.second.sample_forwards), uc.search_seconds,
      uc.search_seconds / bc.search_seconds, beam.first.best.plan.ToString().c_str(),
      unshared.first.best.plan.ToString().c_str());
  // Where the beam decision's time goes: the backend's stages, and the rest (planner, survival).
  const dynamics::DiffusionCounters& k = beam.second;
  const double outside = bc.search_seconds - k.prepare_s - k.sample_s - k.decode_s - k.paste_s;
  std::printf(
      "  beam decision's time: encoding %.1f s, sampling %.1f s, decoding %.1f s, outcome "
      "volumes %.1f s, outside the backend (planner, survival) %.1f s\n",
      k.prepare_s, k.sample_s, k.decode_s, k.paste_s, outside);
  out["decision_time_s"] = {{"prepare", k.prepare_s},
                            {"sample", k.sample_s},
                            {"decode", k.decode_s},
                            {"outcome_volumes", k.paste_s},
                            {"outside_backend", outside}};
  out["decision"] = {{"crops", crops},
                     {"beam",
                      {{"simulations", bc.simulations},
                       {"denoiser_calls", beam.second.forwards},
                       {"latent_evaluations", beam.second.sample_forwards},
                       {"wall_s", bc.search_seconds},
                       {"reused_outcomes", beam.second.reused},
                       {"plan", beam.first.best.plan.ToString()}}},
                     {"beam_unshared",
                      {{"simulations", uc.simulations},
                       {"denoiser_calls", unshared.second.forwards},
                       {"latent_evaluations", unshared.second.sample_forwards},
                       {"wall_s", uc.search_seconds},
                       {"plan", unshared.first.best.plan.ToString()}}},
                     {"reference",
                      {{"simulations", rc.simulations},
                       {"denoiser_calls", ref_forwards},
                       {"latent_evaluations", ref_forwards},
                       {"wall_s_projected", ref_wall},
                       {"wall_s_measured_at_2_steps", rc.search_seconds}}},
                     {"forward_ratio", forward_ratio},
                     {"latent_evaluation_ratio", latent_ratio},
                     {"wall_ratio", ref_wall / bc.search_seconds}};
  return {};
}

}  // namespace

Action AddBenchDynamics(CLI::App& bench_app, const BackendRegistry& backends) {
  struct Options {
    std::string scenario, json_out, patient;
    int batch = 8, iterations = 10;
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = bench_app.add_subcommand(
      "dynamics",
      "Diffusion speed: denoiser vs raw conv3d, outcomes/s, and compute per decision "
      "of beam search against MeWM's reference loop");
  sub->add_option("SCENARIO", o->scenario, "Scenario with dynamics.backend = diffusion")
      ->required();
  sub->add_option("--batch", o->batch, "Serving batch of the denoiser timing")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  sub->add_option("--iterations", o->iterations, "Timed forwards")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  sub->add_option("--patient", o->patient,
                  "Patient id of the scenario's cohort to bench (default: its first patient); "
                  "a patient with a large lesion has several crops");
  sub->add_option("--json-out", o->json_out, "Also write the figures as JSON to this file");
  AddForceFlag(sub, &o->force);
  return [o, sub, &backends]() -> int {
    if (!sub->parsed()) return -1;
    if (auto free = CheckOutput("--json-out", o->json_out, o->force, {o->scenario}); !free) {
      return Fail(free.error());
    }
    auto spec = scenarios::LoadScenario(o->scenario, &backends);
    if (!spec) return Fail(spec.error());
    if (spec->dynamics_backend != "diffusion") {
      return Fail(Error{ErrorCode::kInvalidArgument,
                        o->scenario + ": bench dynamics needs dynamics.backend = \"diffusion\""});
    }
    auto cohort = scenarios::SyntheticCohortDir(*spec, spec->output);
    if (!cohort) return Fail(cohort.error());
    if (auto outside = RefuseOutputInInputs("--json-out", o->json_out, {*cohort}); !outside) {
      return Fail(outside.error());
    }
    auto entries = scenarios::PrepareCohort(*spec, backends, *cohort);
    if (!entries) return Fail(entries.error());
    auto entry = entries->begin();
    if (!o->patient.empty()) {
      entry = std::find_if(entries->begin(), entries->end(),
                           [&](const scenarios::CohortEntry& e) { return e.id == o->patient; });
      if (entry == entries->end()) {
        return Fail(Error{ErrorCode::kNotFound,
                          o->scenario + ": the cohort has no patient '" + o->patient + "'"});
      }
    }
    auto patient = scenarios::LoadPatient(*entry);
    if (!patient) return Fail(patient.error());
    dynamics::DiffusionBackendOptions options = spec->diffusion;
    options.actions = spec->actions;
    auto model = dynamics::CreateDiffusionDynamics(options);
    if (!model) return Fail(model.error());
    nlohmann::json out = {{"scenario", o->scenario},
                          {"patient", patient->id},
                          {"config", (*model)->config().name},
                          {"sampler_steps", (*model)->sampler().steps},
                          {"guidance", (*model)->sampler().guidance}};
    auto one = BenchDenoiser(**model, o->batch, o->iterations, out);
    if (!one) return Fail(one.error());
    auto crops = BenchEndToEnd(options, *spec, *patient, out);
    if (!crops) return Fail(crops.error());
    if (auto decided = BenchDecision(options, *spec, backends, *patient, *crops,
                                     one->denoiser_ms_per_step, out);
        !decided) {
      return Fail(decided.error());
    }
    if (!o->json_out.empty()) {
      if (auto written = WriteFileAtomic(o->json_out, out.dump(2) + "\n"); !written) {
        return Fail(written.error());
      }
    }
    return 0;
  };
}

}  // namespace mewm::cli
