// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/survival/cox_survival.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "mewm/core/file_util.h"
#include "mewm/core/sha256.h"
#include "mewm/tace/pharmacology.h"

namespace mewm::survival {
namespace {

using nlohmann::json;
constexpr const char* kFormat = "mewm.cox_survival";
constexpr int kFormatVersion = 1;

}  // namespace

const std::vector<std::string>& CoxFeatureNames() {
  static const std::vector<std::string> names = {"log1p_pre_tumor_ml", "log1p_post_viable_ml",
                                                 "residual_fraction",  "lipiodol_coverage",
                                                 "plan_toxicity",      "log10_afp",
                                                 "child_pugh_b",       "child_pugh_c",
                                                 "bclc_early",         "bclc_c",
                                                 "vascular_invasion",  "age_years",
                                                 "lesion_count"};
  return names;
}

Expected<PreTreatment> MeasurePreTreatment(const PatientCase& patient) {
  MEWM_RETURN_IF_ERROR(patient.Validate());
  PreTreatment pre;
  pre.tumor_ml = double(CountLabel(patient.tumor)) * patient.ct.geometry().spacing.prod() / 1000.0;
  pre.covariates = patient.covariates;
  return pre;
}

Expected<Eigen::VectorXd> CoxFeatures(const PreTreatment& pre, const LabelVolume& pre_tumor,
                                      const Outcome& post) {
  MEWM_TRY(const double coverage, LipiodolCoverage(post.post_ct, pre_tumor));
  MEWM_TRY(const double toxicity, PlanToxicity(post.plan, pre.covariates.child_pugh));
  const Covariates& c = pre.covariates;
  const double viable = ViableVolumeMl(post);
  Eigen::VectorXd x(13);
  x << std::log1p(pre.tumor_ml), std::log1p(viable), viable / std::max(pre.tumor_ml, 1e-6),
      coverage, toxicity, std::log10(std::max(c.afp_ng_ml, 0.1)), c.child_pugh == 'B' ? 1.0 : 0.0,
      c.child_pugh == 'C' ? 1.0 : 0.0, (c.bclc_stage == '0' || c.bclc_stage == 'A') ? 1.0 : 0.0,
      c.bclc_stage == 'C' ? 1.0 : 0.0, c.vascular_invasion ? 1.0 : 0.0, c.age_years,
      double(c.lesion_count);
  return x;
}

Expected<std::unique_ptr<CoxSurvival>> CoxSurvival::Create(CoxFit fit, ModelProvenance provenance) {
  if (fit.feature_names != CoxFeatureNames()) {
    return MakeError(ErrorCode::kMismatch,
                     "Cox survival model: its features differ from this build's (" +
                         std::to_string(fit.feature_names.size()) + " vs " +
                         std::to_string(CoxFeatureNames().size()) +
                         "); retrain it with `mewm train survival --backend cox`");
  }
  const auto p = Eigen::Index(CoxFeatureNames().size());
  if (fit.beta.size() != p || fit.mean.size() != p || fit.scale.size() != p ||
      fit.baseline_times.empty() || fit.baseline_times.size() != fit.baseline_cumhaz.size()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "Cox survival model: coefficients, feature scaling or baseline hazard "
                     "missing or of the wrong size");
  }
  for (std::size_t i = 1; i < fit.baseline_times.size(); ++i) {
    if (!(fit.baseline_times[i] > fit.baseline_times[i - 1]) ||
        fit.baseline_cumhaz[i] < fit.baseline_cumhaz[i - 1]) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "Cox survival model: baseline times must increase and the cumulative "
                       "hazard must not fall");
    }
  }
  if (provenance.metrics.empty()) provenance.metrics = "{}";
  return std::unique_ptr<CoxSurvival>(new CoxSurvival(std::move(fit), std::move(provenance)));
}

Expected<std::unique_ptr<CoxSurvival>> CoxSurvival::Load(const std::string& path) {
  // Under 3 MB at the baseline's limit of 100,000 times; a 200 MB file took 4.7 GB to refuse.
  constexpr std::uint64_t kMaxBytes = 16u << 20;
  MEWM_TRY(const std::string text, ReadRegularFile(path, kMaxBytes));
  MEWM_RETURN_IF_ERROR(VerifyModelChecksum(path, text));
  const auto corrupt = [&](const std::string& what) {
    return MakeError(ErrorCode::kCorruptData, "'" + path + "': " + what);
  };
  // Said without nlohmann's message, which quotes the file's bytes.
  const json j = json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return corrupt("not JSON; a Cox survival model is the JSON file `mewm train survival` writes");
  }
  ModelProvenance provenance;
  std::string model_text;
  try {
    if (!j.is_object() || !j.contains("format") || j.at("format") != kFormat) {
      return corrupt(std::string("not a mewm Cox survival model (format must be '") + kFormat +
                     "')");
    }
    if (!j.contains("version") || j.at("version") != kFormatVersion) {
      return corrupt("format version " + j.value("version", json(nullptr)).dump() +
                     ", this build reads " + std::to_string(kFormatVersion));
    }
    const json& p = j.at("provenance");
    provenance = {p.at("command").get<std::string>(), p.at("seed").get<std::string>(),
                  p.at("data").get<std::string>(), p.at("metrics").dump()};
    model_text = j.at("model").dump();
  } catch (const std::exception& e) {
    return corrupt(e.what());
  }
  auto fit = CoxFit::FromJson(model_text);
  if (!fit) return fit.error().WithContext("'" + path + "'");
  auto model = Create(std::move(*fit), std::move(provenance));
  if (!model) return model.error().WithContext("'" + path + "'");
  return model;
}

Status CoxSurvival::Save(const std::string& path) const {
  json metrics;
  try {
    metrics = json::parse(provenance_.metrics);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string("Cox survival model: metrics are not JSON: ") + e.what());
  }
  const json j = {{"format", kFormat},
                  {"version", kFormatVersion},
                  {"provenance",
                   {{"command", provenance_.command},
                    {"seed", provenance_.seed},
                    {"data", provenance_.data},
                    {"metrics", metrics}}},
                  {"model", json::parse(fit_.ToJson())}};
  MEWM_RETURN_IF_ERROR(WriteFileAtomic(path, j.dump(1) + "\n"));
  return WriteModelChecksum(path);
}

Expected<RiskScore> CoxSurvival::Score(const PatientCase& pre, const Outcome& post) {
  // Another case under the same id, or the same id's grids replaced, is measured afresh.
  if (!cached_patient_.Matches(pre)) {
    cached_patient_.Forget();
    MEWM_TRY(cached_, MeasurePreTreatment(pre));
    cached_patient_.Remember(pre);
  }
  if (post.viable.extent() != pre.ct.extent() ||
      !post.viable.geometry().ApproxEquals(pre.ct.geometry(), 1e-4)) {
    return MakeError(ErrorCode::kMismatch, "Cox survival: the viable mask of patient '" + pre.id +
                                               "' is off its lattice");
  }
  MEWM_TRY(const Eigen::VectorXd x, CoxFeatures(cached_, pre.tumor, post));
  RiskScore score = fit_.Predict(x);
  if (!std::isfinite(score.risk)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "Cox survival: non-finite risk for patient '" + pre.id + "'");
  }
  return score;
}

}  // namespace mewm::survival
