// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/policy/guideline.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "mewm/tace/pharmacology.h"
#include "mewm/tace/tumor_features.h"

namespace mewm::policy {
namespace {

/// Max diameter below which a tumor counts as small: a temporary occlusion suffices.
constexpr double kSmallTumorMm = 30.0;
/// AFP above which the tumor counts as biologically aggressive (the usual 400 ng/mL cut-off).
constexpr double kHighAfpNgMl = 400.0;
/// Age from which drugs are ranked as for poor liver reserve.
constexpr double kElderlyYears = 75.0;
/// Toxicity from which poor-reserve patients lose a drug (Idarubicin, Cisplatin and Mitomycin in
/// the shipped pharmacology table).
constexpr double kHighToxicity = 0.10;

std::string Round(double value) { return std::to_string(std::lround(value)); }

/// Toxicity of an item, or +inf when the pharmacology table does not know it.
double Toxicity(const std::string& item) {
  const auto physics = PhysicsOf(item);
  return physics ? physics->toxicity : std::numeric_limits<double>::infinity();
}

/// Canonical name of the embolic that `name` resolves to, if the action base has one.
std::optional<std::string> EmbolicNamed(const ActionBase& actions, const std::string& name) {
  const auto item = actions.Find(name);
  if (!item || item->kind != ItemKind::kEmbolic) return std::nullopt;
  return item->name;
}

/// Rule 1: one drug per class in turn, so that the first few drugs span the classes.
std::vector<std::string> RankDrugs(const ActionBase& actions, bool high_afp) {
  // Platinum backbone first by default; a high AFP puts anthracyclines first.
  std::vector<std::string> classes = {"platinum", "anthracycline", "antimetabolite", "mitomycin"};
  if (high_afp) std::swap(classes[0], classes[1]);
  for (const std::string& c : actions.DrugClasses()) {
    if (std::find(classes.begin(), classes.end(), c) == classes.end()) classes.push_back(c);
  }
  std::vector<std::vector<std::string>> by_class(classes.size());
  for (const ActionItem& item : actions.items()) {
    if (item.kind != ItemKind::kDrug) continue;
    const auto it = std::find(classes.begin(), classes.end(), item.drug_class);
    by_class[std::size_t(it - classes.begin())].push_back(item.name);
  }
  std::vector<std::string> drugs;
  for (std::size_t round = 0; drugs.size() < actions.Drugs().size(); ++round) {
    for (const auto& members : by_class) {
      if (round < members.size()) drugs.push_back(members[round]);
    }
  }
  return drugs;
}

}  // namespace

Status GuidelineConfig::Validate() const {
  const auto bad = [](const std::string& what) {
    return MakeError(ErrorCode::kInvalidArgument, "guideline config: " + what);
  };
  if (max_drugs < 2) return bad("max_drugs must be >= 2 (got " + std::to_string(max_drugs) + ")");
  if (max_embolics < 1) {
    return bad("max_embolics must be >= 1 (got " + std::to_string(max_embolics) + ")");
  }
  if (!(large_tumor_mm > 0.0) || !std::isfinite(large_tumor_mm)) {
    return bad("large_tumor_mm must be > 0 (got " + std::to_string(large_tumor_mm) + ")");
  }
  if (!std::isfinite(hypervascular_hu)) return bad("hypervascular_hu must be finite");
  return {};
}

Expected<std::unique_ptr<GuidelinePolicy>> GuidelinePolicy::Create(const ActionBase& actions,
                                                                   const GuidelineConfig& config) {
  MEWM_RETURN_IF_ERROR(config.Validate());
  if (actions.Drugs().size() < 2) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "guideline policy: the action base must define at least 2 drugs (has " +
                         std::to_string(actions.Drugs().size()) + ")");
  }
  return std::unique_ptr<GuidelinePolicy>(new GuidelinePolicy(actions, config));
}

Expected<Proposal> GuidelinePolicy::Propose(const PatientCase& patient) {
  MEWM_RETURN_IF_ERROR(patient.Validate());
  auto measured = ComputeTumorFeatures(patient.ct, patient.tumor);
  if (!measured) return measured.error().WithContext("patient '" + patient.id + "'");
  const TumorFeatures& tumor = *measured;
  const Covariates& cov = patient.covariates;

  // The recorded max diameter, else that of a sphere with the measured tumor volume.
  const double diameter_mm =
      cov.max_diameter_mm > 0.0 ? cov.max_diameter_mm : EquivalentDiameterMm(tumor.volume_ml);
  const bool poor_reserve = cov.child_pugh != 'A';
  const bool elderly = cov.age_years >= kElderlyYears;
  const bool high_afp = cov.afp_ng_ml > kHighAfpNgMl;
  const bool hypervascular = tumor.enhancing_hu >= config_.hypervascular_hu;
  const bool permanent_first = diameter_mm >= config_.large_tumor_mm || hypervascular;
  const bool small = diameter_mm < kSmallTumorMm;

  Proposal proposal;
  // Rules 1 and 2: drugs.
  proposal.drugs = RankDrugs(actions_, high_afp);
  if (poor_reserve || elderly) {
    std::stable_sort(
        proposal.drugs.begin(), proposal.drugs.end(),
        [](const std::string& a, const std::string& b) { return Toxicity(a) < Toxicity(b); });
    while (proposal.drugs.size() > 2 && Toxicity(proposal.drugs.back()) >= kHighToxicity) {
      proposal.drugs.pop_back();
    }
  }
  if (proposal.drugs.size() > std::size_t(config_.max_drugs)) {
    proposal.drugs.resize(config_.max_drugs);
  }

  // Rules 3 and 4: embolics.
  std::vector<std::string> order = {"Lipiodol"};
  if (permanent_first) {
    order.insert(order.end(), {"PVA", "NBCA", "Gelatin Sponge", "Absolute Alcohol"});
  } else if (small) {
    order.insert(order.end(), {"Gelatin Sponge", "Absolute Alcohol", "PVA", "NBCA"});
  } else {
    order.insert(order.end(), {"Gelatin Sponge", "PVA", "NBCA", "Absolute Alcohol"});
  }
  const std::vector<std::string> file_order = actions_.Embolics();
  order.insert(order.end(), file_order.begin(), file_order.end());
  const std::optional<std::string> alcohol = EmbolicNamed(actions_, "Absolute Alcohol");
  for (const std::string& name : order) {
    const std::optional<std::string> item = EmbolicNamed(actions_, name);
    if (!item || (poor_reserve && item == alcohol)) continue;
    if (std::find(proposal.embolics.begin(), proposal.embolics.end(), *item) ==
        proposal.embolics.end()) {
      proposal.embolics.push_back(*item);
    }
  }
  if (proposal.embolics.size() > std::size_t(config_.max_embolics)) {
    proposal.embolics.resize(config_.max_embolics);
  }

  // The rationale names the facts that changed the default order.
  std::vector<std::string> facts;
  if (poor_reserve || elderly) {
    std::string who = poor_reserve ? std::string("Child-Pugh ") + cov.child_pugh : "";
    if (elderly) who += (who.empty() ? "age " : ", age ") + Round(cov.age_years);
    facts.push_back(who + ": " + (poor_reserve && alcohol ? "alcohol excluded, " : "") +
                    "low-toxicity drugs first");
  }
  const std::vector<std::string> classes = actions_.DrugClasses();
  if (high_afp && std::find(classes.begin(), classes.end(), "anthracycline") != classes.end()) {
    facts.push_back("AFP " + Round(cov.afp_ng_ml) + " ng/mL: anthracyclines favoured");
  }
  const std::string lesion =
      Round(diameter_mm) + " mm " + (hypervascular ? "hypervascular " : "") + "tumor";
  if (permanent_first && (EmbolicNamed(actions_, "PVA") || EmbolicNamed(actions_, "NBCA"))) {
    facts.push_back(lesion + ": permanent embolics preferred");
  } else if (!permanent_first && small && EmbolicNamed(actions_, "Gelatin Sponge")) {
    facts.push_back(lesion + ": gelatin sponge first");
  }
  if (facts.empty()) {
    facts.push_back(std::string("Child-Pugh ") + cov.child_pugh + ", " + lesion +
                    ": standard order (platinum backbone, gelatin sponge)");
  }
  for (std::size_t n = 0; n < facts.size(); ++n) {
    proposal.rationale += (n == 0 ? "" : "; ") + facts[n];
  }
  proposal.rationale += ".";
  // Names are canonical already; this checks them and keeps the order.
  return CanonicalizeProposal(proposal, actions_);
}

Expected<Plan> FirstChoicePlan(const Proposal& proposal, const ActionBase& actions,
                               int drug_horizon, int embolic_horizon, const std::string& protocol) {
  const auto no_plan = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "first-choice plan (protocol '" + protocol + "'): " + why);
  };
  if (drug_horizon < 0 || embolic_horizon < 0) {
    return no_plan("horizons must be >= 0 (got drugs " + std::to_string(drug_horizon) +
                   ", embolics " + std::to_string(embolic_horizon) + ")");
  }
  MEWM_TRY(const Proposal canonical, CanonicalizeProposal(proposal, actions));
  std::vector<std::string> mandatory;
  if (!protocol.empty()) {
    MEWM_TRY(mandatory, actions.MandatoryItems(protocol));
  }
  MEWM_TRY(Plan plan, actions.MakePlan(mandatory));
  int drugs = 0, embolics = 0;
  for (const std::string& name : plan.items()) {
    MEWM_TRY(const ActionItem item, actions.Find(name));
    ++(item.kind == ItemKind::kDrug ? drugs : embolics);
  }
  if (drugs > drug_horizon || embolics > embolic_horizon) {
    return no_plan("the mandatory items " + plan.ToString() + " exceed the horizons (drugs " +
                   std::to_string(drug_horizon) + ", embolics " + std::to_string(embolic_horizon) +
                   ")");
  }
  // Class limits and exclusions only ever add violations, so an invalid start stays invalid.
  if (auto valid = actions.Validate(plan, protocol); !valid) return no_plan(valid.error().message);

  const auto add = [&](const std::string& item, int& count, int horizon) {
    if (count >= horizon || plan.Contains(item)) return;
    Plan next = plan.With(item);
    if (!actions.Violations(next, protocol).empty()) return;
    plan = std::move(next);
    ++count;
  };
  for (const std::string& drug : canonical.drugs) add(drug, drugs, drug_horizon);
  for (const std::string& embolic : canonical.embolics) add(embolic, embolics, embolic_horizon);
  if (plan.empty()) {
    return no_plan("no item fits the horizons (drugs " + std::to_string(drug_horizon) +
                   ", embolics " + std::to_string(embolic_horizon) + ")");
  }
  return plan;
}

}  // namespace mewm::policy
