// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Learned dynamics: 3D latent diffusion that synthesizes the post-treatment tumor conditioned on
// the plan (DESIGN section 4). This header holds the torch-free part: configs, lesion crops, the
// training and evaluation APIs, and the backend registry. The networks live in
// mewm::dynamics_diffusion (src/diffusion_*.cc), the only dynamics code that links libtorch.
//
//   inputs:  PatientCase (CT, tumor mask), SimulationRequests (plan, sample, seed)
//   outputs: Outcome per request: post-treatment CT, viable mask and soft viable fraction,
//            pasted into the patient's grid with a blurred-mask blend around each lesion crop
//   config:  DiffusionConfig (architecture, recorded in the checkpoint), SamplerConfig (DDIM)
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mewm/core/action_base.h"
#include "mewm/core/crop.h"
#include "mewm/core/dense.h"
#include "mewm/core/expected.h"
#include "mewm/core/patient.h"
#include "mewm/dynamics/dynamics_model.h"

namespace mewm::dynamics {

/// Architecture of the autoencoder and denoiser. A checkpoint stores it; loading a checkpoint
/// whose config differs from the one asked for is kMismatch naming each differing key.
struct DiffusionConfig {
  std::string name = "cpu";  ///< preset name: "cpu" (64^3 at 1.5 mm) or "mewm" (96^3 at 1 mm)
  int crop_voxels = 64;      ///< crop edge, voxels (a multiple of 4)
  double spacing_mm = 1.5;   ///< crop spacing
  int latent_channels = 8;   ///< latent: latent_channels x (crop_voxels / 4)^3
  std::vector<int> ae_channels{8, 16, 32};  ///< autoencoder widths at 1x, 1/2x, 1/4x
  std::vector<int> unet_channels{32, 64};   ///< denoiser widths at the latent's 1x and 1/2x
  int embed_dim = 128;                      ///< time and plan embedding width
  int train_timesteps = 1000;               ///< diffusion timesteps (cosine schedule, v-target)
  HuWindow window;                          ///< CT window mapped to [-1, 1]
  std::vector<std::string> items;           ///< plan-item vocabulary (canonical names)

  /// The presets, with the action base's items as vocabulary. kInvalidArgument for another name.
  static Expected<DiffusionConfig> Preset(const std::string& name, const ActionBase& actions);
  int latent_voxels() const { return crop_voxels / 4; }
  /// kInvalidArgument naming the first bad field.
  Status Validate() const;
  std::string ToJson() const;
  /// kParse / kInvalidArgument naming `origin`.
  static Expected<DiffusionConfig> FromJson(const std::string& text, const std::string& origin);
};

/// DDIM sampling. eta = 1 with many steps is DDPM's ancestral sampler (the `reference` search).
struct SamplerConfig {
  int steps = 25;         ///< denoiser steps per outcome, in [1, train_timesteps]
  double eta = 0.0;       ///< 0: deterministic DDIM; 1: ancestral
  double guidance = 1.0;  ///< classifier-free guidance scale; 1 = conditional only (no null pass)
  Status Validate() const;
};

/// The sampler MeWM's released loop uses: 200 ancestral steps.
SamplerConfig ReferenceSampler();

/// One lesion crop of a patient: windowed CT in [-1, 1] and a 0/1 mask, on the crop lattice.
struct CropChannels {
  DenseFloat ct;
  DenseFloat mask;
};

/// Crop lattices covering every lesion: one per lesion, centred on its bounding box, skipping a
/// lesion already inside an earlier crop (with an 8 mm margin). kInvalidArgument for an empty
/// tumor mask.
Expected<std::vector<CropSpec>> LesionCrops(const PatientCase& patient,
                                            const DiffusionConfig& config);

/// Resamples CT (windowed to [-1, 1]) and a label mask (non-zero = 1) into `spec`.
/// kInvalidArgument when the CT crop holds NaN or Inf; kMismatch when the two volumes' lattices
/// differ.
Expected<CropChannels> ExtractChannels(const Volume& ct, const LabelVolume& mask,
                                       const CropSpec& spec, const HuWindow& window);

/// Paste weight of a crop: 1 within `margin_mm` of the pre-treatment mask, falling smoothly to 0
/// beyond it and at the crop's border, so tissue away from the tumor keeps its exact HU.
DenseFloat BlendWeight(const DenseFloat& mask, double spacing_mm, double margin_mm);

/// Where the backend runs and how it samples.
struct DiffusionBackendOptions {
  std::string model_path;      ///< checkpoint written by `mewm train dynamics`
  std::string config = "cpu";  ///< preset the checkpoint must match; "" = the one it records
  SamplerConfig sampler;
  std::string device = "cpu";                  ///< "cpu", "cuda" or "cuda:N"
  int threads = 0;                             ///< libtorch intra-op threads; 0 = all cores
  double blend_margin_mm = 6.0;                ///< paste margin around the pre-treatment tumor
  ActionBase actions = ActionBase::Default();  ///< vocabulary source for the config preset
};

/// Counters beyond DynamicsModel::evaluations() (which counts batched denoiser forwards).
struct DiffusionCounters {
  std::int64_t forwards = 0;         ///< batched denoiser calls
  std::int64_t sample_forwards = 0;  ///< denoiser evaluations of one latent (rows x calls)
  std::int64_t encodes = 0;          ///< pre-treatment crops encoded (once per patient crop)
  std::int64_t decodes = 0;          ///< outcome crops decoded
  std::int64_t plan_embeddings = 0;  ///< plan embeddings computed
  double denoiser_gflop = 0.0;       ///< convolution GFLOP spent in the denoiser
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
};

/// Loads the checkpoint and builds the backend. kNotFound / kCorruptData for bad files, kMismatch
/// for a checkpoint of another config, kUnsupported for an unavailable device.
Expected<std::unique_ptr<DiffusionDynamics>> CreateDiffusionDynamics(
    const DiffusionBackendOptions& options);

// ---- Backend registry: keeps libtorch out of binaries that do not run the diffusion backend ----

using DiffusionFactory =
    std::function<Expected<std::unique_ptr<DynamicsModel>>(const DiffusionBackendOptions&)>;
/// Installs CreateDiffusionDynamics as the factory (called by binaries that link the backend).
void EnableDiffusionBackend();
/// The installed factory's result; kUnsupported when this binary has none.
Expected<std::unique_ptr<DynamicsModel>> CreateRegisteredDiffusion(
    const DiffusionBackendOptions& options);
void SetDiffusionFactory(DiffusionFactory factory);

// ---- Training ----

/// One training example: a lesion crop before and after one plan.
struct DiffusionPair {
  std::string patient;
  Plan plan;
  CropChannels pre;   ///< pre-treatment CT and tumor mask
  CropChannels post;  ///< post-treatment CT and viable mask
};

struct DiffusionTrainOptions {
  DiffusionConfig config;
  std::uint64_t seed = 1;
  int ae_steps = 1500;
  int ae_batch = 8;
  int ae_patch = 32;  ///< autoencoder trains on random patches of this edge (fully convolutional)
  double ae_lr = 2e-3;
  double kl_weight = 1e-6;
  double edge_weight = 0.5;  ///< weight of the gradient (edge) term on the CT channel
  int denoiser_steps = 1500;
  int denoiser_batch = 12;
  double denoiser_lr = 1e-3;
  double null_plan_prob = 0.1;  ///< plan dropped to the learned null plan (for guidance)
  double ema_decay = 0.995;
  int validate_every = 250;
  std::string state_dir;  ///< resumable state; "" = no resume
  int threads = 0;
  std::string out;            ///< checkpoint to write
  std::string metadata_json;  ///< provenance to store (command, seed, data)
};

struct DiffusionTrainProgress {
  std::string stage;  ///< "autoencoder" or "denoiser"
  int step = 0, total = 0;
  double loss = 0.0;
  double val_loss = -1.0;  ///< < 0 when not validated at this step
};

struct DiffusionTrainReport {
  double ae_val_l1_ct = 0.0;      ///< validation L1 of the CT channel, [-1, 1] units
  double ae_val_mask_dice = 0.0;  ///< validation Dice of the reconstructed mask channel
  double denoiser_val_loss = 0.0;
  double latent_scale = 1.0;
  double seconds = 0.0;
  int resumed_from_step = 0;  ///< global step the run resumed from (0: fresh)
};

/// Trains the autoencoder, then the denoiser (EMA weights are shipped), and writes `options.out`.
/// Deterministic given the seed and data. kInvalidArgument for empty or mis-shaped data.
Expected<DiffusionTrainReport> TrainDiffusion(
    const std::vector<DiffusionPair>& train, const std::vector<DiffusionPair>& validation,
    const DiffusionTrainOptions& options,
    const std::function<void(const DiffusionTrainProgress&)>& progress);

// ---- Evaluation helpers ----

struct TuringTestResult {
  double auc = 0.5;  ///< cross-validated AUC of real-vs-synthetic (0.5 = indistinguishable)
  double ci_low = 0.0, ci_high = 1.0;  ///< 95% interval (Hanley-McNeil)
  int real = 0, synthetic = 0, folds = 0;
};

/// A machine Turing test: a small 3D CNN learns to tell `real` from `synthetic` crops (one
/// channel each, same dims); AUC of the out-of-fold scores. kInvalidArgument for fewer than
/// `folds` crops per class or mismatched dims.
Expected<TuringTestResult> MachineTuringTest(const std::vector<DenseFloat>& real,
                                             const std::vector<DenseFloat>& synthetic, int folds,
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
