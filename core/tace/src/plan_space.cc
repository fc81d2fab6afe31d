// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/tace/plan_space.h"

#include <algorithm>
#include <functional>

namespace mewm {
namespace {

/// Calls fn(subset) for every subset of `items` with at most `k` elements.
void ForEachSubset(const std::vector<std::string>& items, int k,
                   const std::function<void(const std::vector<std::string>&)>& fn) {
  std::vector<std::string> current;
  std::function<void(std::size_t)> rec = [&](std::size_t start) {
    fn(current);
    if (int(current.size()) == k) return;
    for (std::size_t i = start; i < items.size(); ++i) {
      current.push_back(items[i]);
      rec(i + 1);
      current.pop_back();
    }
  };
  rec(0);
}

}  // namespace

Expected<std::vector<Plan>> EnumeratePlans(const ActionBase& actions, int drug_horizon,
                                           int embolic_horizon, const std::string& protocol) {
  if (drug_horizon < 0 || embolic_horizon < 0) {
    return MakeError(ErrorCode::kInvalidArgument, "plan horizons must be >= 0");
  }
  std::vector<std::string> mandatory;
  if (!protocol.empty()) {
    MEWM_TRY(mandatory, actions.MandatoryItems(protocol));
  }
  int mandatory_embolics = 0;
  for (const auto& m : mandatory) {
    MEWM_TRY(const ActionItem item, actions.Find(m));
    if (item.kind == ItemKind::kEmbolic) ++mandatory_embolics;
  }
  if (embolic_horizon < mandatory_embolics) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "embolic horizon " + std::to_string(embolic_horizon) + " is below the " +
                         std::to_string(mandatory_embolics) + " mandatory embolic(s) of " +
                         protocol);
  }
  std::vector<std::string> embolics;
  for (const auto& e : actions.Embolics()) {
    if (std::find(mandatory.begin(), mandatory.end(), e) == mandatory.end()) embolics.push_back(e);
  }
  std::vector<Plan> plans;
  ForEachSubset(actions.Drugs(), drug_horizon, [&](const std::vector<std::string>& drugs) {
    ForEachSubset(embolics, embolic_horizon - mandatory_embolics,
                  [&](const std::vector<std::string>& extra) {
                    std::vector<std::string> items = mandatory;
                    items.insert(items.end(), drugs.begin(), drugs.end());
                    items.insert(items.end(), extra.begin(), extra.end());
                    Plan plan(items);
                    if (actions.Violations(plan, protocol).empty()) plans.push_back(plan);
                  });
  });
  std::sort(plans.begin(), plans.end());
  plans.erase(std::unique(plans.begin(), plans.end()), plans.end());
  return plans;
}

}  // namespace mewm
