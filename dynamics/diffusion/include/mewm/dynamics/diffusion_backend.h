// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The diffusion backend's networks, as the mewm::dynamics_diffusion library defines them (the only
// dynamics library that links libtorch; this header includes none of it): the DynamicsModel that
// runs the autoencoder, the plan-conditioned denoiser and the batched DDIM sampler; its training;
// the machine Turing test; and the denoiser's speed measurement. Binaries that link this library
// pass DiffusionFactoryFunction() to scenarios::BackendRegistry::Builtin, so scenarios can create
// the backend by name.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mewm/core/dense.h"
#include "mewm/core/expected.h"
#include "mewm/dynamics/diffusion.h"

namespace mewm::dynamics {

/// Counters beyond DynamicsModel::evaluations() (which counts batched denoiser forwards).
struct DiffusionCounters {
  std::int64_t forwards = 0;         ///< batched denoiser calls
  std::int64_t sample_forwards = 0;  ///< denoiser evaluations of one latent (rows x calls)
  std::int64_t encodes = 0;          ///< pre-treatment crops encoded (once per patient crop)
  std::int64_t decodes = 0;          ///< outcome crops decoded
  std::int64_t plan_embeddings = 0;  ///< plan embeddings computed
  /// Outcomes copied from an equal request of the same patient (same GeneratorPlanKey and noise)
  /// instead of generated: with drugs in one group, most of a beam decision's.
  std::int64_t reused = 0;
  double denoiser_gflop = 0.0;  ///< convolution GFLOP spent in the denoiser
  // Wall time inside Simulate, by stage (the rest of a decision is the planner's and survival's).
  double prepare_s = 0.0;  ///< cropping and encoding the patient, decoding the pre-treatment crop
  double sample_s = 0.0;   ///< the denoiser's steps (noise included)
  double decode_s = 0.0;   ///< decoding the outcome latents
  double paste_s = 0.0;    ///< outcome volumes: the patient's CT copied, crops pasted into it
};

/// The diffusion DynamicsModel. Created by CreateDiffusionDynamics.
class DiffusionDynamics : public DynamicsModel {
 public:
  virtual const DiffusionConfig& config() const = 0;
  virtual const SamplerConfig& sampler() const = 0;
  virtual void set_sampler(const SamplerConfig& sampler) = 0;
  virtual DiffusionCounters counters() const = 0;
  /// Training metadata stored in the checkpoint (command, seed, data, numbers).
  virtual const std::string& metadata_json() const = 0;
  /// The autoencoder's ceiling: `truth` (a true post-treatment outcome of `patient`) encoded and
  /// decoded through the autoencoder alone, pasted like a generated outcome. No generator can be
  /// closer to the truth than its autoencoder lets it.
  virtual Expected<Outcome> Reconstruct(const PatientCase& patient, const Outcome& truth) = 0;
};

/// Loads the checkpoint and builds the backend. kNotFound / kCorruptData for bad files, kMismatch
/// for a checkpoint of another config, kUnsupported for an unavailable device.
Expected<std::unique_ptr<DiffusionDynamics>> CreateDiffusionDynamics(
    const DiffusionBackendOptions& options);

/// CreateDiffusionDynamics as a DiffusionFactory, for scenarios::BackendRegistry::Builtin.
DiffusionFactory DiffusionFactoryFunction();

// ---- Training ----

struct DiffusionTrainOptions {
  DiffusionConfig config;
  std::uint64_t seed = 1;
  int ae_steps = 1500;
  int ae_batch = 8;
  int ae_patch = 32;  ///< autoencoder trains on random patches of this edge (fully convolutional)
  double ae_lr = 2e-3;
  double kl_weight = 1e-6;
  double edge_weight = 0.5;  ///< weight of the gradient (edge) term on the CT channel
  /// Decoder fine-tune, after the autoencoder (or on the checkpoint's, with init_from): the
  /// encoder frozen, the decoder trains these steps on what the backend pastes, the change
  /// decoded(z_post) - decoded(z_pre) added to the exact pre-treatment crop, against the true
  /// post-treatment crop (CT, viable fraction and its sum over the crop). The latents do not
  /// change, so a trained denoiser stays valid. 0 = none.
  int decoder_steps = 0;
  int decoder_batch = 2;  ///< crop pairs per step (whole crops: two decodes each)
  double decoder_lr = 2e-4;
  int denoiser_steps = 1500;
  int denoiser_batch = 12;
  double denoiser_lr = 1e-3;
  double null_plan_prob = 0.1;  ///< plan dropped to the learned null plan (for guidance)
  /// Weight of the residual term of the denoiser's loss; 0 = the v-prediction loss alone. The
  /// term is the squared error of the residual (integrated viable fraction, mL) that the
  /// prediction implies after decoding, to first order: each training pair's gradient of its
  /// decoded residual with respect to the latent change, taken once at the true change, dotted
  /// with the error of the predicted change, over the SD of the training crops' true residuals.
  /// The v-loss weighs every latent element alike, so a patient's level (a small, smooth shift
  /// over the tumor) barely counts in it; this term counts it in mL. Not with distill_from.
  double residual_weight = 0.0;
  /// Weight of the paired-plan term; 0 = none. Batches are drawn in pairs, one crop of one
  /// patient under two plans, with the same timestep and noise; the term is the squared error of
  /// the difference between the two residuals the predictions imply (to first order, as above),
  /// over the RMS of the true differences. The residual term weighs each plan's error; most of it
  /// is the crop's and the noise's, common to every plan, so the contrast between plans (what a
  /// planner ranks by) barely counts in it. This term counts only the contrast. It needs a crop
  /// under two plans in the training pairs. Not with distill_from. Measured once (models/README.md,
  /// "A paired-plan term"): it learned the NBCA/PVA contrast the other terms missed, but not how
  /// it changes with tumor size, and planned no better; no shipped model uses it.
  double pair_weight = 0.0;
  /// With pair_weight: pairs only plans one item apart (one added, removed or swapped for
  /// another), the choices a planner's search weighs one by one, and the term's RMS is theirs.
  /// Among all pairs, such contrasts (an NBCA/PVA swap: a few mL) are a small share and weigh
  /// little beside pairs that differ by tens of mL. Measured once (models/README.md, "Pairs of
  /// neighbouring plans only"): it did not change what the term learns.
  bool pair_neighbours = false;
  /// Guidance scales scored on the validation pairs after training (each samples every pair);
  /// the best is recommended. Not empty, each in [0, kMaxGuidance]. A distilled student scores 1
  /// alone.
  std::vector<double> guidance_grid{1.0, 2.0, 3.0, 5.0};
  double ema_decay = 0.995;
  int validate_every = 250;
  /// Guidance distillation when not empty: this trained checkpoint is the teacher. Its
  /// autoencoder and latent scale are kept (the autoencoder stage is skipped, ae_steps unused) and
  /// its denoiser, copied, learns to predict in one conditional pass what the teacher predicts
  /// with classifier-free guidance `distill_guidance` (two passes). The checkpoint written records
  /// the scale as DiffusionConfig::guidance_distilled.
  std::string distill_from;
  double distill_guidance = 2.0;
  /// Fine-tuning when not empty: training starts from this trained checkpoint (not a distilled
  /// one). Its autoencoder and latent scale are kept (the autoencoder stage is skipped) and its
  /// denoiser trains on the pairs given for `denoiser_steps` more steps. Not with distill_from.
  /// With denoiser_steps 0 and decoder_steps > 0, only the decoder is fine-tuned, and the
  /// checkpoint may be any, a distilled one included: its config is kept as stored.
  std::string init_from;
  /// Fit DiffusionConfig::texture on the training pairs through the final autoencoder, after
  /// training (FitTexture). With init_from, denoiser_steps 0 and decoder_steps 0, only that: the
  /// checkpoint is rewritten with the texture and nothing else changes. Without it, a run whose
  /// decoder changes drops a stored texture (fitted to the old decoder) and any other keeps it.
  bool fit_texture = false;
  /// With DiffusionConfig::drug_classes, a response head's fit trains the drug term alone (each
  /// class's offset and slopes, each drug's own offset): the head's network stays the
  /// checkpoint's. The term is then linear, and it is solved exactly as a ridge regression of
  /// the level's contrasts between each crop's plans, the ridge weight chosen on validation. Needs
  /// init_from a checkpoint whose head is fitted, and denoiser_steps 0. For a cohort whose plans
  /// differ in their drugs alone (`--counterfactual-design drug-contrast`), which would teach the
  /// network nothing of the embolics.
  bool response_drug_only = false;
  /// Resumable state; "" = no resume. A rerun continues from it when it has the same options
  /// and data (every option but the step counts, which may grow to extend the run); a state
  /// saved by another run is refused with kMismatch naming what differs, and one past the steps
  /// asked with kInvalidArgument. Neither touches the folder.
  std::string state_dir;
  int threads = 0;
  /// "cpu", "cuda" or "cuda:N": where the networks train. The training crops, the networks and
  /// the latents move there; batches, noise and timesteps are still drawn on the CPU from the
  /// seeded generators, so a run draws the same on every device (its arithmetic may differ in
  /// the last bits). The checkpoint is written with CPU tensors, and a training state resumes on
  /// any device. kUnsupported when CUDA is asked of a libtorch without it.
  std::string device = "cpu";
  std::string out;            ///< checkpoint to write
  std::string metadata_json;  ///< provenance to store (command, seed, data)
};

struct DiffusionTrainProgress {
  std::string stage;  ///< "autoencoder", "decoder", "response" (the response head) or "denoiser"
  int step = 0, total = 0;
  double loss = 0.0;
  /// < 0 when not validated at this step; for the decoder, the relative residual error of the
  /// validation reconstructions (DiffusionTrainReport::ae_val_residual_rel)
  double val_loss = -1.0;
};

/// One classifier-free guidance scale tried on the validation pairs after training.
struct GuidanceScore {
  double guidance = 1.0;
  double spearman = 0.0;         ///< mean per-patient Spearman of residual across plans
  double residual_mae_ml = 0.0;  ///< mean |generated - true| residual per crop, mL
};

/// How a DiffusionConfig::response_head fits: RMS errors of its level (ResponseLevelFeature), and
/// of its contrast between the plans of one crop (each level minus the crop's mean level).
struct ResponseHeadFit {
  double train_rmse = 0.0, val_rmse = 0.0;
  double val_constant_rmse = 0.0;  ///< a constant level, the training pairs' mean
  double train_contrast_rmse = 0.0, val_contrast_rmse = 0.0;
  double val_no_contrast_rmse = 0.0;  ///< the same level for every plan of a crop
  /// DiffusionTrainOptions::response_drug_only: the ridge weight of the exact solution kept, 0
  /// when the starting weights were better on validation.
  double drug_ridge = 0.0;
  /// The validation pairs generated at guidance 1 (as GuidanceScore) with each pair's true level
  /// in place of the head's: what the denoiser makes of an exact level.
  double true_level_spearman = 0.0, true_level_mae_ml = 0.0;
};

struct DiffusionTrainReport {
  double ae_val_l1_ct = 0.0;      ///< validation L1 of the CT channel, [-1, 1] units
  double ae_val_mask_dice = 0.0;  ///< validation Dice of the reconstructed mask channel
  /// |sum of reconstructed - true viable fraction| / true sum over the validation post crops:
  /// the autoencoder's own residual error, the ceiling of the whole model.
  double ae_val_residual_rel = 0.0;
  std::vector<GuidanceScore> guidance_scores;  ///< 10-step DDIM on the validation pairs
  double recommended_guidance = 1.0;  ///< the best Spearman (ties: the lower residual error)
  double denoiser_val_loss = 0.0;
  double latent_scale = 1.0;
  double seconds = 0.0;
  int resumed_from_step = 0;  ///< global step the run resumed from (0: fresh)
  ResponseHeadFit response;   ///< with DiffusionConfig::response_head
  /// With DiffusionTrainOptions::fit_texture: the bins fitted (the rest add nothing), and over the
  /// training voxels inside the pre-treatment tumor, the mean |offset| and the RMS noise added.
  int texture_bins = 0;
  double texture_tumor_offset_hu = 0.0, texture_tumor_noise_hu = 0.0;
};

/// Whether this build can train or serve on `device` ("cpu", "cuda", "cuda:N"), checked before a
/// long load: kInvalidArgument for a name not understood or a CUDA ordinal that does not exist,
/// kUnsupported for CUDA on a libtorch without it (Debian's).
Status CheckDevice(const std::string& device);

/// Trains the autoencoder, then the denoiser (EMA weights are shipped), and writes `options.out`.
/// Deterministic given the seed and data. kInvalidArgument for empty or mis-shaped data.
/// `train` is taken by value: with a validation split, each pair's full-precision crops are freed
/// as soon as they are copied into the half-precision training copy, so a caller that moves them
/// in does not hold the cohort twice (4 MiB a pair at 64^3).
Expected<DiffusionTrainReport> TrainDiffusion(
    std::vector<DiffusionPair> train, const std::vector<DiffusionPair>& validation,
    const DiffusionTrainOptions& options,
    const std::function<void(const DiffusionTrainProgress&)>& progress);

/// Averages the drug terms (DiffusionConfig::drug_classes) of diffusion checkpoints that differ in
/// nothing else, and writes the average to `out`: drug terms fitted alone
/// (DiffusionTrainOptions::response_drug_only) from one checkpoint, each on its own cohort. The
/// term is linear in its weights, so the average's term is the mean of the fits' terms: one fit's
/// cohort noise shrinks as the number of cohorts grows, where a single fit on all of them would
/// hold every crop in memory at once. The output keeps the first checkpoint's config; its
/// metadata is `metadata_json` (an object; "" for none) with each source's path, SHA-256 and
/// command added. kInvalidArgument for fewer than two checkpoints or a first without a drug term;
/// kMismatch, naming it, for a checkpoint whose config or whose tensors outside the drug term
/// differ from the first's; reading and writing errors as torch_bridge::LoadCheckpoint and
/// SaveCheckpoint report them.
Status AverageDrugTerms(const std::vector<std::string>& checkpoints, const std::string& out,
                        const std::string& metadata_json);

// ---- Evaluation ----

/// A machine Turing test: a small 3D CNN learns to tell `real` from `synthetic` crops (one
/// channel each, same dims); AUC of the out-of-fold scores. `groups` names each crop's patient
/// (real crops first, then synthetic): a patient's crops all fall in one fold, so the classifier
/// never sees the patient it is tested on, and the CI resamples patients. kInvalidArgument for
/// fewer than `folds` patients, a group list of the wrong length, or mismatched dims.
Expected<TuringTestResult> MachineTuringTest(const std::vector<DenseFloat>& real,
                                             const std::vector<DenseFloat>& synthetic,
                                             const std::vector<int>& groups, int folds,
                                             std::uint64_t seed, int threads = 0);

/// Speed figures for docs/BENCHMARKS.md, measured in one process.
struct DiffusionSpeed {
  int batch = 0;
  double denoiser_ms_per_step = 0.0;
  double denoiser_gflop_per_step = 0.0;
  double denoiser_gflops = 0.0;  ///< achieved GFLOP/s of the denoiser's convolutions
  double raw_conv_gflops = 0.0;  ///< a raw conv3d at the denoiser's main shape and batch
  double default_dispatch_ms_per_step = 0.0;  ///< the same forward through torch::conv3d
  std::string raw_conv_shape;
};

/// Times the loaded model's denoiser at `batch` rows against a raw oneDNN conv3d.
Expected<DiffusionSpeed> MeasureDenoiserSpeed(DiffusionDynamics& model, int batch, int iterations);

}  // namespace mewm::dynamics
