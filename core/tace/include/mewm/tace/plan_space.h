// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The plan space the planner and the synthetic world's exhaustive search share (docs/DESIGN.md,
// "The planner"): up to H_d drugs, the protocol's mandatory items (Lipiodol for cTACE), then
// further embolics up to an embolic horizon H_e that counts the mandatory embolics too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mewm/tace/action_base.h"

namespace mewm {

/// Every valid plan within the horizons, in canonical order. kInvalidArgument for negative
/// horizons or an embolic horizon smaller than the protocol's mandatory embolics; kNotFound for an
/// unknown protocol.
Expected<std::vector<Plan>> EnumeratePlans(const ActionBase& actions, int drug_horizon,
                                           int embolic_horizon,
                                           const std::string& protocol = "cTACE");

/// How many plans EnumeratePlans can give at most, counted without listing them: the subsets of
/// drugs within the drug horizon times those of the optional embolics within the embolic horizon,
/// before the base's rules remove any (saturating at UINT64_MAX). For estimating a search's cost
/// where enumerating could itself be the cost (a large action base). 0 where EnumeratePlans fails.
std::uint64_t PlanSpaceBound(const ActionBase& actions, int drug_horizon, int embolic_horizon,
                             const std::string& protocol = "cTACE");

}  // namespace mewm
