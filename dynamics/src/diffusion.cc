// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The torch-free half of the diffusion backend: configs, lesion crops, paste weights, registry.
#include "mewm/dynamics/diffusion.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "mewm/tace/tumor_features.h"

namespace mewm::dynamics {
namespace {

/// Whether two dense crops share dims and geometry (AnchorResidual, FollowAnchoredFraction).
bool SameLattice(const DenseFloat& a, const DenseFloat& b) {
  return a.dims == b.dims && a.geometry.ApproxEquals(b.geometry);
}

using json = nlohmann::json;

Status Invalid(const std::string& message) {
  return MakeError(ErrorCode::kInvalidArgument, "diffusion config: " + message);
}

}  // namespace

Expected<DiffusionConfig> DiffusionConfig::Preset(const std::string& name,
                                                  const ActionBase& actions) {
  DiffusionConfig c;
  c.name = name;
  for (const ActionItem& item : actions.items()) c.items.push_back(item.name);
  if (name == "cpu") return c;
  if (name == "mewm") {
    // MeWM's size: 96^3 crops at 1 mm, 8 x 24^3 latents, wider networks; meant for GPUs.
    c.crop_voxels = 96;
    c.spacing_mm = 1.0;
    c.ae_channels = {32, 64, 128};
    c.unet_channels = {64, 128};
    c.embed_dim = 256;
    return c;
  }
  return MakeError(ErrorCode::kInvalidArgument,
                   "unknown diffusion config '" + name + "' (expected cpu or mewm)");
}

Expected<std::vector<std::string>> ItemGroups(const ActionBase& actions,
                                              const std::string& sharing) {
  if (sharing == "none") return std::vector<std::string>{};
  if (sharing != "class" && sharing != "all") {
    return MakeError(ErrorCode::kInvalidArgument,
                     "unknown drug sharing '" + sharing + "' (expected none, class or all)");
  }
  std::vector<std::string> groups;
  for (const ActionItem& item : actions.items()) {
    const bool drug = item.kind == ItemKind::kDrug;
    groups.push_back(!drug ? "" : sharing == "all" ? "drug" : item.drug_class);
  }
  return groups;
}

std::string GeneratorPlanKey(const Plan& plan, const DiffusionConfig& config) {
  std::string key;
  std::map<std::string, int> groups;
  for (const std::string& item : plan.items()) {
    const auto at = std::find(config.items.begin(), config.items.end(), item);
    const std::string group = config.item_groups.empty() || at == config.items.end()
                                  ? std::string()
                                  : config.item_groups[std::size_t(at - config.items.begin())];
    if (group.empty()) {
      key += item + "+";
    } else {
      ++groups[group];
    }
  }
  for (const auto& [group, count] : groups) {
    key += "[" + group + " x" + std::to_string(config.group_once ? 1 : count) + "]";
  }
  return key;
}

Status TextureModel::Validate() const {
  const auto ascending = [](const std::vector<double>& v) {
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (!std::isfinite(v[i]) || (i > 0 && !(v[i] > v[i - 1]))) return false;
    }
    return v.size() <= 64;
  };
  if (!ascending(fraction_edges) || !ascending(change_edges_hu) || !ascending(pre_edges_hu)) {
    return Invalid("texture bin edges must be finite, ascending and at most 64");
  }
  if (offset_hu.size() != bins() || noise_hu.size() != bins()) {
    return Invalid("texture needs one offset_hu and one noise_hu per bin (" +
                   std::to_string(bins()) + ")");
  }
  for (std::size_t b = 0; b < bins(); ++b) {
    if (!(std::abs(offset_hu[b]) <= 2000.0) || !(noise_hu[b] >= 0.0 && noise_hu[b] <= 200.0)) {
      return Invalid("texture offsets must be within 2000 HU and noise_hu in [0, 200] HU");
    }
  }
  return {};
}

Status DiffusionConfig::Validate() const {
  if (crop_voxels < 16 || crop_voxels > 256 || crop_voxels % 4 != 0) {
    return Invalid("crop_voxels must be a multiple of 4 in [16, 256]");
  }
  if (!(spacing_mm > 0.0) || !std::isfinite(spacing_mm)) return Invalid("spacing_mm must be > 0");
  if (latent_channels < 1 || latent_channels > 64) {
    return Invalid("latent_channels must be in [1, 64]");
  }
  if (ae_channels.size() != 3 || unet_channels.size() != 2) {
    return Invalid("ae_channels needs 3 widths and unet_channels 2");
  }
  for (int c : ae_channels) {
    if (c < 4 || c % 4 != 0) return Invalid("network widths must be multiples of 4");
  }
  for (int c : unet_channels) {
    if (c < 4 || c % 4 != 0) return Invalid("network widths must be multiples of 4");
  }
  if (embed_dim < 8 || embed_dim % 2 != 0) return Invalid("embed_dim must be even and >= 8");
  if (train_timesteps < 10) return Invalid("train_timesteps must be >= 10");
  if (items.empty()) return Invalid("the plan-item vocabulary is empty");
  if (mask_channel != "viable_fraction" && mask_channel != "viable_mask") {
    return Invalid("mask_channel must be viable_fraction or viable_mask, not '" + mask_channel +
                   "'");
  }
  if (!(guidance_distilled >= 1.0 && guidance_distilled <= kMaxGuidance)) {
    return Invalid("guidance_distilled must be in [1, " + std::to_string(kMaxGuidance) + "]");
  }
  if (std::set<std::string>(items.begin(), items.end()).size() != items.size()) {
    return Invalid("the plan-item vocabulary repeats an item");
  }
  if (!item_groups.empty() && item_groups.size() != items.size()) {
    return Invalid("item_groups must be empty or have one entry per item");
  }
  if (group_once && item_groups.empty()) return Invalid("group_once needs item_groups");
  if (item_size && !lesion_size) return Invalid("item_size needs lesion_size");
  if (response_sensitivity && !response_head) {
    return Invalid("response_sensitivity needs response_head");
  }
  if (response_item_size && !(response_head && lesion_size)) {
    return Invalid("response_item_size needs response_head and lesion_size");
  }
  if (!drug_classes.empty()) {
    if (drug_classes.size() != items.size()) {
      return Invalid("drug_classes must be empty or have one entry per item");
    }
    if (std::all_of(drug_classes.begin(), drug_classes.end(),
                    [](const std::string& c) { return c.empty(); })) {
      return Invalid("drug_classes names no drug");
    }
    if (!(response_head && clinical))
      return Invalid("drug_classes needs response_head and clinical");
    if (response_sensitivity)
      return Invalid("drug_classes and response_sensitivity exclude each other");
  }
  if (!texture.empty()) MEWM_RETURN_IF_ERROR(texture.Validate());
  return window.Validate();
}

std::string DiffusionConfig::ToJson() const {
  json j = {{"name", name},
            {"crop_voxels", crop_voxels},
            {"spacing_mm", spacing_mm},
            {"latent_channels", latent_channels},
            {"ae_channels", ae_channels},
            {"unet_channels", unet_channels},
            {"embed_dim", embed_dim},
            {"train_timesteps", train_timesteps},
            {"window_hu", {window.lo, window.hi}},
            {"mask_channel", mask_channel},
            {"items", items}};
  // Written only when distilled, so configs of undistilled checkpoints stay as they were.
  if (guidance_distilled != 1.0) j["guidance_distilled"] = guidance_distilled;
  if (lesion_size) j["lesion_size"] = true;  // likewise
  if (item_size) j["item_size"] = true;
  if (item_enhancement) j["item_enhancement"] = true;
  if (clinical) j["clinical"] = true;
  if (response_head) j["response_head"] = true;
  if (response_sensitivity) j["response_sensitivity"] = true;
  if (response_item_size) j["response_item_size"] = true;
  if (!drug_classes.empty()) j["drug_classes"] = drug_classes;
  if (!item_groups.empty()) j["item_groups"] = item_groups;
  if (group_once) j["group_once"] = true;
  if (decoder_pre) j["decoder_pre"] = true;
  if (!texture.empty()) {
    j["texture"] = {{"fraction_edges", texture.fraction_edges},
                    {"change_edges_hu", texture.change_edges_hu},
                    {"pre_edges_hu", texture.pre_edges_hu},
                    {"offset_hu", texture.offset_hu},
                    {"noise_hu", texture.noise_hu}};
  }
  return j.dump();
}

Expected<DiffusionConfig> DiffusionConfig::FromJson(const std::string& text,
                                                    const std::string& origin) {
  DiffusionConfig c;
  try {
    const json j = json::parse(text);
    c.name = j.at("name").get<std::string>();
    c.crop_voxels = j.at("crop_voxels").get<int>();
    c.spacing_mm = j.at("spacing_mm").get<double>();
    c.latent_channels = j.at("latent_channels").get<int>();
    c.ae_channels = j.at("ae_channels").get<std::vector<int>>();
    c.unet_channels = j.at("unet_channels").get<std::vector<int>>();
    c.embed_dim = j.at("embed_dim").get<int>();
    c.train_timesteps = j.at("train_timesteps").get<int>();
    const auto window = j.at("window_hu").get<std::vector<float>>();
    if (window.size() != 2) throw std::runtime_error("window_hu needs [lo, hi]");
    c.window = {window[0], window[1]};
    // Checkpoints written before the field existed were trained on the thresholded mask.
    c.mask_channel = j.value("mask_channel", std::string("viable_mask"));
    c.items = j.at("items").get<std::vector<std::string>>();
    c.guidance_distilled = j.value("guidance_distilled", 1.0);
    c.lesion_size = j.value("lesion_size", false);
    c.item_size = j.value("item_size", false);
    c.item_enhancement = j.value("item_enhancement", false);
    c.clinical = j.value("clinical", false);
    c.response_head = j.value("response_head", false);
    c.response_sensitivity = j.value("response_sensitivity", false);
    c.response_item_size = j.value("response_item_size", false);
    c.drug_classes = j.value("drug_classes", std::vector<std::string>{});
    c.item_groups = j.value("item_groups", std::vector<std::string>{});
    c.group_once = j.value("group_once", false);
    c.decoder_pre = j.value("decoder_pre", false);
    if (j.contains("texture")) {
      const json& t = j.at("texture");
      c.texture.fraction_edges = t.at("fraction_edges").get<std::vector<double>>();
      c.texture.change_edges_hu = t.at("change_edges_hu").get<std::vector<double>>();
      c.texture.pre_edges_hu = t.at("pre_edges_hu").get<std::vector<double>>();
      c.texture.offset_hu = t.at("offset_hu").get<std::vector<double>>();
      c.texture.noise_hu = t.at("noise_hu").get<std::vector<double>>();
      if (c.texture.empty()) throw std::runtime_error("texture has no bins");
    }
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kParse, origin + ": not a diffusion config: " + e.what());
  }
  if (auto valid = c.Validate(); !valid) return valid.error().WithContext(origin);
  return c;
}

Status SamplerConfig::Validate() const {
  if (steps < 1 || steps > 10000) {
    return MakeError(ErrorCode::kInvalidArgument, "sampler steps must be in [1, 10000]");
  }
  if (!(eta >= 0.0 && eta <= 1.0)) {
    return MakeError(ErrorCode::kInvalidArgument, "sampler eta must be in [0, 1]");
  }
  if (!(guidance >= 0.0 && guidance <= kMaxGuidance)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "guidance scale must be in [0, " + std::to_string(kMaxGuidance) + "]");
  }
  return {};
}

SamplerConfig ReferenceSampler() { return SamplerConfig{200, 1.0, 1.0}; }

namespace {

/// A lesion within this margin of a crop's faces is held by it (LesionCrops, LesionTiles).
constexpr double kLesionMarginMm = 8.0;

/// LesionCrops' crops, each with the box and the equivalent diameter of the lesion it is centred
/// on.
struct CentredCrop {
  CropSpec spec;
  WorldBox box;
  double diameter_mm;
};

Expected<std::vector<CentredCrop>> CentredCrops(const PatientCase& patient,
                                                const DiffusionConfig& config) {
  std::set<std::int32_t> labels;
  for (auto it = patient.tumor.grid().cbeginValueOn(); it; ++it) {
    if (*it != 0) labels.insert(*it);
  }
  if (labels.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "patient '" + patient.id + "' has an empty tumor mask");
  }
  const double half = 0.5 * config.crop_voxels * config.spacing_mm;
  std::vector<CentredCrop> crops;
  for (std::int32_t label : labels) {
    MEWM_TRY(const WorldBox box, LabelWorldBox(patient.tumor, label));
    const Eigen::Vector3d centre = 0.5 * (box.min + box.max);
    const bool covered = std::any_of(crops.begin(), crops.end(), [&](const CentredCrop& c) {
      return ((box.min - c.spec.center_world).array().abs() < half - kLesionMarginMm).all() &&
             ((box.max - c.spec.center_world).array().abs() < half - kLesionMarginMm).all();
    });
    if (covered) continue;
    CropSpec spec;
    spec.center_world = centre;
    spec.size = {config.crop_voxels, config.crop_voxels, config.crop_voxels};
    spec.spacing_mm = Eigen::Vector3d::Constant(config.spacing_mm);
    const Eigen::Vector3d& h = patient.tumor.geometry().spacing;
    const double volume_ml = double(CountLabel(patient.tumor, label)) * h.prod() / 1000.0;
    crops.push_back({spec, box, EquivalentDiameterMm(volume_ml)});
  }
  return crops;
}

/// An unbounded territory: every voxel.
WorldBox Everywhere() {
  const double inf = std::numeric_limits<double>::infinity();
  return {Eigen::Vector3d::Constant(-inf), Eigen::Vector3d::Constant(inf)};
}

}  // namespace

double LesionSizeFeature(double diameter_mm) { return std::log(std::max(diameter_mm, 1.0) / 35.0); }

double EnhancementFeature(double enhancing_hu) { return (enhancing_hu - 90.0) / 20.0; }

double ResponseLevelFeature(double residual_ml, double pre_ml) {
  return std::log((std::max(residual_ml, 0.0) + 1.0) / (std::max(pre_ml, 0.0) + 1.0));
}

double ResidualOfLevel(double level, double pre_ml) {
  return std::max(0.0, std::exp(level) * (std::max(pre_ml, 0.0) + 1.0) - 1.0);
}

Expected<double> AnchorResidual(DenseFloat& fraction, const DenseFloat& mask, double voxel_ml,
                                double target_ml) {
  if (!SameLattice(fraction, mask)) {
    return MakeError(ErrorCode::kMismatch, "the mask's lattice (" + mask.geometry.ToString() +
                                               ") differs from the viable fraction's (" +
                                               fraction.geometry.ToString() + ")");
  }
  if (!(std::isfinite(target_ml) && target_ml >= 0.0 && std::isfinite(voxel_ml) &&
        voxel_ml > 0.0)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "anchoring a residual needs a finite target >= 0 mL and voxel volume > 0 "
                     "(got " +
                         std::to_string(target_ml) + " and " + std::to_string(voxel_ml) + ")");
  }
  // The logits of the voxels that move: the tumor's, and any the generator made viable outside it
  // (growth), clamped away from 0 and 1 so that a shift can move each of them. The rest stay 0.
  constexpr double kEdge = 1e-4;
  std::vector<std::size_t> moving;
  std::vector<double> logit;
  for (std::size_t x = 0; x < fraction.size(); ++x) {
    const double v = std::clamp(double(fraction.data[x]), 0.0, 1.0);
    if (mask.data[x] > 0.5f || v > 0.0) {
      const double c = std::clamp(v, kEdge, 1.0 - kEdge);
      moving.push_back(x);
      logit.push_back(std::log(c / (1.0 - c)));
    }
  }
  if (moving.empty()) return 0.0;
  const double want = std::clamp(target_ml / voxel_ml, 0.0, double(moving.size()));
  const auto sum_at = [&](double shift) {
    double sum = 0.0;
    for (double l : logit) sum += 1.0 / (1.0 + std::exp(-(l + shift)));
    return sum;
  };
  // The sum rises with the shift: bisect it (40 halvings of [-40, 40] reach 1e-10).
  double lo = -40.0, hi = 40.0;
  for (int i = 0; i < 40; ++i) {
    const double mid = 0.5 * (lo + hi);
    (sum_at(mid) < want ? lo : hi) = mid;
  }
  const double shift = 0.5 * (lo + hi);
  double reached = 0.0;
  for (std::size_t k = 0; k < moving.size(); ++k) {
    const double v = 1.0 / (1.0 + std::exp(-(logit[k] + shift)));
    fraction.data[moving[k]] = float(v);
    reached += v;
  }
  return reached * voxel_ml;
}

Status FollowAnchoredFraction(DenseFloat& change, const DenseFloat& generated,
                              const DenseFloat& anchored, const DenseFloat& mask) {
  for (const DenseFloat* other : {&generated, &anchored, &mask}) {
    if (!SameLattice(*other, change)) {
      return MakeError(ErrorCode::kMismatch, "a lattice (" + other->geometry.ToString() +
                                                 ") differs from the CT change's (" +
                                                 change.geometry.ToString() + ")");
    }
  }
  const auto dead = [](float fraction) { return 1.0 - std::clamp(double(fraction), 0.0, 1.0); };
  // The crop's dead tissue: the change per unit of dead share over the voxels at least half dead.
  constexpr double kOwn = 0.5;
  double change_sum = 0.0, dead_sum = 0.0;
  for (std::size_t x = 0; x < change.size(); ++x) {
    if (mask.data[x] > 0.5f && dead(generated.data[x]) >= kOwn) {
      change_sum += change.data[x];
      dead_sum += dead(generated.data[x]);
    }
  }
  if (dead_sum == 0.0) return {};
  const double crop_dead = change_sum / dead_sum;
  for (std::size_t x = 0; x < change.size(); ++x) {
    if (mask.data[x] <= 0.5f) continue;
    const double before = dead(generated.data[x]), after = dead(anchored.data[x]);
    // From half dead on, the voxel's own dead tissue (change / before). Below, that reading would
    // divide noise by a small share: its own weighs in with before / kOwn, the crop's fills in.
    const double per_dead = before >= kOwn
                                ? change.data[x] / before
                                : change.data[x] / kOwn + (1.0 - before / kOwn) * crop_dead;
    change.data[x] = float(change.data[x] + (after - before) * per_dead);
  }
  return {};
}

std::array<double, 2> SensitivityFeatures(const TumorFeatures& tumor) {
  return {(tumor.sd_hu - 25.0) / 5.0, tumor.necrotic_fraction * 20.0};
}

std::array<double, 3> ClinicalFeatures(const Covariates& covariates) {
  return {std::log10(std::max(covariates.afp_ng_ml, 0.1)) - 1.5,
          covariates.vascular_invasion ? 1.0 : 0.0, (covariates.age_years - 62.0) / 9.0};
}

Expected<std::vector<LesionTile>> LesionCrops(const PatientCase& patient,
                                              const DiffusionConfig& config) {
  MEWM_TRY(const std::vector<CentredCrop> crops, CentredCrops(patient, config));
  std::vector<LesionTile> out;
  for (const CentredCrop& c : crops) out.push_back({c.spec, Everywhere(), c.diameter_mm});
  return out;
}

Expected<std::vector<LesionTile>> LesionTiles(const PatientCase& patient,
                                              const DiffusionConfig& config) {
  MEWM_TRY(const std::vector<CentredCrop> crops, CentredCrops(patient, config));
  const double edge = config.crop_voxels * config.spacing_mm;
  // A tile's reach beyond its territory: 8 voxels (12 mm at 1.5 mm), past BlendWeight's border
  // taper (6 voxels), so the weight is whole up to the territory's faces.
  const double tile_margin_mm = 8.0 * config.spacing_mm;
  std::vector<LesionTile> tiles;
  for (const auto& [crop, box, diameter_mm] : crops) {
    const Eigen::Vector3d extent = box.max - box.min;
    if ((extent.array() < edge - 2.0 * kLesionMarginMm).all()) {
      tiles.push_back({crop, Everywhere(), diameter_mm});
      continue;
    }
    if (config.crop_voxels <= 24) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "patient '" + patient.id + "' has a lesion larger than the " +
                           std::to_string(int(edge)) + " mm crop of config '" + config.name +
                           "', whose crops (" + std::to_string(config.crop_voxels) +
                           " voxels) are too small to tile it (more than 24 voxels needed)");
    }
    int n[3];
    for (int a = 0; a < 3; ++a) {
      n[a] = std::max(1, int(std::ceil(extent[a] / (edge - 2.0 * tile_margin_mm))));
    }
    for (int k = 0; k < n[2]; ++k) {
      for (int j = 0; j < n[1]; ++j) {
        for (int i = 0; i < n[0]; ++i) {
          const int at[3] = {i, j, k};
          LesionTile tile{crop, Everywhere(), diameter_mm};
          for (int a = 0; a < 3; ++a) {
            const double step = extent[a] / n[a];
            tile.spec.center_world[a] = box.min[a] + (at[a] + 0.5) * step;
            if (at[a] > 0) tile.territory.min[a] = box.min[a] + at[a] * step;
            if (at[a] < n[a] - 1) tile.territory.max[a] = box.min[a] + (at[a] + 1) * step;
          }
          tiles.push_back(tile);
        }
      }
    }
  }
  return tiles;
}

namespace {

template <typename Mask>
Expected<DenseFloat> WindowedCtCrop(const Volume& ct, const Mask& mask, const CropSpec& spec,
                                    const HuWindow& window) {
  if (!ct.geometry().ApproxEquals(mask.geometry()) || ct.extent() != mask.extent()) {
    return MakeError(ErrorCode::kMismatch, "the mask's lattice (" + mask.geometry().ToString() +
                                               ") differs from the CT's (" +
                                               ct.geometry().ToString() + ")");
  }
  MEWM_TRY(DenseFloat image, ExtractCrop(ct, spec));
  for (float v : image.data) {
    if (!std::isfinite(v)) {
      return MakeError(ErrorCode::kInvalidArgument, "the CT crop holds NaN or Inf values");
    }
  }
  WindowToUnit(image, window);
  return image;
}

}  // namespace

Expected<CropChannels> ExtractChannels(const Volume& ct, const LabelVolume& mask,
                                       const CropSpec& spec, const HuWindow& window) {
  MEWM_TRY(DenseFloat image, WindowedCtCrop(ct, mask, spec, window));
  MEWM_TRY(const DenseLabel labels, ExtractCrop(mask, spec));
  DenseFloat binary(labels.dims, labels.geometry, 0.0f);
  for (std::size_t x = 0; x < labels.size(); ++x) binary.data[x] = labels.data[x] != 0 ? 1.f : 0.f;
  return CropChannels{std::move(image), std::move(binary)};
}

Expected<CropChannels> ExtractChannels(const Volume& ct, const Volume& fraction,
                                       const CropSpec& spec, const HuWindow& window) {
  MEWM_TRY(DenseFloat image, WindowedCtCrop(ct, fraction, spec, window));
  MEWM_TRY(DenseFloat u, ExtractCrop(fraction, spec));
  for (float& v : u.data) v = std::isfinite(v) ? std::clamp(v, 0.0f, 1.0f) : 0.0f;
  return CropChannels{std::move(image), std::move(u)};
}

Expected<CropChannels> OutcomeChannels(const Outcome& outcome, const CropSpec& spec,
                                       const DiffusionConfig& config) {
  if (config.mask_channel == "viable_fraction" && outcome.viable_fraction) {
    return ExtractChannels(outcome.post_ct, *outcome.viable_fraction, spec, config.window);
  }
  return ExtractChannels(outcome.post_ct, outcome.viable, spec, config.window);
}

namespace {

/// Separable box blur of radius r (clamped at the edges), in place.
void BoxBlur(DenseFloat& w, int r) {
  std::vector<float> line;
  for (int axis = 0; axis < 3; ++axis) {
    const std::int64_t n = w.dims[axis];
    line.resize(std::size_t(n));
    const int a1 = (axis + 1) % 3, a2 = (axis + 2) % 3;
    for (std::int64_t u = 0; u < w.dims[a1]; ++u) {
      for (std::int64_t v = 0; v < w.dims[a2]; ++v) {
        std::int64_t idx[3];
        idx[a1] = u;
        idx[a2] = v;
        for (std::int64_t x = 0; x < n; ++x) {
          idx[axis] = x;
          line[std::size_t(x)] = w.at(idx[0], idx[1], idx[2]);
        }
        double sum = 0.0;
        for (std::int64_t x = 0; x < std::min<std::int64_t>(r, n); ++x) sum += line[std::size_t(x)];
        for (std::int64_t x = 0; x < n; ++x) {
          if (x + r < n) sum += line[std::size_t(x + r)];
          if (x - r - 1 >= 0) sum -= line[std::size_t(x - r - 1)];
          idx[axis] = x;
          w.at(idx[0], idx[1], idx[2]) = float(sum / double(2 * r + 1));
        }
      }
    }
  }
}

}  // namespace

DenseFloat BlendWeight(const DenseFloat& mask, double spacing_mm, double margin_mm) {
  // Dilate the mask by the margin (a box), then soften the edge over about 3 mm.
  DenseFloat w = mask;
  const int dilate = std::max(0, int(std::ceil(margin_mm / spacing_mm)));
  if (dilate > 0) {
    BoxBlur(w, dilate);
    for (float& v : w.data) v = v > 1e-6f ? 1.0f : 0.0f;
  }
  const int soft = std::max(1, int(std::lround(1.5 / spacing_mm)));
  BoxBlur(w, soft);
  BoxBlur(w, soft);
  const std::int64_t border = 2;
  for (std::int64_t k = 0; k < w.dims[2]; ++k) {
    for (std::int64_t j = 0; j < w.dims[1]; ++j) {
      for (std::int64_t i = 0; i < w.dims[0]; ++i) {
        const std::int64_t edge =
            std::min({i, j, k, w.dims[0] - 1 - i, w.dims[1] - 1 - j, w.dims[2] - 1 - k});
        const float taper = std::clamp(float(edge - border) / 4.0f, 0.0f, 1.0f);
        float& value = w.at(i, j, k);
        value = std::max(value, mask.at(i, j, k)) * taper;
      }
    }
  }
  return w;
}

}  // namespace mewm::dynamics
