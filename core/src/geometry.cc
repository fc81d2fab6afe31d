// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/geometry.h"

#include <Eigen/Dense>
#include <cmath>
#include <sstream>

namespace mewm {

Geometry Geometry::Isotropic(double spacing_mm, const Eigen::Vector3d& origin) {
  Geometry g;
  g.spacing = Eigen::Vector3d::Constant(spacing_mm);
  g.origin = origin;
  return g;
}

Expected<Geometry> Geometry::FromAffine(const Eigen::Matrix4d& affine, double tolerance) {
  if (!affine.allFinite()) {
    return MakeError(ErrorCode::kInvalidArgument, "voxel-to-world affine has non-finite entries");
  }
  Geometry g;
  const Eigen::Matrix3d linear = affine.topLeftCorner<3, 3>();
  for (int c = 0; c < 3; ++c) {
    const double norm = linear.col(c).norm();
    if (!(norm > 1e-12)) {
      return MakeError(ErrorCode::kInvalidArgument, "voxel-to-world affine is singular (axis " +
                                                        std::to_string(c) + " has zero length)");
    }
    g.spacing[c] = norm;
    g.direction.col(c) = linear.col(c) / norm;
  }
  const Eigen::Matrix3d gram = g.direction.transpose() * g.direction;
  if (!gram.isApprox(Eigen::Matrix3d::Identity(), tolerance) &&
      (gram - Eigen::Matrix3d::Identity()).cwiseAbs().maxCoeff() > tolerance) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "voxel-to-world affine has sheared (non-orthogonal) axes; not supported");
  }
  g.origin = affine.topRightCorner<3, 1>();
  return g;
}

Eigen::Matrix4d Geometry::Affine() const {
  Eigen::Matrix4d a = Eigen::Matrix4d::Identity();
  a.topLeftCorner<3, 3>() = direction * spacing.asDiagonal();
  a.topRightCorner<3, 1>() = origin;
  return a;
}

Eigen::Vector3d Geometry::IndexToWorld(const Eigen::Vector3d& index) const {
  return origin + direction * spacing.cwiseProduct(index);
}

Eigen::Vector3d Geometry::WorldToIndex(const Eigen::Vector3d& world) const {
  // direction is orthonormal, so its inverse is its transpose.
  return (direction.transpose() * (world - origin)).cwiseQuotient(spacing);
}

Status Geometry::Validate() const {
  for (int c = 0; c < 3; ++c) {
    if (!(spacing[c] >= kMinSpacingMm && spacing[c] <= kMaxSpacingMm)) {  // NaN fails too
      return MakeError(ErrorCode::kInvalidArgument,
                       "spacing must be between 0.001 and 100000 mm (got " + ToString() + ")");
    }
  }
  if (!(origin.cwiseAbs().maxCoeff() <= kMaxOriginMm)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "origin must be finite and within 1e9 mm of 0 (got " + ToString() + ")");
  }
  const Eigen::Matrix3d gram = direction.transpose() * direction;
  if (!direction.allFinite() || (gram - Eigen::Matrix3d::Identity()).cwiseAbs().maxCoeff() > 1e-4) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "direction must be an orthonormal 3x3 matrix (got " + ToString() + ")");
  }
  return {};
}

bool Geometry::ApproxEquals(const Geometry& other, double tolerance) const {
  return (spacing - other.spacing).cwiseAbs().maxCoeff() <= tolerance &&
         (origin - other.origin).cwiseAbs().maxCoeff() <= tolerance &&
         (direction - other.direction).cwiseAbs().maxCoeff() <= tolerance;
}

std::string Geometry::ToString() const {
  std::ostringstream out;
  out << "spacing " << spacing[0] << "x" << spacing[1] << "x" << spacing[2] << " mm, origin ("
      << origin[0] << ", " << origin[1] << ", " << origin[2] << ") mm, direction [";
  for (int r = 0; r < 3; ++r) {
    out << direction(r, 0) << " " << direction(r, 1) << " " << direction(r, 2)
        << (r < 2 ? "; " : "]");
  }
  return out.str();
}

}  // namespace mewm
