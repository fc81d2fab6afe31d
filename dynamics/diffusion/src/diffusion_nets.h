// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The diffusion networks and noise schedule (private: includes torch). Shared by the serving
// backend (diffusion_model.cc) and the trainer (diffusion_train.cc).
//
// Autoencoder: 2 channels (windowed CT, mask) at crop^3 -> latent_channels at (crop/4)^3, KL
// regularised; upsampling is trilinear + conv (ConvTranspose3d never reaches oneDNN here).
// Denoiser: a 2-level 3D U-Net on [noisy delta latent, pre-treatment latent, tumor mask / 4],
// predicting v; time + plan embedding drive a scale/shift in every residual block. The plan
// embedding is an MLP over the sum of learned item embeddings (order-invariant), with a learned
// null plan for classifier-free guidance; optionally the lesion's size enters the same MLP. The
// diffusion runs on the change of the latent, (z_post - z_pre) * latent_scale, which is zero away
// from the tumor.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "mewm/dynamics/diffusion_backend.h"

namespace mewm::dynamics::nets {

/// When non-null, every Conv3d adds its multiply-add FLOPs (2 per MAC) here.
inline thread_local double* tl_flop_sink = nullptr;
/// Forces torch::conv3d's default dispatch (for the speed comparison).
inline bool g_default_dispatch = false;

/// Conv3d with "same" padding that calls oneDNN directly for inference on CPU: libtorch 1.13
/// sends small batch-1 3D convolutions to a slow im2col path (docs/TOOLCHAIN traps).
class Conv3dImpl : public torch::nn::Module {
 public:
  Conv3dImpl(int in, int out, int kernel, int stride = 1) : kernel_(kernel), stride_(stride) {
    weight = register_parameter("weight", torch::empty({out, in, kernel, kernel, kernel}));
    bias = register_parameter("bias", torch::empty({out}));
    const double bound = 1.0 / std::sqrt(double(in * kernel * kernel * kernel));
    torch::NoGradGuard no_grad;
    weight.uniform_(-bound * std::sqrt(3.0), bound * std::sqrt(3.0));
    bias.uniform_(-bound, bound);
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const std::int64_t pad = kernel_ / 2;
    if (tl_flop_sink != nullptr) {
      std::int64_t out_voxels = 1;
      for (int a = 2; a < 5; ++a) out_voxels *= (x.size(a) + 2 * pad - kernel_) / stride_ + 1;
      *tl_flop_sink += 2.0 * double(x.size(0)) * double(weight.size(0)) * double(weight.size(1)) *
                       double(kernel_ * kernel_ * kernel_) * double(out_voxels);
    }
    if (!g_default_dispatch && x.device().is_cpu() && !torch::GradMode::is_enabled() &&
        x.scalar_type() == torch::kFloat32) {
      return at::mkldnn_convolution(x.contiguous(), weight, bias, {pad, pad, pad},
                                    {stride_, stride_, stride_}, {1, 1, 1}, 1);
    }
    return torch::conv3d(x, weight, bias, stride_, pad);
  }
  torch::Tensor weight, bias;

 private:
  std::int64_t kernel_, stride_;
};
TORCH_MODULE(Conv3d);

inline torch::nn::GroupNorm Norm(int channels) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(channels % 8 == 0 ? 8 : 4, channels));
}

inline torch::Tensor Upsample2(const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  return F::interpolate(x, F::InterpolateFuncOptions()
                               .scale_factor(std::vector<double>{2.0, 2.0, 2.0})
                               .mode(torch::kTrilinear)
                               .align_corners(false));
}

/// Pre-activation residual block; with cond_dim > 0 the condition sets a scale and shift after
/// the second norm (FiLM).
class ResBlockImpl : public torch::nn::Module {
 public:
  ResBlockImpl(int in, int out, int cond_dim)
      : norm1(register_module("norm1", Norm(in))),
        conv1(register_module("conv1", Conv3d(in, out, 3))),
        norm2(register_module("norm2", Norm(out))),
        conv2(register_module("conv2", Conv3d(out, out, 3))) {
    if (in != out) skip = register_module("skip", Conv3d(in, out, 1));
    if (cond_dim > 0) {
      film = register_module("film", torch::nn::Linear(cond_dim, 2 * out));
      torch::NoGradGuard no_grad;
      film->weight.zero_();
      film->bias.zero_();
    }
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cond = {}) {
    torch::Tensor h = conv1(torch::silu(norm1(x)));
    h = norm2(h);
    if (film) {
      const torch::Tensor ss = film(torch::silu(cond)).view({h.size(0), -1, 1, 1, 1});
      const auto parts = ss.chunk(2, 1);
      h = h * (1 + parts[0]) + parts[1];
    }
    h = conv2(torch::silu(h));
    return (skip ? skip(x) : x) + h;
  }
  torch::nn::GroupNorm norm1;
  Conv3d conv1;
  torch::nn::GroupNorm norm2;
  Conv3d conv2, skip{nullptr};
  torch::nn::Linear film{nullptr};
};
TORCH_MODULE(ResBlock);

class AutoencoderImpl : public torch::nn::Module {
 public:
  explicit AutoencoderImpl(const DiffusionConfig& c) {
    const int c0 = c.ae_channels[0], c1 = c.ae_channels[1], c2 = c.ae_channels[2];
    const int latent = c.latent_channels;
    enc_in = register_module("enc_in", Conv3d(2, c0, 3));
    enc_down1 = register_module("enc_down1", Conv3d(c0, c1, 3, 2));
    enc_rb1 = register_module("enc_rb1", ResBlock(c1, c1, 0));
    enc_down2 = register_module("enc_down2", Conv3d(c1, c2, 3, 2));
    enc_rb2 = register_module("enc_rb2", ResBlock(c2, c2, 0));
    enc_norm = register_module("enc_norm", Norm(c2));
    enc_out = register_module("enc_out", Conv3d(c2, 2 * latent, 1));
    {
      // Start the posterior narrow (std ~0.02): with unit noise at the start the decoder learns
      // to ignore the latent's detail and the reconstruction plateaus smooth (measured: a
      // +450 HU Lipiodol deposit came back at liver intensity).
      torch::NoGradGuard no_grad;
      enc_out->bias.slice(0, latent, 2 * latent).fill_(-8.0);
    }
    dec_in = register_module("dec_in", Conv3d(latent, c2, 3));
    dec_rb2 = register_module("dec_rb2", ResBlock(c2, c2, 0));
    dec_up1 = register_module("dec_up1", Conv3d(c2, c1, 3));
    dec_rb1 = register_module("dec_rb1", ResBlock(c1, c1, 0));
    dec_up0 = register_module("dec_up0", Conv3d(c1, c0, 3));
    dec_norm = register_module("dec_norm", Norm(c0));
    dec_out = register_module("dec_out", Conv3d(c0, 2, 3));
    if (c.decoder_pre) {
      // Zero at the start: a decoder fine-tuned from one without it starts where that one was.
      dec_pre1 = register_module("dec_pre1", Conv3d(2, c0, 3));
      dec_pre2 = register_module("dec_pre2", Conv3d(c0, c0, 3));
      torch::NoGradGuard no_grad;
      dec_pre2->weight.zero_();
      dec_pre2->bias.zero_();
    }
  }
  /// [N, 2, D, H, W] -> (mean, logvar), each [N, latent, D/4, H/4, W/4].
  std::pair<torch::Tensor, torch::Tensor> Encode(const torch::Tensor& x) {
    torch::Tensor h = torch::silu(enc_in(x));
    h = enc_rb1(enc_down1(h));
    h = enc_rb2(enc_down2(h));
    const auto parts = enc_out(torch::silu(enc_norm(h))).chunk(2, 1);
    return {parts[0], parts[1].clamp(-20.0, 10.0)};
  }
  /// What a DiffusionConfig::decoder_pre decoder reads of the pre-treatment crop `pre` [N, 2, D,
  /// H, W]: [N, c0, D, H, W], the same for every outcome of the crop. Undefined without it.
  torch::Tensor PreFeatures(const torch::Tensor& pre) {
    if (!dec_pre1) return {};
    return dec_pre2(torch::silu(dec_pre1(pre)));
  }
  /// `pre_features`: PreFeatures of the rows' pre-treatment crops (one row broadcasts to all), or
  /// undefined (a plain reconstruction, and every decoder without DiffusionConfig::decoder_pre).
  torch::Tensor Decode(const torch::Tensor& z, const torch::Tensor& pre_features = {}) {
    torch::Tensor h = dec_rb2(dec_in(z));
    h = dec_rb1(dec_up1(Upsample2(h)));
    h = dec_up0(Upsample2(h));
    if (pre_features.defined()) h = h + pre_features;
    return dec_out(torch::silu(dec_norm(h)));
  }
  Conv3d enc_in{nullptr}, enc_down1{nullptr}, enc_down2{nullptr}, enc_out{nullptr}, dec_in{nullptr},
      dec_up1{nullptr}, dec_up0{nullptr}, dec_out{nullptr}, dec_pre1{nullptr}, dec_pre2{nullptr};
  ResBlock enc_rb1{nullptr}, enc_rb2{nullptr}, dec_rb2{nullptr}, dec_rb1{nullptr};
  torch::nn::GroupNorm enc_norm{nullptr}, dec_norm{nullptr};
};
TORCH_MODULE(Autoencoder);

/// Sinusoidal embedding of (float) timesteps, [N] -> [N, dim].
inline torch::Tensor TimestepEmbedding(const torch::Tensor& t, int dim) {
  const int half = dim / 2;
  const torch::Tensor freqs =
      torch::exp(-std::log(10000.0) * torch::arange(half, t.options()) / double(half));
  const torch::Tensor args = t.unsqueeze(1) * freqs.unsqueeze(0);
  return torch::cat({torch::sin(args), torch::cos(args)}, 1);
}

class DenoiserImpl : public torch::nn::Module {
 public:
  explicit DenoiserImpl(const DiffusionConfig& c) : embed_dim_(c.embed_dim) {
    const int c0 = c.unet_channels[0], c1 = c.unet_channels[1], e = c.embed_dim;
    const int latent = c.latent_channels;
    time1 = register_module("time1", torch::nn::Linear(e, e));
    time2 = register_module("time2", torch::nn::Linear(e, e));
    items = register_module("items", torch::nn::Embedding(std::int64_t(c.items.size()), e));
    plan1 = register_module("plan1", torch::nn::Linear(e, e));
    plan2 = register_module("plan2", torch::nn::Linear(e, e));
    null_plan = register_parameter("null_plan", torch::randn({e}) * 0.02);
    SetGroups(c.item_groups);
    group_once_ = c.group_once;
    if (c.lesion_size) {
      // Zero at the start: a denoiser fine-tuned from one without it starts where that one was.
      size = register_module("size", torch::nn::Linear(1, e));
      torch::NoGradGuard no_grad;
      size->weight.zero_();
      size->bias.zero_();
    }
    if (c.item_size) {  // likewise
      item_size =
          register_module("item_size", torch::nn::Embedding(std::int64_t(c.items.size()), e));
      torch::NoGradGuard no_grad;
      item_size->weight.zero_();
    }
    if (c.item_enhancement) {  // likewise
      item_enhancement = register_module("item_enhancement",
                                         torch::nn::Embedding(std::int64_t(c.items.size()), e));
      torch::NoGradGuard no_grad;
      item_enhancement->weight.zero_();
    }
    if (c.clinical) {  // likewise
      clinical = register_module("clinical", torch::nn::Linear(kClinicalColumns, e));
      torch::NoGradGuard no_grad;
      clinical->weight.zero_();
      clinical->bias.zero_();
    }
    if (c.response_head) {
      level = register_module("level", torch::nn::Linear(1, e));  // zero at the start, likewise
      {
        torch::NoGradGuard no_grad;
        level->weight.zero_();
        level->bias.zero_();
      }
      // The plan row without its level (the items, the size and covariates when read, the
      // enhancement, the signs of sensitivity when read), then the crop's tumor share
      // (TumorShare).
      by_item_ = c.response_sensitivity;
      item_size_head_ = c.response_item_size;
      const auto v = std::int64_t(c.items.size());
      if (!c.drug_classes.empty()) SetDrugClasses(c.drug_classes);
      // The network reads the signs of sensitivity only with response_sensitivity; with
      // drug_classes they go to the drug term alone.
      const std::int64_t in = v + (c.lesion_size ? 1 : 0) + (c.clinical ? kClinicalColumns : 0) +
                              1 + (by_item_ ? kSignColumns : 0) + 1 + (item_size_head_ ? v : 0);
      response = register_module(
          "response",
          torch::nn::Sequential(torch::nn::Linear(in, kResponseWidth), torch::nn::SiLU(),
                                torch::nn::Linear(kResponseWidth, kResponseWidth),
                                torch::nn::SiLU(), torch::nn::Linear(kResponseWidth, 1)));
    }
    conv_in = register_module("conv_in", Conv3d(2 * latent + 1, c0, 3));
    rb_in = register_module("rb_in", ResBlock(c0, c0, e));
    down = register_module("down", Conv3d(c0, c1, 3, 2));
    rb_down = register_module("rb_down", ResBlock(c1, c1, e));
    rb_mid = register_module("rb_mid", ResBlock(c1, c1, e));
    up = register_module("up", Conv3d(c1, c0, 3));
    rb_up = register_module("rb_up", ResBlock(2 * c0, c0, e));
    norm_out = register_module("norm_out", Norm(c0));
    conv_out = register_module("conv_out", Conv3d(c0, latent, 3));
    torch::NoGradGuard no_grad;
    conv_out->weight.zero_();
    conv_out->bias.zero_();
  }
  /// Plans as multi-hot rows over the vocabulary, [P, V] -> [P, embed]: sum of item embeddings
  /// (order-invariant; items of one DiffusionConfig::item_groups group each count as the group's
  /// mean embedding, and with DiffusionConfig::group_once a group counts once per plan), then an
  /// MLP. With DiffusionConfig::lesion_size each row has one more column, the crop's
  /// LesionSizeFeature, added inside the MLP (before its nonlinearity), so an item's effect can
  /// depend on the lesion's size; with DiffusionConfig::item_size each item's size slope times
  /// that column is added to the item sum; with DiffusionConfig::clinical three more columns,
  /// the patient's ClinicalFeatures, added like the size; with DiffusionConfig::item_enhancement
  /// a column, the EnhancementFeature, times each item's enhancement slope is added to the item
  /// sum (a DiffusionConfig::response_head row holds that column too); a
  /// DiffusionConfig::response_sensitivity row then holds the tumor's SensitivityFeatures, which
  /// only the head reads; with DiffusionConfig::response_head a last column, the outcome's
  /// ResponseLevelFeature, is added like the size.
  torch::Tensor PlanEmbedding(const torch::Tensor& rows) {
    const std::int64_t v = items->weight.size(0);
    const torch::Tensor plan_items = rows.slice(1, 0, v);
    // The plan's sum of one per-item table [V, e], with the item groups applied.
    const auto item_sum = [&](const torch::Tensor& w) {
      if (!group_mean_.defined()) return plan_items.matmul(w);
      // Members count through their group's count, so the members' rows are bit-identical.
      const torch::Tensor mean = group_mean_.to(w.device());
      return (plan_items * ungrouped_.to(w.device())).matmul(w) +
             GroupCounts(plan_items).matmul(mean.matmul(w));
    };
    torch::Tensor sum = item_sum(items->weight);
    const std::int64_t after_size = size ? v + 1 : v;
    const std::int64_t after_clinical = clinical ? after_size + kClinicalColumns : after_size;
    if (item_size) sum = sum + rows.slice(1, v, after_size) * item_sum(item_size->weight);
    if (item_enhancement) {
      sum = sum +
            rows.slice(1, after_clinical, after_clinical + 1) * item_sum(item_enhancement->weight);
    }
    torch::Tensor h = plan1(sum);
    if (size) h = h + size(rows.slice(1, v, after_size));
    if (clinical) h = h + clinical(rows.slice(1, after_size, after_clinical));
    if (level) {
      const std::int64_t at = after_clinical + 1 + SignColumns();  // after the enhancement
      h = h + level(rows.slice(1, at, at + 1));
    }
    return plan2(torch::silu(h));
  }
  /// DiffusionConfig::response_head: the predicted ResponseLevelFeature of each plan row, [P, 1].
  /// `rows` [P, ...] are plan rows without the level column; `share` [P or 1, 1] the crop's
  /// TumorShare (one row broadcasts to all). The head reads the items as the plan embedding
  /// does (GeneratorLevel), or with DiffusionConfig::response_sensitivity each by its own name.
  /// With DiffusionConfig::drug_classes, the head's level of the grouped plan plus the drug term
  /// of the plan's own drugs less that of the group's mean drug, so that the drug variants of one
  /// plan spread around the grouped plan's level.
  torch::Tensor PredictLevel(const torch::Tensor& rows, const torch::Tensor& share) {
    if (drug_offset) {
      const torch::Tensor grouped = Grouped(rows);
      return Head(grouped, share) + DrugTerm(rows) - DrugTerm(grouped);
    }
    return Head(by_item_ ? rows : Grouped(rows), share);
  }
  /// The response head's weights, the drug term's included: what a head fit trains.
  std::vector<torch::Tensor> HeadParameters() const {
    std::vector<torch::Tensor> p = response->parameters();
    for (const torch::Tensor& w : DrugTermParameters()) p.push_back(w);
    return p;
  }
  /// The drug term's weights alone (none without DiffusionConfig::drug_classes).
  std::vector<torch::Tensor> DrugTermParameters() const {
    if (!drug_offset) return {};
    return {drug_offset->weight, drug_slopes->weight, drug_item->weight, drug_second};
  }
  /// DiffusionConfig::drug_classes: each item's class, [V, K] (a row of zeros for an item that is
  /// not a drug).
  const torch::Tensor& DrugClassMembers() const { return class_members_; }
  /// The four signs the drug term's slopes read from each plan row, [P, 4]: the two
  /// SensitivityFeatures, then AFP and age of ClinicalFeatures (DrugTerm).
  torch::Tensor DrugSigns(const torch::Tensor& rows) const {
    const std::int64_t covariates = items->weight.size(0) + (size ? 1 : 0), signs = SignsAt();
    return torch::cat({rows.slice(1, signs, signs + kSignColumns),
                       rows.slice(1, covariates, covariates + 1),       // AFP
                       rows.slice(1, covariates + 2, covariates + 3)},  // age
                      1);
  }
  /// The level the denoiser reads for each plan row (the same arguments): the head's, with the
  /// items read as the plan embedding reads them. With DiffusionConfig::item_groups a group's
  /// members each count as the group's mean item (its row is the members' average, times the
  /// group's count, at most 1 with group_once), so plans that differ only within a group get
  /// bit-identical levels and GeneratorPlanKey may share their generation.
  torch::Tensor GeneratorLevel(const torch::Tensor& rows, const torch::Tensor& share) {
    return Head(Grouped(rows), share);
  }
  /// x: [N, latent] noisy delta; context: [N, latent + 1] (pre latent, mask); t: [N] float
  /// timesteps; plan: [N, embed] plan embeddings (or the null plan).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context,
                        const torch::Tensor& t, const torch::Tensor& plan) {
    const torch::Tensor cond = time2(torch::silu(time1(TimestepEmbedding(t, embed_dim_)))) + plan;
    torch::Tensor h0 = rb_in(conv_in(torch::cat({x, context}, 1)), cond);
    torch::Tensor h = rb_down(down(h0), cond);
    h = rb_mid(h, cond);
    h = up(Upsample2(h));
    h = rb_up(torch::cat({h, h0}, 1), cond);
    return conv_out(torch::silu(norm_out(h)));
  }
  static constexpr std::int64_t kClinicalColumns = 3;  ///< ClinicalFeatures' size
  static constexpr std::int64_t kResponseWidth = 32;   ///< the response head's hidden width
  static constexpr std::int64_t kSignColumns = 2;      ///< SensitivityFeatures' size
  torch::nn::Linear time1{nullptr}, time2{nullptr}, plan1{nullptr}, plan2{nullptr}, size{nullptr},
      clinical{nullptr}, level{nullptr};
  /// DiffusionConfig::drug_classes: each class's offset [1, K], its slopes on the four signs
  /// [K, 4] and each drug's own offset on top of its class's [1, V] (DrugTerm); all start at zero.
  torch::nn::Linear drug_offset{nullptr}, drug_slopes{nullptr}, drug_item{nullptr};
  /// What each drug after a plan's first adds to the drug term (DrugTerm), [1]; starts at zero.
  torch::Tensor drug_second;
  torch::nn::Sequential response{nullptr};
  torch::nn::Embedding items{nullptr}, item_size{nullptr}, item_enhancement{nullptr};
  torch::Tensor null_plan;
  Conv3d conv_in{nullptr}, down{nullptr}, up{nullptr}, conv_out{nullptr};
  ResBlock rb_in{nullptr}, rb_down{nullptr}, rb_mid{nullptr}, rb_up{nullptr};
  torch::nn::GroupNorm norm_out{nullptr};

 private:
  /// The plan rows with each group member's item column read as its group (PlanEmbedding's
  /// grouping); `rows` itself without groups.
  torch::Tensor Grouped(const torch::Tensor& rows) const {
    if (!group_mean_.defined()) return rows;
    const std::int64_t v = group_mean_.size(1);
    const torch::Tensor plan_items = rows.slice(1, 0, v);
    const torch::Tensor grouped = plan_items * ungrouped_.to(rows.device()) +
                                  GroupCounts(plan_items).matmul(group_mean_.to(rows.device()));
    return torch::cat({grouped, rows.slice(1, v)}, 1);
  }
  /// The head's input: the plan row, the crop's tumor share and, with
  /// DiffusionConfig::response_item_size, each item's column times the row's LesionSizeFeature
  /// (the column after the items).
  torch::Tensor Head(const torch::Tensor& rows, const torch::Tensor& share) {
    torch::Tensor read = rows;
    if (drug_offset) {  // the signs are the drug term's alone
      const std::int64_t signs = SignsAt();
      read = torch::cat({rows.slice(1, 0, signs), rows.slice(1, signs + kSignColumns)}, 1);
    }
    std::vector<torch::Tensor> in{read, share.expand({rows.size(0), -1})};
    if (item_size_head_) {
      const std::int64_t v = items->weight.size(0);
      in.push_back(rows.slice(1, 0, v) * rows.slice(1, v, v + 1));
    }
    return response->forward(torch::cat(in, 1));
  }
  /// The plan-row columns of SensitivityFeatures (DiffusionConfig::HeadReadsEachItem).
  std::int64_t SignColumns() const { return by_item_ || drug_offset ? kSignColumns : 0; }
  /// The first of them: after the items, the size, the covariates and the enhancement.
  std::int64_t SignsAt() const {
    return items->weight.size(0) + (size ? 1 : 0) + (clinical ? kClinicalColumns : 0) + 1;
  }
  /// DiffusionConfig::drug_classes' term of each plan row, [P, 1]: the mean over the row's drugs of
  /// the drug's own offset, its class's offset, and that class's slopes times the signs (the two
  /// SensitivityFeatures, then AFP and age of ClinicalFeatures), plus drug_second for each drug
  /// after the first. A grouped row, whose drug columns sum to at most one with group_once, gets
  /// the group's mean drug's term. The members of a class share its slopes and its offset, which
  /// a drug the fit never saw keeps; the drug's own offset tells a class's members apart (the
  /// least toxic platinum is also the least potent). The mean, not the sum: the world saturates a
  /// second drug, and a sum gave two drugs twice one's effect, a pair the planner then took where
  /// the optimum has one drug or none (models/README.md). What a second drug adds is drug_second,
  /// learned from the plans with two drugs, and zero where the fit saw none.
  torch::Tensor DrugTerm(const torch::Tensor& rows) const {
    const std::int64_t v = items->weight.size(0);
    const torch::Tensor s = DrugSigns(rows);
    const torch::Tensor plan_items = rows.slice(1, 0, v);
    const torch::Tensor by_class = plan_items.matmul(class_members_.to(rows.device()));
    const torch::Tensor drugs = plan_items * is_drug_.to(rows.device());
    const torch::Tensor summed =
        (by_class * (drug_offset->weight + s.matmul(drug_slopes->weight.t()))).sum(1, true) +
        drugs.matmul(drug_item->weight.t());
    const torch::Tensor count = drugs.sum(1, true);
    return summed / count.clamp_min(1.0) + (count - 1.0).clamp_min(0.0) * drug_second;
  }
  /// Registers the drug term's weights (zero) and the class of each drug item.
  void SetDrugClasses(const std::vector<std::string>& classes) {
    std::vector<std::string> names;
    for (const std::string& c : classes) {
      if (!c.empty() && std::find(names.begin(), names.end(), c) == names.end()) names.push_back(c);
    }
    const auto v = std::int64_t(classes.size()), k = std::int64_t(names.size());
    class_members_ = torch::zeros({v, k});
    for (std::int64_t i = 0; i < v; ++i) {
      const std::string& c = classes[std::size_t(i)];
      if (!c.empty()) {
        class_members_[i][std::find(names.begin(), names.end(), c) - names.begin()] = 1.0f;
      }
    }
    drug_offset = register_module("drug_offset",
                                  torch::nn::Linear(torch::nn::LinearOptions(k, 1).bias(false)));
    drug_slopes = register_module("drug_slopes",
                                  torch::nn::Linear(torch::nn::LinearOptions(4, k).bias(false)));
    drug_item =
        register_module("drug_item", torch::nn::Linear(torch::nn::LinearOptions(v, 1).bias(false)));
    drug_second = register_parameter("drug_second", torch::zeros({1}));
    is_drug_ = class_members_.sum(1);
    torch::NoGradGuard no_grad;
    drug_offset->weight.zero_();
    drug_slopes->weight.zero_();
    drug_item->weight.zero_();
  }
  bool by_item_ = false;  ///< DiffusionConfig::response_sensitivity
  /// DiffusionConfig::drug_classes: each item's class [V, K] (a row of zeros for an item that is
  /// not a drug). Not a buffer, like the groups below.
  torch::Tensor class_members_;
  torch::Tensor is_drug_;  ///< [V]: 1 for a drug item (a row of class_members_ that is not zero)
  bool item_size_head_ = false;  ///< DiffusionConfig::response_item_size
  /// group_members_ [G, V] is 1 where an item belongs to a group and group_mean_ averages each
  /// group's members; ungrouped_ [V] is 1 for the items that keep their own embedding. Undefined
  /// when no item is grouped. Not buffers: a checkpoint holds the groups in its config.
  void SetGroups(const std::vector<std::string>& groups) {
    const auto v = std::int64_t(groups.size());
    std::vector<std::string> names;
    std::vector<std::int64_t> group_of;  // -1: ungrouped
    for (const std::string& g : groups) {
      const auto at = std::find(names.begin(), names.end(), g);
      group_of.push_back(g.empty() ? -1 : std::int64_t(at - names.begin()));
      if (!g.empty() && at == names.end()) names.push_back(g);
    }
    if (names.empty()) return;
    group_members_ = torch::zeros({std::int64_t(names.size()), v});
    ungrouped_ = torch::zeros({v});
    for (std::int64_t i = 0; i < v; ++i) {
      const std::int64_t g = group_of[std::size_t(i)];
      if (g < 0) {
        ungrouped_[i] = 1.0;
      } else {
        group_members_[g][i] = 1.0;
      }
    }
    group_mean_ = group_members_ / group_members_.sum(1, true);
  }
  /// How many of each group's members a plan holds, [P, V] -> [P, G] (at most 1 with
  /// DiffusionConfig::group_once). Needs groups (group_mean_ defined).
  torch::Tensor GroupCounts(const torch::Tensor& plan_items) const {
    const torch::Tensor counts = plan_items.matmul(group_members_.to(plan_items.device()).t());
    return group_once_ ? counts.clamp_max(1.0) : counts;
  }
  int embed_dim_;
  bool group_once_ = false;
  torch::Tensor group_members_, group_mean_, ungrouped_;
};
TORCH_MODULE(Denoiser);

/// Everything a checkpoint holds.
class DiffusionNetImpl : public torch::nn::Module {
 public:
  explicit DiffusionNetImpl(const DiffusionConfig& c)
      : ae(register_module("ae", Autoencoder(c))),
        denoiser(register_module("denoiser", Denoiser(c))) {
    latent_scale = register_buffer("latent_scale", torch::ones({1}));
  }
  Autoencoder ae;
  Denoiser denoiser;
  torch::Tensor latent_scale;  ///< multiplies (z_post - z_pre) to unit variance
};
TORCH_MODULE(DiffusionNet);

/// Cosine schedule (Nichol & Dhariwal): alpha_bar[t] for t = 0 .. T-1 (step t + 1).
inline std::vector<double> CosineAlphaBar(int timesteps) {
  const double s = 0.008;
  const auto f = [&](double t) {
    const double x = (t / timesteps + s) / (1 + s) * M_PI / 2;
    return std::cos(x) * std::cos(x);
  };
  std::vector<double> alpha_bar(static_cast<std::size_t>(timesteps));
  double previous = 1.0;
  for (int t = 0; t < timesteps; ++t) {
    const double a = f(t + 1) / f(0);
    const double beta = std::min(0.999, 1.0 - a / previous);
    previous = previous * (1.0 - beta);
    alpha_bar[std::size_t(t)] = previous;
  }
  return alpha_bar;
}

/// Classifier-free guidance: `v` holds the conditional rows, then as many null-plan rows.
inline torch::Tensor Guide(const torch::Tensor& v, double guidance) {
  const auto parts = v.chunk(2, 0);
  return parts[1] + guidance * (parts[0] - parts[1]);
}

/// DDIM (eta = 0) to ancestral (eta = 1) sampling of the delta latent from the noise `x`,
/// v-parametrised, with classifier-free guidance batched into the same forward. `context` and
/// `plan` have one row per row of x. `step_noise(i)` gives fresh noise for step i when eta > 0;
/// `on_forward(rows, gflop)` is told of every denoiser call. `stop`, when set, is polled before
/// each call; once it returns true, Ddim returns an undefined tensor.
torch::Tensor Ddim(Denoiser& denoiser, torch::Tensor x, const torch::Tensor& context,
                   const torch::Tensor& plan, const std::vector<double>& alpha_bar,
                   const SamplerConfig& sampler,
                   const std::function<torch::Tensor(std::size_t)>& step_noise,
                   const std::function<void(std::int64_t, double)>& on_forward,
                   const std::function<bool()>& stop = {});

/// The decoder's second channel as a viable fraction in [0, 1]: a "viable_fraction" channel was
/// trained on 2u - 1; a "viable_mask" channel on {-1, 1}, and [-0.5, 0.5] maps to [0, 1] so that
/// small residuals away from the tumor do not count.
torch::Tensor DecodedFraction(const torch::Tensor& channel, const DiffusionConfig& config);

/// The viable fraction of an outcome from its decoded second channel `post`, as a change from the
/// pre-treatment crop: pre_mask + fraction(post) - fraction(pre), in [0, 1], where `pre` is the
/// pre-treatment latent decoded. The autoencoder's blur and phantom residual, alike in both
/// decodes, cancel; values under 0.05 are cut. Shapes [..., 1, D, H, W] alike.
torch::Tensor ResidualFraction(const torch::Tensor& post, const torch::Tensor& pre,
                               const torch::Tensor& pre_mask, const DiffusionConfig& config);

/// Window units to HU, element-wise, clamping to [-1, 1] first like HuWindow::FromUnit (so a
/// tensor and a DenseFloat converted from the same values agree).
torch::Tensor UnitToHu(const torch::Tensor& unit, const HuWindow& window);

/// The fine texture of a CT crop [..., D, H, W]: each voxel minus the mean of its 3x3x3
/// neighbourhood (the neighbours inside the crop).
torch::Tensor HighPass(const torch::Tensor& ct);

/// The TextureModel bin of each voxel, from the pre-treatment tumor mask (0/1), the decoded viable
/// fraction, the decoded CT change (HU) and the pre-treatment CT (HU), all of one shape; kLong.
torch::Tensor TextureBins(const TextureModel& texture, const torch::Tensor& pre_mask,
                          const torch::Tensor& fraction, const torch::Tensor& change_hu,
                          const torch::Tensor& pre_hu);

/// Multi-hot plan rows over `vocabulary`; kInvalidArgument naming an unknown item.
Expected<torch::Tensor> PlansToMultiHot(const std::vector<Plan>& plans,
                                        const std::vector<std::string>& vocabulary);

/// Whether the plan rows hold the tumor's EnhancementFeature: the item slopes of
/// DiffusionConfig::item_enhancement read it, and so does a response_head.
inline bool ReadsEnhancement(const DiffusionConfig& config) {
  return config.item_enhancement || config.response_head;
}

/// The denoiser's plan rows (Denoiser::PlanEmbedding's input): `multi_hot` [P, V], then one
/// column holding LesionSizeFeature(diameters[p]) when config.lesion_size, then three holding
/// ClinicalFeatures(covariates[p]) when config.clinical, then one holding
/// EnhancementFeature(tumors[p].enhancing_hu) when ReadsEnhancement(config), then two holding
/// SensitivityFeatures(tumors[p]) when config.HeadReadsEachItem() (the caller appends a
/// response_head's level column) (`diameters`, `covariates` and `tumors` each have one entry per
/// row, or one for all rows).
torch::Tensor PlanRows(const torch::Tensor& multi_hot, const std::vector<double>& diameters,
                       const std::vector<Covariates>& covariates,
                       const std::vector<TumorFeatures>& tumors, const DiffusionConfig& config);

/// What a DiffusionConfig::response_head reads of a crop's context [N, latent + 1, d, h, w] (the
/// pre-treatment latent, then the tumor mask downsampled) besides the plan row: the tumor's share
/// of the crop, times 10; [N, 1]. Not the latent: a head that read it fitted each training
/// patient's level and did worse on validation after 100 of its 2,000 steps.
torch::Tensor TumorShare(const torch::Tensor& context);

/// One crop voxel's volume in mL (the crop lattice's spacing, DiffusionConfig::spacing_mm).
inline double CropVoxelMl(const DiffusionConfig& config) {
  return std::pow(config.spacing_mm, 3) * 1e-3;
}

/// A crop pair as a [2, D, H, W] tensor (CT, mask mapped to [-1, 1]).
torch::Tensor ChannelsToTensor(const CropChannels& channels);

}  // namespace mewm::dynamics::nets
