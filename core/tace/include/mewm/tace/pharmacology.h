// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Pharmacology of plan items: what each drug and embolic does and how toxic a plan is. Shared by
// the mechanistic dynamics (which kills tumor with it) and by survival models and planners
// (toxicity is known drug behaviour, not hidden patient biology).
#pragma once

#include <string>

#include "mewm/core/expected.h"
#include "mewm/tace/action_base.h"

namespace mewm {

/// Physical effect of one plan item (docs/SYNTHETIC_WORLD.md, "Item physics").
struct ItemPhysics {
  std::string drug_class;    ///< empty for embolics
  double potency = 0.0;      ///< drugs: peak kill rate per day at full delivery and sensitivity 1
  double toxicity = 0.0;     ///< added to the plan's toxicity (hazard units)
  double ischemia = 0.0;     ///< embolics: ischemic kill rate per day at full dependence
  double duration_days = 0;  ///< embolics: how long the occlusion lasts (1e9 = permanent)
  bool lipiodol = false;     ///< leaves hyperdense deposits and prolongs drug retention
  /// Embolics: share of the tumor margin's collateral supply it still reaches (liquid agents
  /// penetrate further than particles), in [0, 1].
  double penetration = 0.0;
  /// Embolics: relative change of the ischemic rate per mm of lesion diameter above 35 mm
  /// (the factor is clamped to [0.1, 1.4]): particles suit large tumors, gelatin sponge and
  /// alcohol small ones.
  double size_slope = 0.0;
};

/// Physics of a canonical item name; kNotFound for an item the model has no parameters for.
Expected<ItemPhysics> PhysicsOf(const std::string& item);

/// Toxicity of a plan for a patient with the given Child-Pugh class ('A'..'C'): per-item toxicity,
/// scaled up for poor liver reserve, plus penalties for risky pairs (two cardiotoxic/nephrotoxic
/// drugs, alcohol with Child-Pugh B/C). kNotFound for an unknown item.
Expected<double> PlanToxicity(const Plan& plan, char child_pugh);

}  // namespace mewm
