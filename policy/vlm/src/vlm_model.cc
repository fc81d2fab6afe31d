// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "mewm/core/file_util.h"
#include "mewm/core/sha256.h"
#include "mewm/policy/vlm_backend.h"
#include "mewm/torch/archive_check.h"
#include "mewm/torch/bridge.h"

namespace mewm::policy {
namespace {

/// A training state's state.json is a few hundred bytes.
constexpr std::uint64_t kMaxStateBytes = 1u << 20;

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kLesionClasses = 5;  ///< 1..5 lesions (more read as 5)

struct NetConfig {
  int d = 64;
  int heads = 4;
  int ff = 128;
  int encoder_layers = 2;
  int decoder_layers = 2;
  std::vector<std::string> items;  ///< the grammar's items, token t = items[t - 1]
  int max_length = 5;              ///< longest plan sequence, end token included

  int vocab() const { return int(items.size()) + 1; }
  json ToJson() const {
    return {{"model", "mewm vlm policy"},
            {"version", 1},
            {"d", d},
            {"heads", heads},
            {"ff", ff},
            {"encoder_layers", encoder_layers},
            {"decoder_layers", decoder_layers},
            {"crop", kVlmCropSize},
            {"crop_spacing_mm", kVlmCropSpacingMm},
            {"note_bytes", kVlmNoteBytes},
            {"items", items},
            {"max_length", max_length}};
  }
  static Expected<NetConfig> FromJson(const std::string& text, const std::string& path) {
    try {
      const json j = json::parse(text);
      if (j.value("model", "") != "mewm vlm policy") {
        return MakeError(ErrorCode::kMismatch,
                         "'" + path + "' is not a mewm vlm policy checkpoint");
      }
      NetConfig c;
      c.d = j.at("d").get<int>();
      c.heads = j.at("heads").get<int>();
      c.ff = j.at("ff").get<int>();
      c.encoder_layers = j.at("encoder_layers").get<int>();
      c.decoder_layers = j.at("decoder_layers").get<int>();
      c.items = j.at("items").get<std::vector<std::string>>();
      c.max_length = j.at("max_length").get<int>();
      if (j.at("crop").get<int>() != kVlmCropSize ||
          j.at("note_bytes").get<std::size_t>() != kVlmNoteBytes) {
        return MakeError(ErrorCode::kMismatch,
                         "'" + path + "' was trained on another crop or note length");
      }
      return c;
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kCorruptData, "'" + path + "': bad config: " + e.what());
    }
  }
};

/// The network: vision and text encoders, findings head, plan decoder.
struct VlmNetImpl : torch::nn::Module {
  explicit VlmNetImpl(const NetConfig& c) : config(c) {
    conv1 = register_module(
        "conv1", torch::nn::Conv3d(torch::nn::Conv3dOptions(2, 16, 3).stride(2).padding(1)));
    conv2 = register_module(
        "conv2", torch::nn::Conv3d(torch::nn::Conv3dOptions(16, 32, 3).stride(2).padding(1)));
    conv3 = register_module(
        "conv3", torch::nn::Conv3d(torch::nn::Conv3dOptions(32, c.d, 3).stride(2).padding(1)));
    visual_pos = register_parameter("visual_pos", torch::randn({64, 1, c.d}) * 0.02);
    byte_embed = register_module("byte_embed", torch::nn::Embedding(kVlmPadToken + 1, c.d));
    patch = register_module("patch",
                            torch::nn::Conv1d(torch::nn::Conv1dOptions(c.d, c.d, 4).stride(4)));
    text_pos =
        register_parameter("text_pos", torch::randn({int64_t(kVlmNoteBytes / 4), 1, c.d}) * 0.02);
    text_encoder = register_module(
        "text_encoder", torch::nn::TransformerEncoder(torch::nn::TransformerEncoderOptions(
                            torch::nn::TransformerEncoderLayerOptions(c.d, c.heads)
                                .dim_feedforward(c.ff)
                                .dropout(0.1),
                            c.encoder_layers)));
    modality = register_parameter("modality", torch::randn({2, 1, c.d}) * 0.02);
    memory_norm =
        register_module("memory_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d})));
    findings1 = register_module("findings1", torch::nn::Linear(2 * c.d, 64));
    findings2 = register_module("findings2", torch::nn::Linear(64, kLesionClasses + 3 + 3));
    token_embed = register_module("token_embed", torch::nn::Embedding(c.vocab() + 1, c.d));
    token_pos = register_parameter("token_pos", torch::randn({c.max_length + 1, 1, c.d}) * 0.02);
    decoder = register_module("decoder",
                              torch::nn::TransformerDecoder(torch::nn::TransformerDecoderOptions(
                                  torch::nn::TransformerDecoderLayerOptions(c.d, c.heads)
                                      .dim_feedforward(c.ff)
                                      .dropout(0.1),
                                  c.decoder_layers)));
    head = register_module("head", torch::nn::Linear(c.d, c.vocab()));
  }

  /// crops [B, 2, S, S, S], notes [B, kVlmNoteBytes] (long) -> memory [192, B, d].
  torch::Tensor Encode(const torch::Tensor& crops, const torch::Tensor& notes) {
    torch::Tensor v = torch::gelu(conv1->forward(crops));
    v = torch::gelu(conv2->forward(v));
    v = conv3->forward(v);                // [B, d, 4, 4, 4]
    v = v.flatten(2).permute({2, 0, 1});  // [64, B, d]
    v = v + visual_pos + modality[0];
    torch::Tensor t = byte_embed->forward(notes).transpose(1, 2);  // [B, d, L]
    t = patch->forward(t).permute({2, 0, 1});                      // [L/4, B, d]
    t = text_encoder->forward(t + text_pos) + modality[1];
    return memory_norm->forward(torch::cat({v, t}, 0));
  }

  /// [B, kLesionClasses + 3 + 3] findings outputs from the memory.
  torch::Tensor Findings(const torch::Tensor& memory) {
    const torch::Tensor pooled =
        torch::cat({memory.slice(0, 0, 64).mean(0), memory.slice(0, 64).mean(0)}, 1);
    return findings2->forward(torch::gelu(findings1->forward(pooled)));
  }

  /// tokens [N, L] (BOS first) with memory [S, N, d] -> logits [N, L, vocab].
  torch::Tensor Decode(const torch::Tensor& tokens, const torch::Tensor& memory) {
    const int64_t length = tokens.size(1);
    torch::Tensor x = token_embed->forward(tokens).transpose(0, 1) + token_pos.slice(0, 0, length);
    const torch::Tensor causal =
        torch::triu(torch::full({length, length}, -std::numeric_limits<float>::infinity()), 1);
    x = decoder->forward(x, memory, causal);
    return head->forward(x).transpose(0, 1);
  }

  int Bos() const { return config.vocab(); }

  NetConfig config;
  torch::nn::Conv3d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::Tensor visual_pos, text_pos, modality, token_pos;
  torch::nn::Embedding byte_embed{nullptr}, token_embed{nullptr};
  torch::nn::Conv1d patch{nullptr};
  torch::nn::TransformerEncoder text_encoder{nullptr};
  torch::nn::LayerNorm memory_norm{nullptr};
  torch::nn::Linear findings1{nullptr}, findings2{nullptr}, head{nullptr};
  torch::nn::TransformerDecoder decoder{nullptr};
};
TORCH_MODULE(VlmNet);

enum class Blank { kNone, kImage, kNote };

/// [2, S, S, S] crop and [kVlmNoteBytes] note tokens of one input, with one modality blanked.
std::pair<torch::Tensor, torch::Tensor> InputTensors(const VlmInput& in, Blank blank) {
  const int64_t s = kVlmCropSize;
  torch::Tensor crop = torch::zeros({2, s, s, s});
  if (blank != Blank::kImage) {
    crop[0].copy_(torch::from_blob(const_cast<float*>(in.ct.data()), {s, s, s}, torch::kFloat));
    crop[1].copy_(torch::from_blob(const_cast<float*>(in.tumor.data()), {s, s, s}, torch::kFloat));
  }
  const std::vector<int> tokens = TokenizeNote(blank == Blank::kNote ? std::string() : in.note);
  torch::Tensor note = torch::empty({int64_t(tokens.size())}, torch::kLong);
  for (std::size_t i = 0; i < tokens.size(); ++i) note[int64_t(i)] = tokens[i];
  return {crop, note};
}

Status CheckInput(const VlmInput& in) {
  const std::size_t n = std::size_t(kVlmCropSize) * kVlmCropSize * kVlmCropSize;
  if (in.ct.size() != n || in.tumor.size() != n) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "vlm: patient '" + in.id + "' has a crop of the wrong size");
  }
  return {};
}

StatedFindings ReadFindings(const torch::Tensor& row, char fallback_child_pugh) {
  StatedFindings f;
  const torch::Tensor r = row.to(torch::kCPU);
  f.lesion_count = int(r.slice(0, 0, kLesionClasses).argmax().item<int64_t>()) + 1;
  f.max_diameter_mm = std::max(0.0, 100.0 * r[kLesionClasses].item<double>());
  f.enhancing_hu = 100.0 * r[kLesionClasses + 1].item<double>();
  f.necrotic_fraction = std::clamp(r[kLesionClasses + 2].item<double>(), 0.0, 1.0);
  const int64_t cp = r.slice(0, kLesionClasses + 3, kLesionClasses + 6).argmax().item<int64_t>();
  f.child_pugh = cp >= 0 && cp < 3 ? char('A' + cp) : fallback_child_pugh;
  return f;
}

// ---------------------------------------------------------------------------------------------
// The policy

class VlmPolicy final : public PolicyModel {
 public:
  VlmPolicy(VlmOptions options, ActionBase actions, PlanGrammar grammar, VlmNet net,
            torch::Device device)
      : options_(std::move(options)),
        actions_(std::move(actions)),
        grammar_(std::move(grammar)),
        net_(std::move(net)),
        device_(device) {}

  std::string name() const override { return "vlm"; }

  Expected<Proposal> Propose(const PatientCase& patient) override {
    MEWM_TRY(const VlmInput in, MakeVlmInput(patient));
    const Blank blank = options_.inputs == "image"  ? Blank::kNote
                        : options_.inputs == "note" ? Blank::kImage
                                                    : Blank::kNone;
    torch::NoGradGuard no_grad;
    auto [crop, note] = InputTensors(in, blank);
    const torch::Tensor memory =
        net_->Encode(crop.unsqueeze(0).to(device_), note.unsqueeze(0).to(device_));
    const StatedFindings findings =
        ReadFindings(net_->Findings(memory)[0], patient.covariates.child_pugh);

    std::vector<std::string> forbidden_names;
    std::string contraindicated;
    if (options_.contraindications) {
      for (const Contraindication& c : Contraindications(patient.covariates, actions_)) {
        forbidden_names.push_back(c.item);
        contraindicated += "; no " + c.item + " (" + c.reason + ")";
      }
    }
    const std::vector<bool> forbidden = grammar_.ForbiddenMask(forbidden_names);
    const int bos = net_->Bos();
    const StepFunction step = [&](const std::vector<std::vector<int>>& prefixes)
        -> Expected<std::vector<std::vector<float>>> {
      const int64_t n = int64_t(prefixes.size());
      const int64_t length = int64_t(prefixes.front().size()) + 1;
      torch::Tensor tokens = torch::full({n, length}, bos, torch::kLong);
      for (int64_t h = 0; h < n; ++h) {
        for (int64_t t = 1; t < length; ++t) tokens[h][t] = prefixes[std::size_t(h)][t - 1];
      }
      const torch::Tensor logits =
          net_->Decode(tokens.to(device_), memory.expand({memory.size(0), n, memory.size(2)}))
              .select(1, length - 1)
              .to(torch::kCPU)
              .contiguous();
      std::vector<std::vector<float>> rows(static_cast<std::size_t>(n));
      const float* p = logits.data_ptr<float>();
      for (int64_t h = 0; h < n; ++h) {
        rows[std::size_t(h)].assign(p + h * logits.size(1), p + (h + 1) * logits.size(1));
      }
      return rows;
    };
    const int beam = std::max(16, 2 * options_.top_k);
    MEWM_TRY(std::vector<RankedPlan> plans,
             BeamDecode(grammar_, forbidden, step, options_.top_k, beam));

    Proposal proposal;
    proposal.plans = std::move(plans);
    proposal.findings = findings;
    for (const RankedPlan& r : proposal.plans) {
      for (const std::string& item : r.plan.items()) {
        MEWM_TRY(const ActionItem found, actions_.Find(item));
        auto& list = found.kind == ItemKind::kDrug ? proposal.drugs : proposal.embolics;
        if (std::find(list.begin(), list.end(), item) == list.end()) list.push_back(item);
      }
      // The plan as the model wrote it: tokens in grammar order.
      MEWM_TRY(const std::vector<int> tokens, grammar_.Encode(r.plan));
      std::string text;
      for (int t : tokens) {
        if (t == PlanGrammar::kEnd) break;
        text += (text.empty() ? "" : ", ") + grammar_.items()[std::size_t(t - 1)];
      }
      char lp[32];
      std::snprintf(lp, sizeof(lp), " (log p %.2f)\n", r.log_prob);
      proposal.raw_output += text + lp;
    }
    char head[64];
    std::snprintf(head, sizeof(head), "; first plan p=%.2f",
                  std::exp(proposal.plans.front().log_prob));
    proposal.rationale =
        "VLM findings: " + FormatFindings(findings) + head +
        (options_.inputs == "both" ? "" : "; inputs: " + options_.inputs + " only") +
        contraindicated;
    return CanonicalizeProposal(proposal, actions_);
  }

 private:
  VlmOptions options_;
  ActionBase actions_;
  PlanGrammar grammar_;
  VlmNet net_;
  torch::Device device_;
};

// ---------------------------------------------------------------------------------------------
// Training

/// One patient's training tensors.
struct Prepared {
  torch::Tensor crop, note;  ///< [2, S, S, S], [kVlmNoteBytes]
  torch::Tensor tokens;      ///< [M, L] decoder input (BOS first)
  torch::Tensor targets;     ///< [M, L] next tokens, -1 after the end
  torch::Tensor allowed;     ///< [M, L, V] bool
  torch::Tensor weights;     ///< [M] target distribution over the listed plans
  torch::Tensor findings;    ///< [4]: diameter/100, enhancing/100, necrotic, and lesion class
  int64_t lesion_class = 0, child_pugh = 0;
};

Expected<Prepared> Prepare(const VlmTrainingExample& ex, const PlanGrammar& grammar,
                           const ActionBase& actions, const VlmTrainOptions& o, int bos) {
  MEWM_RETURN_IF_ERROR(CheckInput(ex.input));
  std::vector<std::string> forbidden_names;
  for (const Contraindication& c : Contraindications(ex.input.covariates, actions)) {
    forbidden_names.push_back(c.item);
  }
  const std::vector<bool> forbidden = grammar.ForbiddenMask(forbidden_names);
  std::vector<std::pair<double, Plan>> ranked;
  for (const auto& [plan, risk] : ex.plan_risks) {
    if (grammar.Accepts(plan, forbidden) && risk > 0 && std::isfinite(risk)) {
      ranked.emplace_back(risk, plan);
    }
  }
  if (ranked.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "vlm training: patient '" + ex.input.id + "' has no plan the grammar accepts");
  }
  std::sort(ranked.begin(), ranked.end());
  const int m = std::min<int>(o.list_size, int(ranked.size()));
  const int length = grammar.max_length();
  const int vocab = grammar.vocab_size();
  Prepared p;
  std::tie(p.crop, p.note) = InputTensors(ex.input, Blank::kNone);
  p.tokens = torch::full({m, length}, bos, torch::kLong);
  p.targets = torch::full({m, length}, -1, torch::kLong);
  p.allowed = torch::ones({m, length, vocab}, torch::kBool);
  p.weights = torch::zeros({m});
  const double best = std::log(ranked.front().first);
  for (int i = 0; i < m; ++i) {
    MEWM_TRY(const std::vector<int> seq, grammar.Encode(ranked[std::size_t(i)].second));
    std::vector<int> prefix;
    for (std::size_t t = 0; t < seq.size(); ++t) {
      p.targets[i][int64_t(t)] = seq[t];
      if (t + 1 < std::size_t(length)) p.tokens[i][int64_t(t) + 1] = seq[t];
      torch::Tensor row = torch::zeros({vocab}, torch::kBool);
      for (int a : grammar.Allowed(prefix, forbidden)) row[a] = true;
      p.allowed[i][int64_t(t)].copy_(row);
      prefix.push_back(seq[t]);
    }
    p.weights[i] = -(std::log(ranked[std::size_t(i)].first) - best) / o.temperature;
  }
  p.weights = torch::softmax(p.weights, 0);
  const StatedFindings& f = ex.input.measured;
  p.findings = torch::tensor({float(f.max_diameter_mm / 100.0), float(f.enhancing_hu / 100.0),
                              float(f.necrotic_fraction)});
  p.lesion_class = std::clamp(f.lesion_count, 1, kLesionClasses) - 1;
  p.child_pugh = std::clamp(int(f.child_pugh - 'A'), 0, 2);
  return p;
}

struct BatchLoss {
  torch::Tensor total;
  torch::Tensor seq_logp;  ///< [B, M]
};

/// The listwise plan loss plus the findings loss on a batch of prepared patients.
BatchLoss Loss(VlmNet& net, const std::vector<const Prepared*>& batch,
               const std::vector<Blank>& blanks, double findings_weight,
               const std::vector<int>& flips = {}) {
  std::vector<torch::Tensor> crops, notes, tokens, targets, allowed, weights, findings;
  std::vector<int64_t> lesion, cp;
  for (std::size_t b = 0; b < batch.size(); ++b) {
    const Prepared& p = *batch[b];
    torch::Tensor crop = blanks[b] == Blank::kImage ? torch::zeros_like(p.crop) : p.crop;
    // Augmentation: mirror the crop along the axes set in flips[b] (bit a = axis a).
    std::vector<int64_t> dims;
    for (int a = 0; a < 3; ++a) {
      if (b < flips.size() && (flips[b] >> a) & 1) dims.push_back(1 + a);
    }
    if (!dims.empty()) crop = crop.flip(dims);
    crops.push_back(crop);
    notes.push_back(blanks[b] == Blank::kNote ? torch::full_like(p.note, kVlmPadToken) : p.note);
    tokens.push_back(p.tokens);
    targets.push_back(p.targets);
    allowed.push_back(p.allowed);
    weights.push_back(p.weights);
    findings.push_back(p.findings);
    lesion.push_back(p.lesion_class);
    cp.push_back(p.child_pugh);
  }
  // Patients may list fewer plans than others: pad to the batch's largest list (weight 0).
  int64_t m = 0;
  for (const auto& t : tokens) m = std::max(m, t.size(0));
  for (std::size_t b = 0; b < batch.size(); ++b) {
    const int64_t pad = m - tokens[b].size(0);
    if (pad == 0) continue;
    tokens[b] = torch::cat({tokens[b], tokens[b].slice(0, 0, 1).expand({pad, -1})});
    targets[b] = torch::cat({targets[b], targets[b].slice(0, 0, 1).expand({pad, -1})});
    allowed[b] = torch::cat({allowed[b], allowed[b].slice(0, 0, 1).expand({pad, -1, -1})});
    weights[b] = torch::cat({weights[b], torch::zeros({pad})});
  }
  const int64_t n = int64_t(batch.size());
  const torch::Tensor memory = net->Encode(torch::stack(crops), torch::stack(notes));
  const torch::Tensor tok = torch::stack(tokens).flatten(0, 1);     // [B*M, L]
  const torch::Tensor tgt = torch::stack(targets).flatten(0, 1);    // [B*M, L]
  const torch::Tensor allow = torch::stack(allowed).flatten(0, 1);  // [B*M, L, V]
  const torch::Tensor mem = memory.repeat_interleave(m, 1);         // [S, B*M, d]
  torch::Tensor logits = net->Decode(tok, mem);
  logits = logits.masked_fill(allow.logical_not(), -1e9);
  const torch::Tensor logp = torch::log_softmax(logits, -1);
  const torch::Tensor valid = tgt.ge(0);
  const torch::Tensor picked = logp.gather(2, tgt.clamp_min(0).unsqueeze(2)).squeeze(2);
  const torch::Tensor seq_logp = (picked * valid.to(torch::kFloat)).sum(1).view({n, m});
  const torch::Tensor plan_loss = -(torch::stack(weights) * seq_logp).sum(1).mean();

  const torch::Tensor out = net->Findings(memory);
  const torch::Tensor f_loss =
      torch::nn::functional::cross_entropy(out.slice(1, 0, kLesionClasses),
                                           torch::tensor(lesion, torch::kLong)) +
      torch::nn::functional::smooth_l1_loss(out.slice(1, kLesionClasses, kLesionClasses + 3),
                                            torch::stack(findings)) *
          10.0 +
      torch::nn::functional::cross_entropy(out.slice(1, kLesionClasses + 3, kLesionClasses + 6),
                                           torch::tensor(cp, torch::kLong));
  return {plan_loss + findings_weight * f_loss, seq_logp};
}

std::uint64_t Mix(std::uint64_t a, std::uint64_t b) {
  std::uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

Expected<std::unique_ptr<PolicyModel>> CreateVlmPolicy(const VlmOptions& options,
                                                       const ActionBase& actions) {
  MEWM_RETURN_IF_ERROR(options.Validate());
  if (options.checkpoint.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "vlm: policy.checkpoint is required");
  }
  torch_bridge::ConfigureThreads(options.threads);
  MEWM_TRY(const torch::Device device, torch_bridge::ResolveDevice(options.device));
  MEWM_TRY(PlanGrammar grammar, PlanGrammar::Create(actions, options.grammar));
  MEWM_TRY(const torch_bridge::CheckpointInfo info,
           torch_bridge::ReadCheckpointInfo(options.checkpoint));
  MEWM_TRY(const NetConfig config, NetConfig::FromJson(info.config_json, options.checkpoint));
  if (config.items != grammar.items()) {
    return MakeError(ErrorCode::kMismatch,
                     "vlm: '" + options.checkpoint +
                         "' was trained on another action base (its items differ from this one's)");
  }
  if (config.max_length < grammar.max_length()) {
    return MakeError(ErrorCode::kMismatch, "vlm: '" + options.checkpoint +
                                               "' writes plans of at most " +
                                               std::to_string(config.max_length - 1) +
                                               " items; these horizons allow longer ones");
  }
  VlmNet net(config);
  MEWM_RETURN_IF_ERROR(
      torch_bridge::LoadCheckpoint(options.checkpoint, *net, config.ToJson().dump()));
  net->eval();
  net->to(device);
  return std::unique_ptr<PolicyModel>(
      new VlmPolicy(options, actions, std::move(grammar), std::move(net), device));
}

VlmFactory VlmFactoryFunction() { return &CreateVlmPolicy; }

Expected<VlmTrainReport> TrainVlm(const std::vector<VlmTrainingExample>& examples,
                                  const ActionBase& actions, const VlmTrainOptions& o,
                                  const std::function<void(const VlmEpoch&)>& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  if (examples.size() < 4) {
    return MakeError(ErrorCode::kInvalidArgument, "vlm training needs at least 4 patients, got " +
                                                      std::to_string(examples.size()));
  }
  if (o.epochs < 1 || o.batch < 1 || o.list_size < 1 || !(o.lr > 0) || !(o.temperature > 0) ||
      o.modality_dropout < 0 || o.modality_dropout > 0.5 || o.validation_fraction < 0 ||
      o.validation_fraction >= 0.5 || o.out.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "vlm training: bad options (epochs, batch, list size >= 1; lr, temperature "
                     "> 0; modality dropout in [0, 0.5]; validation fraction in [0, 0.5); an "
                     "output path)");
  }
  torch_bridge::ConfigureThreads(o.threads);
  MEWM_TRY(const PlanGrammar grammar, PlanGrammar::Create(actions, o.grammar));
  NetConfig config;
  config.items = grammar.items();
  config.max_length = grammar.max_length();

  torch::manual_seed(o.seed);
  VlmNet net(config);
  const int bos = net->Bos();

  std::vector<Prepared> data;
  for (const VlmTrainingExample& ex : examples) {
    MEWM_TRY(Prepared p, Prepare(ex, grammar, actions, o, bos));
    data.push_back(std::move(p));
  }
  // The validation split: a seeded shuffle of the patients.
  std::vector<std::size_t> order(data.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(Mix(o.seed, 0xA11)));
  const std::size_t n_val = std::size_t(std::floor(o.validation_fraction * double(data.size())));
  const std::vector<std::size_t> val(order.begin(), order.begin() + long(n_val));
  const std::vector<std::size_t> train_base(order.begin() + long(n_val), order.end());
  std::vector<std::size_t> train = train_base;

  torch::optim::AdamW optimizer(net->parameters(),
                                torch::optim::AdamWOptions(o.lr).weight_decay(1e-4));
  VlmTrainReport report;
  report.train_patients = int(train.size());
  report.validation_patients = int(val.size());
  for (const auto& p : net->parameters()) report.parameters += p.numel();

  const std::string state_dir = o.out + ".state";
  // What a resumed run must share with the one that saved the state: every option that shapes
  // the weights but the epoch count (more epochs extend a run), and the examples (SHA-256 of each
  // one's id, note, crop sums and listed plans).
  json examples_seen = json::array();
  for (const VlmTrainingExample& ex : examples) {
    json plans = json::array();
    for (const auto& [plan, risk] : ex.plan_risks) plans.push_back({plan.ToString(), risk});
    examples_seen.push_back(
        {ex.input.id, ex.input.note, std::accumulate(ex.input.ct.begin(), ex.input.ct.end(), 0.0),
         std::accumulate(ex.input.tumor.begin(), ex.input.tumor.end(), 0.0), plans});
  }
  const json run = {{"seed", o.seed},
                    {"config", config.ToJson()},
                    {"patients", int(data.size())},
                    {"batch", o.batch},
                    {"lr", o.lr},
                    {"list_size", o.list_size},
                    {"temperature", o.temperature},
                    {"findings_weight", o.findings_weight},
                    {"modality_dropout", o.modality_dropout},
                    {"validation_fraction", o.validation_fraction},
                    {"grammar",
                     {{"drug_horizon", o.grammar.drug_horizon},
                      {"embolic_horizon", o.grammar.embolic_horizon},
                      {"protocol", o.grammar.protocol}}},
                    {"data", ToHex(Sha256(examples_seen.dump()))}};
  int start_epoch = 0;
  const std::string state_file = state_dir + "/state.json";
  json resumed;  // the state resumed from, read once
  if (o.resume) {
    if (fs::exists(state_file)) {
      // A state file is small; a FIFO put in its place would block the read for ever.
      MEWM_TRY(const std::string text, ReadRegularFile(state_file, kMaxStateBytes));
      try {
        resumed = json::parse(text);
        const json& s = resumed;
        // A state saved before runs were recorded names only its seed, config and patient count.
        const auto recorded_before = [](const json& j) {
          return json{
              {"seed", j.at("seed")}, {"config", j.at("config")}, {"patients", j.at("patients")}};
        };
        const bool legacy = !s.contains("run");
        const json saved = legacy ? recorded_before(s) : s.at("run");
        const json now = legacy ? recorded_before(run) : run;
        if (saved != now) {
          return MakeError(ErrorCode::kMismatch,
                           "vlm training: '" + state_dir +
                               "' belongs to another run; resume with that run's options and "
                               "data, or train to another --out (the state is left as it is):" +
                               torch_bridge::DescribeJsonDifferences(saved.dump(), "the state has",
                                                                     now.dump(), "this run has"));
        }
        const json& epoch = s.at("epoch");
        if (!epoch.is_number_integer() || epoch.get<std::int64_t>() < 0 ||
            epoch.get<std::int64_t>() > 1000000) {
          return MakeError(ErrorCode::kCorruptData,
                           "'" + state_file + "': epoch " + epoch.dump() +
                               " is not a whole number of epochs done (0 or more)");
        }
        start_epoch = epoch.get<int>();
        if (start_epoch > o.epochs) {
          return MakeError(ErrorCode::kInvalidArgument,
                           "vlm training: '" + state_dir + "' is at epoch " +
                               std::to_string(start_epoch) + ", past the " +
                               std::to_string(o.epochs) + " epochs asked: ask at least as many");
        }
      } catch (const std::exception& e) {
        return MakeError(ErrorCode::kCorruptData, "'" + state_file + "': " + e.what());
      }
      // libtorch compiles the code an archive holds as it loads it (and a FIFO would block it):
      // each file of the state is checked first, as checkpoints are.
      for (const char* name : {"net.pt", "optim.pt", "best.pt"}) {
        const std::string file = state_dir + "/" + name;
        if (std::string(name) == "best.pt" && !fs::exists(fs::symlink_status(file))) continue;
        if (auto layout = torch_bridge::CheckArchiveLayout(file); !layout) {
          return layout.error().WithContext("vlm training: the state in '" + state_dir + "'");
        }
      }
      try {
        torch::load(net, state_dir + "/net.pt");
        torch::load(optimizer, state_dir + "/optim.pt");
      } catch (const c10::Error& e) {
        return MakeError(ErrorCode::kCorruptData, "vlm training: cannot read the state in '" +
                                                      state_dir +
                                                      "': " + e.what_without_backtrace());
      }
      report.resumed_from_epoch = start_epoch;
    }
  }

  const auto evaluate = [&](VlmEpoch& e) {
    if (val.empty()) return;
    torch::NoGradGuard no_grad;
    net->eval();
    double loss = 0.0;
    int top1 = 0;
    for (std::size_t i = 0; i < val.size(); i += std::size_t(o.batch)) {
      std::vector<const Prepared*> batch;
      for (std::size_t j = i; j < std::min(val.size(), i + std::size_t(o.batch)); ++j) {
        batch.push_back(&data[val[j]]);
      }
      const BatchLoss l =
          Loss(net, batch, std::vector<Blank>(batch.size(), Blank::kNone), o.findings_weight);
      loss += l.total.item<double>() * double(batch.size());
      // The best listed plan (index 0) is the most probable of the listed ones.
      const torch::Tensor best = l.seq_logp.argmax(1);
      top1 += int(best.eq(0).sum().item<int64_t>());
    }
    e.val_loss = loss / double(val.size());
    e.val_top1 = double(top1) / double(val.size());
    net->train();
  };

  // The shipped weights are those of the epoch with the lowest validation loss (early stopping);
  // without validation patients, the last epoch's.
  const auto snapshot = [&]() {
    std::vector<torch::Tensor> copy;
    for (const auto& p : net->parameters()) copy.push_back(p.detach().clone());
    return copy;
  };
  std::vector<torch::Tensor> best = snapshot();
  double best_loss = std::numeric_limits<double>::infinity();
  int best_epoch = start_epoch;
  if (o.resume && start_epoch > 0 && resumed.is_object() && resumed.contains("best_epoch")) {
    const json& at = resumed.at("best_epoch");
    if (!at.is_number_integer() || at.get<std::int64_t>() < 0 ||
        at.get<std::int64_t>() > start_epoch) {
      return MakeError(ErrorCode::kCorruptData, "'" + state_file + "': best_epoch " + at.dump() +
                                                    " is not an epoch done before");
    }
    best_epoch = at.get<int>();
    const auto loss = resumed.find("best_val_loss");
    best_loss = loss != resumed.end() && loss->is_number()
                    ? loss->get<double>()
                    : std::numeric_limits<double>::infinity();
    try {
      best.clear();  // torch::load appends to the vector
      torch::load(best, state_dir + "/best.pt");
    } catch (const c10::Error& e) {
      return MakeError(ErrorCode::kCorruptData, "vlm training: cannot read '" + state_dir +
                                                    "/best.pt': " + e.what_without_backtrace());
    }
  }

  net->train();
  for (int epoch = start_epoch; epoch < o.epochs; ++epoch) {
    // Everything random in an epoch comes from (seed, epoch): a resumed run repeats it exactly.
    torch::manual_seed(Mix(o.seed, std::uint64_t(epoch) + 1));
    std::mt19937_64 rng(Mix(o.seed, 0x5EED0000ull + std::uint64_t(epoch)));
    train = train_base;  // each epoch's order depends on (seed, epoch) only
    std::shuffle(train.begin(), train.end(), rng);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    double total = 0.0;
    for (std::size_t i = 0; i < train.size(); i += std::size_t(o.batch)) {
      std::vector<const Prepared*> batch;
      std::vector<Blank> blanks;
      std::vector<int> flips;
      for (std::size_t j = i; j < std::min(train.size(), i + std::size_t(o.batch)); ++j) {
        batch.push_back(&data[train[j]]);
        const double r = u(rng);
        blanks.push_back(r < o.modality_dropout       ? Blank::kImage
                         : r < 2 * o.modality_dropout ? Blank::kNote
                                                      : Blank::kNone);
        flips.push_back(int(rng() & 7u));
      }
      const BatchLoss l = Loss(net, batch, blanks, o.findings_weight, flips);
      optimizer.zero_grad();
      l.total.backward();
      torch::nn::utils::clip_grad_norm_(net->parameters(), 1.0);
      optimizer.step();
      total += l.total.item<double>() * double(batch.size());
    }
    VlmEpoch e;
    e.epoch = epoch + 1;
    e.train_loss = total / double(train.size());
    evaluate(e);
    if (val.empty() || e.val_loss < best_loss) {
      best = snapshot();
      best_loss = val.empty() ? best_loss : e.val_loss;
      best_epoch = e.epoch;
    }
    report.epochs.push_back(e);
    if (progress) progress(e);
    // The resumable state, written to temporaries and renamed.
    std::error_code ec;
    fs::create_directories(state_dir, ec);
    if (ec) {
      return MakeError(ErrorCode::kIo, "cannot create '" + state_dir + "': " + ec.message());
    }
    try {
      torch::save(net, state_dir + "/net.pt.tmp");
      torch::save(optimizer, state_dir + "/optim.pt.tmp");
      torch::save(best, state_dir + "/best.pt.tmp");
    } catch (const c10::Error& e2) {
      return MakeError(ErrorCode::kIo, "cannot write the training state in '" + state_dir +
                                           "': " + e2.what_without_backtrace());
    }
    fs::rename(state_dir + "/net.pt.tmp", state_dir + "/net.pt", ec);
    if (!ec) fs::rename(state_dir + "/optim.pt.tmp", state_dir + "/optim.pt", ec);
    if (!ec) fs::rename(state_dir + "/best.pt.tmp", state_dir + "/best.pt", ec);
    if (ec) return MakeError(ErrorCode::kIo, "cannot write '" + state_dir + "': " + ec.message());
    const json state = {{"epoch", epoch + 1},
                        {"best_epoch", best_epoch},
                        {"best_val_loss", std::isfinite(best_loss) ? json(best_loss) : json()},
                        {"run", run}};
    MEWM_RETURN_IF_ERROR(WriteFileAtomic(state_dir + "/state.json", state.dump(1)));
  }

  json metadata = json::parse(o.metadata_json, nullptr, false);
  if (metadata.is_discarded() || !metadata.is_object()) metadata = json::object();
  metadata["seed"] = o.seed;
  metadata["epochs"] = o.epochs;
  metadata["train_patients"] = report.train_patients;
  metadata["validation_patients"] = report.validation_patients;
  metadata["parameters"] = report.parameters;
  metadata["training_signal"] =
      "listwise: cross-entropy between softmax(-(ln HR_p - ln HR_best) / " +
      std::to_string(o.temperature) + ") over the " + std::to_string(o.list_size) +
      " lowest-true-hazard plans the grammar accepts and the model's constrained sequence "
      "log-probabilities";
  if (!report.epochs.empty()) {
    metadata["final_train_loss"] = report.epochs.back().train_loss;
    metadata["final_val_loss"] = report.epochs.back().val_loss;
    metadata["final_val_top1"] = report.epochs.back().val_top1;
  }
  {
    torch::NoGradGuard no_grad;
    const auto params = net->parameters();
    if (best.size() != params.size()) {
      return MakeError(ErrorCode::kCorruptData, "vlm training: the best weights in '" + state_dir +
                                                    "' do not match the network");
    }
    for (std::size_t i = 0; i < params.size(); ++i) params[i].copy_(best[i]);
  }
  report.best_epoch = best_epoch;
  metadata["best_epoch"] = best_epoch;
  if (std::isfinite(best_loss)) metadata["best_val_loss"] = best_loss;
  net->eval();
  MEWM_RETURN_IF_ERROR(
      torch_bridge::SaveCheckpoint(o.out, *net, {config.ToJson().dump(), metadata.dump()}));
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace mewm::policy
