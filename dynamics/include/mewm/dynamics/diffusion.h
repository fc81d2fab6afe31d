// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Learned dynamics: 3D latent diffusion that synthesizes the post-treatment tumor conditioned on
// the plan (docs/DESIGN.md). This header holds the torch-free part that mewm::dynamics defines:
// configs, lesion crops, paste weights, the training pair and Turing-test result types, and the
// backend registry. The networks, training and the machine Turing test are declared in
// mewm/dynamics/diffusion_backend.h and defined by mewm::dynamics_diffusion (dynamics/diffusion/),
// the only dynamics library that links libtorch.
//
//   inputs:  PatientCase (CT, tumor mask), SimulationRequests (plan, sample, seed)
//   outputs: Outcome per request: post-treatment CT, viable mask and soft viable fraction,
//            pasted into the patient's grid with a blurred-mask blend around each lesion crop
//   config:  DiffusionConfig (architecture, recorded in the checkpoint), SamplerConfig (DDIM)
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mewm/core/crop.h"
#include "mewm/core/dense.h"
#include "mewm/core/expected.h"
#include "mewm/dynamics/dynamics_model.h"
#include "mewm/tace/action_base.h"
#include "mewm/tace/patient.h"
#include "mewm/tace/tumor_features.h"

namespace mewm::dynamics {

/// The voxel-scale texture of the post-treatment CT that a smooth decoded change cannot carry, as
/// a per-voxel rule fitted on training pairs. What a dead tumor voxel becomes depends on the voxel
/// itself: in the synthetic world a voxel that was already necrotic stays dark while its enhancing
/// neighbour fills with Lipiodol, and necrosis brings fresh scanner noise. The backend pastes the
/// decoded change onto the exact pre-treatment crop and then adds, per voxel,
///   offset_hu + noise_hu * N(0, 1),
/// looked up by the voxel's bin: inside the pre-treatment tumor or not, its decoded viable
/// fraction, its decoded CT change and its own pre-treatment HU. Nothing (0, 0) in bins with too
/// few training voxels.
struct TextureModel {
  std::vector<double> fraction_edges;   ///< ascending inner edges of the viable-fraction bins
  std::vector<double> change_edges_hu;  ///< ascending inner edges of the CT-change bins, HU
  std::vector<double> pre_edges_hu;     ///< ascending inner edges of the pre-treatment HU bins
  /// One entry per bin, [tumor (0, 1)][fraction bin][change bin][pre bin] row-major; a value
  /// equal to an edge falls in the bin above it.
  std::vector<double> offset_hu, noise_hu;
  bool empty() const { return offset_hu.empty(); }
  std::size_t bins() const {
    return 2 * (fraction_edges.size() + 1) * (change_edges_hu.size() + 1) *
           (pre_edges_hu.size() + 1);
  }
  /// kInvalidArgument naming the first bad field (sizes, order, finite values, ranges).
  Status Validate() const;
};

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
  /// What the second channel of a post-treatment crop holds: "viable_fraction" (the continuous
  /// viable density in [0, 1], so partial response is representable) or "viable_mask" (the
  /// thresholded mask of checkpoints trained before World v2). Pre-treatment crops hold the
  /// tumor mask either way (all of a tumor is viable before treatment).
  std::string mask_channel = "viable_fraction";
  std::vector<std::string> items;  ///< plan-item vocabulary (canonical names)
  /// Classifier-free guidance distilled into the denoiser (`mewm train dynamics --distill-from`):
  /// its one conditional pass predicts what the teacher predicted at this guidance scale, so it
  /// samples with guidance 1 and half the forwards. 1 = not distilled. A property of the trained
  /// weights, not of the architecture: a preset takes it from the checkpoint.
  double guidance_distilled = 1.0;
  /// Whether the plan embedding also reads the size of the lesion a crop is centred on
  /// (LesionSizeFeature of its equivalent diameter), so that an item's effect can depend on it:
  /// in the synthetic world an embolic's ischemic kill does. Trained with `mewm train dynamics
  /// --lesion-size`; like guidance_distilled, a preset takes it from the checkpoint.
  bool lesion_size = false;
  /// Whether each item also has its own size slope (`mewm train dynamics --item-size`, needs
  /// lesion_size): the item's embedding moves along a learned direction in proportion to the
  /// lesion's LesionSizeFeature, so two items can trade places as the lesion grows. Without it the
  /// size reaches the items only through the plan MLP's one nonlinearity. Measured, not shipped:
  /// a fine-tune with it learned the size, but the world's choice between NBCA and PVA follows
  /// vascularity (models/README.md, "NBCA against PVA, plan by plan"). Adds weights; a checkpoint
  /// without it can start one with it (the slopes start at zero), and a preset takes it from the
  /// checkpoint.
  bool item_size = false;
  /// Whether each item also has its own enhancement slope (`mewm train dynamics
  /// --item-enhancement`): the item's embedding moves along a learned direction in proportion to
  /// the patient's EnhancementFeature, the arterial enhancement of the pre-treatment tumor. In the
  /// synthetic world the choice between NBCA and PVA follows the tumor's vascularity, which the CT
  /// shows as enhancement. Measured, not shipped: a fine-tune with it learned each patient's
  /// response level and not that interaction, and planned worse (models/README.md, "Item slopes
  /// on the tumor's measured enhancement"). Adds weights and one plan-row column; a checkpoint
  /// without it can start one with it (the slopes start at zero), and a preset takes it from the
  /// checkpoint.
  bool item_enhancement = false;
  /// Whether the plan embedding also reads the patient's clinical covariates (ClinicalFeatures:
  /// AFP, vascular invasion, age), so that a patient's response level can follow them as well as
  /// the image: in the synthetic world AFP rises with the hidden proliferation that also sets how
  /// much tumor regrows. Trained with `mewm train dynamics --clinical`; a checkpoint without it
  /// can start one with it (the input starts at zero), and a preset takes it from the checkpoint.
  bool clinical = false;
  /// Whether the denoiser is conditioned on the outcome's level, predicted by a response head
  /// (`mewm train dynamics --response-head`). The level is ResponseLevelFeature of the crop's
  /// residual; the denoiser reads it as one more plan-row column, inside the plan MLP like the
  /// size. It trains on each pair's true level. The head, a small MLP over the plan row (with the
  /// tumor's EnhancementFeature) and the tumor's share of the crop, learns the level by
  /// regression, and serving and the validation scores use its prediction. The diffusion loss
  /// weighs a plan's effect on the residual little against the rest of the image; the head's loss
  /// is that effect alone. The head learned about three quarters of the contrast between plans on
  /// unseen patients, but a fine-tuned denoiser hardly used the level, even an exact one
  /// (models/README.md, "A response head"); served with DiffusionBackendOptions::anchor_level, the
  /// head's level sets the residual (models/dynamics_diffusion_response.pt, which no scenario
  /// uses). Adds weights; a checkpoint without it can start one with it (the level's input starts
  /// at zero), and a preset takes it from the checkpoint.
  bool response_head = false;
  /// Whether the response head reads each plan item by its own name, even an item of an
  /// item_groups group, and the tumor's visible signs of drug sensitivity (SensitivityFeatures:
  /// heterogeneity and necrotic share), so that it can tell one drug from another for a patient
  /// (`mewm train dynamics --response-sensitivity`, needs response_head). The denoiser still sees
  /// the groups: it reads the head's level for the plan with each group member read as the
  /// group's mean item, so plans that differ only within a group are generated once; with
  /// DiffusionBackendOptions::anchor_level each is then anchored to the head's level for its own
  /// items. Changes the head's input width: a head without it is fitted afresh.
  bool response_sensitivity = false;
  /// Whether the response head also reads each plan item times the lesion's LesionSizeFeature
  /// (`mewm train dynamics --response-item-size`, needs response_head and lesion_size): one more
  /// head input per item, so each item's effect on the predicted level has its own slope in the
  /// lesion's size and two items can trade places as the lesion grows (in the synthetic world an
  /// embolic's ischemic kill and absolute alcohol's reach both depend on it). Without it the head
  /// reads the size once, beside the items. Changes the head's input width: a head without it is
  /// fitted afresh; a preset takes it from the checkpoint.
  bool response_item_size = false;
  /// Drug classes for a drug term in the response head: empty, or one entry per item, the drug's
  /// class in the action base and empty for an item that is not a drug (`mewm train dynamics
  /// --response-drug-classes`, filled by ItemGroups(actions, "class"); needs response_head and
  /// clinical, and excludes response_sensitivity). The head then adds to the level it predicts for
  /// a plan, averaged over the plan's drugs, the drug's class's offset plus that class's linear
  /// slope on the tumor's visible signs of sensitivity (SensitivityFeatures) and the patient's AFP
  /// and age (ClinicalFeatures), plus the drug's own offset; and one learned weight for each drug
  /// after the first, since the world saturates a second drug. Twenty weights for four classes,
  /// one per drug and one for the second drug, where a head reading each drug by name
  /// (response_sensitivity) fits a hidden layer per drug. The head's network and the denoiser
  /// still read the item groups: drug variants are generated once and, with
  /// DiffusionBackendOptions::anchor_level, each is anchored to its own level. The term starts at
  /// zero, so a head fitted without it starts where it was (models/README.md).
  std::vector<std::string> drug_classes;
  /// Embedding groups, empty or one entry per item: items with the same non-empty group share
  /// one plan embedding (the mean of their own), so the denoiser cannot tell them apart (nor can
  /// a response_head, which reads each member as the group's mean item); an empty entry keeps
  /// the item's own. Filled by ItemGroups from public drug knowledge (`mewm train
  /// dynamics --drug-sharing`). It changes no weight's shape, so a checkpoint with or without it
  /// can start one with or without it; like lesion_size, a preset takes it from the checkpoint.
  std::vector<std::string> item_groups;
  /// Whether a group counts once per plan however many of its items the plan holds (`mewm train
  /// dynamics --drug-saturate`): with every drug in one group, a second drug then looks like the
  /// first to the denoiser, and plans differ by it only through what the survival model reads.
  /// Needs item_groups; like them, it changes no weight and a preset takes it from the checkpoint.
  bool group_once = false;
  /// Whether the decoder also reads the pre-treatment crop at full resolution (`mewm train
  /// dynamics --decoder-pre`): two convolutions of the crop's two channels, added to the decoder's
  /// last feature map, so the decoded change can take the fine structure the 4x-down latent cannot
  /// hold (the enhancement pattern the retained Lipiodol follows) from the image itself. Adds
  /// weights; a checkpoint without it can start one with it (the new weights start at zero), and
  /// a preset takes it from the checkpoint.
  bool decoder_pre = false;
  /// CT texture the decoder cannot carry (TextureModel), fitted on the training pairs by `mewm
  /// train dynamics --texture`; empty = none. A preset takes it from the checkpoint.
  TextureModel texture;

  /// The presets, with the action base's items as vocabulary. kInvalidArgument for another name.
  static Expected<DiffusionConfig> Preset(const std::string& name, const ActionBase& actions);
  int latent_voxels() const { return crop_voxels / 4; }
  /// Whether the response head tells apart plans that differ only within an item group
  /// (response_sensitivity, drug_classes): they then share a generation but not an anchor.
  bool HeadReadsEachItem() const { return response_sensitivity || !drug_classes.empty(); }
  /// kInvalidArgument naming the first bad field.
  Status Validate() const;
  std::string ToJson() const;
  /// kParse / kInvalidArgument naming `origin`.
  static Expected<DiffusionConfig> FromJson(const std::string& text, const std::string& origin);
};

/// DiffusionConfig::item_groups for `actions`' items: "none" (empty), "class" (each drug grouped
/// with its action-base class, embolics alone) or "all" (every drug in one group). The hidden
/// potencies of the synthetic world are never read. kInvalidArgument for another `sharing`.
Expected<std::vector<std::string>> ItemGroups(const ActionBase& actions,
                                              const std::string& sharing);

/// The plan as the denoiser's plan embedding sees it: the items outside groups by name, then each
/// group with its count of the plan's items (1 with group_once). Plans with equal keys get
/// bit-identical embeddings, so with the same noise a generator gives them the same outcome
/// (DiffusionDynamics copies it rather than generating it again). Items outside config.items
/// count by name. A DiffusionConfig::response_head reads the groups as the embedding does, so its
/// level, and the embedding that reads it, are equal for equal keys too (a
/// head that reads each item, DiffusionConfig::HeadReadsEachItem, gives the denoiser its level of
/// the grouped plan).
std::string GeneratorPlanKey(const Plan& plan, const DiffusionConfig& config);

/// The largest classifier-free guidance scale accepted anywhere: a scenario's
/// `dynamics.guidance`, a distilled scale, the scales a training run scores, the CLI's flags.
inline constexpr int kMaxGuidance = 20;

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

/// A crop lattice the serving backend samples, and the part of the patient it answers for.
struct LesionTile {
  CropSpec spec;
  /// World box (LPS mm) whose voxels this tile's paste may change (PasteFootprint's `within`);
  /// unbounded (+-inf) for a lesion that one crop holds whole.
  WorldBox territory;
  /// Equivalent-sphere diameter (mm) of the whole lesion (tumor label) the crop is centred on,
  /// from its voxel count: what the world's embolic kill reads.
  double diameter_mm = 0.0;
};

/// Crop lattices covering every lesion: one per lesion, centred on its bounding box, skipping a
/// lesion already inside an earlier crop (with an 8 mm margin); territories unbounded.
/// kInvalidArgument for an empty tumor mask.
Expected<std::vector<LesionTile>> LesionCrops(const PatientCase& patient,
                                              const DiffusionConfig& config);

/// Crop lattices that hold every lesion whole, for serving: a lesion that one crop holds with an
/// 8 mm margin gets LesionCrops' crop, with an unbounded territory. A larger lesion (above 80 mm
/// along an axis at the cpu config's 96 mm crops) is tiled: its box is cut into n_x x n_y x n_z
/// equal territories of at most crop - 16 voxels per axis, each at the centre of its own crop, so
/// every tile reaches 8 voxels (12 mm at 1.5 mm) beyond its territory, where the paste weight is
/// whole. Before tiling, the part of a large lesion outside its one crop read as fully necrotic.
/// kInvalidArgument for an empty tumor mask, and for a lesion to tile with crops of 24 voxels or
/// fewer.
Expected<std::vector<LesionTile>> LesionTiles(const PatientCase& patient,
                                              const DiffusionConfig& config);

/// The lesion size a DiffusionConfig::lesion_size denoiser reads: ln(diameter / 35 mm), about
/// -1.3 to +1.5 over the world's 10 to 150 mm lesions (35 mm is where the world's embolic kill
/// starts to depend on size).
double LesionSizeFeature(double diameter_mm);

/// The enhancement a DiffusionConfig::item_enhancement denoiser reads: (enhancing_hu - 90) / 20,
/// of TumorFeatures::enhancing_hu (mean HU of the non-necrotic pre-treatment tumor); about -1 to
/// +1.5 over the world's tumors (90 HU is the guideline's hypervascular threshold).
double EnhancementFeature(double enhancing_hu);

/// The level a DiffusionConfig::response_head denoiser reads: ln((residual + 1) / (pre + 1)), of
/// a crop's residual (integrated viable fraction) and its pre-treatment tumor volume, in mL; 0 for
/// no change, about -4 for a complete response of a 50 mL tumor, above 0 for growth.
double ResponseLevelFeature(double residual_ml, double pre_ml);

/// ResponseLevelFeature's inverse: the residual (mL) of `level` for a tumor of `pre_ml`.
double ResidualOfLevel(double level, double pre_ml);

/// Moves `fraction` (a viable fraction in [0, 1]) by one common shift of its logit, so that its
/// sum times `voxel_ml` is `target_ml`, as near as it can (every moving voxel at 0 or at 1). The
/// voxels that move are those inside `mask` (above 0.5) and those outside it with a fraction above
/// 0 (growth); the others stay at 0, and the order of the moving voxels is kept. Returns the
/// residual reached, in mL. What DiffusionBackendOptions::anchor_level does to each generated
/// crop. kMismatch when the two lattices differ; kInvalidArgument for a negative or non-finite
/// target or voxel volume.
Expected<double> AnchorResidual(DenseFloat& fraction, const DenseFloat& mask, double voxel_ml,
                                double target_ml);

/// Moves a generated CT change with its anchored viable fraction (AnchorResidual), so that the
/// image shows the residual the fraction holds. Inside `mask` (the pre-treatment tumor, above 0.5)
/// a voxel is read as a mix of viable tissue, which looks as it did before treatment, and dead
/// tissue, which the generator drew: its `change` (HU, from the pre-treatment CT) is its dead share
/// (1 - fraction) times the change of fully dead tissue. A voxel at least half dead in `generated`
/// gives its own dead tissue's change; a more viable one borrows, in proportion, the crop's (the
/// ratio of the summed change to the summed dead share over those voxels); each then moves by its
/// dead share's change from `generated` to `anchored`. Voxels outside the mask, and every voxel
/// of a crop with no voxel half dead (no dead tissue to copy), keep their change. kMismatch when
/// the four lattices differ.
Status FollowAnchoredFraction(DenseFloat& change, const DenseFloat& generated,
                              const DenseFloat& anchored, const DenseFloat& mask);

/// The visible signs of drug sensitivity a DiffusionConfig::response_sensitivity head reads, each
/// of about unit scale over the world's tumors: (TumorFeatures::sd_hu - 25) / 5, the tumor's HU
/// heterogeneity, and TumorFeatures::necrotic_fraction x 20, its non-enhancing share.
std::array<double, 2> SensitivityFeatures(const TumorFeatures& tumor);

/// The covariates a DiffusionConfig::clinical denoiser reads, each of about unit scale over the
/// world's patients: log10(AFP in ng/mL) - 1.5, vascular invasion (0 or 1), (age - 62) / 9.
std::array<double, 3> ClinicalFeatures(const Covariates& covariates);

/// Resamples CT (windowed to [-1, 1]) and a label mask (non-zero = 1) into `spec`.
/// kInvalidArgument when the CT crop holds NaN or Inf; kMismatch when the two volumes' lattices
/// differ.
Expected<CropChannels> ExtractChannels(const Volume& ct, const LabelVolume& mask,
                                       const CropSpec& spec, const HuWindow& window);
/// The same with a continuous viable fraction (trilinear, clamped to [0, 1]) as the mask.
Expected<CropChannels> ExtractChannels(const Volume& ct, const Volume& fraction,
                                       const CropSpec& spec, const HuWindow& window);
/// The crop channels a model with `config` is trained on for a post-treatment outcome: its
/// viable fraction where the outcome has one and config.mask_channel asks for it, else its mask.
Expected<CropChannels> OutcomeChannels(const Outcome& outcome, const CropSpec& spec,
                                       const DiffusionConfig& config);

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
  /// Whether a patient's requests with equal GeneratorPlanKey and noise share one generated
  /// outcome (copied; at most 1 GiB of outcomes kept; anchored to its own level with a head that
  /// reads each item, DiffusionConfig::HeadReadsEachItem, so only a request of the same items and
  /// noise is copied, and the others share the generation: its decoded crops are kept too, at most
  /// 1 GiB, and pasted again with each one's anchor). Off, every request is generated:
  /// only to measure what sharing saves (`mewm bench dynamics`).
  bool reuse_outcomes = true;
  /// With a DiffusionConfig::response_head checkpoint: each generated crop's viable fraction is
  /// moved, in the pre-treatment tumor and its generated growth, to the residual the head predicts
  /// for its plan (AnchorResidual of ResidualOfLevel), so the plan's effect on the residual is the
  /// head's and the samples differ in where it lies. In the tumor the CT's change follows the
  /// moved fraction (FollowAnchoredFraction; with a texture model, its texture follows both).
  /// kInvalidArgument at creation for a checkpoint without a head.
  bool anchor_level = false;
};

/// Creates the diffusion DynamicsModel. mewm::dynamics_diffusion defines the real one
/// (DiffusionFactoryFunction in mewm/dynamics/diffusion_backend.h); the scenarios' backend
/// registry takes it as a value (scenarios::BackendRegistry::Builtin), so libraries that never
/// run the backend stay free of libtorch.
using DiffusionFactory =
    std::function<Expected<std::unique_ptr<DynamicsModel>>(const DiffusionBackendOptions&)>;

// ---- Training and evaluation data ----

/// One training example: a lesion crop before and after one plan.
struct DiffusionPair {
  std::string patient;
  Plan plan;
  CropChannels pre;                 ///< pre-treatment CT and tumor mask
  CropChannels post;                ///< post-treatment CT and viable mask
  double lesion_diameter_mm = 0.0;  ///< LesionTile::diameter_mm of the crop
  Covariates covariates{};  ///< the patient's (what a DiffusionConfig::clinical model reads)
  /// The patient's pre-treatment tumor as measured on its CT (ComputeTumorFeatures): what a
  /// DiffusionConfig::item_enhancement model and a response head read
  TumorFeatures tumor{};
};

/// What a machine Turing test (MachineTuringTest, mewm/dynamics/diffusion_backend.h) reports.
struct TuringTestResult {
  double auc = 0.5;  ///< cross-validated AUC of real-vs-synthetic (0.5 = indistinguishable)
  /// 95% interval: percentile bootstrap over patients (crops of one patient resampled together)
  double ci_low = 0.0, ci_high = 1.0;
  int real = 0, synthetic = 0, folds = 0;
  int groups = 0;  ///< patients
};

}  // namespace mewm::dynamics
