// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Dense crops around a world point, and pasting them back; HU windowing to the [-1, 1] range
// that the networks see.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <optional>
#include <vector>

#include "mewm/core/dense.h"
#include "mewm/core/expected.h"
#include "mewm/core/volume.h"

namespace mewm {

/// A crop lattice: `size` voxels of `spacing_mm` along the source volume's axes (its direction),
/// centred on `center_world` (LPS mm). The centre lies at continuous index (size - 1) / 2.
struct CropSpec {
  Eigen::Vector3d center_world = Eigen::Vector3d::Zero();
  Index3 size{64, 64, 64};
  Eigen::Vector3d spacing_mm = Eigen::Vector3d::Constant(1.5);
};

/// Geometry of the crop lattice for a volume of geometry `source`.
Geometry CropGeometry(const Geometry& source, const CropSpec& spec);

/// Trilinear resampling of CT into the crop; outside the volume reads as background (-1000).
Expected<DenseFloat> ExtractCrop(const Volume& volume, const CropSpec& spec);
/// Nearest-neighbour resampling of labels into the crop; outside reads as 0.
Expected<DenseLabel> ExtractCrop(const LabelVolume& labels, const CropSpec& spec);

/// The voxels of a volume that pasting through one crop lattice and paste weight reaches: those
/// whose centre falls inside the lattice with a positive weight (sampled trilinearly). Pasting many
/// crops of one lattice and weight (the samples of one lesion) through a footprint made once walks
/// only these voxels, not every voxel under the lattice each time.
class PasteFootprint {
 public:
  /// `weight` lives on the crop lattice (its dims and geometry), values in [0, 1]; kInvalidArgument
  /// otherwise. With `within`, only voxels whose centre lies in that world box, min included and
  /// max excluded, so that boxes that tile space give footprints that share no voxel.
  static Expected<PasteFootprint> Make(const Geometry& volume_geometry, const DenseFloat& weight,
                                       const std::optional<WorldBox>& within = std::nullopt);

  /// Number of volume voxels with a positive weight.
  std::size_t size() const { return voxels_.size(); }

 private:
  friend struct PasteAccess;
  struct Voxel {
    openvdb::Coord ijk;
    float weight;           ///< trilinear weight at the voxel centre, > 0
    Eigen::Vector3d index;  ///< continuous crop index of the voxel centre
    std::int64_t nearest;   ///< flat crop index of the nearest lattice point
    bool label;             ///< the nearest lattice point's weight is >= 0.5
  };
  Geometry volume_geometry_;
  Geometry crop_geometry_;
  Index3 crop_dims_{0, 0, 0};
  std::vector<Voxel> voxels_;
};

/// Blends `crop` into `volume`: v = w * crop + (1 - w) * v for every voxel of the volume whose
/// centre falls inside the crop lattice, with crop and weight sampled trilinearly. `weight` has the
/// crop's dims and geometry, values in [0, 1]. Voxels that end at the background become inactive.
/// kMismatch when the weight's dims or geometry differ from the crop's.
Status PasteCrop(Volume& volume, const DenseFloat& crop, const DenseFloat& weight);
/// Adds a change: v = v + w * delta over the same voxels, so that what the change leaves alone
/// (texture, noise) stays exactly as it was. kMismatch when the dims differ.
Status AddCrop(Volume& volume, const DenseFloat& delta, const DenseFloat& weight);
/// Labels: where the (nearest) weight is >= 0.5 the crop's label replaces the volume's.
Status PasteCrop(LabelVolume& labels, const DenseLabel& crop, const DenseFloat& weight);

/// The same three through a footprint made for the volume's geometry and the crop's lattice; the
/// results are those of the calls above with the footprint's weight. kMismatch when the volume's
/// geometry or the crop's dims or geometry differ from the footprint's.
Status PasteCrop(Volume& volume, const DenseFloat& crop, const PasteFootprint& footprint);
Status AddCrop(Volume& volume, const DenseFloat& delta, const PasteFootprint& footprint);
Status PasteCrop(LabelVolume& labels, const DenseLabel& crop, const PasteFootprint& footprint);

/// Trilinear sample of a dense array at a continuous index (i, j, k), clamped to its edges.
float SampleTrilinear(const DenseFloat& dense, const Eigen::Vector3d& index);

/// An intensity window in HU. The default [-175, 600] follows MeWM.
struct HuWindow {
  float lo = -175.0f;
  float hi = 600.0f;

  /// Maps [lo, hi] linearly to [-1, 1], clamping outside.
  float ToUnit(float hu) const;
  /// Inverse of ToUnit on [-1, 1] (values outside are clamped first).
  float FromUnit(float u) const;
  Status Validate() const;
};

/// The liver window for display: level 80 HU, width 250 HU (the synthetic world's enhanced liver
/// is near 100 HU; Lipiodol deposits stay white above it). The Turing-test montages and the
/// slices the openai policy sends use it.
inline constexpr HuWindow kLiverWindow{-45.0f, 205.0f};

/// Applies the window in place.
void WindowToUnit(DenseFloat& image, const HuWindow& window);
void UnitToHu(DenseFloat& image, const HuWindow& window);

}  // namespace mewm
