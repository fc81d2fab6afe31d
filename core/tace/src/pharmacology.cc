// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The pharmacology of each plan item: potency, toxicity and embolic behaviour. These constants
// define the synthetic world (docs/SYNTHETIC_WORLD.md explains each and must change with them);
// toxicity is public drug knowledge, so planners and survival models may use it too.
#include "mewm/tace/pharmacology.h"

#include <map>

namespace mewm {
namespace {

constexpr double kPermanent = 1e9;

const std::map<std::string, ItemPhysics>& Table() {
  // drug_class, potency (1/day), toxicity, ischemia (1/day), duration (days), lipiodol,
  // penetration. Potencies are small next to embolization: chemoembolization adds little to
  // bland embolization on average (docs/SYNTHETIC_WORLD.md, "Effect sizes").
  static const std::map<std::string, ItemPhysics> table = {
      {"Raltitrexed", {"antimetabolite", 0.060, 0.05, 0.0, 0.0, false, 0.0}},
      {"Epirubicin", {"anthracycline", 0.070, 0.07, 0.0, 0.0, false, 0.0}},
      {"Idarubicin", {"anthracycline", 0.090, 0.12, 0.0, 0.0, false, 0.0}},
      {"Pirarubicin", {"anthracycline", 0.070, 0.06, 0.0, 0.0, false, 0.0}},
      {"Oxaliplatin", {"platinum", 0.060, 0.06, 0.0, 0.0, false, 0.0}},
      {"Lobaplatin", {"platinum", 0.070, 0.08, 0.0, 0.0, false, 0.0}},
      {"Cisplatin", {"platinum", 0.085, 0.12, 0.0, 0.0, false, 0.0}},
      {"Nedaplatin", {"platinum", 0.060, 0.05, 0.0, 0.0, false, 0.0}},
      {"Mitomycin", {"mitomycin", 0.075, 0.09, 0.0, 0.0, false, 0.0}},
      // Lipiodol: a weak, temporary embolic that carries the drugs (cTACE emulsion).
      {"Lipiodol", {"", 0.0, 0.02, 0.05, 21.0, true, 0.0, 0.0}},
      // Gelatin sponge: strong temporary occlusion that recanalises after about two weeks, and
      // sooner in the large feeders of a big tumor.
      {"Gelatin Sponge", {"", 0.0, 0.04, 0.24, 14.0, false, 0.0, -0.015}},
      // PVA particles: permanent occlusion (collaterals still weaken it over time); too coarse
      // for the small feeders of a small tumor.
      {"PVA", {"", 0.0, 0.10, 0.16, kPermanent, false, 0.0, 0.012}},
      // Absolute alcohol: ablative for two days; reach falls with tumor size; it diffuses into
      // the margin.
      {"Absolute Alcohol", {"", 0.0, 0.12, 0.90, 2.0, false, 0.4, -0.02}},
      // NBCA glue: a liquid permanent cast that reaches part of the collateral margin; risk of
      // non-target embolization.
      {"NBCA", {"", 0.0, 0.16, 0.18, kPermanent, false, 0.2, 0.0}},
  };
  return table;
}

}  // namespace

Expected<ItemPhysics> PhysicsOf(const std::string& item) {
  const auto& table = Table();
  auto it = table.find(item);
  if (it == table.end()) {
    return MakeError(ErrorCode::kNotFound,
                     "the mechanistic model has no physics for plan item '" + item +
                         "' (it knows the 14 items of the shipped action base)");
  }
  return it->second;
}

Expected<double> PlanToxicity(const Plan& plan, char child_pugh) {
  double toxicity = 0.0;
  int anthracyclines_or_platinum = 0;
  for (const auto& item : plan.items()) {
    MEWM_TRY(const ItemPhysics p, PhysicsOf(item));
    toxicity += p.toxicity;
    if (p.drug_class == "platinum" || p.drug_class == "anthracycline") ++anthracyclines_or_platinum;
  }
  // Poor liver reserve magnifies every insult.
  const double reserve = child_pugh == 'A' ? 1.0 : child_pugh == 'B' ? 1.8 : 2.6;
  toxicity *= reserve;
  // Platinum plus anthracycline: additive marrow and organ toxicity.
  if (anthracyclines_or_platinum >= 2) toxicity += 0.06 * reserve;
  // Alcohol on a cirrhotic liver risks decompensation.
  if (plan.Contains("Absolute Alcohol") && child_pugh != 'A') toxicity += 0.25;
  return toxicity;
}

}  // namespace mewm
