// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The pharmacology of each plan item: potency, toxicity and embolic behaviour. These constants
// define the synthetic world (docs/SYNTHETIC_WORLD.md explains each and must change with them);
// toxicity is public drug knowledge, so planners and survival models may use it too.
#include "mewm/core/pharmacology.h"

#include <map>

namespace mewm {
namespace {

constexpr double kPermanent = 1e9;

const std::map<std::string, ItemPhysics>& Table() {
  // drug_class, potency (1/day), toxicity, ischemia (1/day), duration (days), lipiodol
  static const std::map<std::string, ItemPhysics> table = {
      {"Raltitrexed", {"antimetabolite", 0.10, 0.06, 0.0, 0.0, false}},
      {"Epirubicin", {"anthracycline", 0.12, 0.08, 0.0, 0.0, false}},
      {"Idarubicin", {"anthracycline", 0.15, 0.13, 0.0, 0.0, false}},
      {"Pirarubicin", {"anthracycline", 0.12, 0.07, 0.0, 0.0, false}},
      {"Oxaliplatin", {"platinum", 0.11, 0.07, 0.0, 0.0, false}},
      {"Lobaplatin", {"platinum", 0.12, 0.09, 0.0, 0.0, false}},
      {"Cisplatin", {"platinum", 0.14, 0.13, 0.0, 0.0, false}},
      {"Nedaplatin", {"platinum", 0.11, 0.06, 0.0, 0.0, false}},
      {"Mitomycin", {"mitomycin", 0.12, 0.10, 0.0, 0.0, false}},
      // Lipiodol: a weak, temporary embolic that carries the drugs (cTACE emulsion).
      {"Lipiodol", {"", 0.0, 0.02, 0.03, 21.0, true}},
      // Gelatin sponge: temporary occlusion, recanalises after about two weeks.
      {"Gelatin Sponge", {"", 0.0, 0.03, 0.10, 14.0, false}},
      // PVA particles: permanent occlusion (collaterals still weaken it over time).
      {"PVA", {"", 0.0, 0.05, 0.08, kPermanent, false}},
      // Absolute alcohol: ablative for two days; reach falls with tumor size.
      {"Absolute Alcohol", {"", 0.0, 0.12, 0.90, 2.0, false}},
      // NBCA glue: strong permanent cast.
      {"NBCA", {"", 0.0, 0.09, 0.10, kPermanent, false}},
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
