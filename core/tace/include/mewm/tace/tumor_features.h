// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Visible tumor features measured on images: the inputs of the guideline policy, the calibrated
// mechanistic model and the Cox survival model. Everything here can be measured on a real CT and
// its tumor mask; nothing reads hidden biology.
#pragma once

#include "mewm/core/expected.h"
#include "mewm/core/volume.h"

namespace mewm {

/// HU below which tumor tissue counts as necrotic (non-enhancing) on a pre-treatment CT.
inline constexpr double kNecroticHu = 40.0;
/// HU above which a post-treatment tumor voxel counts as covered by Lipiodol.
inline constexpr double kLipiodolHu = 250.0;

struct TumorFeatures {
  double volume_ml = 0.0;          ///< all tumor-mask voxels
  double mean_hu = 0.0;            ///< mean CT value inside the mask
  double sd_hu = 0.0;              ///< its standard deviation (heterogeneity)
  double enhancing_hu = 0.0;       ///< mean HU of the non-necrotic part (mean_hu when none is)
  double necrotic_fraction = 0.0;  ///< share of mask voxels below kNecroticHu
  double sphericity = 0.0;         ///< sphere surface of equal volume / voxel-face surface, (0, 1]
  int lesions = 0;                 ///< distinct non-zero labels in the mask
};

/// Features of the tumor in `tumor` (non-zero voxels) on `ct`. kMismatch when the geometries or
/// extents differ, kInvalidArgument when the mask is empty.
Expected<TumorFeatures> ComputeTumorFeatures(const Volume& ct, const LabelVolume& tumor);

/// Diameter (mm) of the sphere of `volume_ml`: a lesion's size read from its volume (the
/// guideline, the mechanistic model and the diffusion model's size input all read it this way).
double EquivalentDiameterMm(double volume_ml);

/// Share of the pre-treatment tumor voxels whose post-treatment HU is at least kLipiodolHu.
/// kMismatch for different lattices, kInvalidArgument for an empty mask.
Expected<double> LipiodolCoverage(const Volume& post_ct, const LabelVolume& pre_tumor);

}  // namespace mewm
