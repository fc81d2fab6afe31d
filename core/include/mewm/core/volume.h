// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Volume (CT in Hounsfield units) and LabelVolume (integer labels): a sparse OpenVDB grid plus
// its Geometry and a declared extent [0, extent) in index space. Voxels equal to the background
// (-1000 HU air for CT, 0 for labels) are inactive, so air around the body costs nothing.
//
// The OpenVDB transform is always rebuilt from the Geometry, so the two never disagree.
#pragma once

#include <openvdb/openvdb.h>

#include <cstdint>
#include <string>

#include "mewm/core/dense.h"
#include "mewm/core/expected.h"
#include "mewm/core/geometry.h"

namespace mewm {

/// Summary statistics over the active (non-background) voxels.
struct VolumeStats {
  std::int64_t active_voxels = 0;
  double min = 0.0;
  double max = 0.0;
  double mean = 0.0;
  double stddev = 0.0;
  bool has_nan = false;
};

template <typename GridT>
class GridVolume {
 public:
  using Grid = GridT;
  using ValueType = typename GridT::ValueType;

  /// An empty (all-background) volume.
  GridVolume(const Geometry& geometry, const Index3& extent, std::string name);

  /// Wraps an existing grid; its transform is replaced by `geometry`'s.
  GridVolume(typename GridT::Ptr grid, const Geometry& geometry, const Index3& extent);

  /// The background value of this kind of volume: -1000 for CT, 0 for labels.
  static ValueType Background();

  /// Voxels within `tolerance` of the background become inactive.
  static Expected<GridVolume> FromDense(const DenseVolume<ValueType>& dense, std::string name,
                                        ValueType tolerance = ValueType{});

  /// Writes a dense block of values (i fastest) into the index box `box`, which may lie anywhere;
  /// values within `tolerance` of the background become inactive. kInvalidArgument when the value
  /// count does not match the box.
  Status CopyFromDense(const IndexBox& box, const std::vector<ValueType>& values,
                       ValueType tolerance = ValueType{});

  /// Dense copy of the declared extent (inactive voxels read as background).
  DenseVolume<ValueType> ToDense() const;
  /// Dense copy of an arbitrary index box (may reach outside the extent).
  DenseVolume<ValueType> ToDense(const IndexBox& box) const;

  const Geometry& geometry() const { return geometry_; }
  const Index3& extent() const { return extent_; }
  std::string name() const { return grid_->getName(); }
  void set_name(const std::string& name) { grid_->setName(name); }

  GridT& grid() { return *grid_; }
  const GridT& grid() const { return *grid_; }
  typename GridT::Ptr grid_ptr() const { return grid_; }

  /// Replaces the geometry and rebuilds the OpenVDB transform from it.
  Status SetGeometry(const Geometry& geometry);

  ValueType GetValue(std::int64_t i, std::int64_t j, std::int64_t k) const;
  void SetValue(std::int64_t i, std::int64_t j, std::int64_t k, ValueType v);

  /// Bounding box of the active voxels (empty box if none).
  IndexBox ActiveBoundingBox() const;
  std::int64_t ActiveVoxelCount() const;
  VolumeStats Statistics() const;

  /// Deep copy (grids are shared by pointer otherwise).
  GridVolume DeepCopy() const;

 private:
  typename GridT::Ptr grid_;
  Geometry geometry_;
  Index3 extent_{0, 0, 0};
};

using Volume = GridVolume<openvdb::FloatGrid>;
using LabelVolume = GridVolume<openvdb::Int32Grid>;

extern template class GridVolume<openvdb::FloatGrid>;
extern template class GridVolume<openvdb::Int32Grid>;

/// World-space (LPS mm) box around the voxels of `labels` equal to `label` (or any non-zero label
/// when `label` is 0), including the full voxel extents. kNotFound when no voxel has the label.
Expected<WorldBox> LabelWorldBox(const LabelVolume& labels, std::int32_t label = 0);

/// Number of voxels with the label (any non-zero when `label` is 0).
std::int64_t CountLabel(const LabelVolume& labels, std::int32_t label = 0);

/// Builds an OpenVDB linear transform equal to `geometry`'s voxel-to-world affine.
openvdb::math::Transform::Ptr MakeTransform(const Geometry& geometry);
/// Reads a Geometry back from an OpenVDB linear transform.
Expected<Geometry> GeometryFromTransform(const openvdb::math::Transform& transform);

}  // namespace mewm
