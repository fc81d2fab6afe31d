// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include <algorithm>

#include "mewm/policy/policy_model.h"

namespace mewm::policy {

Expected<Proposal> CanonicalizeProposal(const Proposal& proposal, const ActionBase& actions) {
  Proposal out = proposal;
  out.drugs.clear();
  out.embolics.clear();
  const auto take = [&](const std::vector<std::string>& names, ItemKind kind,
                        std::vector<std::string>& into) -> Status {
    for (const auto& name : names) {
      MEWM_TRY(const ActionItem item, actions.Find(name));
      if (item.kind != kind) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "proposal lists '" + item.name + "' as " +
                             (kind == ItemKind::kDrug ? "a drug" : "an embolic") + ", but it is " +
                             (item.kind == ItemKind::kDrug ? "a drug" : "an embolic"));
      }
      if (std::find(into.begin(), into.end(), item.name) != into.end()) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "proposal lists '" + item.name + "' more than once");
      }
      into.push_back(item.name);
    }
    return {};
  };
  MEWM_RETURN_IF_ERROR(take(proposal.drugs, ItemKind::kDrug, out.drugs));
  MEWM_RETURN_IF_ERROR(take(proposal.embolics, ItemKind::kEmbolic, out.embolics));
  out.plans.clear();
  for (const RankedPlan& ranked : proposal.plans) {
    MEWM_TRY(Plan plan, actions.MakePlan(ranked.plan.items()));
    for (const RankedPlan& seen : out.plans) {
      if (seen.plan == plan) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "proposal lists plan " + plan.ToString() + " more than once");
      }
    }
    out.plans.push_back({std::move(plan), ranked.log_prob});
  }
  return out;
}

}  // namespace mewm::policy
