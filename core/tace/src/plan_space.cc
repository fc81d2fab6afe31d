// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/tace/plan_space.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <utility>

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

/// Mandatory items of `protocol` (none for ""), and how many of them are embolics.
Expected<std::pair<std::vector<std::string>, int>> Mandatory(const ActionBase& actions,
                                                             const std::string& protocol) {
  std::vector<std::string> mandatory;
  if (!protocol.empty()) {
    MEWM_TRY(mandatory, actions.MandatoryItems(protocol));
  }
  int embolics = 0;
  for (const auto& m : mandatory) {
    MEWM_TRY(const ActionItem item, actions.Find(m));
    if (item.kind == ItemKind::kEmbolic) ++embolics;
  }
  return std::make_pair(std::move(mandatory), embolics);
}

/// The embolics a plan may add to the mandatory items.
std::vector<std::string> OptionalEmbolics(const ActionBase& actions,
                                          const std::vector<std::string>& mandatory) {
  std::vector<std::string> embolics;
  for (const auto& e : actions.Embolics()) {
    if (std::find(mandatory.begin(), mandatory.end(), e) == mandatory.end()) embolics.push_back(e);
  }
  return embolics;
}

/// The number of subsets of n items with at most k elements, in floating point (a bound for
/// estimates: exact up to 2^53, and never wrapping).
double SubsetsAtMost(std::size_t n, int k) {
  double total = 0.0, choose = 1.0;  // choose = C(n, j)
  for (int j = 0; j <= k && std::size_t(j) <= n; ++j) {
    if (j > 0) choose = choose * double(n - std::size_t(j) + 1) / double(j);
    total += choose;
  }
  return total;
}

}  // namespace

std::uint64_t PlanSpaceBound(const ActionBase& actions, int drug_horizon, int embolic_horizon,
                             const std::string& protocol) {
  auto mandatory = Mandatory(actions, protocol);
  if (!mandatory || drug_horizon < 0 || embolic_horizon < mandatory->second) return 0;
  const double plans = SubsetsAtMost(actions.Drugs().size(), drug_horizon) *
                       SubsetsAtMost(OptionalEmbolics(actions, mandatory->first).size(),
                                     embolic_horizon - mandatory->second);
  constexpr double kMax = 18446744073709551615.0;  // UINT64_MAX, rounded up to 2^64
  return plans >= kMax ? std::numeric_limits<std::uint64_t>::max() : std::uint64_t(plans);
}

Expected<std::vector<Plan>> EnumeratePlans(const ActionBase& actions, int drug_horizon,
                                           int embolic_horizon, const std::string& protocol) {
  if (drug_horizon < 0 || embolic_horizon < 0) {
    return MakeError(ErrorCode::kInvalidArgument, "plan horizons must be >= 0");
  }
  MEWM_TRY(const auto mandatory_items, Mandatory(actions, protocol));
  const std::vector<std::string>& mandatory = mandatory_items.first;
  const int mandatory_embolics = mandatory_items.second;
  if (embolic_horizon < mandatory_embolics) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "embolic horizon " + std::to_string(embolic_horizon) + " is below the " +
                         std::to_string(mandatory_embolics) + " mandatory embolic(s) of " +
                         protocol);
  }
  const std::vector<std::string> embolics = OptionalEmbolics(actions, mandatory);
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
