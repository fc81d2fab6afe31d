// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Training of the diffusion dynamics (autoencoder, then denoiser with EMA) and the machine
// Turing test's classifier.
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "diffusion_nets.h"
#include "mewm/core/file_util.h"
#include "mewm/core/log.h"
#include "mewm/core/seed.h"
#include "mewm/core/sha256.h"
#include "mewm/core/stats.h"
#include "mewm/core/text.h"
#include "mewm/torch/archive_check.h"
#include "mewm/torch/bridge.h"

namespace mewm::dynamics {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

at::Generator Rng(std::uint64_t seed, std::initializer_list<std::uint64_t> labels) {
  return at::make_generator<at::CPUGeneratorImpl>(DeriveSeed(seed, labels));
}

/// Random integers in [0, n) from a generator.
torch::Tensor RandomIndex(std::int64_t n, std::int64_t count, at::Generator& gen) {
  return torch::randint(n, {count}, gen, torch::kLong);
}

/// Sets the cosine-annealed learning rate base * (1 + cos(pi * step / steps)) / 2 on every
/// parameter group; `Options` is the optimizer's options type (Adam's or AdamW's).
template <class Options>
void SetCosineLr(torch::optim::Optimizer& optimizer, double base, int step, int steps) {
  const double lr = base * 0.5 * (1.0 + std::cos(M_PI * step / steps));
  for (auto& group : optimizer.param_groups()) static_cast<Options&>(group.options()).lr(lr);
}

double Seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// Each crop's residual in mL: its viable fraction (the second channel, [-1, 1] stored) summed.
/// `crops` [N, 2, D, H, W] of any floating type; [N] float.
torch::Tensor ResidualMl(const torch::Tensor& crops, const DiffusionConfig& config) {
  return crops.slice(1, 1, 2).to(torch::kFloat).add(1.0).mul(0.5).sum({1, 2, 3, 4}) *
         nets::CropVoxelMl(config);
}

/// The stacked dataset: [M, 2, D, H, W] pre and post crops in half precision (1 MiB per crop at
/// 64^3), plus each pair's plan row (nets::PlanRows: the plan, and the lesion's size, the
/// patient's covariates and the tumor's enhancement when the config reads them; with
/// DiffusionConfig::response_head, last, the pair's true ResponseLevelFeature).
struct Stacked {
  torch::Tensor pre, post, plan_rows;
  /// Each row's crop: rows with the same value hold one crop of one patient (the same
  /// pre-treatment channels) under different plans.
  std::vector<std::int64_t> crop;
};

/// `s` with its tensors on `device` (the same tensors when they are there already).
Stacked OnDevice(Stacked s, const torch::Device& device) {
  s.pre = s.pre.to(device);
  s.post = s.post.to(device);
  s.plan_rows = s.plan_rows.to(device);
  return s;
}

/// Stacks `pairs` into tensors allocated once and filled pair by pair. `copied(k)`, when given, is
/// called once pair k is in the stack, so a caller that owns the pairs can free their
/// full-precision crops at once (a 200-patient cohort's are 9 GB).
Expected<Stacked> Stack(const std::vector<DiffusionPair>& pairs, const DiffusionConfig& config,
                        const std::function<void(std::size_t)>& copied = {}) {
  if (pairs.empty()) return MakeError(ErrorCode::kInvalidArgument, "no training pairs");
  const std::int64_t v = config.crop_voxels;
  const Index3 want{v, v, v};
  for (const DiffusionPair& p : pairs) {
    for (const CropChannels* c : {&p.pre, &p.post}) {
      if (c->ct.dims != want || c->mask.dims != want) {
        return MakeError(ErrorCode::kMismatch, "training crop of patient '" + p.patient +
                                                   "' is not " + std::to_string(v) +
                                                   "^3 (config '" + config.name + "')");
      }
    }
  }
  const auto m = std::int64_t(pairs.size());
  torch::Tensor pre = torch::empty({m, 2, v, v, v}, torch::kHalf);
  torch::Tensor post = torch::empty({m, 2, v, v, v}, torch::kHalf);
  std::vector<Plan> plans;
  std::vector<double> diameters;
  std::vector<Covariates> covariates;
  std::vector<TumorFeatures> tumors;
  std::vector<std::int64_t> crop(pairs.size());
  std::map<std::string, std::vector<std::int64_t>> first_rows;  // of each crop, per patient
  std::int64_t crops = 0;
  for (std::size_t k = 0; k < pairs.size(); ++k) {
    const DiffusionPair& p = pairs[k];
    const auto row = std::int64_t(k);
    pre[row].copy_(nets::ChannelsToTensor(p.pre));
    std::vector<std::int64_t>& seen = first_rows[p.patient];
    const auto same = std::find_if(seen.begin(), seen.end(),
                                   [&](std::int64_t j) { return torch::equal(pre[j], pre[row]); });
    if (same != seen.end()) {
      crop[k] = crop[std::size_t(*same)];
    } else {
      crop[k] = crops++;
      seen.push_back(row);
    }
    post[row].copy_(nets::ChannelsToTensor(p.post));
    plans.push_back(p.plan);
    diameters.push_back(p.lesion_diameter_mm);
    covariates.push_back(p.covariates);
    tumors.push_back(p.tumor);
    if (copied) copied(k);
  }
  MEWM_TRY(const torch::Tensor multi_hot, nets::PlansToMultiHot(plans, config.items));
  torch::Tensor rows = nets::PlanRows(multi_hot, diameters, covariates, tumors, config);
  if (config.response_head) {
    torch::Tensor level = torch::empty({m, 1});
    for (std::int64_t k = 0; k < m; ++k) {
      level[k][0] = ResponseLevelFeature(ResidualMl(post.slice(0, k, k + 1), config).item<double>(),
                                         ResidualMl(pre.slice(0, k, k + 1), config).item<double>());
    }
    rows = torch::cat({rows, level.to(rows.options())}, 1);
  }
  return Stacked{pre, post, rows, std::move(crop)};
}

/// The CT term of the reconstruction losses: L1 with the tumor's neighbourhood `region` (where
/// treatment changes the image) weighted 5x, plus `edge_weight` times the L1 of the finite
/// differences (edges). `ct` and `target` are [N, 1, D, H, W].
torch::Tensor CtLoss(const torch::Tensor& ct, const torch::Tensor& target,
                     const torch::Tensor& region, double edge_weight) {
  const torch::Tensor weight = 1.0 + 4.0 * region;
  torch::Tensor loss = ((ct - target).abs() * weight).mean() / weight.mean();
  if (edge_weight > 0.0) {
    for (int axis = 2; axis < 5; ++axis) {
      const std::int64_t n = ct.size(axis);
      const auto d = [&](const torch::Tensor& t) {
        return t.slice(axis, 1, n) - t.slice(axis, 0, n - 1);
      };
      loss = loss + edge_weight / 3.0 * torch::l1_loss(d(ct), d(target));
    }
  }
  return loss;
}

/// Reconstruction loss of the autoencoder: the CT term (CtLoss), the mask channel's L1 weighted
/// 2x, and the KL term.
torch::Tensor AeLoss(const torch::Tensor& x, const torch::Tensor& recon, const torch::Tensor& mean,
                     const torch::Tensor& logvar, const torch::Tensor& region,
                     const DiffusionTrainOptions& o) {
  const torch::Tensor loss = CtLoss(recon.slice(1, 0, 1), x.slice(1, 0, 1), region, o.edge_weight) +
                             2.0 * torch::l1_loss(recon.slice(1, 1, 2), x.slice(1, 1, 2));
  const torch::Tensor kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean();
  return loss + o.kl_weight * kl;
}

/// Loss of the decoder fine-tune, on what the backend pastes: the change decoded(z_post) -
/// decoded(z_pre) added to the exact pre-treatment crop, against the true post-treatment crop.
/// The CT term is CtLoss; the viable fraction (nets::ResidualFraction before its cut) gets a
/// voxel L1 weighted 2x and the error of its sum over the crop, relative to the pre-treatment
/// tumor volume: the residual the survival model reads. `dec_pre` and `dec_post` are the decoder's
/// outputs; `region` the tumor's neighbourhood.
torch::Tensor PasteLoss(const torch::Tensor& pre, const torch::Tensor& post,
                        const torch::Tensor& dec_pre, const torch::Tensor& dec_post,
                        const torch::Tensor& region, const DiffusionTrainOptions& o) {
  const torch::Tensor ct = pre.slice(1, 0, 1) + dec_post.slice(1, 0, 1) - dec_pre.slice(1, 0, 1);
  const torch::Tensor pre_mask = pre.slice(1, 1, 2).add(1.0).mul(0.5);
  const torch::Tensor u = (pre_mask + nets::DecodedFraction(dec_post.slice(1, 1, 2), o.config) -
                           nets::DecodedFraction(dec_pre.slice(1, 1, 2), o.config))
                              .clamp(0.0, 1.0);
  const torch::Tensor u_true = post.slice(1, 1, 2).add(1.0).mul(0.5);
  const torch::Tensor sum_error = (u.sum({1, 2, 3, 4}) - u_true.sum({1, 2, 3, 4})).abs() /
                                  pre_mask.sum({1, 2, 3, 4}).clamp_min(1.0);
  return CtLoss(ct, post.slice(1, 0, 1), region, o.edge_weight) + 2.0 * torch::l1_loss(u, u_true) +
         sum_error.mean();
}

/// DiffusionTrainOptions::fit_texture: the TextureModel of `net`'s autoencoder on up to 64 of the
/// pairs, seen as the backend pastes them. Each true post-treatment crop is encoded and decoded
/// (with its pre-treatment crop when the decoder reads it) and pasted as a change onto the
/// pre-treatment crop; each voxel is binned by nets::TextureBins. Per bin, the offset is the mean
/// of what the truth adds to the paste, and the noise the SD of what is left, measured through
/// nets::HighPass (so the decoded change's own error, which is smooth, does not count as noise).
/// Bins of under 500 voxels add nothing.
TextureModel FitTexture(nets::DiffusionNet& net, const Stacked& data, const DiffusionConfig& config,
                        DiffusionTrainReport& report) {
  torch::NoGradGuard no_grad;
  TextureModel t;
  t.fraction_edges = {0.05, 0.35, 0.65, 0.95};
  t.change_edges_hu = {-60.0, -20.0, 20.0, 60.0, 120.0, 200.0};
  t.pre_edges_hu = {-20.0, 0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0, 110.0, 130.0, 160.0, 200.0};
  const std::int64_t bins = std::int64_t(t.bins());
  const auto hu = [&config](const torch::Tensor& unit) {
    return nets::UnitToHu(unit, config.window);
  };
  // Per pair: each voxel's bin (kInt, to halve what is kept) and what the truth adds to the paste.
  std::vector<torch::Tensor> voxel_bins, added;
  // On the crops' device; read back at the end.
  const auto on_data = data.pre.options().dtype(torch::kDouble);
  torch::Tensor count = torch::zeros({bins}, on_data), sum = count.clone();
  const bool was_training = net->is_training();
  net->eval();
  for (std::int64_t i = 0; i < std::min<std::int64_t>(data.pre.size(0), 64); ++i) {
    const torch::Tensor pre = data.pre.slice(0, i, i + 1).to(torch::kFloat);
    const torch::Tensor post = data.post.slice(0, i, i + 1).to(torch::kFloat);
    const torch::Tensor features = net->ae->PreFeatures(pre);
    const torch::Tensor dec_pre = net->ae->Decode(net->ae->Encode(pre).first, features);
    const torch::Tensor dec_post = net->ae->Decode(net->ae->Encode(post).first, features);
    const torch::Tensor pre_mask = pre.slice(1, 1, 2).add(1.0).mul(0.5);
    const torch::Tensor fraction =
        nets::ResidualFraction(dec_post.slice(1, 1, 2), dec_pre.slice(1, 1, 2), pre_mask, config);
    const torch::Tensor pre_hu = hu(pre.slice(1, 0, 1));
    const torch::Tensor change = hu(dec_post.slice(1, 0, 1)) - hu(dec_pre.slice(1, 0, 1));
    const torch::Tensor bin = nets::TextureBins(t, pre_mask, fraction, change, pre_hu)[0][0];
    added.push_back((hu(post.slice(1, 0, 1)) - pre_hu - change)[0][0]);
    count.index_add_(0, bin.flatten(), torch::ones({bin.numel()}, on_data));
    sum.index_add_(0, bin.flatten(), added.back().flatten().to(torch::kDouble));
    voxel_bins.push_back(bin.to(torch::kInt));
  }
  if (was_training) net->train();
  torch::Tensor fitted = count >= 500.0;
  torch::Tensor offset = torch::where(fitted, sum / count.clamp_min(1.0), 0.0);
  // The noise: what the offsets leave, through the high-pass (white noise of SD sigma keeps
  // sigma^2 * 26/27 of its variance).
  torch::Tensor square = torch::zeros({bins}, on_data);
  for (std::size_t k = 0; k < voxel_bins.size(); ++k) {
    const torch::Tensor bin = voxel_bins[k].to(torch::kLong);
    const torch::Tensor left = added[k] - offset.index({bin}).to(torch::kFloat);
    square.index_add_(0, bin.flatten(), nets::HighPass(left).flatten().to(torch::kDouble).square());
  }
  const torch::Tensor noise =
      torch::where(fitted, (square / count.clamp_min(1.0) * (27.0 / 26.0)).sqrt().clamp_max(200.0),
                   0.0)
          .cpu();
  offset = offset.cpu();
  count = count.cpu();
  fitted = fitted.cpu();
  t.offset_hu.assign(offset.data_ptr<double>(), offset.data_ptr<double>() + bins);
  t.noise_hu.assign(noise.data_ptr<double>(), noise.data_ptr<double>() + bins);
  report.texture_bins = int(fitted.sum().item<std::int64_t>());
  // Voxel-weighted summaries over the bins inside the pre-treatment tumor (the upper half).
  const torch::Tensor tumor_count = count.slice(0, bins / 2) * fitted.slice(0, bins / 2);
  const double tumor_voxels = std::max(1.0, tumor_count.sum().item<double>());
  report.texture_tumor_offset_hu =
      (tumor_count * offset.slice(0, bins / 2).abs()).sum().item<double>() / tumor_voxels;
  report.texture_tumor_noise_hu = std::sqrt(
      (tumor_count * noise.slice(0, bins / 2).square()).sum().item<double>() / tumor_voxels);
  return t;
}

/// Full-batch steps of the response head's fit (DiffusionConfig::response_head): a few seconds.
constexpr int kResponseSteps = 2000;
/// The ridge weights the drug term fitted alone tries (SolveDrugTerm): 1e-6 to 10 times the mean
/// diagonal of its Gram matrix, a decade apart.
constexpr int kDrugRidgeGrid = 8;

/// Resumable state: which stage and step, plus the modules and optimizers.
struct TrainState {
  std::string stage = "autoencoder";
  int step = 0;
};

/// What a resumed run must share with the run that saved the state: every option that shapes the
/// weights except the step counts (more steps extend a run), and the training data (each pair's
/// patient, plan and crop sums, as a SHA-256). A starting checkpoint counts by its SHA-256, not its
/// path, so a moved copy resumes and a retrained file at the same path does not.
Expected<nlohmann::json> RunIdentity(const DiffusionTrainOptions& o,
                                     const std::vector<DiffusionPair>& train,
                                     const std::vector<DiffusionPair>& validation) {
  const auto sum = [](const DenseFloat& d) {
    return std::accumulate(d.data.begin(), d.data.end(), 0.0);
  };
  nlohmann::json data = nlohmann::json::array();
  for (const std::vector<DiffusionPair>* pairs : {&train, &validation}) {
    nlohmann::json list = nlohmann::json::array();
    for (const DiffusionPair& p : *pairs) {
      list.push_back({p.patient, p.plan.ToString(), sum(p.pre.ct), sum(p.pre.mask), sum(p.post.ct),
                      sum(p.post.mask)});
    }
    data.push_back(std::move(list));
  }
  const auto content = [](const std::string& path) -> Expected<std::string> {
    if (path.empty()) return path;
    return Sha256File(path);
  };
  MEWM_TRY(const std::string distill_from, content(o.distill_from));
  MEWM_TRY(const std::string init_from, content(o.init_from));
  return nlohmann::json{{"config", nlohmann::json::parse(o.config.ToJson())},
                        {"seed", o.seed},
                        {"ae_batch", o.ae_batch},
                        {"ae_patch", o.ae_patch},
                        {"ae_lr", o.ae_lr},
                        {"kl_weight", o.kl_weight},
                        {"edge_weight", o.edge_weight},
                        {"decoder_batch", o.decoder_batch},
                        {"decoder_lr", o.decoder_lr},
                        {"denoiser_batch", o.denoiser_batch},
                        {"denoiser_lr", o.denoiser_lr},
                        {"null_plan_prob", o.null_plan_prob},
                        {"residual_weight", o.residual_weight},
                        {"pair_weight", o.pair_weight},
                        {"pair_neighbours", o.pair_neighbours},
                        {"ema_decay", o.ema_decay},
                        {"distill_from_sha256", distill_from},
                        {"distill_guidance", o.distill_guidance},
                        {"init_from_sha256", init_from},
                        {"train_pairs", train.size()},
                        {"validation_pairs", validation.size()},
                        {"data", ToHex(Sha256(data.dump()))}};
}

Status SaveState(const std::string& dir, const TrainState& state, const nlohmann::json& run,
                 nets::DiffusionNet& net, nets::DiffusionNet& ema,
                 torch::optim::Optimizer& optimizer) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  try {
    torch::save(net, dir + "/net.pt.tmp");
    torch::save(ema, dir + "/ema.pt.tmp");
    torch::save(optimizer, dir + "/optim.pt.tmp");
    for (const char* name : {"net.pt", "ema.pt", "optim.pt"}) {
      fs::rename(dir + "/" + name + ".tmp", dir + "/" + name);
    }
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kIo,
                     "cannot save training state in '" + dir + "': " + ExceptionCause(e));
  }
  const nlohmann::json j = {{"stage", state.stage}, {"step", state.step}, {"run", run}};
  return WriteFileAtomic(dir + "/state.json", j.dump() + "\n");
}

/// The state saved in `dir`, loaded into `net` and `ema` on `device` (it may have been saved on
/// another); `fresh` when there is none. kMismatch, naming what differs, when another run saved
/// it (`run`: RunIdentity); a state saved before runs were recorded is resumed unchecked.
Expected<TrainState> LoadState(const std::string& dir, const TrainState& fresh,
                               const nlohmann::json& run, nets::DiffusionNet& net,
                               nets::DiffusionNet& ema, const torch::Device& device) {
  TrainState state = fresh;
  if (!std::filesystem::exists(std::filesystem::symlink_status(dir + "/state.json"))) {
    return state;  // nothing to resume
  }
  // A state file is small; a FIFO put in its place would block the read for ever.
  MEWM_TRY(const std::string text, ReadRegularFile(dir + "/state.json", std::uint64_t(1) << 20));
  try {
    const auto j = nlohmann::json::parse(text);
    state.stage = j.at("stage").get<std::string>();
    const nlohmann::json& step = j.at("step");
    if (state.stage != "autoencoder" && state.stage != "decoder" && state.stage != "denoiser") {
      return MakeError(ErrorCode::kCorruptData, "training state in '" + dir + "': stage '" +
                                                    EscapeControl(state.stage) +
                                                    "' is none of the trainer's");
    }
    if (!step.is_number_integer() || step.get<std::int64_t>() < 0 ||
        step.get<std::int64_t>() > 100000000) {
      return MakeError(ErrorCode::kCorruptData, "training state in '" + dir + "': step " +
                                                    step.dump() +
                                                    " is not a whole number of steps done");
    }
    state.step = step.get<int>();
    if (const auto saved = j.find("run"); saved != j.end() && *saved != run) {
      return MakeError(ErrorCode::kMismatch,
                       "training state in '" + dir +
                           "' belongs to another run; resume with that run's options and "
                           "cohort, or give another state folder (this one is left as it is):" +
                           torch_bridge::DescribeJsonDifferences(saved->dump(), "the state has",
                                                                 run.dump(), "this run has"));
    }
    // libtorch compiles the code an archive holds as it loads it: each file of the state is
    // checked first, the optimizer's too (read later, by the stage that resumes).
    for (const char* name : {"net.pt", "ema.pt", "optim.pt"}) {
      const std::string file = dir + "/" + name;
      if (std::string(name) == "optim.pt" && !std::filesystem::exists(file)) continue;
      if (auto layout = torch_bridge::CheckArchiveLayout(file); !layout) {
        return layout.error().WithContext("training state in '" + dir +
                                          "' (delete the folder to start afresh)");
      }
    }
    torch::load(net, dir + "/net.pt", device);
    torch::load(ema, dir + "/ema.pt", device);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, "training state in '" + dir +
                                                  "' is unreadable: " + ExceptionCause(e) +
                                                  " (delete the folder to start afresh)");
  }
  return state;
}

void UpdateEma(nets::DiffusionNet& ema, nets::DiffusionNet& net, double decay) {
  torch::NoGradGuard no_grad;
  auto target = ema->denoiser->parameters();
  auto source = net->denoiser->parameters();
  for (std::size_t k = 0; k < target.size(); ++k) {
    target[k].mul_(decay).add_(source[k], 1.0 - decay);
  }
}

/// Copies every parameter and buffer `from` has; one it lacks keeps its initialisation (the size
/// input of a DiffusionConfig::lesion_size, ::item_size, ::item_enhancement or ::clinical denoiser
/// fine-tuned from one without it). A response head that reads other inputs than `from`'s
/// (DiffusionConfig::response_sensitivity or ::response_item_size added) keeps its initialisation,
/// all of it: it is fitted whole (TrainResponseHead).
void CopyWeights(nets::DiffusionNet& to, nets::DiffusionNet& from) {
  torch::NoGradGuard no_grad;
  auto t = to->named_parameters(), f = from->named_parameters();
  const std::string head = "denoiser.response.";
  const torch::Tensor* to_in = t.find(head + "0.weight");
  const torch::Tensor* from_in = f.find(head + "0.weight");
  const bool new_head =
      to_in != nullptr && from_in != nullptr && to_in->sizes() != from_in->sizes();
  for (auto& item : t) {
    if (new_head && item.key().rfind(head, 0) == 0) continue;
    if (const torch::Tensor* source = f.find(item.key())) item.value().copy_(*source);
  }
  auto tb = to->named_buffers(), fb = from->named_buffers();
  for (auto& item : tb) item.value().copy_(fb[item.key()]);
}

/// Encodes every crop with the autoencoder's mean, two at a time (activations stay under glibc's
/// mmap threshold, so their buffers are reused).
torch::Tensor EncodeAll(nets::DiffusionNet& net, const torch::Tensor& crops) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> z;
  for (std::int64_t b = 0; b < crops.size(0); b += 2) {
    z.push_back(
        net->ae->Encode(crops.slice(0, b, std::min(crops.size(0), b + 2)).to(torch::kFloat)).first);
  }
  return torch::cat(z);
}

/// Samples every validation pair (at most 96) with 10-step DDIM at each guidance scale of the
/// grid, and scores the generated residual (integrated viable fraction) against the truth: per
/// patient, Spearman across plans (crops of one plan summed; a constant prediction counts 0), and
/// the mean absolute error per crop.
std::vector<GuidanceScore> ScoreGuidance(
    nets::DiffusionNet& net, const std::vector<DiffusionPair>& pairs, const torch::Tensor& z_pre,
    const torch::Tensor& context, const torch::Tensor& plan_rows, const torch::Tensor& pre,
    const torch::Tensor& post, const std::vector<double>& alpha_bar,
    const std::vector<double>& grid, const DiffusionTrainOptions& o) {
  torch::NoGradGuard no_grad;
  const std::int64_t n = std::min<std::int64_t>(z_pre.size(0), 96);
  // What a DiffusionConfig::decoder_pre decoder reads of rows [b, e)'s pre-treatment crops.
  const auto pre_features = [&](std::int64_t b, std::int64_t e) {
    return net->ae->PreFeatures(pre.slice(0, b, e).to(torch::kFloat));
  };
  // Each row's pre-treatment latent decoded and its tumor mask: the reference of the change.
  std::vector<torch::Tensor> decoded_pre_parts;
  for (std::int64_t d = 0; d < n; d += 2) {
    decoded_pre_parts.push_back(
        net->ae->Decode(z_pre.slice(0, d, std::min(n, d + 2)), pre_features(d, std::min(n, d + 2)))
            .slice(1, 1, 2));
  }
  const torch::Tensor decoded_pre = torch::cat(decoded_pre_parts);
  const torch::Tensor pre_mask =
      pre.slice(0, 0, n).slice(1, 1, 2).to(torch::kFloat).add(1.0).mul(0.5);
  const double voxel_ml = nets::CropVoxelMl(o.config);
  const torch::Tensor true_ml = ResidualMl(post.slice(0, 0, n), o.config);
  const torch::Tensor plan_emb = net->denoiser->PlanEmbedding(plan_rows.slice(0, 0, n));
  auto gen = Rng(o.seed, {4});
  const torch::Tensor noise = torch::randn(z_pre.slice(0, 0, n).sizes(), gen).to(z_pre.device());
  std::vector<GuidanceScore> scores;
  for (double guidance : grid) {
    SamplerConfig sampler{10, 0.0, guidance};
    std::vector<double> pred(std::size_t(n), 0.0);
    for (std::int64_t b = 0; b < n; b += 8) {
      const std::int64_t e = std::min(n, b + 8);
      const torch::Tensor delta =
          nets::Ddim(net->denoiser, noise.slice(0, b, e), context.slice(0, b, e),
                     plan_emb.slice(0, b, e), alpha_bar, sampler, {}, {});
      for (std::int64_t d = b; d < e; d += 2) {
        const std::int64_t f = std::min(e, d + 2);
        const torch::Tensor z =
            z_pre.slice(0, d, f) + delta.slice(0, d - b, f - b) / net->latent_scale;
        const torch::Tensor u =
            nets::ResidualFraction(net->ae->Decode(z, pre_features(d, f)).slice(1, 1, 2),
                                   decoded_pre.slice(0, d, f), pre_mask.slice(0, d, f), o.config)
                .sum({1, 2, 3, 4});
        for (std::int64_t r = d; r < f; ++r)
          pred[std::size_t(r)] = u[r - d].item<double>() * voxel_ml;
      }
    }
    // Per patient and plan: the sum over that plan's crops.
    std::map<std::string, std::map<std::string, std::pair<double, double>>> by_patient;
    double abs_error = 0.0;
    for (std::int64_t r = 0; r < n; ++r) {
      const double t = true_ml[r].item<double>();
      auto& cell = by_patient[pairs[std::size_t(r)].patient][pairs[std::size_t(r)].plan.ToString()];
      cell.first += pred[std::size_t(r)];
      cell.second += t;
      abs_error += std::abs(pred[std::size_t(r)] - t);
    }
    double rho_sum = 0.0;
    int counted = 0;
    for (const auto& [patient, plans] : by_patient) {
      std::vector<double> p, t;
      for (const auto& [plan, cell] : plans) {
        p.push_back(cell.first);
        t.push_back(cell.second);
      }
      if (std::isnan(Spearman(t, t))) continue;
      const double rho = Spearman(p, t);
      rho_sum += std::isnan(rho) ? 0.0 : rho;
      ++counted;
    }
    scores.push_back({guidance, counted > 0 ? rho_sum / counted : 0.0, abs_error / double(n)});
  }
  return scores;
}

/// For each row of `data`, the rows of the same crop under another plan (the paired-plan term's
/// partners; DiffusionTrainOptions::pair_weight). With `neighbours_only`, only plans one item
/// apart (DiffusionTrainOptions::pair_neighbours): the plan rows' first `items` columns are the
/// multi-hot, and two of them are neighbours when one item was added or removed (one column
/// differs) or swapped for another (two differ, and the plans have as many items).
std::vector<std::vector<std::int64_t>> PlanPartners(const Stacked& data, std::int64_t items,
                                                    bool neighbours_only) {
  std::map<std::int64_t, std::vector<std::int64_t>> rows_of_crop;
  for (std::size_t k = 0; k < data.crop.size(); ++k) {
    rows_of_crop[data.crop[k]].push_back(std::int64_t(k));
  }
  std::vector<std::vector<std::int64_t>> partners(data.crop.size());
  for (const auto& [crop, rows] : rows_of_crop) {
    for (std::int64_t a : rows) {
      for (std::int64_t b : rows) {
        if (torch::equal(data.plan_rows[a], data.plan_rows[b])) continue;
        if (neighbours_only) {
          const torch::Tensor ha = data.plan_rows[a].slice(0, 0, items);
          const torch::Tensor hb = data.plan_rows[b].slice(0, 0, items);
          const double apart = (ha - hb).abs().sum().item<double>();
          const bool swap = apart == 2.0 && ha.sum().item<double>() == hb.sum().item<double>();
          if (apart != 1.0 && !swap) continue;
        }
        partners[std::size_t(a)].push_back(b);
      }
    }
  }
  return partners;
}

}  // namespace

namespace {

/// One training run, a method per stage: the autoencoder, the latent targets, the denoiser, the
/// guidance scores and the checkpoint. Built after the options are checked and the global seed
/// is set, because the networks draw their initial weights from it.
class Trainer {
 public:
  /// With a `start` (a guidance distillation's teacher, or the checkpoint fine-tuned), both
  /// networks start as its copy and training starts at the denoiser stage. With a `teacher`, the
  /// denoiser learns the teacher's guided prediction. The crops, the networks (`start` and
  /// `teacher` too) and everything computed from them live on `device`.
  Trainer(Stacked data, Stacked val, const DiffusionTrainOptions& o,
          const std::function<void(const DiffusionTrainProgress&)>& progress,
          nets::DiffusionNet* start, nets::DiffusionNet* teacher, const torch::Device& device)
      : o_(o),
        progress_(progress),
        device_(device),
        data_(OnDevice(std::move(data), device)),
        val_(OnDevice(std::move(val), device)),
        start_(start),
        teacher_(teacher) {
    for (nets::DiffusionNet* n : {&net_, &ema_, start_, teacher_}) {
      if (n != nullptr) (*n)->to(device_);
    }
    if (start_ != nullptr) {
      CopyWeights(net_, *start_);
      state_ = {AfterAutoencoder(), 0};
    }
    if (teacher_ != nullptr) (*teacher_)->eval();
    CopyWeights(ema_, net_);
    if (o_.pair_weight > 0.0) {
      partners_ = PlanPartners(data_, std::int64_t(o_.config.items.size()), o_.pair_neighbours);
      for (std::size_t k = 0; k < partners_.size(); ++k) {
        if (!partners_[k].empty()) anchors_.push_back(std::int64_t(k));
      }
    }
  }

  /// False when the paired-plan term is asked for but no crop has two plans to pair (one item
  /// apart, with DiffusionTrainOptions::pair_neighbours).
  bool Pairable() const { return o_.pair_weight <= 0.0 || !anchors_.empty(); }

  /// Continues from the state folder's last checkpoint, when there is one, if the same run
  /// (`run`: RunIdentity) saved it and it is not past the steps asked.
  Status Resume(nlohmann::json run) {
    run_ = std::move(run);
    if (o_.state_dir.empty()) return {};
    MEWM_TRY(state_, LoadState(o_.state_dir, state_, run_, net_, ema_, device_));
    const int asked = state_.stage == "autoencoder" ? o_.ae_steps
                      : state_.stage == "decoder"   ? o_.decoder_steps
                                                    : o_.denoiser_steps;
    if (state_.step > asked) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "training state in '" + o_.state_dir + "' is at " + state_.stage + " step " +
                           std::to_string(state_.step) + ", past the " + std::to_string(asked) +
                           " steps asked: ask at least as many, or give another state folder");
    }
    // Steps of the stages before the one resumed: the autoencoder's (unless a checkpoint gave
    // it), then the decoder's.
    const int before_decoder = start_ != nullptr ? 0 : o_.ae_steps;
    result_.resumed_from_step = state_.stage == "autoencoder" ? state_.step
                                : state_.stage == "decoder"
                                    ? before_decoder + state_.step
                                    : before_decoder + o_.decoder_steps + state_.step;
    return {};
  }

  Status TrainAutoencoder();
  /// The decoder fine-tune (DiffusionTrainOptions::decoder_steps): the encoder frozen, the
  /// decoder learns what the backend pastes (PasteLoss) on the training pairs.
  Status TrainDecoder();
  /// Encodes every crop with the trained autoencoder: the denoiser's targets (the scaled change
  /// of the latent) and contexts, for training and validation. A distilled student keeps its
  /// teacher's latent scale, a fine-tuned model its own. Then the residual term's gradients.
  void EncodeLatents();
  /// DiffusionConfig::response_head: with `fit` (the head asked for, not only kept from the
  /// checkpoint a refit starts from), fits the response head to the training pairs' true levels
  /// (full batch, AdamW; the drug term alone is solved, SolveDrugTerm); either way, measures its
  /// fit for the report.
  /// The loss is the level's squared error plus that of its contrast between the plans of one
  /// crop (each minus the crop's mean), and the weights kept are those of the lowest validation
  /// contrast error: the patient's level, which the head cannot know, would stop the fit while
  /// the contrasts, which the planner ranks, still improve. The EMA copy gets the same. A run
  /// resumed inside the denoiser stage keeps the head its state holds (and reports its fit).
  void TrainResponseHead(bool fit);
  /// DiffusionTrainOptions::response_drug_only: the drug term's weights solved exactly, as a ridge
  /// regression of the training pairs' level contrasts between each crop's plans (x and share:
  /// their rows and tumor shares; vx and vshare the validation pairs'), the ridge weight the one
  /// of kDrugRidgeGrid's with the lowest validation contrast error. An optimizer stopped early
  /// left each weight where its first steps had carried it: a class with one drug got its offset
  /// twice (the class's and the drug's moved in step), whatever the data said.
  void SolveDrugTerm(const torch::Tensor& x, const torch::Tensor& share, const torch::Tensor& vx,
                     const torch::Tensor& vshare);
  Status TrainDenoiser();
  /// Ships the EMA denoiser with the trained autoencoder and scale, and scores the guidance grid
  /// on the validation pairs.
  void Finish(const std::vector<DiffusionPair>& validation_pairs);
  Status Save(std::size_t train_pairs, std::size_t validation_pairs);

  DiffusionTrainReport& result() { return result_; }

 private:
  void Report(const DiffusionTrainProgress& p) const {
    if (progress_) progress_(p);
  }
  /// The stage after the autoencoder's: the decoder fine-tune when it has steps.
  const char* AfterAutoencoder() const { return o_.decoder_steps > 0 ? "decoder" : "denoiser"; }
  /// Validation L1 of the CT channel, Dice of the mask channel and the relative residual error
  /// of eight pre- and eight post-treatment validation crops.
  std::tuple<double, double, double> ValidateAutoencoder();
  /// A batch noised at random timesteps: x_t, the float timesteps, the v target, and each row's
  /// sqrt(1 - alpha_bar) ([N, 1, 1, 1, 1]), by which an error of v is an error of x_0.
  struct Noised {
    torch::Tensor xt, t, v, sigma;
  };
  /// `paired`: the second half of the rows gets the first half's timesteps and noise.
  Noised Noise(const torch::Tensor& x0, at::Generator& gen, bool paired = false) const;
  /// v-prediction loss of a batch; `null_prob` of the rows see the null plan. With the rows'
  /// `residual_grad` (ResidualGradients), plus DiffusionTrainOptions::residual_weight times the
  /// squared residual error the prediction implies, over the training residuals' SD. `paired`
  /// (a PairedIndex batch): the halves share timesteps, noise and plan dropping, and the loss
  /// adds DiffusionTrainOptions::pair_weight times the squared error of the difference between
  /// the halves' residuals, over the RMS of the true differences.
  torch::Tensor DenoiseLoss(nets::Denoiser& denoiser, const torch::Tensor& x0,
                            const torch::Tensor& ctx, const torch::Tensor& hot, at::Generator& gen,
                            double null_prob, const torch::Tensor& residual_grad = {},
                            bool paired = false) const;
  /// A batch of the paired-plan term: half of DiffusionTrainOptions::denoiser_batch random rows
  /// that have a partner, then for each a random partner (the same crop, another plan).
  torch::Tensor PairedIndex(at::Generator& gen) const;
  /// DiffusionTrainOptions::residual_weight: each training pair's gradient of its decoded
  /// residual (mL, summed as nets::ResidualFraction gives it) with respect to the scaled latent
  /// change, at its true change, and the SD of the pairs' true residuals.
  void ResidualGradients();
  /// Guidance distillation: the student's conditional v against the teacher's guided v at the
  /// same x_t (one pass against two).
  torch::Tensor DistillLoss(nets::Denoiser& student, const torch::Tensor& x0,
                            const torch::Tensor& ctx, const torch::Tensor& hot,
                            at::Generator& gen) const;
  double ValidateDenoiser(nets::DiffusionNet& model) const;

  const DiffusionTrainOptions& o_;
  const std::function<void(const DiffusionTrainProgress&)>& progress_;
  const torch::Device device_;
  const Stacked data_, val_;
  nets::DiffusionNet* start_;    ///< the trained network training starts from, or null
  nets::DiffusionNet* teacher_;  ///< guidance distillation's teacher, or null
  nets::DiffusionNet net_{o_.config}, ema_{o_.config};
  TextureModel texture_ = o_.config.texture;  ///< what the checkpoint stores (Finish may fit it)
  TrainState state_;
  nlohmann::json run_;  ///< RunIdentity, saved with every state
  DiffusionTrainReport result_;
  // Latent targets and contexts (EncodeLatents).
  torch::Tensor delta_, context_, vz_pre_, vdelta_, vcontext_, ab_;
  /// The training pairs' latents (the encoder's means), once the encoder is final: the decoder
  /// stage and EncodeLatents share them (TrainingLatents).
  torch::Tensor z_pre_, z_post_;
  /// ResidualGradients: [M, latent, d, h, w] (undefined without the residual or the paired-plan
  /// term) and mL.
  torch::Tensor residual_grad_;
  double residual_sd_ml_ = 1.0;
  /// The paired-plan term (with DiffusionTrainOptions::pair_weight only): PlanPartners, the rows
  /// that have one, and the RMS of the true residual differences between partners (mL).
  std::vector<std::vector<std::int64_t>> partners_;
  std::vector<std::int64_t> anchors_;
  double pair_rms_ml_ = 1.0;
  void TrainingLatents() {
    if (!z_pre_.defined()) {
      z_pre_ = EncodeAll(net_, data_.pre);
      z_post_ = EncodeAll(net_, data_.post);
    }
  }
  std::vector<double> alpha_bar_;
};

std::tuple<double, double, double> Trainer::ValidateAutoencoder() {
  torch::NoGradGuard no_grad;
  const torch::Tensor val_pre = val_.pre.slice(0, 0, 8).to(torch::kFloat);
  const torch::Tensor val_post = val_.post.slice(0, 0, 8).to(torch::kFloat);
  const torch::Tensor val_crops = torch::cat({val_pre, val_post});
  net_->eval();
  std::vector<torch::Tensor> parts;
  const std::int64_t half = val_pre.size(0);
  for (std::int64_t b = 0; b < val_crops.size(0); b += 2) {
    // Each crop decoded with its pair's pre-treatment crop (a decoder_pre decoder reads it).
    const std::int64_t e = std::min(val_crops.size(0), b + 2);
    const torch::Tensor pre_rows =
        torch::arange(b, e, torch::TensorOptions(torch::kLong).device(device_)).remainder(half);
    parts.push_back(net_->ae->Decode(net_->ae->Encode(val_crops.slice(0, b, e)).first,
                                     net_->ae->PreFeatures(val_pre.index_select(0, pre_rows))));
  }
  const torch::Tensor recon = torch::cat(parts);
  // The pre-treatment crops with their own post-treatment crops, for the residual ceiling.
  const torch::Tensor post_fraction = nets::ResidualFraction(
      recon.slice(0, half).slice(1, 1, 2), recon.slice(0, 0, half).slice(1, 1, 2),
      val_pre.slice(1, 1, 2).add(1.0).mul(0.5), o_.config);
  net_->train();
  const double l1 = torch::l1_loss(recon.slice(1, 0, 1), val_crops.slice(1, 0, 1)).item<double>();
  const torch::Tensor pm = recon.slice(1, 1, 2) > 0, tm = val_crops.slice(1, 1, 2) > 0;
  const double inter = (pm & tm).sum().item<double>();
  const double dice =
      2.0 * inter / std::max(1.0, pm.sum().item<double>() + tm.sum().item<double>());
  const double true_sum = val_post.slice(1, 1, 2).add(1.0).mul(0.5).sum().item<double>();
  const double residual_rel =
      std::abs(post_fraction.sum().item<double>() - true_sum) / std::max(true_sum, 1.0);
  return std::make_tuple(l1, dice, residual_rel);
}

Status Trainer::TrainAutoencoder() {
  if (state_.stage == "autoencoder") {
    // Random patches of pre and post crops, weighted toward the pre-treatment tumor mask
    // dilated by 2 voxels (for both halves of all_crops).
    const torch::Tensor all_crops = torch::cat({data_.pre, data_.post});
    const torch::Tensor pre_region =
        torch::max_pool3d(data_.pre.slice(1, 1, 2).to(torch::kFloat).add(1.0).mul(0.5), 5, 1, 2)
            .to(torch::kHalf);
    const torch::Tensor all_regions = torch::cat({pre_region, pre_region});
    torch::optim::Adam optimizer(net_->ae->parameters(), torch::optim::AdamOptions(o_.ae_lr));
    if (state_.step > 0) torch::load(optimizer, o_.state_dir + "/optim.pt", device_);
    net_->train();
    const std::int64_t crop = o_.config.crop_voxels, patch = o_.ae_patch;
    for (int step = state_.step; step < o_.ae_steps; ++step) {
      auto gen = Rng(o_.seed, {1, std::uint64_t(step)});
      const torch::Tensor idx = RandomIndex(all_crops.size(0), o_.ae_batch, gen).to(device_);
      torch::Tensor x = all_crops.index_select(0, idx).to(torch::kFloat);
      torch::Tensor region = all_regions.index_select(0, idx).to(torch::kFloat);
      if (patch < crop) {
        const auto off = torch::randint(crop - patch + 1, {3}, gen, torch::kLong);
        const auto a = off.accessor<std::int64_t, 1>();
        const auto cut = [&](const torch::Tensor& t) {
          return t.slice(2, a[0], a[0] + patch)
              .slice(3, a[1], a[1] + patch)
              .slice(4, a[2], a[2] + patch);
        };
        x = cut(x);
        region = cut(region);
      }
      SetCosineLr<torch::optim::AdamOptions>(optimizer, o_.ae_lr, step, o_.ae_steps);
      auto [mean, logvar] = net_->ae->Encode(x);
      const torch::Tensor z =
          mean + torch::exp(0.5 * logvar) * torch::randn(mean.sizes(), gen).to(device_);
      const torch::Tensor loss = AeLoss(x, net_->ae->Decode(z), mean, logvar, region, o_);
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      DiffusionTrainProgress p{"autoencoder", step + 1, o_.ae_steps, loss.item<double>(), -1.0};
      if ((step + 1) % o_.validate_every == 0 || step + 1 == o_.ae_steps) {
        p.val_loss = std::get<0>(ValidateAutoencoder());
        if (!o_.state_dir.empty()) {
          MEWM_RETURN_IF_ERROR(
              SaveState(o_.state_dir, {"autoencoder", step + 1}, run_, net_, ema_, optimizer));
        }
      }
      Report(p);
    }
    state_ = {AfterAutoencoder(), 0};
  }
  std::tie(result_.ae_val_l1_ct, result_.ae_val_mask_dice, result_.ae_val_residual_rel) =
      ValidateAutoencoder();
  return {};
}

Status Trainer::TrainDecoder() {
  if (state_.stage != "decoder") return {};
  TrainingLatents();
  const torch::Tensor &z_pre = z_pre_, &z_post = z_post_;
  // The tumor's neighbourhood: the pre-treatment mask dilated by 4 voxels (6 mm at 1.5 mm, where
  // the backend's paste weight is 1).
  const torch::Tensor regions =
      torch::max_pool3d(data_.pre.slice(1, 1, 2).to(torch::kFloat).add(1.0).mul(0.5), 9, 1, 4)
          .to(torch::kHalf);
  std::vector<torch::Tensor> params;
  for (auto& item : net_->ae->named_parameters()) {
    if (item.key().rfind("dec_", 0) == 0) params.push_back(item.value());
  }
  torch::optim::Adam optimizer(params, torch::optim::AdamOptions(o_.decoder_lr));
  if (state_.step > 0) torch::load(optimizer, o_.state_dir + "/optim.pt", device_);
  net_->train();
  for (int step = state_.step; step < o_.decoder_steps; ++step) {
    auto gen = Rng(o_.seed, {5, std::uint64_t(step)});
    const torch::Tensor idx = RandomIndex(z_pre.size(0), o_.decoder_batch, gen).to(device_);
    SetCosineLr<torch::optim::AdamOptions>(optimizer, o_.decoder_lr, step, o_.decoder_steps);
    const torch::Tensor pre = data_.pre.index_select(0, idx).to(torch::kFloat);
    const torch::Tensor features = net_->ae->PreFeatures(pre);
    const torch::Tensor decoded =
        net_->ae->Decode(torch::cat({z_pre.index_select(0, idx), z_post.index_select(0, idx)}),
                         features.defined() ? torch::cat({features, features}) : features);
    const std::int64_t b = idx.size(0);
    const torch::Tensor loss =
        PasteLoss(pre, data_.post.index_select(0, idx).to(torch::kFloat), decoded.slice(0, 0, b),
                  decoded.slice(0, b), regions.index_select(0, idx).to(torch::kFloat), o_);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    DiffusionTrainProgress p{"decoder", step + 1, o_.decoder_steps, loss.item<double>(), -1.0};
    if ((step + 1) % o_.validate_every == 0 || step + 1 == o_.decoder_steps) {
      p.val_loss = std::get<2>(ValidateAutoencoder());
      if (!o_.state_dir.empty()) {
        MEWM_RETURN_IF_ERROR(
            SaveState(o_.state_dir, {"decoder", step + 1}, run_, net_, ema_, optimizer));
      }
    }
    Report(p);
  }
  state_ = {"denoiser", 0};
  std::tie(result_.ae_val_l1_ct, result_.ae_val_mask_dice, result_.ae_val_residual_rel) =
      ValidateAutoencoder();
  return {};
}

void Trainer::EncodeLatents() {
  net_->eval();
  TrainingLatents();
  const torch::Tensor &z_pre = z_pre_, &z_post = z_post_;
  const torch::Tensor mask_down =
      torch::avg_pool3d(data_.pre.slice(1, 1, 2).to(torch::kFloat).add(1.0).mul(0.5), 4);
  double scale = net_->latent_scale.item<double>();  // kept when starting from a checkpoint
  if (start_ == nullptr) {
    scale = 1.0 / std::max((z_post - z_pre).std().item<double>(), 1e-3);
    torch::NoGradGuard no_grad;
    net_->latent_scale.fill_(scale);
  }
  result_.latent_scale = scale;
  delta_ = (z_post - z_pre) * scale;
  context_ = torch::cat({z_pre, mask_down}, 1);
  vz_pre_ = EncodeAll(net_, val_.pre);
  const torch::Tensor vz_post = EncodeAll(net_, val_.post);
  vdelta_ = (vz_post - vz_pre_) * scale;
  vcontext_ = torch::cat(
      {vz_pre_, torch::avg_pool3d(val_.pre.slice(1, 1, 2).to(torch::kFloat).add(1.0).mul(0.5), 4)},
      1);
  alpha_bar_ = nets::CosineAlphaBar(o_.config.train_timesteps);
  ab_ = torch::tensor(alpha_bar_, torch::kDouble).to(device_, torch::kFloat);
  ResidualGradients();
}

/// Subtracts from each row of a [M, 1] tensor the mean of its crop's rows (one crop under several
/// plans): what the plans change. Built once from each row's crop (Stacked::crop).
class WithinCrop {
 public:
  WithinCrop(const std::vector<std::int64_t>& crop, const torch::Device& device)
      : index_(torch::tensor(crop, torch::kLong).to(device)),
        counts_(torch::zeros({*std::max_element(crop.begin(), crop.end()) + 1, 1}, device)
                    .index_add(0, index_, torch::ones({index_.size(0), 1}, device))) {}
  /// `v` is [M, k], in any floating type: each column apart.
  torch::Tensor operator()(const torch::Tensor& v) const {
    const torch::Tensor sums =
        torch::zeros({counts_.size(0), v.size(1)}, v.options()).index_add(0, index_, v);
    return v - (sums / counts_.to(v.scalar_type())).index_select(0, index_);
  }

 private:
  torch::Tensor index_, counts_;
};

/// The drug term fitted alone is linear: with the head's network fixed, PredictLevel is affine in
/// the term's weights. Its design over `rows`: the level each row gets with every weight at zero
/// ([M, 1], in `at_zero`), and what one unit of each weight adds to it ([M, n], the weights of
/// DrugTermParameters flattened in order). Every weight is zero when it returns.
torch::Tensor DrugTermDesign(nets::Denoiser& head, const torch::Tensor& rows,
                             const torch::Tensor& share, torch::Tensor& at_zero) {
  torch::NoGradGuard no_grad;
  const std::vector<torch::Tensor> weights = head->DrugTermParameters();
  for (const torch::Tensor& w : weights) w.zero_();
  at_zero = head->PredictLevel(rows, share).to(torch::kDouble);
  std::vector<torch::Tensor> columns;
  for (const torch::Tensor& w : weights) {
    const torch::Tensor flat = w.view({-1});
    for (std::int64_t j = 0; j < flat.numel(); ++j) {
      flat[j].fill_(1.0);
      columns.push_back(head->PredictLevel(rows, share).to(torch::kDouble) - at_zero);
      flat[j].fill_(0.0);
    }
  }
  return torch::cat(columns, 1);
}

void Trainer::SolveDrugTerm(const torch::Tensor& x, const torch::Tensor& share,
                            const torch::Tensor& vx, const torch::Tensor& vshare) {
  nets::Denoiser& head = net_->denoiser;
  const WithinCrop within(data_.crop, device_), vwithin(val_.crop, device_);
  const std::int64_t width = data_.plan_rows.size(1) - 1;
  const torch::Tensor y = data_.plan_rows.slice(1, width).to(torch::kDouble);
  const torch::Tensor vy = val_.plan_rows.slice(1, width).to(torch::kDouble);
  torch::NoGradGuard no_grad;
  const std::vector<torch::Tensor> weights = head->DrugTermParameters();
  // The starting weights in one column, copied: the design zeroes them.
  std::vector<torch::Tensor> flat;
  for (const torch::Tensor& w : weights)
    flat.push_back(w.reshape({-1, 1}).to(torch::kDouble).clone());
  const torch::Tensor start = torch::cat(flat);
  torch::Tensor b, vb;
  const torch::Tensor full = DrugTermDesign(head, x, share, b);
  const torch::Tensor vfull = DrugTermDesign(head, vx, vshare, vb);
  // A drug's offset is its class's plus its own, one effect in two weights; a ridge on both
  // would shrink a class of one drug half as much as the others. So each drug's whole offset is
  // solved (its own weight's column adds exactly that), and split afterwards. The slopes are
  // solved on the signs centred and scaled over the training rows, so that the ridge weighs each
  // sign alike and a sign's mean stays in the offsets: raw = to_raw * solved.
  const torch::Tensor members = head->DrugClassMembers().to(torch::kDouble);  // [V, K]
  const std::int64_t k = members.size(1), v = members.size(0);
  const torch::Tensor signs = head->DrugSigns(x).to(torch::kDouble);
  const torch::Tensor mean = signs.mean(0), sd = signs.std(0).clamp_min(1e-6);
  const std::int64_t ks = k * signs.size(1);  // the slopes: each class's on each sign
  const std::int64_t n = ks + v + 1;          // then each drug's offset, then drug_second
  torch::Tensor to_raw = torch::eye(n, mean.options());
  to_raw.slice(0, 0, ks).slice(1, 0, ks) = torch::diag((1.0 / sd).repeat({k}));
  to_raw.slice(0, ks, ks + v).slice(1, 0, ks) =
      -(members.unsqueeze(2) * (mean / sd).view({1, 1, -1})).reshape({v, ks});
  const torch::Tensor raw = full.slice(1, k);
  const torch::Tensor a = within(raw.matmul(to_raw));
  // Only the contrast between a crop's plans counts: a crop's mean level is the head's (and the
  // patient's), which the term would otherwise be bent to explain through the signs.
  const torch::Tensor target = within(y - b), vtarget = vwithin(vy - vb);
  const auto m = double(a.size(0));
  const torch::Tensor gram = a.t().matmul(a) / m, moment = a.t().matmul(target) / m;
  const double scale = std::max(gram.trace().item<double>() / double(n), 1e-12);
  // The solved weights in DrugTermParameters' order: each class's offset is the mean of its
  // drugs' offsets, over the drugs the pairs hold, and each of those drugs keeps the rest; a drug
  // the pairs lack keeps its class's.
  const torch::Tensor seen =
      (raw.slice(1, ks, ks + v).abs().sum(0) > 0).to(torch::kDouble).view({v, 1});
  const auto split = [&](const torch::Tensor& solved) {
    const torch::Tensor w = to_raw.matmul(solved);
    const torch::Tensor drug = w.slice(0, ks, ks + v), counted = members * seen;
    const torch::Tensor offset =
        counted.t().matmul(drug) / counted.sum(0).clamp_min(1.0).view({k, 1});
    const torch::Tensor own = (drug - members.matmul(offset)) * seen;
    return torch::cat({offset, w.slice(0, 0, ks), own, w.slice(0, ks + v)});
  };
  const auto val_rms = [&](const torch::Tensor& w) {
    return (vwithin(vfull.matmul(w)) - vtarget).square().mean().sqrt().item<double>();
  };
  // The starting weights (zero for a term never fitted) compete too, as in the network's fit.
  torch::Tensor best = start;
  double best_val = val_rms(best);
  const int grid = kDrugRidgeGrid;
  for (int step = 0; step < grid; ++step) {
    const double ridge = scale * std::pow(10.0, step - 6);
    const torch::Tensor w =
        split(torch::linalg_solve(gram + ridge * torch::eye(n, gram.options()), moment));
    DiffusionTrainProgress p{"response", step + 1, grid,
                             (within(full.matmul(w)) - target).square().mean().item<double>(),
                             val_rms(w)};
    if (p.val_loss < best_val) {
      best_val = p.val_loss;
      best = w;
      result_.response.drug_ridge = ridge;
    }
    Report(p);
  }
  std::int64_t at = 0;
  for (const torch::Tensor& w : weights) {
    w.copy_(best.slice(0, at, at + w.numel()).view(w.sizes()).to(w.scalar_type()));
    at += w.numel();
  }
}

void Trainer::TrainResponseHead(bool fit) {
  nets::Denoiser& head = net_->denoiser;
  const std::int64_t width = data_.plan_rows.size(1) - 1;  // the level is the last column
  const torch::Tensor x = data_.plan_rows.slice(1, 0, width), y = data_.plan_rows.slice(1, width);
  const torch::Tensor vx = val_.plan_rows.slice(1, 0, width), vy = val_.plan_rows.slice(1, width);
  const torch::Tensor share = nets::TumorShare(context_).detach();
  const torch::Tensor vshare = nets::TumorShare(vcontext_).detach();
  const WithinCrop within(data_.crop, device_), vwithin(val_.crop, device_);
  const torch::Tensor y_within = within(y), vy_within = vwithin(vy);
  const auto rms = [](const torch::Tensor& e) { return e.square().mean().sqrt().item<double>(); };
  // The drug term alone is solved (response_drug_only); the optimizer fits the whole head.
  torch::optim::AdamW optimizer(head->HeadParameters(),
                                torch::optim::AdamWOptions(1e-3).weight_decay(0.1));
  const auto val_contrast_rmse = [&] {
    torch::NoGradGuard no_grad;
    return rms(vwithin(head->PredictLevel(vx, vshare)) - vy_within);
  };
  // The weights it starts from count too: a head fitted again may already be at its best.
  std::vector<torch::Tensor> best;
  double best_val = val_contrast_rmse();
  head->train();
  // A run resumed inside the denoiser stage keeps the head its state holds.
  const int steps = !fit || (state_.stage == "denoiser" && state_.step > 0) ? 0 : kResponseSteps;
  if (o_.response_drug_only && steps > 0) SolveDrugTerm(x, share, vx, vshare);
  for (int step = 0; step < (o_.response_drug_only ? 0 : steps); ++step) {
    const torch::Tensor pred = head->PredictLevel(x, share);
    const torch::Tensor loss = torch::mse_loss(within(pred), y_within) + torch::mse_loss(pred, y);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    DiffusionTrainProgress p{"response", step + 1, steps, loss.item<double>(), -1.0};
    if ((step + 1) % 50 == 0) {
      torch::NoGradGuard no_grad;
      p.val_loss = val_contrast_rmse();
      if (p.val_loss < best_val) {
        best_val = p.val_loss;
        best.clear();
        for (const torch::Tensor& w : head->HeadParameters()) best.push_back(w.detach().clone());
      }
    }
    Report(p);
  }
  torch::NoGradGuard no_grad;
  const auto params = head->HeadParameters();
  const auto ema_params = ema_->denoiser->HeadParameters();
  for (std::size_t k = 0; k < params.size(); ++k) {
    if (!best.empty()) params[k].copy_(best[k]);  // none: the weights it started from
    ema_params[k].copy_(params[k]);
  }
  const torch::Tensor fitted = head->PredictLevel(x, share),
                      vfitted = head->PredictLevel(vx, vshare);
  result_.response.train_rmse = rms(fitted - y);
  result_.response.val_rmse = rms(vfitted - vy);
  result_.response.val_constant_rmse = rms(vy - y.mean());
  result_.response.train_contrast_rmse = rms(within(fitted) - y_within);
  result_.response.val_contrast_rmse = val_contrast_rmse();
  result_.response.val_no_contrast_rmse = rms(vy_within);
}

Trainer::Noised Trainer::Noise(const torch::Tensor& x0, at::Generator& gen, bool paired) const {
  const std::int64_t n = x0.size(0), draws = paired ? n / 2 : n;
  torch::Tensor t =
      torch::randint(o_.config.train_timesteps, {draws}, gen, torch::kLong).to(device_);
  torch::Tensor noise = torch::randn(x0.slice(0, 0, draws).sizes(), gen).to(device_);
  if (paired) {
    t = torch::cat({t, t});
    noise = torch::cat({noise, noise});
  }
  const torch::Tensor a = ab_.index_select(0, t).view({n, 1, 1, 1, 1});
  return {a.sqrt() * x0 + (1 - a).sqrt() * noise, t.to(torch::kFloat),
          a.sqrt() * noise - (1 - a).sqrt() * x0, (1 - a).sqrt()};
}

torch::Tensor Trainer::DenoiseLoss(nets::Denoiser& denoiser, const torch::Tensor& x0,
                                   const torch::Tensor& ctx, const torch::Tensor& hot,
                                   at::Generator& gen, double null_prob,
                                   const torch::Tensor& residual_grad, bool paired) const {
  const Noised b = Noise(x0, gen, paired);
  const std::int64_t n = x0.size(0), half = n / 2;
  torch::Tensor plan = denoiser->PlanEmbedding(hot);
  torch::Tensor drop = torch::zeros({n, 1}, x0.options());
  if (null_prob > 0.0) {
    drop = (torch::rand({paired ? half : n, 1}, gen) < null_prob).to(device_, torch::kFloat);
    if (paired) drop = torch::cat({drop, drop});
    plan = plan * (1 - drop) + denoiser->null_plan.unsqueeze(0) * drop;
  }
  const torch::Tensor v = denoiser->forward(b.xt, ctx, b.t, plan);
  torch::Tensor loss = torch::mse_loss(v, b.v);
  if (!residual_grad.defined()) return loss;
  // x_0 predicted = sqrt(a) x_t - sigma v, so its error is -sigma (v - v_true); to first order
  // the decoded residual moves by the gradient dotted with it.
  const torch::Tensor residual_error_ml = (b.sigma * (v - b.v) * residual_grad).sum({1, 2, 3, 4});
  loss = loss + o_.residual_weight * (residual_error_ml / residual_sd_ml_).square().mean();
  if (!paired) return loss;
  // With the noise and timestep shared, what the two rows' errors have in common (the crop, the
  // noise) cancels in their difference: what is left is the error of the plans' contrast, which
  // the v-loss of each row alone barely weighs. Pairs whose plans were dropped have no contrast.
  const torch::Tensor contrast_error =
      (residual_error_ml.slice(0, 0, half) - residual_error_ml.slice(0, half)) / pair_rms_ml_;
  const torch::Tensor kept = 1 - drop.slice(0, 0, half).view({half});
  return loss + o_.pair_weight * (contrast_error.square() * kept).mean();
}

torch::Tensor Trainer::PairedIndex(at::Generator& gen) const {
  const std::int64_t half = std::max(o_.denoiser_batch / 2, 1);
  const torch::Tensor pick = RandomIndex(std::int64_t(anchors_.size()), half, gen);
  const torch::Tensor which = torch::rand({half}, gen, torch::kDouble);
  std::vector<std::int64_t> rows(std::size_t(2 * half));
  for (std::int64_t i = 0; i < half; ++i) {
    const std::int64_t a = anchors_[std::size_t(pick[i].item<std::int64_t>())];
    const std::vector<std::int64_t>& partners = partners_[std::size_t(a)];
    rows[std::size_t(i)] = a;
    rows[std::size_t(half + i)] = partners[std::min(
        partners.size() - 1, std::size_t(which[i].item<double>() * double(partners.size())))];
  }
  return torch::tensor(rows, torch::kLong);
}

void Trainer::ResidualGradients() {
  if ((o_.residual_weight <= 0.0 && o_.pair_weight <= 0.0) || teacher_ != nullptr) return;
  net_->eval();
  const double voxel_ml = std::pow(o_.config.spacing_mm, 3) * 1e-3;
  const torch::Tensor scale = net_->latent_scale.detach();
  std::vector<torch::Tensor> grads;
  for (std::int64_t i = 0; i < delta_.size(0); ++i) {
    const torch::Tensor pre = data_.pre.slice(0, i, i + 1).to(torch::kFloat);
    const torch::Tensor z_pre = z_pre_.slice(0, i, i + 1);
    torch::Tensor features, decoded_pre;
    {
      torch::NoGradGuard no_grad;
      features = net_->ae->PreFeatures(pre);
      decoded_pre = net_->ae->Decode(z_pre, features).slice(1, 1, 2);
    }
    const torch::Tensor change = delta_.slice(0, i, i + 1).clone().requires_grad_(true);
    const torch::Tensor residual =
        nets::ResidualFraction(net_->ae->Decode(z_pre + change / scale, features).slice(1, 1, 2),
                               decoded_pre, pre.slice(1, 1, 2).add(1.0).mul(0.5), o_.config)
            .sum() *
        voxel_ml;
    grads.push_back(torch::autograd::grad({residual}, {change})[0].detach());
  }
  residual_grad_ = torch::cat(grads);
  const torch::Tensor true_ml = ResidualMl(data_.post, o_.config);
  residual_sd_ml_ = std::max(true_ml.numel() > 1 ? true_ml.std().item<double>() : 0.0, 1.0);
  double sum_sq = 0.0;
  std::size_t count = 0;
  for (std::int64_t a : anchors_) {
    for (std::int64_t b : partners_[std::size_t(a)]) {
      sum_sq += std::pow((true_ml[a] - true_ml[b]).item<double>(), 2);
      ++count;
    }
  }
  if (count > 0) pair_rms_ml_ = std::max(std::sqrt(sum_sq / double(count)), 1.0);
}

torch::Tensor Trainer::DistillLoss(nets::Denoiser& student, const torch::Tensor& x0,
                                   const torch::Tensor& ctx, const torch::Tensor& hot,
                                   at::Generator& gen) const {
  const Noised b = Noise(x0, gen);
  torch::Tensor target;
  {
    torch::NoGradGuard no_grad;
    nets::Denoiser& teacher = (*teacher_)->denoiser;
    const torch::Tensor plan = teacher->PlanEmbedding(hot);
    target = nets::Guide(
        teacher->forward(torch::cat({b.xt, b.xt}), torch::cat({ctx, ctx}), torch::cat({b.t, b.t}),
                         torch::cat({plan, teacher->null_plan.expand({x0.size(0), -1})})),
        o_.distill_guidance);
  }
  return torch::mse_loss(student->forward(b.xt, ctx, b.t, student->PlanEmbedding(hot)), target);
}

double Trainer::ValidateDenoiser(nets::DiffusionNet& model) const {
  torch::NoGradGuard no_grad;
  double total = 0.0;
  const std::int64_t n = std::min<std::int64_t>(vdelta_.size(0), 48);
  auto gen = Rng(o_.seed, {3});
  for (std::int64_t b = 0; b < n; b += 16) {
    const std::int64_t e = std::min(n, b + 16);
    total += DenoiseLoss(model->denoiser, vdelta_.slice(0, b, e), vcontext_.slice(0, b, e),
                         val_.plan_rows.slice(0, b, e), gen, 0.0)
                 .item<double>() *
             double(e - b);
  }
  return total / double(n);
}

Status Trainer::TrainDenoiser() {
  if (state_.stage != "denoiser") return {};
  torch::optim::AdamW optimizer(net_->denoiser->parameters(),
                                torch::optim::AdamWOptions(o_.denoiser_lr).weight_decay(1e-4));
  if (state_.step > 0) torch::load(optimizer, o_.state_dir + "/optim.pt", device_);
  net_->train();
  for (int step = state_.step; step < o_.denoiser_steps; ++step) {
    auto gen = Rng(o_.seed, {2, std::uint64_t(step)});
    const bool paired = o_.pair_weight > 0.0;
    const torch::Tensor idx =
        (paired ? PairedIndex(gen) : RandomIndex(delta_.size(0), o_.denoiser_batch, gen))
            .to(device_);
    const double warm = std::min(1.0, double(step + 1) / 100.0);
    SetCosineLr<torch::optim::AdamWOptions>(optimizer, o_.denoiser_lr * warm, step,
                                            o_.denoiser_steps);
    const torch::Tensor x0 = delta_.index_select(0, idx), ctx = context_.index_select(0, idx);
    const torch::Tensor hot = data_.plan_rows.index_select(0, idx);
    const torch::Tensor loss =
        teacher_ != nullptr
            ? DistillLoss(net_->denoiser, x0, ctx, hot, gen)
            : DenoiseLoss(
                  net_->denoiser, x0, ctx, hot, gen, o_.null_plan_prob,
                  residual_grad_.defined() ? residual_grad_.index_select(0, idx) : torch::Tensor(),
                  paired);
    optimizer.zero_grad();
    loss.backward();
    torch::nn::utils::clip_grad_norm_(net_->denoiser->parameters(), 1.0);
    optimizer.step();
    UpdateEma(ema_, net_, step < 100 ? 0.0 : o_.ema_decay);
    DiffusionTrainProgress p{"denoiser", step + 1, o_.denoiser_steps, loss.item<double>(), -1.0};
    if ((step + 1) % o_.validate_every == 0 || step + 1 == o_.denoiser_steps) {
      p.val_loss = ValidateDenoiser(ema_);
      if (!o_.state_dir.empty()) {
        // The autoencoder and scale live in `net_`; EMA copies them before saving.
        MEWM_RETURN_IF_ERROR(
            SaveState(o_.state_dir, {"denoiser", step + 1}, run_, net_, ema_, optimizer));
      }
    }
    Report(p);
  }
  return {};
}

void Trainer::Finish(const std::vector<DiffusionPair>& validation_pairs) {
  {
    torch::NoGradGuard no_grad;
    auto ae_t = ema_->ae->named_parameters(), ae_f = net_->ae->named_parameters();
    for (auto& item : ae_t) item.value().copy_(ae_f[item.key()]);
    ema_->latent_scale.copy_(net_->latent_scale);
  }
  if (o_.fit_texture) texture_ = FitTexture(ema_, data_, o_.config, result_);
  result_.denoiser_val_loss = ValidateDenoiser(ema_);
  ema_->eval();
  // A distilled student samples with guidance 1 only (its guidance is in its weights).
  const std::vector<double> grid = teacher_ != nullptr || o_.config.guidance_distilled != 1.0
                                       ? std::vector<double>{1.0}
                                       : o_.guidance_grid;
  // A response head's level is the head's prediction, as when serving, not the truth's.
  torch::Tensor val_rows = val_.plan_rows;
  if (o_.config.response_head) {
    torch::NoGradGuard no_grad;
    const torch::Tensor rows = val_rows.slice(1, 0, val_rows.size(1) - 1);
    val_rows =
        torch::cat({rows, ema_->denoiser->GeneratorLevel(rows, nets::TumorShare(vcontext_))}, 1);
  }
  result_.guidance_scores = ScoreGuidance(ema_, validation_pairs, vz_pre_, vcontext_, val_rows,
                                          val_.pre, val_.post, alpha_bar_, grid, o_);
  if (o_.config.response_head) {
    // The denoiser's share: the same with each pair's true level, as if the head were exact.
    const GuidanceScore exact =
        ScoreGuidance(ema_, validation_pairs, vz_pre_, vcontext_, val_.plan_rows, val_.pre,
                      val_.post, alpha_bar_, {1.0}, o_)
            .front();
    result_.response.true_level_spearman = exact.spearman;
    result_.response.true_level_mae_ml = exact.residual_mae_ml;
  }
  double best = -2.0, best_mae = 0.0;
  for (const GuidanceScore& g : result_.guidance_scores) {
    if (g.spearman > best + 1e-9 ||
        (std::abs(g.spearman - best) <= 1e-9 && g.residual_mae_ml < best_mae)) {
      best = g.spearman;
      best_mae = g.residual_mae_ml;
      result_.recommended_guidance = g.guidance;
    }
  }
}

Status Trainer::Save(std::size_t train_pairs, std::size_t validation_pairs) {
  if (o_.out.empty()) return {};
  nlohmann::json meta =
      nlohmann::json::parse(o_.metadata_json.empty() ? "{}" : o_.metadata_json, nullptr, false);
  if (meta.is_discarded() || !meta.is_object()) meta = nlohmann::json::object();
  nlohmann::json scores = nlohmann::json::array();
  for (const GuidanceScore& g : result_.guidance_scores) {
    scores.push_back({{"guidance", g.guidance},
                      {"spearman", g.spearman},
                      {"residual_mae_ml", g.residual_mae_ml}});
  }
  meta["training"] = {{"ae_val_l1_ct", result_.ae_val_l1_ct},
                      {"ae_val_mask_dice", result_.ae_val_mask_dice},
                      {"ae_val_residual_rel", result_.ae_val_residual_rel},
                      {"guidance_on_validation", scores},
                      {"recommended_guidance", result_.recommended_guidance},
                      {"denoiser_val_loss", result_.denoiser_val_loss},
                      {"latent_scale", result_.latent_scale},
                      {"train_pairs", train_pairs},
                      {"validation_pairs", validation_pairs},
                      {"seconds", result_.seconds}};
  DiffusionConfig config = o_.config;
  config.texture = texture_;
  if (teacher_ != nullptr) {
    config.guidance_distilled = o_.distill_guidance;
    meta["training"]["distilled_from"] = o_.distill_from;
  }
  if (!o_.init_from.empty()) meta["training"]["fine_tuned_from"] = o_.init_from;
  if (!device_.is_cpu()) meta["training"]["device"] = device_.str();
  if (o_.decoder_steps > 0) meta["training"]["decoder_steps"] = o_.decoder_steps;
  if (o_.residual_weight > 0.0) {
    meta["training"]["residual_weight"] = o_.residual_weight;
    meta["training"]["residual_sd_ml"] = residual_sd_ml_;
  }
  if (o_.config.response_head) {
    const ResponseHeadFit& r = result_.response;
    meta["training"]["response_head"] = {{"train_rmse", r.train_rmse},
                                         {"validation_rmse", r.val_rmse},
                                         {"validation_constant_rmse", r.val_constant_rmse},
                                         {"train_contrast_rmse", r.train_contrast_rmse},
                                         {"validation_contrast_rmse", r.val_contrast_rmse},
                                         {"validation_no_contrast_rmse", r.val_no_contrast_rmse},
                                         {"true_level_spearman", r.true_level_spearman},
                                         {"true_level_mae_ml", r.true_level_mae_ml}};
  }
  if (o_.pair_weight > 0.0) {
    meta["training"]["pair_weight"] = o_.pair_weight;
    meta["training"]["pair_rms_ml"] = pair_rms_ml_;
    if (o_.pair_neighbours) meta["training"]["pair_neighbours"] = true;
  }
  // With CPU tensors, so that any build loads it; the run is over.
  ema_->to(torch::kCPU);
  return torch_bridge::SaveCheckpoint(o_.out, *ema_, {config.ToJson(), meta.dump()});
}

Expected<DiffusionTrainReport> Train(
    std::vector<DiffusionPair> train, const std::vector<DiffusionPair>& validation,
    const DiffusionTrainOptions& o,
    const std::function<void(const DiffusionTrainProgress&)>& progress) {
  const auto t_start = Clock::now();
  MEWM_RETURN_IF_ERROR(o.config.Validate());
  if (o.response_drug_only &&
      (o.config.drug_classes.empty() || o.init_from.empty() || o.denoiser_steps != 0)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "a fit of the drug term alone needs drug classes, a checkpoint to start from "
                     "(init_from) whose response head is fitted, and denoiser steps 0");
  }
  // A distillation or a fine-tuning keeps its start's autoencoder: the autoencoder's schedule is
  // unused.
  const bool ae_bad = o.ae_steps < 1 || o.ae_batch < 1 || o.ae_patch < 8 || o.ae_patch % 4 != 0 ||
                      o.ae_patch > o.config.crop_voxels;
  const bool from_checkpoint = !o.distill_from.empty() || !o.init_from.empty();
  // A fine-tune of the decoder alone, a texture fit alone, or a response head's fit alone,
  // leaves the checkpoint's denoiser as it is.
  const bool refit_only = !o.init_from.empty() && o.denoiser_steps == 0 &&
                          (o.decoder_steps > 0 || o.fit_texture || o.config.response_head);
  if ((ae_bad && !from_checkpoint) || (o.denoiser_steps < 1 && !refit_only) ||
      o.denoiser_batch < 1 || o.decoder_steps < 0 || o.decoder_batch < 1) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "training steps and batches must be >= 1 (denoiser steps may be 0 only for "
                     "a decoder fine-tune, a texture fit or a response head's fit of an "
                     "--init-from checkpoint) and the patch a multiple of 4 within the crop");
  }
  if (!(o.decoder_lr >= 0.0 && o.decoder_lr <= 1.0)) {
    return MakeError(ErrorCode::kInvalidArgument, "the decoder's learning rate must be in [0, 1]");
  }
  const auto untrained_view = [] {
    return MakeError(ErrorCode::kInvalidArgument,
                     "decoder_pre adds decoder weights that only the decoder fine-tune trains: "
                     "give decoder steps (--decoder-steps), or the decoder stays as without it");
  };
  if (o.config.decoder_pre && o.decoder_steps == 0 && !from_checkpoint) return untrained_view();
  if (!o.distill_from.empty() && !o.init_from.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "fine-tuning (init_from) and guidance distillation (distill_from) do not "
                     "combine: distil the fine-tuned checkpoint afterwards");
  }
  if (!(o.residual_weight >= 0.0 && std::isfinite(o.residual_weight))) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the residual weight must be finite and >= 0 (0 = the v-loss alone)");
  }
  if (o.guidance_grid.empty() ||
      std::any_of(o.guidance_grid.begin(), o.guidance_grid.end(),
                  [](double g) { return !(g >= 0.0 && g <= kMaxGuidance); })) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the guidance grid scored on validation needs at least one scale, each in "
                     "[0, " +
                         std::to_string(kMaxGuidance) + "] as dynamics.guidance");
  }
  if (!(o.pair_weight >= 0.0 && std::isfinite(o.pair_weight))) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the pair weight must be finite and >= 0 (0 = no paired-plan term)");
  }
  if (o.pair_neighbours && o.pair_weight <= 0.0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "pair_neighbours chooses the paired-plan term's pairs: it needs a pair "
                     "weight > 0");
  }
  if ((o.residual_weight > 0.0 || o.pair_weight > 0.0) && !o.distill_from.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the residual and pair weights train against the true outcomes, a "
                     "distillation against its teacher: give them to the teacher's training "
                     "(distill_from)");
  }
  MEWM_TRY(const torch::Device device, torch_bridge::ResolveDevice(o.device));
  torch_bridge::ConfigureThreads(o.threads);
  torch_bridge::KeepLargeBuffersInHeap();
  torch::manual_seed(o.seed);
  const std::vector<DiffusionPair>& validation_pairs =
      validation.empty() ? std::as_const(train) : validation;
  std::optional<nets::DiffusionNet> teacher, init;
  DiffusionTrainOptions run = o;  // a decoder-only fine-tune takes its checkpoint's config
  const auto stored_config = [](const std::string& path,
                                const std::string& role) -> Expected<DiffusionConfig> {
    auto info = torch_bridge::ReadCheckpointInfo(path);
    if (!info) return info.error().WithContext(role);
    auto stored = DiffusionConfig::FromJson(info->config_json, path);
    if (!stored) return stored.error().WithContext(role);
    return *stored;
  };
  // The config a starting checkpoint loads with: the one trained, with the checkpoint's item
  // groups and group_once (grouping changes no weight, so either side may have it or not).
  const auto with_groups_of = [&o](const DiffusionConfig& stored) {
    DiffusionConfig c = o.config;
    c.item_groups = stored.item_groups;
    c.group_once = stored.group_once;
    c.texture = stored.texture;  // a fitted table, no weight
    return c;
  };
  if (!o.init_from.empty()) {
    MEWM_TRY(const DiffusionConfig stored,
             stored_config(o.init_from, "the checkpoint to fine-tune"));
    DiffusionConfig start_config = with_groups_of(stored);
    // A checkpoint without the lesion-size input can start a model with it (the input starts at
    // zero, CopyWeights), not the reverse.
    // Likewise the covariates, the size and enhancement slopes and the decoder's view.
    if (!stored.lesion_size) start_config.lesion_size = false;
    if (!stored.clinical) start_config.clinical = false;
    if (!stored.response_head) start_config.response_head = false;
    start_config.response_sensitivity = stored.response_sensitivity;  // its head's width
    start_config.response_item_size = stored.response_item_size;      // likewise
    start_config.drug_classes = stored.drug_classes;                  // likewise
    if (!stored.item_size) start_config.item_size = false;
    if (!stored.item_enhancement) start_config.item_enhancement = false;
    if (!stored.decoder_pre) start_config.decoder_pre = false;
    if (!stored.decoder_pre && o.config.decoder_pre && o.decoder_steps == 0)
      return untrained_view();
    // Only its decoder, texture or response head changes: everything else stays the
    // checkpoint's, a distilled guidance too; the decoder may gain its view of the pre-treatment
    // crop. A head alone is no use to a denoiser that never learnt to read its level.
    if (refit_only && o.config.response_head && !stored.response_head) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "a response head fitted alone (denoiser steps 0) needs a checkpoint "
                       "trained with one, whose denoiser reads the level: give denoiser steps");
    }
    if (refit_only) {
      start_config = run.config = stored;
      run.config.decoder_pre = stored.decoder_pre || o.config.decoder_pre;
      run.config.response_head = stored.response_head || o.config.response_head;
      run.config.response_sensitivity =
          stored.response_sensitivity || o.config.response_sensitivity;
      run.config.response_item_size = stored.response_item_size || o.config.response_item_size;
      if (!o.config.drug_classes.empty()) run.config.drug_classes = o.config.drug_classes;
      // A drug term needs what the checkpoint's head reads (its covariates, no per-drug head).
      if (auto valid = run.config.Validate(); !valid) {
        return valid.error().WithContext("the checkpoint to fine-tune");
      }
    }
    // The stored texture was fitted to the stored decoder: kept while the decoder is.
    run.config.texture = o.decoder_steps > 0 ? TextureModel{} : stored.texture;
    init.emplace(start_config);
    if (auto loaded = torch_bridge::LoadCheckpoint(o.init_from, **init, start_config.ToJson());
        !loaded) {
      return loaded.error().WithContext("the checkpoint to fine-tune");
    }
  }
  if (!o.distill_from.empty()) {
    if (!(o.distill_guidance > 1.0 && o.distill_guidance <= kMaxGuidance)) {
      return MakeError(ErrorCode::kInvalidArgument, "the distilled guidance must be in (1, " +
                                                        std::to_string(kMaxGuidance) +
                                                        "] (1 is no guidance to distil)");
    }
    if (o.config.guidance_distilled != 1.0) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "the distillation's config already has guidance distilled into it");
    }
    MEWM_TRY(const DiffusionConfig stored,
             stored_config(o.distill_from, "the distillation's teacher"));
    DiffusionConfig teacher_config = with_groups_of(stored);
    teacher_config.decoder_pre = stored.decoder_pre;  // the student's may start at zero
    run.config.texture = stored.texture;              // the student keeps the teacher's decoder
    teacher.emplace(teacher_config);
    if (auto loaded =
            torch_bridge::LoadCheckpoint(o.distill_from, **teacher, teacher_config.ToJson());
        !loaded) {
      return loaded.error().WithContext("the distillation's teacher");
    }
  }
  if (!from_checkpoint) run.config.texture = {};  // a new autoencoder: nothing fitted yet
  // The stacked copy is what trains. The training pairs' full-precision crops are read again only
  // as the validation set, which they are without a split; with one they are freed as stacked.
  const std::size_t train_count = train.size();
  MEWM_TRY(nlohmann::json identity, RunIdentity(run, train, validation));
  const auto free_crops = [&train](std::size_t k) { train[k].pre = train[k].post = {}; };
  MEWM_TRY(Stacked data,
           Stack(train, run.config,
                 validation.empty() ? std::function<void(std::size_t)>{} : free_crops));
  if (!validation.empty()) std::vector<DiffusionPair>().swap(train);
  MEWM_TRY(Stacked val, Stack(validation_pairs, run.config));
  nets::DiffusionNet* start = teacher ? &*teacher : init ? &*init : nullptr;
  Trainer trainer(std::move(data), std::move(val), run, progress, start,
                  teacher ? &*teacher : nullptr, device);
  if (!trainer.Pairable()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string("the pair weight needs a crop of one patient under two plans") +
                         (run.pair_neighbours ? " one item apart" : "") +
                         " in the training pairs, and none has: pair_weight 0, or a cohort with "
                         "several plans per patient");
  }
  MEWM_RETURN_IF_ERROR(trainer.Resume(std::move(identity)));
  MEWM_RETURN_IF_ERROR(trainer.TrainAutoencoder());
  MEWM_RETURN_IF_ERROR(trainer.TrainDecoder());
  trainer.EncodeLatents();
  if (run.config.response_head) trainer.TrainResponseHead(o.config.response_head);
  MEWM_RETURN_IF_ERROR(trainer.TrainDenoiser());
  trainer.Finish(validation_pairs);
  trainer.result().seconds = Seconds(t_start);
  MEWM_RETURN_IF_ERROR(trainer.Save(train_count, validation.size()));
  return trainer.result();
}

}  // namespace

Status CheckDevice(const std::string& device) {
  auto resolved = torch_bridge::ResolveDevice(device);
  if (!resolved) return std::move(resolved).error();
  return {};
}

Expected<DiffusionTrainReport> TrainDiffusion(
    std::vector<DiffusionPair> train, const std::vector<DiffusionPair>& validation,
    const DiffusionTrainOptions& options,
    const std::function<void(const DiffusionTrainProgress&)>& progress) {
  try {
    return Train(std::move(train), validation, options, progress);
  } catch (const std::exception& e) {
    // libtorch reports shape and file problems by exception; callers get an error value.
    return MakeError(ErrorCode::kInternal, "diffusion training failed: " + ExceptionCause(e));
  }
}

namespace {

Status AverageDrugTermsOf(const std::vector<std::string>& checkpoints, const std::string& out,
                          const std::string& metadata_json) {
  if (checkpoints.size() < 2) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "averaging drug terms needs at least two checkpoints");
  }
  MEWM_TRY(const torch_bridge::CheckpointInfo first,
           torch_bridge::ReadCheckpointInfo(checkpoints.front()));
  MEWM_TRY(const DiffusionConfig config,
           DiffusionConfig::FromJson(first.config_json, checkpoints.front()));
  if (config.drug_classes.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + checkpoints.front() +
                         "' has no drug term (it was trained without --response-drug-classes)");
  }
  // Every checkpoint loads with the first one's config: LoadCheckpoint names what differs.
  std::vector<nets::DiffusionNet> fits;
  nlohmann::json sources = nlohmann::json::array();
  for (const std::string& path : checkpoints) {
    fits.emplace_back(config);
    MEWM_TRY(const torch_bridge::CheckpointInfo info,
             torch_bridge::LoadCheckpoint(path, *fits.back(), config.ToJson()));
    MEWM_TRY(const std::string sha256, Sha256File(path));
    const nlohmann::json meta = nlohmann::json::parse(info.metadata_json, nullptr, false);
    sources.push_back({{"path", path},
                       {"sha256", sha256},
                       {"command", meta.is_object() ? meta.value("command", "") : ""}});
  }
  torch::NoGradGuard no_grad;
  const std::vector<torch::Tensor> term = fits.front()->denoiser->DrugTermParameters();
  const auto in_term = [&term](const torch::Tensor& t) {
    return std::any_of(term.begin(), term.end(),
                       [&t](const torch::Tensor& w) { return w.is_same(t); });
  };
  // Each fit's weights and buffers by name; the first's alias its module, which is saved.
  std::vector<std::map<std::string, torch::Tensor>> named(fits.size());
  for (std::size_t k = 0; k < fits.size(); ++k) {
    for (const auto& dict : {fits[k]->named_parameters(), fits[k]->named_buffers()}) {
      for (const auto& item : dict) named[k][item.key()] = item.value();
    }
  }
  for (const auto& [name, tensor] : named.front()) {
    const bool average = in_term(tensor);
    torch::Tensor sum = tensor.clone();
    for (std::size_t k = 1; k < fits.size(); ++k) {
      const torch::Tensor& other = named[k].at(name);
      if (average) {
        sum += other;
      } else if (!torch::equal(tensor, other)) {
        return MakeError(ErrorCode::kMismatch,
                         "'" + checkpoints[k] + "' and '" + checkpoints.front() + "' differ in '" +
                             name +
                             "', outside the drug term: only drug terms fitted alone "
                             "(--response-drug-only) from one checkpoint can be averaged");
      }
    }
    if (average) torch::Tensor(tensor).copy_(sum / double(fits.size()));
  }
  nlohmann::json meta =
      nlohmann::json::parse(metadata_json.empty() ? "{}" : metadata_json, nullptr, false);
  if (meta.is_discarded() || !meta.is_object()) meta = nlohmann::json::object();
  meta["drug_term_average_of"] = std::move(sources);
  return torch_bridge::SaveCheckpoint(out, *fits.front(), {first.config_json, meta.dump()});
}

}  // namespace

Status AverageDrugTerms(const std::vector<std::string>& checkpoints, const std::string& out,
                        const std::string& metadata_json) {
  try {
    return AverageDrugTermsOf(checkpoints, out, metadata_json);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kInternal, "averaging drug terms failed: " + ExceptionCause(e));
  }
}

// ---- Machine Turing test ----

namespace {

class TuringNetImpl : public torch::nn::Module {
 public:
  TuringNetImpl()
      : c1(register_module("c1", nets::Conv3d(1, 8, 3, 2))),
        c2(register_module("c2", nets::Conv3d(8, 16, 3, 2))),
        c3(register_module("c3", nets::Conv3d(16, 32, 3, 2))),
        n1(register_module("n1", nets::Norm(8))),
        n2(register_module("n2", nets::Norm(16))),
        n3(register_module("n3", nets::Norm(32))),
        head(register_module("head", torch::nn::Linear(32, 1))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = torch::silu(n1(c1(x)));
    h = torch::silu(n2(c2(h)));
    h = torch::silu(n3(c3(h)));
    return head(h.mean({2, 3, 4})).squeeze(1);
  }
  nets::Conv3d c1, c2, c3;
  torch::nn::GroupNorm n1, n2, n3;
  torch::nn::Linear head;
};
TORCH_MODULE(TuringNet);

/// Mann-Whitney AUC of scores (label 1 = synthetic).
double Auc(const std::vector<double>& score, const std::vector<int>& label) {
  double pairs = 0.0, wins = 0.0;
  for (std::size_t a = 0; a < score.size(); ++a) {
    if (label[a] != 1) continue;
    for (std::size_t b = 0; b < score.size(); ++b) {
      if (label[b] != 0) continue;
      pairs += 1.0;
      wins += score[a] > score[b] ? 1.0 : (score[a] == score[b] ? 0.5 : 0.0);
    }
  }
  return pairs > 0 ? wins / pairs : 0.5;
}

}  // namespace

Expected<TuringTestResult> MachineTuringTest(const std::vector<DenseFloat>& real,
                                             const std::vector<DenseFloat>& synthetic,
                                             const std::vector<int>& groups, int folds,
                                             std::uint64_t seed, int threads) {
  if (groups.size() != real.size() + synthetic.size()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the Turing test needs one patient group per crop (real, then synthetic)");
  }
  std::vector<int> patients(groups.begin(), groups.end());
  std::sort(patients.begin(), patients.end());
  patients.erase(std::unique(patients.begin(), patients.end()), patients.end());
  if (folds < 2 || int(patients.size()) < folds || real.empty() || synthetic.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the Turing test needs crops of both kinds from at least `folds` (>= 2) "
                     "patients");
  }
  torch_bridge::ConfigureThreads(threads);
  std::vector<torch::Tensor> crops;
  std::vector<int> labels;
  for (int kind = 0; kind < 2; ++kind) {
    for (const DenseFloat& d : kind == 0 ? real : synthetic) {
      if (d.dims != real.front().dims) {
        return MakeError(ErrorCode::kMismatch, "Turing-test crops differ in size");
      }
      crops.push_back(torch_bridge::ToTensor(d).unsqueeze(0));
      labels.push_back(kind);
    }
  }
  torch::Tensor x = torch::stack(crops);
  if (x.size(2) > 32) x = torch::avg_pool3d(x, x.size(2) / 32);  // the classifier sees 32^3
  const std::int64_t n = x.size(0);
  // Folds by patient: a patient's real and synthetic crops are tested together.
  std::map<int, int> fold_of;
  {
    auto gen = Rng(seed, {7});
    const torch::Tensor perm = torch::randperm(std::int64_t(patients.size()), gen);
    for (std::int64_t k = 0; k < perm.size(0); ++k) {
      fold_of[patients[std::size_t(perm[k].item<std::int64_t>())]] = int(k % folds);
    }
  }
  std::vector<int> fold(std::size_t(n), 0);
  for (std::int64_t i = 0; i < n; ++i) fold[std::size_t(i)] = fold_of[groups[std::size_t(i)]];
  std::vector<double> score(std::size_t(n), 0.0);
  const torch::Tensor y = torch::tensor(labels, torch::kFloat);
  for (int f = 0; f < folds; ++f) {
    std::vector<std::int64_t> tr, te;
    for (std::int64_t i = 0; i < n; ++i) (fold[std::size_t(i)] == f ? te : tr).push_back(i);
    torch::manual_seed(DeriveSeed(seed, {8, std::uint64_t(f)}));
    TuringNet model;
    torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
    const torch::Tensor tr_idx = torch::tensor(tr, torch::kLong);
    auto gen = Rng(seed, {9, std::uint64_t(f)});
    const int epochs = 25;
    for (int epoch = 0; epoch < epochs; ++epoch) {
      const torch::Tensor perm = tr_idx.index_select(0, torch::randperm(tr_idx.size(0), gen));
      for (std::int64_t b = 0; b < perm.size(0); b += 16) {
        const torch::Tensor idx = perm.slice(0, b, std::min(perm.size(0), b + 16));
        torch::Tensor xb = x.index_select(0, idx);
        if (torch::rand({1}, gen).item<double>() < 0.5) xb = xb.flip({2});
        if (torch::rand({1}, gen).item<double>() < 0.5) xb = xb.flip({4});
        const torch::Tensor loss =
            torch::binary_cross_entropy_with_logits(model->forward(xb), y.index_select(0, idx));
        optimizer.zero_grad();
        loss.backward();
        optimizer.step();
      }
    }
    torch::NoGradGuard no_grad;
    model->eval();
    const torch::Tensor out = model->forward(x.index_select(0, torch::tensor(te, torch::kLong)));
    for (std::size_t k = 0; k < te.size(); ++k) {
      score[std::size_t(te[k])] = out[std::int64_t(k)].item<double>();
    }
  }
  TuringTestResult r;
  r.real = int(real.size());
  r.synthetic = int(synthetic.size());
  r.folds = folds;
  r.groups = int(patients.size());
  r.auc = Auc(score, labels);
  // Percentile bootstrap over patients: a patient's crops are resampled together, since its real
  // and synthetic crops share anatomy and are not independent.
  std::map<int, std::vector<std::size_t>> members;
  for (std::size_t i = 0; i < groups.size(); ++i) members[groups[i]].push_back(i);
  std::mt19937_64 rng(DeriveSeed(seed, {10}));
  std::uniform_int_distribution<std::size_t> pick(0, patients.size() - 1);
  std::vector<double> aucs;
  for (int b = 0; b < 1000; ++b) {
    std::vector<double> s;
    std::vector<int> l;
    for (std::size_t k = 0; k < patients.size(); ++k) {
      for (std::size_t i : members[patients[pick(rng)]]) {
        s.push_back(score[i]);
        l.push_back(labels[i]);
      }
    }
    aucs.push_back(Auc(s, l));
  }
  std::sort(aucs.begin(), aucs.end());
  r.ci_low = aucs[24];
  r.ci_high = aucs[974];
  return r;
}

}  // namespace mewm::dynamics
