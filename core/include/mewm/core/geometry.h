// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Voxel geometry. World coordinates are millimetres in the LPS+ patient frame (x to the patient's
// Left, y to Posterior, z to Superior), the DICOM/ITK convention. NIfTI files use RAS+; the NIfTI
// adapter flips x and y on the way in and out (docs/ARCHITECTURE.md, "Frames").
//
//   world = origin + direction * diag(spacing) * index
//
// `index` is continuous: integer values are voxel centres.
#pragma once

#include <Eigen/Core>
#include <array>
#include <cstdint>
#include <string>

#include "mewm/core/expected.h"

namespace mewm {

/// Integer voxel coordinate or extent, (i, j, k) with i fastest in memory.
using Index3 = std::array<std::int64_t, 3>;

/// Inclusive integer index box; empty when any min > max.
struct IndexBox {
  Index3 min{0, 0, 0};
  Index3 max{-1, -1, -1};
  bool empty() const { return min[0] > max[0] || min[1] > max[1] || min[2] > max[2]; }
  Index3 extent() const { return {max[0] - min[0] + 1, max[1] - min[1] + 1, max[2] - min[2] + 1}; }
};

/// Axis-aligned box in world millimetres.
struct WorldBox {
  Eigen::Vector3d min = Eigen::Vector3d::Zero();
  Eigen::Vector3d max = Eigen::Vector3d::Zero();
};

/// Index <-> world mapping of a voxel lattice.
struct Geometry {
  Eigen::Vector3d spacing = Eigen::Vector3d::Ones();        ///< mm per voxel along i, j, k (> 0)
  Eigen::Vector3d origin = Eigen::Vector3d::Zero();         ///< world position of voxel (0,0,0), mm
  Eigen::Matrix3d direction = Eigen::Matrix3d::Identity();  ///< orthonormal; columns = axes

  /// Isotropic spacing, identity direction.
  static Geometry Isotropic(double spacing_mm, const Eigen::Vector3d& origin = {0, 0, 0});

  /// From a 4x4 voxel-to-world affine in our (LPS) frame. Errors when the linear part is singular
  /// or its axes are not orthogonal within `tolerance` (shear is not supported).
  static Expected<Geometry> FromAffine(const Eigen::Matrix4d& affine, double tolerance = 1e-4);

  /// The 4x4 voxel-to-world affine: [direction*diag(spacing) | origin].
  Eigen::Matrix4d Affine() const;

  Eigen::Vector3d IndexToWorld(const Eigen::Vector3d& index) const;
  Eigen::Vector3d WorldToIndex(const Eigen::Vector3d& world) const;

  /// kInvalidArgument when a spacing is outside [kMinSpacingMm, kMaxSpacingMm], the origin is not
  /// finite or further than kMaxOriginMm from 0 on an axis, or direction is not orthonormal.
  Status Validate() const;

  /// The voxel sizes and positions a volume may have. Wider than any scanner's (micro-CT voxels
  /// are about 0.01 mm), narrow enough that OpenVDB's transforms stay invertible: a spacing of
  /// 1e-300 mm or an origin of 1e30 mm made OpenVDB throw inside `inspect`, `convert`, `render`
  /// and `import` (exit 70) where they now refuse the file.
  static constexpr double kMinSpacingMm = 1e-3;
  static constexpr double kMaxSpacingMm = 1e5;
  static constexpr double kMaxOriginMm = 1e9;

  /// True when spacing, origin and direction agree within `tolerance`.
  bool ApproxEquals(const Geometry& other, double tolerance = 1e-5) const;

  /// "spacing 1x1x2.5 mm, origin (0, 0, 0) mm, direction [1 0 0; 0 1 0; 0 0 1]".
  std::string ToString() const;
};

}  // namespace mewm
