// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The diffusion backend at serving time: load a checkpoint, encode each lesion crop once per
// patient, embed each plan once per batch, run DDIM over (plans x samples) in batched forwards,
// decode, and paste the outcomes back into the patient's grid.
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <map>

#include "diffusion_nets.h"
#include "mewm/core/log.h"
#include "mewm/core/seed.h"
#include "mewm/tace/patient_identity.h"
#include "mewm/tace/tumor_features.h"
#include "mewm/torch/bridge.h"

namespace mewm::dynamics {
namespace nets {

Expected<torch::Tensor> PlansToMultiHot(const std::vector<Plan>& plans,
                                        const std::vector<std::string>& vocabulary) {
  std::map<std::string, std::int64_t> index;
  for (std::size_t v = 0; v < vocabulary.size(); ++v) index[vocabulary[v]] = std::int64_t(v);
  torch::Tensor rows = torch::zeros({std::int64_t(plans.size()), std::int64_t(vocabulary.size())});
  auto a = rows.accessor<float, 2>();
  for (std::size_t p = 0; p < plans.size(); ++p) {
    if (plans[p].empty()) {
      return MakeError(ErrorCode::kInvalidArgument, "the diffusion model needs a non-empty plan");
    }
    for (const std::string& item : plans[p].items()) {
      auto it = index.find(item);
      if (it == index.end()) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "plan item '" + item + "' (plan " + plans[p].ToString() +
                             ") is not in the diffusion model's vocabulary of " +
                             std::to_string(vocabulary.size()) + " items");
      }
      a[std::int64_t(p)][it->second] = 1.0f;
    }
  }
  return rows;
}

torch::Tensor PlanRows(const torch::Tensor& multi_hot, const std::vector<double>& diameters,
                       const std::vector<Covariates>& covariates,
                       const std::vector<TumorFeatures>& tumors, const DiffusionConfig& config) {
  const auto rows = std::size_t(multi_hot.size(0));
  // One entry for all rows, or one per row.
  const auto of_row = [](const auto& v, std::size_t r) { return v.size() == 1 ? v[0] : v[r]; };
  std::vector<float> extra;
  for (std::size_t r = 0; r < rows; ++r) {
    if (config.lesion_size) extra.push_back(float(LesionSizeFeature(of_row(diameters, r))));
    if (config.clinical) {
      for (double x : ClinicalFeatures(of_row(covariates, r))) extra.push_back(float(x));
    }
    if (ReadsEnhancement(config)) {
      extra.push_back(float(EnhancementFeature(of_row(tumors, r).enhancing_hu)));
    }
    if (config.HeadReadsEachItem()) {
      for (double x : SensitivityFeatures(of_row(tumors, r))) extra.push_back(float(x));
    }
  }
  if (extra.empty()) return multi_hot;
  const auto width = std::int64_t(extra.size() / rows);
  return torch::cat({multi_hot, torch::tensor(extra).view({-1, width}).to(multi_hot.options())}, 1);
}

torch::Tensor TumorShare(const torch::Tensor& context) {
  const std::int64_t latent = context.size(1) - 1;
  return context.slice(1, latent, latent + 1).mean({2, 3, 4}) * 10.0;
}

torch::Tensor Ddim(Denoiser& denoiser, torch::Tensor x, const torch::Tensor& context,
                   const torch::Tensor& plan, const std::vector<double>& alpha_bar,
                   const SamplerConfig& s,
                   const std::function<torch::Tensor(std::size_t)>& step_noise,
                   const std::function<void(std::int64_t, double)>& on_forward,
                   const std::function<bool()>& stop) {
  const int T = int(alpha_bar.size());
  const int steps = std::min(s.steps, T);
  std::vector<int> ts;
  for (int i = 0; i < steps; ++i) {
    ts.push_back(steps == 1 ? T - 1
                            : int(std::lround(double(T - 1) * (1.0 - double(i) / (steps - 1)))));
  }
  const bool guided = s.guidance != 1.0;
  const std::int64_t rows = x.size(0);
  torch::Tensor ctx = context;
  torch::Tensor cond = plan;
  if (guided) {
    ctx = torch::cat({ctx, ctx});
    cond = torch::cat({plan, denoiser->null_plan.expand({rows, -1})});
  }
  for (std::size_t i = 0; i < ts.size(); ++i) {
    if (stop && stop()) return {};
    const int t = ts[i];
    const double ab = alpha_bar[std::size_t(t)];
    const double ab_prev = i + 1 < ts.size() ? alpha_bar[std::size_t(ts[i + 1])] : 1.0;
    const torch::Tensor xin = guided ? torch::cat({x, x}) : x;
    const torch::Tensor tt = torch::full({xin.size(0)}, double(t), x.options());
    double flops = 0.0;
    tl_flop_sink = &flops;
    torch::Tensor v = denoiser->forward(xin, ctx, tt, cond);
    tl_flop_sink = nullptr;
    if (on_forward) on_forward(xin.size(0), flops * 1e-9);
    if (guided) v = Guide(v, s.guidance);
    const double sa = std::sqrt(ab), sb = std::sqrt(1.0 - ab);
    torch::Tensor x0 = sa * x - sb * v;
    const torch::Tensor eps = sb * x + sa * v;
    if (ab_prev >= 1.0) return x0;
    const double sigma =
        s.eta * std::sqrt((1.0 - ab_prev) / (1.0 - ab)) * std::sqrt(1.0 - ab / ab_prev);
    x = std::sqrt(ab_prev) * x0 + std::sqrt(std::max(0.0, 1.0 - ab_prev - sigma * sigma)) * eps;
    if (sigma > 0.0) x = x + sigma * step_noise(i);
  }
  return x;
}

torch::Tensor DecodedFraction(const torch::Tensor& channel, const DiffusionConfig& config) {
  return config.mask_channel == "viable_fraction" ? ((channel + 1.0) * 0.5).clamp(0.0, 1.0)
                                                  : (channel + 0.5).clamp(0.0, 1.0);
}

torch::Tensor ResidualFraction(const torch::Tensor& post, const torch::Tensor& pre,
                               const torch::Tensor& pre_mask, const DiffusionConfig& config) {
  const torch::Tensor u =
      (pre_mask + DecodedFraction(post, config) - DecodedFraction(pre, config)).clamp(0.0, 1.0);
  return u * (u >= 0.05).to(u.scalar_type());
}

torch::Tensor ChannelsToTensor(const CropChannels& channels) {
  return torch::stack(
      {torch_bridge::ToTensor(channels.ct), torch_bridge::ToTensor(channels.mask) * 2.0 - 1.0});
}

torch::Tensor UnitToHu(const torch::Tensor& unit, const HuWindow& window) {
  return (unit.clamp(-1.0, 1.0) + 1.0) * (0.5 * double(window.hi - window.lo)) + double(window.lo);
}

torch::Tensor HighPass(const torch::Tensor& ct) {
  const auto shape = ct.sizes().vec();
  const torch::Tensor x = ct.reshape(
      {-1, 1, shape[shape.size() - 3], shape[shape.size() - 2], shape[shape.size() - 1]});
  const torch::Tensor mean = torch::avg_pool3d(x, 3, 1, 1, /*ceil_mode=*/false,
                                               /*count_include_pad=*/false);
  return (x - mean).reshape(shape);
}

torch::Tensor TextureBins(const TextureModel& texture, const torch::Tensor& pre_mask,
                          const torch::Tensor& fraction, const torch::Tensor& change_hu,
                          const torch::Tensor& pre_hu) {
  torch::Tensor bin = (pre_mask > 0.5).to(torch::kLong);
  const std::pair<const torch::Tensor*, const std::vector<double>*> axes[] = {
      {&fraction, &texture.fraction_edges},
      {&change_hu, &texture.change_edges_hu},
      {&pre_hu, &texture.pre_edges_hu}};
  for (const auto& [value, edges] : axes) {
    const torch::Tensor e = torch::tensor(*edges, torch::kFloat).to(value->device());
    bin = bin * (std::int64_t(edges->size()) + 1) +
          torch::bucketize(value->to(torch::kFloat), e, /*out_int32=*/false, /*right=*/true);
  }
  return bin;
}

}  // namespace nets

namespace {

using Clock = std::chrono::steady_clock;

/// Seconds since the last lap (or construction).
class Stopwatch {
 public:
  double Lap() {
    const Clock::time_point now = Clock::now();
    const double s = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    return s;
  }

 private:
  Clock::time_point last_ = Clock::now();
};

/// The seed of a request's noise: its shared seed when it has one, so that sample t starts from the
/// same latent noise under every plan and plans are compared on the same draws (common random
/// numbers); else its own seed.
std::uint64_t NoiseSeed(const SimulationRequest& r) {
  return r.shared_seed != 0 ? r.shared_seed : r.seed;
}

/// Per-request noise from its own generator, so an outcome never depends on its batch.
torch::Tensor Noise(std::uint64_t seed, std::uint64_t stream,
                    const std::vector<std::int64_t>& shape) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(DeriveSeed(seed, {stream}));
  return torch::randn(shape, gen);
}

/// A checkpoint with guidance distilled into it samples with guidance 1: its null plan was not
/// trained with the student, so guiding it again would extrapolate from an untrained branch.
Status CheckSampler(const DiffusionConfig& config, const SamplerConfig& sampler,
                    const std::string& model) {
  if (config.guidance_distilled == 1.0 || sampler.guidance == 1.0) return {};
  char text[64];
  std::snprintf(text, sizeof text, "%g", config.guidance_distilled);
  return MakeError(ErrorCode::kInvalidArgument,
                   "'" + model + "' has guidance " + text +
                       " distilled into it: sample it with guidance 1 (dynamics.guidance = 1.0 "
                       "gives the distilled guidance " +
                       text + " in one pass)");
}

class DiffusionDynamicsImpl final : public DiffusionDynamics {
 public:
  DiffusionDynamicsImpl(DiffusionConfig config, const DiffusionBackendOptions& options,
                        torch::Device device, std::string metadata)
      : config_(std::move(config)),
        options_(options),
        device_(device),
        metadata_(std::move(metadata)),
        net_(config_),
        alpha_bar_(nets::CosineAlphaBar(config_.train_timesteps)) {
    if (!config_.texture.empty()) {
      texture_offset_ = torch::tensor(config_.texture.offset_hu, torch::kFloat);
      texture_noise_ = torch::tensor(config_.texture.noise_hu, torch::kFloat);
    }
  }

  nets::DiffusionNet& net() { return net_; }

  Expected<std::vector<Outcome>> Simulate(const PatientCase& patient,
                                          const std::vector<SimulationRequest>& requests) override {
    // libtorch reports shape, memory and device problems by exception: they become error values
    // here, at the module's edge, with the cause in one line (the backtrace goes to the debug log).
    try {
      return SimulateUnguarded(patient, requests);
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kInternal, "diffusion simulation of patient '" + patient.id +
                                                 "' failed: " + ExceptionCause(e));
    }
  }

  /// Generates each distinct OutcomeKey once per patient: a request equal to one generated before,
  /// in this call or an earlier one, gets a copy of its outcome with its own plan and sample
  /// index. The copy is what generating it again would give (the same embedding, noise and
  /// texture), without the denoiser, the decoder or the paste.
  Expected<std::vector<Outcome>> SimulateUnguarded(const PatientCase& patient,
                                                   const std::vector<SimulationRequest>& requests) {
    if (requests.empty()) return std::vector<Outcome>{};
    MEWM_RETURN_IF_ERROR(CheckSampler(config_, options_.sampler, options_.model_path));
    if (!options_.reuse_outcomes) return Generate(patient, requests);
    // Another patient empties the kept outcomes.
    Stopwatch clock;
    MEWM_RETURN_IF_ERROR(PreparePatient(patient));
    counters_.prepare_s += clock.Lap();
    std::vector<std::string> keys;
    std::map<std::string, std::size_t> first;  // key -> its row in `fresh`
    std::vector<SimulationRequest> fresh;
    std::vector<std::size_t> fresh_request;  // the request each row of `fresh` is
    for (std::size_t r = 0; r < requests.size(); ++r) {
      keys.push_back(OutcomeKey(requests[r]));
      if (reuse_.outcomes.items.count(keys.back()) == 0 &&
          first.emplace(keys.back(), fresh.size()).second) {
        fresh.push_back(requests[r]);
        fresh_request.push_back(r);
      }
    }
    MEWM_TRY(std::vector<Outcome> generated, Generate(patient, fresh));
    std::vector<Outcome> outcomes;
    outcomes.reserve(requests.size());
    for (std::size_t r = 0; r < requests.size(); ++r) {
      const auto kept = reuse_.outcomes.items.find(keys[r]);
      const auto made = first.find(keys[r]);
      if (kept != reuse_.outcomes.items.end() || fresh_request[made->second] != r)
        ++counters_.reused;
      const Outcome& source =
          kept != reuse_.outcomes.items.end() ? kept->second : generated[made->second];
      outcomes.push_back(CopyOutcome(source, requests[r]));
    }
    for (const auto& [key, row] : first) Keep(key, std::move(generated[row]));
    return outcomes;
  }

  /// The generator's key of a request: its GeneratorPlanKey and noise seed.
  std::string GenerationKey(const SimulationRequest& request) const {
    return GeneratorPlanKey(request.plan, config_) + "@" + std::to_string(NoiseSeed(request));
  }
  /// The key of the outcome a request may copy (SimulateUnguarded): its GenerationKey, and its
  /// items when each plan is anchored to the level of its own items (DiffusionConfig::
  /// HeadReadsEachItem), since plans of one generation then differ in their anchor.
  std::string OutcomeKey(const SimulationRequest& request) const {
    const bool by_item = options_.anchor_level && config_.HeadReadsEachItem();
    return GenerationKey(request) + (by_item ? "|" + request.plan.ToString() : "");
  }

  /// Simulates every request (SimulateUnguarded's generation). With
  /// DiffusionBackendOptions::reuse_outcomes, requests of one GenerationKey (here only those that
  /// OutcomeKey tells apart) are sampled and decoded once, and each is pasted with its own anchor.
  Expected<std::vector<Outcome>> Generate(const PatientCase& patient,
                                          const std::vector<SimulationRequest>& requests) {
    if (requests.empty()) return std::vector<Outcome>{};
    torch::NoGradGuard no_grad;
    std::vector<Plan> plans;
    std::map<std::string, std::int64_t> plan_index;
    std::vector<std::int64_t> row_plan;
    for (const SimulationRequest& r : requests) {
      auto [it, added] = plan_index.emplace(r.plan.ToString(), std::int64_t(plans.size()));
      if (added) plans.push_back(r.plan);
      row_plan.push_back(it->second);
    }
    std::vector<SimulationRequest> sampled;         // the first request of each generation
    std::vector<std::vector<std::size_t>> users;    // the requests of each generation
    std::vector<std::int64_t> sampled_plan;         // each generation's plan
    std::vector<std::string> sampled_key;           // each generation's key
    std::map<std::string, std::size_t> generation;  // GenerationKey -> its row in `sampled`
    // The requests of each generation whose decoded crops are kept (KeepDecoded): pasted again
    // with their own anchors, not sampled.
    std::map<std::string, std::vector<std::size_t>> from_kept;
    for (std::size_t r = 0; r < requests.size(); ++r) {
      const std::string key =
          options_.reuse_outcomes ? GenerationKey(requests[r]) : std::to_string(r);
      if (KeepsDecoded() && reuse_.decoded.items.count(key) != 0) {
        from_kept[key].push_back(r);
        continue;
      }
      auto [it, added] = generation.emplace(key, sampled.size());
      if (added) {
        sampled_key.push_back(key);
        sampled.push_back(requests[r]);
        users.emplace_back();
        sampled_plan.push_back(row_plan[r]);
      }
      users[it->second].push_back(r);
    }
    MEWM_TRY(const torch::Tensor multi_hot, nets::PlansToMultiHot(plans, config_.items));
    Stopwatch clock;
    MEWM_RETURN_IF_ERROR(PreparePatient(patient));
    counters_.prepare_s += clock.Lap();
    // Each plan is embedded once per call, however many samples it has (once per crop when the
    // embedding reads the size of the crop's lesion, or a level predicted from the crop).
    const torch::Tensor row_index = torch::tensor(sampled_plan, torch::kLong).to(device_);
    // With DiffusionBackendOptions::anchor_level, each plan's predicted residual in the crop.
    std::vector<double> plan_residual_ml;
    const auto embed = [&](const Crop* crop) {
      counters_.plan_embeddings += std::int64_t(plans.size());
      torch::Tensor rows = nets::PlanRows(multi_hot, {crop != nullptr ? crop->diameter_mm : 0.0},
                                          {patient.covariates}, {tumor_}, config_)
                               .to(device_);
      if (config_.response_head) {
        const torch::Tensor share = nets::TumorShare(crop->context);
        const torch::Tensor level = net_->denoiser->GeneratorLevel(rows, share);
        if (options_.anchor_level) {
          const torch::Tensor cpu =
              (config_.HeadReadsEachItem() ? net_->denoiser->PredictLevel(rows, share) : level)
                  .to(torch::kCPU, torch::kDouble)
                  .contiguous();
          plan_residual_ml.clear();
          for (std::int64_t p = 0; p < cpu.size(0); ++p) {
            plan_residual_ml.push_back(ResidualOfLevel(cpu[p][0].item<double>(), crop->pre_ml));
          }
        }
        rows = torch::cat({rows, level}, 1);
      }
      return net_->denoiser->PlanEmbedding(rows).index_select(0, row_index);
    };
    const bool per_crop = config_.lesion_size || config_.response_head;
    torch::Tensor rows_plan = per_crop ? torch::Tensor() : embed(nullptr);

    std::vector<Outcome> outcomes;
    outcomes.reserve(requests.size());
    for (const SimulationRequest& r : requests) {
      outcomes.push_back(BlankOutcome(patient, r.plan, r.sample_index));
    }
    counters_.paste_s += clock.Lap();
    const auto anchor_ml = [&](std::size_t r) {
      return options_.anchor_level ? plan_residual_ml[std::size_t(row_plan[r])] : std::nan("");
    };
    const std::int64_t n = std::int64_t(sampled.size());
    std::vector<std::vector<torch::Tensor>> decoded_crops(sampled.size());  // KeepsDecoded
    for (std::size_t c = 0; c < crops_.size(); ++c) {
      if (per_crop) rows_plan = embed(&crops_[c]);
      for (const auto& [key, users_of] : from_kept) {
        const torch::Tensor& decoded = reuse_.decoded.items.at(key)[c];
        const torch::Tensor texture_noise = TextureNoise(NoiseSeed(requests[users_of.front()]), c);
        for (std::size_t r : users_of) {
          MEWM_RETURN_IF_ERROR(Paste(decoded, crops_[c], texture_noise, outcomes[r], anchor_ml(r)));
        }
      }
      counters_.paste_s += clock.Lap();
      for (std::int64_t begin = 0; begin < n; begin += kMaxRows) {
        const std::int64_t end = std::min(n, begin + kMaxRows);
        std::vector<torch::Tensor> noise;
        for (std::int64_t g = begin; g < end; ++g) {
          noise.push_back(Noise(NoiseSeed(sampled[std::size_t(g)]), c, LatentShape()));
        }
        torch::Tensor x = torch::stack(noise).to(device_);
        x = Sample(x, crops_[c].context, rows_plan.slice(0, begin, end), sampled, begin);
        counters_.sample_s += clock.Lap();
        if (!x.defined()) return Cancelled(patient);
        // Decode z_post = z_pre + delta / scale in small chunks (decoder activations are large).
        for (std::int64_t d = 0; d < end - begin; d += kDecodeRows) {
          const std::int64_t e = std::min(end - begin, d + kDecodeRows);
          if (cancelled_ && cancelled_()) return Cancelled(patient);
          const torch::Tensor z =
              crops_[c].z_pre + x.slice(0, d, e) / net_->latent_scale.to(device_);
          const torch::Tensor decoded =
              net_->ae->Decode(z, crops_[c].pre_features).to(torch::kCPU).contiguous();
          counters_.decodes += e - d;
          counters_.decode_s += clock.Lap();
          for (std::int64_t row = 0; row < e - d; ++row) {
            const std::size_t g = std::size_t(begin + d + row);
            const torch::Tensor texture_noise = TextureNoise(NoiseSeed(sampled[g]), c);
            for (std::size_t r : users[g]) {
              MEWM_RETURN_IF_ERROR(
                  Paste(decoded[row], crops_[c], texture_noise, outcomes[r], anchor_ml(r)));
            }
            if (KeepsDecoded()) decoded_crops[g].push_back(decoded[row]);
          }
          counters_.paste_s += clock.Lap();
        }
      }
    }
    if (KeepsDecoded()) {
      for (std::size_t g = 0; g < sampled.size(); ++g) {
        KeepDecoded(sampled_key[g], std::move(decoded_crops[g]));
      }
    }
    return outcomes;
  }

  Expected<Outcome> Reconstruct(const PatientCase& patient, const Outcome& truth) override {
    try {
      torch::NoGradGuard no_grad;
      MEWM_RETURN_IF_ERROR(PreparePatient(patient));
      Outcome out = BlankOutcome(patient, truth.plan, truth.sample_index);
      for (std::size_t c = 0; c < crops_.size(); ++c) {
        const Crop& crop = crops_[c];
        MEWM_TRY(const CropChannels channels, OutcomeChannels(truth, crop.spec, config_));
        const torch::Tensor input = nets::ChannelsToTensor(channels).unsqueeze(0).to(device_);
        const torch::Tensor decoded =
            net_->ae->Decode(net_->ae->Encode(input).first, crop.pre_features)
                .to(torch::kCPU)
                .contiguous();
        const std::uint64_t seed = DeriveSeed(0x7e47u, {std::uint64_t(truth.sample_index)});
        MEWM_RETURN_IF_ERROR(Paste(decoded[0], crop, TextureNoise(seed, c), out));
      }
      return out;
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kInternal, "diffusion reconstruction of patient '" + patient.id +
                                                 "' failed: " + ExceptionCause(e));
    }
  }

  std::int64_t evaluations() const override { return counters_.forwards; }
  /// Each crop is centred on a lesion's box and reaches half its edge from there; 2 mm spare.
  double context_margin_mm() const override {
    return 0.5 * config_.crop_voxels * config_.spacing_mm + 2.0;
  }
  std::string name() const override { return "diffusion"; }
  const DiffusionConfig& config() const override { return config_; }
  const SamplerConfig& sampler() const override { return options_.sampler; }
  void set_sampler(const SamplerConfig& sampler) override {
    options_.sampler = sampler;
    reuse_ = {};  // outcomes of the old sampler
  }
  DiffusionCounters counters() const override { return counters_; }
  const std::string& metadata_json() const override { return metadata_; }
  /// Polled before each denoiser step and each decode: a cancelled batch stops within one of
  /// them (kCancelled), and nothing of it is kept for reuse.
  void set_cancelled(std::function<bool()> cancelled) override {
    cancelled_ = std::move(cancelled);
  }

  /// One denoiser forward on `rows` random inputs, counting FLOPs (for MeasureDenoiserSpeed).
  double TimedForward(int rows, int iterations, double* gflop) {
    torch::NoGradGuard no_grad;
    const std::int64_t l = config_.latent_voxels();
    const auto x = torch::randn({rows, config_.latent_channels, l, l, l}, device_);
    const auto ctx = torch::randn({rows, config_.latent_channels + 1, l, l, l}, device_);
    const auto t = torch::full({rows}, 500.0, device_);
    const auto plan = net_->denoiser->null_plan.expand({rows, -1});
    double flops = 0.0;
    nets::tl_flop_sink = &flops;
    net_->denoiser->forward(x, ctx, t, plan);
    nets::tl_flop_sink = nullptr;
    *gflop = flops * 1e-9;
    for (int w = 0; w < 2; ++w) net_->denoiser->forward(x, ctx, t, plan);
    const auto t0 = Clock::now();
    for (int i = 0; i < iterations; ++i) net_->denoiser->forward(x, ctx, t, plan);
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / iterations;
  }

 private:
  // Rows per batched forward: at 8 rows the activations stay in the heap and near the caches;
  // measured at 64 rows, a step cost 4x more per row (page faults and memory traffic).
  static constexpr std::int64_t kMaxRows = 8;
  // Decoded one row at a time: a row's largest activation (16 channels at 64^3, 16.8 MB) stays
  // under glibc's 32 MB mmap ceiling (bridge's KeepLargeBuffersInHeap); at 2 rows every 64^3
  // layer maps and page-faults fresh memory, measured 71 against 34 ms per row.
  static constexpr std::int64_t kDecodeRows = 1;
  // The outcomes kept for reuse (SimulateUnguarded), at most this many bytes of grids: a beam
  // decision needs a few dozen (docs/BENCHMARKS.md), tens of MB each on a large patient region.
  static constexpr std::size_t kReuseBytes = std::size_t(1) << 30;

  /// Values kept by key, at most kReuseBytes of them, the oldest forgotten first.
  template <typename T>
  struct Kept {
    std::map<std::string, T> items;
    std::deque<std::pair<std::string, std::size_t>> order;  ///< key, bytes
    std::size_t bytes = 0;
    /// Keeps `value` (of `size` bytes) unless `key` is kept already.
    void Add(const std::string& key, T value, std::size_t size) {
      if (!items.emplace(key, std::move(value)).second) return;
      bytes += size;
      order.emplace_back(key, size);
      while (bytes > kReuseBytes && !order.empty()) {
        bytes -= order.front().second;
        items.erase(order.front().first);
        order.pop_front();
      }
    }
  };
  /// The prepared patient's generated outcomes by OutcomeKey and, when KeepsDecoded, each
  /// generation's decoded crops (on the CPU) by GenerationKey.
  struct Reuse {
    Kept<Outcome> outcomes;
    Kept<std::vector<torch::Tensor>> decoded;
  };

  struct Crop {
    CropSpec spec;
    double diameter_mm = 0.0;  ///< of the lesion the tile is centred on (LesionTile)
    Geometry geometry;
    torch::Tensor z_pre;         ///< [1, latent, l, l, l]
    torch::Tensor context;       ///< [1, latent + 1, l, l, l]: z_pre, downsampled mask
    torch::Tensor pre_features;  ///< the decoder's view of the pre-treatment crop, or undefined
    PasteFootprint footprint;    ///< the patient voxels the paste weight reaches
    torch::Tensor decoded_pre;   ///< [2, D, H, W] on the CPU: z_pre decoded (Paste's reference)
    torch::Tensor pre_mask;      ///< [1, D, H, W] on the CPU: the tumor mask, 0/1
    DenseFloat pre_ct_hu;        ///< decoded_pre's CT in HU
    DenseFloat mask;       ///< the tumor mask, 0/1, with DiffusionBackendOptions::anchor_level
    double pre_ml = 0.0;   ///< the tumor's volume in the crop (ResponseLevelFeature's pre)
    torch::Tensor pre_hu;  ///< [D, H, W] on the CPU: the crop's CT in HU (with a texture)
  };

  /// A deep copy of `source` as the outcome of `request`.
  static Outcome CopyOutcome(const Outcome& source, const SimulationRequest& request) {
    Outcome o{request.plan, request.sample_index, source.post_ct.DeepCopy(),
              source.viable.DeepCopy()};
    if (source.viable_fraction) o.viable_fraction = source.viable_fraction->DeepCopy();
    return o;
  }

  /// Keeps a generated outcome for reuse (SimulateUnguarded), forgetting the oldest ones beyond
  /// kReuseBytes.
  void Keep(const std::string& key, Outcome outcome) {
    std::size_t bytes = outcome.post_ct.grid().memUsage() + outcome.viable.grid().memUsage();
    if (outcome.viable_fraction) bytes += outcome.viable_fraction->grid().memUsage();
    reuse_.outcomes.Add(key, std::move(outcome), bytes);
  }

  /// Whether generations' decoded crops are kept as well as outcomes: when each request is
  /// anchored to its own items' level (DiffusionConfig::HeadReadsEachItem), a later call's drug
  /// variant of an earlier generation has no outcome to copy, and its crops are pasted again with
  /// its own anchor rather than sampled and decoded again (a tiled patient's later beam steps).
  bool KeepsDecoded() const {
    return options_.reuse_outcomes && options_.anchor_level && config_.HeadReadsEachItem();
  }

  /// Keeps a generation's decoded crops (KeepsDecoded), forgetting the oldest beyond kReuseBytes.
  void KeepDecoded(const std::string& key, std::vector<torch::Tensor> crops) {
    std::size_t bytes = 0;
    for (const torch::Tensor& t : crops) bytes += std::size_t(t.numel() * t.element_size());
    reuse_.decoded.Add(key, std::move(crops), bytes);
  }

  static Outcome BlankOutcome(const PatientCase& patient, const Plan& plan, int sample_index) {
    Outcome o{plan, sample_index, patient.ct.DeepCopy(),
              LabelVolume(patient.ct.geometry(), patient.ct.extent(), "viable")};
    o.viable_fraction =
        Volume(openvdb::FloatGrid::create(0.0f), patient.ct.geometry(), patient.ct.extent());
    o.viable_fraction->set_name("viable_fraction");
    return o;
  }

  static Unexpected Cancelled(const PatientCase& patient) {
    return MakeError(ErrorCode::kCancelled,
                     "diffusion simulation of patient '" + patient.id + "' cancelled");
  }

  std::vector<std::int64_t> LatentShape() const {
    const std::int64_t l = config_.latent_voxels();
    return {config_.latent_channels, l, l, l};
  }

  /// Tiles (LesionTiles), their latents and paste footprints, once per patient (PatientIdentity,
  /// as MechanisticDynamics keys its work); another patient also empties the kept outcomes.
  Status PreparePatient(const PatientCase& patient) {
    if (prepared_.Matches(patient) && !crops_.empty()) return {};
    crops_.clear();
    prepared_.Forget();
    reuse_ = {};
    const auto context = [&](const Error& e) {
      return e.WithContext("patient '" + patient.id + "'");
    };
    if (auto valid = patient.Validate(); !valid) return context(valid.error());
    if (nets::ReadsEnhancement(config_)) {
      auto features = ComputeTumorFeatures(patient.ct, patient.tumor);
      if (!features) return context(features.error());
      tumor_ = *features;
    }
    auto tiles = LesionTiles(patient, config_);
    if (!tiles) return context(tiles.error());
    for (const auto& [spec, territory, diameter_mm] : *tiles) {
      auto channels = ExtractChannels(patient.ct, patient.tumor, spec, config_.window);
      if (!channels) return context(channels.error());
      Crop crop;
      crop.spec = spec;
      crop.diameter_mm = diameter_mm;
      crop.geometry = channels->ct.geometry;
      const torch::Tensor input = nets::ChannelsToTensor(*channels).unsqueeze(0).to(device_);
      crop.z_pre = net_->ae->Encode(input).first;
      ++counters_.encodes;
      const torch::Tensor mask = input.slice(1, 1, 2).add(1.0).mul(0.5);
      crop.context = torch::cat({crop.z_pre, torch::avg_pool3d(mask, 4)}, 1);
      const DenseFloat weight =
          BlendWeight(channels->mask, config_.spacing_mm, options_.blend_margin_mm);
      auto footprint = PasteFootprint::Make(patient.ct.geometry(), weight, territory);
      if (!footprint) return context(footprint.error());
      crop.footprint = std::move(*footprint);
      crop.pre_features = net_->ae->PreFeatures(input);
      crop.decoded_pre =
          net_->ae->Decode(crop.z_pre, crop.pre_features).to(torch::kCPU).contiguous()[0];
      ++counters_.decodes;
      crop.pre_mask = input[0].slice(0, 1, 2).add(1.0).mul(0.5).to(torch::kCPU).contiguous();
      crop.pre_ml = crop.pre_mask.sum().item<double>() * nets::CropVoxelMl(config_);
      if (options_.anchor_level) crop.mask = channels->mask;
      MEWM_TRY(crop.pre_ct_hu, torch_bridge::FromTensor(crop.decoded_pre[0], crop.geometry));
      UnitToHu(crop.pre_ct_hu, config_.window);
      if (!config_.texture.empty()) {
        crop.pre_hu = nets::UnitToHu(input[0][0].to(torch::kCPU), config_.window);
      }
      crops_.push_back(std::move(crop));
    }
    prepared_.Remember(patient);
    return {};
  }

  /// DDIM sampling of rows [first_row, first_row + x.size(0)) of `requests` (nets::Ddim), counting
  /// the forwards; ancestral noise comes from each request's own seed.
  torch::Tensor Sample(const torch::Tensor& x, const torch::Tensor& context,
                       const torch::Tensor& plan, const std::vector<SimulationRequest>& requests,
                       std::int64_t first_row) {
    const std::int64_t rows = x.size(0);
    const auto step_noise = [&](std::size_t i) {
      std::vector<torch::Tensor> z;
      for (std::int64_t r = 0; r < rows; ++r) {
        z.push_back(
            Noise(NoiseSeed(requests[std::size_t(first_row + r)]), 1000 + i, LatentShape()));
      }
      return torch::stack(z).to(device_);
    };
    const auto count = [&](std::int64_t batch_rows, double gflop) {
      counters_.denoiser_gflop += gflop;
      ++counters_.forwards;
      counters_.sample_forwards += batch_rows;
    };
    return nets::Ddim(net_->denoiser, x, context.expand({rows, -1, -1, -1, -1}), plan, alpha_bar_,
                      options_.sampler, step_noise, count, cancelled_);
  }

  /// The unit noise of an outcome's texture in crop `c` (DiffusionConfig::texture), from the seed
  /// its latent noise comes from; undefined without a texture model.
  torch::Tensor TextureNoise(std::uint64_t seed, std::size_t c) const {
    if (config_.texture.empty()) return {};
    const std::int64_t n = config_.crop_voxels;
    return Noise(seed, 2000 + c, {n, n, n});
  }

  /// Pastes one decoded [2, D, H, W] crop into an outcome as a change from the pre-treatment crop:
  /// the CT gets decoded(post) - decoded(pre) added to its exact voxels, so tissue the model leaves
  /// alone keeps its texture and noise, and the autoencoder's own error cancels where nothing
  /// changes; the viable fraction is the tumor mask plus the decoded change
  /// (nets::ResidualFraction). With a texture model the CT change also gets its per-voxel texture
  /// (TextureModel), `texture_noise` [D, H, W] being its unit noise. With `anchor_ml` (not NaN),
  /// the viable fraction is first moved to that residual (AnchorResidual, DiffusionBackendOptions::
  /// anchor_level), and the CT's change with it (FollowAnchoredFraction).
  Status Paste(const torch::Tensor& decoded, const Crop& crop, const torch::Tensor& texture_noise,
               Outcome& outcome, double anchor_ml = std::nan("")) const {
    auto ct = torch_bridge::FromTensor(decoded[0], crop.geometry);
    if (!ct) {
      return MakeError(ErrorCode::kInternal,
                       "the diffusion decoder produced NaN or Inf: refusing the outcome");
    }
    UnitToHu(*ct, config_.window);
    for (std::size_t x = 0; x < ct->size(); ++x) ct->data[x] -= crop.pre_ct_hu.data[x];
    MEWM_TRY(DenseFloat fraction,
             torch_bridge::FromTensor(
                 nets::ResidualFraction(decoded.slice(0, 1, 2), crop.decoded_pre.slice(0, 1, 2),
                                        crop.pre_mask, config_)[0],
                 crop.geometry));
    if (!std::isnan(anchor_ml)) {
      const DenseFloat generated = fraction;
      MEWM_RETURN_IF_ERROR(
          AnchorResidual(fraction, crop.mask, nets::CropVoxelMl(config_), anchor_ml));
      MEWM_RETURN_IF_ERROR(FollowAnchoredFraction(*ct, generated, fraction, crop.mask));
    }
    if (!config_.texture.empty()) {
      const TextureModel& t = config_.texture;
      const torch::Tensor change = torch_bridge::ToTensor(*ct);
      const torch::Tensor bins = nets::TextureBins(
          t, crop.pre_mask[0], torch_bridge::ToTensor(fraction), change, crop.pre_hu);
      const torch::Tensor offset = texture_offset_.index({bins});
      const torch::Tensor sd = texture_noise_.index({bins});
      MEWM_TRY(*ct, torch_bridge::FromTensor(change + offset + sd * texture_noise, crop.geometry));
    }
    DenseLabel labels(fraction.dims, fraction.geometry, 0);
    for (std::size_t x = 0; x < fraction.size(); ++x) labels.data[x] = fraction.data[x] >= 0.5f;
    MEWM_RETURN_IF_ERROR(AddCrop(outcome.post_ct, *ct, crop.footprint));
    MEWM_RETURN_IF_ERROR(PasteCrop(*outcome.viable_fraction, fraction, crop.footprint));
    return PasteCrop(outcome.viable, labels, crop.footprint);
  }

  DiffusionConfig config_;
  DiffusionBackendOptions options_;
  torch::Device device_;
  std::string metadata_;
  nets::DiffusionNet net_;
  std::vector<double> alpha_bar_;
  /// DiffusionConfig::texture's offsets and noise SDs per bin (kFloat), or undefined without one.
  torch::Tensor texture_offset_, texture_noise_;
  DiffusionCounters counters_;
  std::function<bool()> cancelled_;  ///< set_cancelled
  PatientIdentity prepared_;
  Reuse reuse_;
  TumorFeatures tumor_;  ///< the cached patient's, when nets::ReadsEnhancement
  std::vector<Crop> crops_;
};

}  // namespace

Expected<std::unique_ptr<DiffusionDynamics>> CreateDiffusionDynamics(
    const DiffusionBackendOptions& options) {
  MEWM_RETURN_IF_ERROR(options.sampler.Validate());
  MEWM_TRY(const torch::Device device, torch_bridge::ResolveDevice(options.device));
  MEWM_TRY(const auto info, torch_bridge::ReadCheckpointInfo(options.model_path));
  DiffusionConfig expected;
  MEWM_TRY(const DiffusionConfig stored,
           DiffusionConfig::FromJson(info.config_json, options.model_path));
  if (options.config.empty()) {
    expected = stored;
  } else {
    MEWM_TRY(expected, DiffusionConfig::Preset(options.config, options.actions));
    expected.guidance_distilled = stored.guidance_distilled;      // the weights', not the preset's
    expected.lesion_size = stored.lesion_size;                    // likewise
    expected.item_size = stored.item_size;                        // likewise
    expected.item_enhancement = stored.item_enhancement;          // likewise
    expected.clinical = stored.clinical;                          // likewise
    expected.response_head = stored.response_head;                // likewise
    expected.response_sensitivity = stored.response_sensitivity;  // likewise
    expected.response_item_size = stored.response_item_size;      // likewise
    expected.drug_classes = stored.drug_classes;                  // likewise
    expected.item_groups = stored.item_groups;                    // likewise
    expected.group_once = stored.group_once;                      // likewise
    expected.decoder_pre = stored.decoder_pre;                    // likewise
    expected.texture = stored.texture;                            // likewise
  }
  MEWM_RETURN_IF_ERROR(CheckSampler(expected, options.sampler, options.model_path));
  if (options.anchor_level && !expected.response_head) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "anchor_level needs a checkpoint with a response head (mewm train dynamics "
                     "--response-head); " +
                         options.model_path + " has none");
  }
  torch_bridge::ConfigureThreads(options.threads);
  torch_bridge::KeepLargeBuffersInHeap();
  auto model =
      std::make_unique<DiffusionDynamicsImpl>(expected, options, device, info.metadata_json);
  MEWM_RETURN_IF_ERROR(
      torch_bridge::LoadCheckpoint(options.model_path, *model->net(), expected.ToJson()));
  model->net()->to(device);
  model->net()->eval();
  return std::unique_ptr<DiffusionDynamics>(std::move(model));
}

DiffusionFactory DiffusionFactoryFunction() {
  return [](const DiffusionBackendOptions& options) -> Expected<std::unique_ptr<DynamicsModel>> {
    MEWM_TRY(auto model, CreateDiffusionDynamics(options));
    return std::unique_ptr<DynamicsModel>(std::move(model));
  };
}

Expected<DiffusionSpeed> MeasureDenoiserSpeed(DiffusionDynamics& model, int batch, int iterations) {
  auto* impl = dynamic_cast<DiffusionDynamicsImpl*>(&model);
  if (impl == nullptr || batch < 1 || iterations < 1) {
    return MakeError(ErrorCode::kInvalidArgument, "MeasureDenoiserSpeed needs a loaded model");
  }
  DiffusionSpeed speed;
  speed.batch = batch;
  speed.denoiser_ms_per_step =
      impl->TimedForward(batch, iterations, &speed.denoiser_gflop_per_step);
  speed.denoiser_gflops = speed.denoiser_gflop_per_step / (speed.denoiser_ms_per_step * 1e-3);
  // The raw reference: the denoiser's widest full-resolution convolution, alone, through oneDNN.
  const DiffusionConfig& c = model.config();
  const std::int64_t l = c.latent_voxels(), ch = c.unet_channels[0];
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({batch, ch, l, l, l});
  const auto w = torch::randn({ch, ch, 3, 3, 3}) * 0.05;
  const auto b = torch::zeros({ch});
  const int reps = iterations * 8;
  for (int i = 0; i < 3; ++i) at::mkldnn_convolution(x, w, b, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 1);
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i)
    at::mkldnn_convolution(x, w, b, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 1);
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / reps;
  const double flop = 2.0 * double(batch) * double(ch * ch * 27) * double(l * l * l);
  speed.raw_conv_gflops = flop * 1e-9 / (ms * 1e-3);
  speed.raw_conv_shape = "conv3d " + std::to_string(ch) + "->" + std::to_string(ch) + " k3 at " +
                         std::to_string(l) + "^3, batch " + std::to_string(batch);
  nets::g_default_dispatch = true;
  double unused = 0.0;
  speed.default_dispatch_ms_per_step = impl->TimedForward(batch, iterations, &unused);
  nets::g_default_dispatch = false;
  return speed;
}

}  // namespace mewm::dynamics
