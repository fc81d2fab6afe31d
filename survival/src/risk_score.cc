// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include <algorithm>
#include <cmath>

#include "mewm/survival/survival_model.h"

namespace mewm::survival {

Status RiskScore::Validate() const {
  const auto bad = [](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument, "survival curve: " + why);
  };
  if (!std::isfinite(risk)) return bad("risk is not finite");
  if (times_months.size() != survival.size()) return bad("times and survival differ in length");
  for (std::size_t n = 0; n < survival.size(); ++n) {
    if (!(survival[n] >= 0.0 && survival[n] <= 1.0)) return bad("S(t) outside [0, 1]");
    if (!std::isfinite(times_months[n]) || times_months[n] < 0.0) return bad("negative time");
    if (n > 0 && !(times_months[n] > times_months[n - 1])) return bad("times not increasing");
    if (n > 0 && survival[n] > survival[n - 1]) return bad("S(t) increases");
  }
  return {};
}

Expected<double> RiskScore::SurvivalAt(double months) const {
  MEWM_RETURN_IF_ERROR(Validate());
  return SurvivalAtUnchecked(months);
}

double RiskScore::SurvivalAtUnchecked(double months) const {
  const auto it = std::upper_bound(times_months.begin(), times_months.end(), months);
  if (it == times_months.begin()) return 1.0;
  return survival[std::size_t(it - times_months.begin()) - 1];
}

Expected<double> RiskScore::MedianMonths() const {
  MEWM_RETURN_IF_ERROR(Validate());
  for (std::size_t n = 0; n < survival.size(); ++n) {
    if (survival[n] <= 0.5) return times_months[n];
  }
  return MakeError(ErrorCode::kNotFound, "survival curve never falls to 0.5");
}

}  // namespace mewm::survival
