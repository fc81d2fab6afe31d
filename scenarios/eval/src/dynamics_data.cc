// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/eval/dynamics_data.h"

#include <tbb/parallel_for.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "mewm/core/file_util.h"
#include "mewm/tace/tumor_features.h"

namespace mewm::scenarios {
namespace {
namespace fs = std::filesystem;
}  // namespace

Expected<std::map<std::string, std::vector<PlanOutcomeFile>>> ReadPlanOutcomes(
    const std::string& cohort_dir, const ActionBase& actions) {
  // The administered follow-up CT is listed in the manifest; the plan given (an outcome) and the
  // counterfactual plans and images (never observable) are in the truth.
  MEWM_TRY(const std::vector<CohortEntry> entries, ReadSyntheticCohort(cohort_dir));
  MEWM_TRY(const std::string path, SyntheticTruthPath(cohort_dir));
  MEWM_TRY(const std::string text, ReadFile(path));
  std::map<std::string, std::vector<PlanOutcomeFile>> out;
  try {
    const nlohmann::json truth = nlohmann::json::parse(text);
    for (const CohortEntry& e : entries) {
      const nlohmann::json& t = truth.at("patients").at(e.id);
      std::vector<std::pair<std::string, std::string>> listed = {
          {t.at("administered_plan").get<std::string>(), e.post}};
      const auto& plans = t.at("counterfactual_plans");
      const auto& posts = t.at("counterfactual_posts");
      if (plans.size() != posts.size()) {
        return MakeError(ErrorCode::kCorruptData,
                         path + ", patient '" + e.id +
                             "': counterfactual_plans and counterfactual_posts differ in length");
      }
      for (std::size_t k = 0; k < plans.size(); ++k) {
        listed.emplace_back(plans[k].get<std::string>(),
                            (fs::path(cohort_dir) / posts[k].get<std::string>()).string());
      }
      for (const auto& [plan_text, file] : listed) {
        auto plan = actions.ParsePlan(plan_text);
        if (!plan) return plan.error().WithContext(path + ", patient '" + e.id + "'");
        out[e.id].push_back({*plan, file});
      }
    }
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, path + ": not a cohort truth: " + e.what());
  }
  return out;
}

Expected<std::vector<dynamics::DiffusionPair>> BuildDiffusionPairs(
    const std::string& cohort_dir, const dynamics::DiffusionConfig& config,
    const ActionBase& actions, PairCrops layout, const std::vector<std::string>& ids,
    const std::function<void(int, int)>& progress) {
  MEWM_TRY(const auto outcomes, ReadPlanOutcomes(cohort_dir, actions));
  MEWM_TRY(std::vector<CohortEntry> entries, ReadSyntheticCohort(cohort_dir));
  if (!ids.empty()) {
    const std::set<std::string> wanted(ids.begin(), ids.end());
    entries.erase(std::remove_if(entries.begin(), entries.end(),
                                 [&](const CohortEntry& e) { return !wanted.count(e.id); }),
                  entries.end());
  }
  std::vector<std::vector<dynamics::DiffusionPair>> per_patient(entries.size());
  std::vector<Status> status(entries.size());
  std::atomic<int> done{0};
  std::mutex progress_mutex;
  tbb::parallel_for(std::size_t(0), entries.size(), [&](std::size_t n) {
    status[n] = [&]() -> Status {
      const CohortEntry& entry = entries[n];
      MEWM_TRY(const PatientCase patient, LoadPatient(entry));
      MEWM_TRY(const auto crops, layout == PairCrops::kServing
                                     ? dynamics::LesionTiles(patient, config)
                                     : dynamics::LesionCrops(patient, config));
      MEWM_TRY(const TumorFeatures features, ComputeTumorFeatures(patient.ct, patient.tumor));
      std::vector<dynamics::CropChannels> pre;
      for (const dynamics::LesionTile& crop : crops) {
        MEWM_TRY(auto channels,
                 dynamics::ExtractChannels(patient.ct, patient.tumor, crop.spec, config.window));
        pre.push_back(std::move(channels));
      }
      auto it = outcomes.find(entry.id);
      if (it == outcomes.end()) return {};
      for (const PlanOutcomeFile& file : it->second) {
        MEWM_TRY(const Outcome truth, LoadOutcomeFile(file.post, file.plan));
        for (std::size_t c = 0; c < crops.size(); ++c) {
          auto post = dynamics::OutcomeChannels(truth, crops[c].spec, config);
          if (!post) return post.error().WithContext("file '" + file.post + "'");
          per_patient[n].push_back({entry.id, file.plan, pre[c], std::move(*post),
                                    crops[c].diameter_mm, patient.covariates, features});
        }
      }
      return {};
    }();
    const int finished = ++done;
    if (progress) {
      std::lock_guard<std::mutex> lock(progress_mutex);
      progress(finished, int(entries.size()));
    }
  });
  std::vector<dynamics::DiffusionPair> pairs;
  for (std::size_t n = 0; n < entries.size(); ++n) {
    if (!status[n]) return status[n].error().WithContext("patient '" + entries[n].id + "'");
    for (auto& p : per_patient[n]) pairs.push_back(std::move(p));
  }
  return pairs;
}

}  // namespace mewm::scenarios
