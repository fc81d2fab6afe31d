// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/volume.h"

#include <openvdb/tools/Dense.h>

#include <cmath>
#include <limits>

namespace mewm {

openvdb::math::Transform::Ptr MakeTransform(const Geometry& geometry) {
  // OpenVDB multiplies row vectors: world = [i j k 1] * M, so M is our affine transposed.
  const Eigen::Matrix4d a = geometry.Affine();
  openvdb::math::Mat4d m;
  for (int r = 0; r < 4; ++r) {
    for (int c = 0; c < 4; ++c) m[r][c] = a(c, r);
  }
  return openvdb::math::Transform::createLinearTransform(m);
}

Expected<Geometry> GeometryFromTransform(const openvdb::math::Transform& transform) {
  if (!transform.isLinear()) {
    return MakeError(ErrorCode::kUnsupported,
                     "grid transform is not linear (frustum maps are not supported)");
  }
  openvdb::math::Mat4d m;
  try {
    // A file's map of scale 0 or NaN makes OpenVDB throw here, where it inverts the matrix.
    m = transform.baseMap()->getAffineMap()->getMat4();
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData,
                     std::string("grid transform is unusable: ") + e.what());
  }
  Eigen::Matrix4d a;
  for (int r = 0; r < 4; ++r) {
    for (int c = 0; c < 4; ++c) a(c, r) = m[r][c];
  }
  MEWM_TRY(Geometry geometry, Geometry::FromAffine(a));
  if (Status valid = geometry.Validate(); !valid) {
    return MakeError(ErrorCode::kCorruptData, "grid transform: " + valid.error().message);
  }
  return geometry;
}

namespace {

openvdb::Coord ToCoord(std::int64_t i, std::int64_t j, std::int64_t k) {
  return openvdb::Coord(static_cast<openvdb::Int32>(i), static_cast<openvdb::Int32>(j),
                        static_cast<openvdb::Int32>(k));
}

openvdb::CoordBBox ToBBox(const IndexBox& box) {
  return openvdb::CoordBBox(ToCoord(box.min[0], box.min[1], box.min[2]),
                            ToCoord(box.max[0], box.max[1], box.max[2]));
}

template <typename ValueT>
bool IsBackgroundValue(ValueT v, ValueT background, ValueT tolerance) {
  if constexpr (std::is_floating_point_v<ValueT>) {
    return std::abs(v - background) <= tolerance;
  } else {
    return v == background;
  }
}

}  // namespace

template <typename GridT>
typename GridVolume<GridT>::ValueType GridVolume<GridT>::Background() {
  if constexpr (std::is_floating_point_v<ValueType>) {
    return ValueType(-1000);
  } else {
    return ValueType(0);
  }
}

template <typename GridT>
GridVolume<GridT>::GridVolume(const Geometry& geometry, const Index3& extent, std::string name)
    : grid_(GridT::create(Background())), geometry_(geometry), extent_(extent) {
  grid_->setName(name);
  grid_->setTransform(MakeTransform(geometry_));
}

template <typename GridT>
GridVolume<GridT>::GridVolume(typename GridT::Ptr grid, const Geometry& geometry,
                              const Index3& extent)
    : grid_(std::move(grid)), geometry_(geometry), extent_(extent) {
  grid_->setTransform(MakeTransform(geometry_));
}

template <typename GridT>
Status GridVolume<GridT>::SetGeometry(const Geometry& geometry) {
  MEWM_RETURN_IF_ERROR(geometry.Validate());
  geometry_ = geometry;
  grid_->setTransform(MakeTransform(geometry_));
  return {};
}

template <typename GridT>
Expected<GridVolume<GridT>> GridVolume<GridT>::FromDense(const DenseVolume<ValueType>& dense,
                                                         std::string name, ValueType tolerance) {
  for (int a = 0; a < 3; ++a) {
    if (dense.dims[a] <= 0 || dense.dims[a] > std::numeric_limits<openvdb::Int32>::max() / 2) {
      return MakeError(ErrorCode::kInvalidArgument, "dense volume dims must be positive (got " +
                                                        std::to_string(dense.dims[0]) + "x" +
                                                        std::to_string(dense.dims[1]) + "x" +
                                                        std::to_string(dense.dims[2]) + ")");
    }
  }
  if (dense.data.size() !=
      static_cast<std::size_t>(dense.dims[0] * dense.dims[1] * dense.dims[2])) {
    return MakeError(ErrorCode::kInvalidArgument, "dense volume data size does not match its dims");
  }
  MEWM_RETURN_IF_ERROR(dense.geometry.Validate());
  if constexpr (std::is_floating_point_v<ValueType>) {
    for (std::size_t n = 0; n < dense.data.size(); ++n) {
      if (!std::isfinite(dense.data[n])) {
        return MakeError(
            ErrorCode::kCorruptData,
            "dense volume '" + name + "' has a non-finite value at offset " + std::to_string(n));
      }
    }
  }
  GridVolume volume(dense.geometry, dense.dims, std::move(name));
  const IndexBox box{{0, 0, 0}, {dense.dims[0] - 1, dense.dims[1] - 1, dense.dims[2] - 1}};
  // copyFromDense takes a non-const pointer but only reads through it.
  openvdb::tools::Dense<ValueType, openvdb::tools::LayoutXYZ> view(
      ToBBox(box), const_cast<ValueType*>(dense.data.data()));
  openvdb::tools::copyFromDense(view, *volume.grid_, tolerance);
  volume.grid_->pruneGrid(tolerance);
  return volume;
}

template <typename GridT>
Status GridVolume<GridT>::CopyFromDense(const IndexBox& box, const std::vector<ValueType>& values,
                                        ValueType tolerance) {
  const Index3 e = box.extent();
  if (box.empty() || values.size() != static_cast<std::size_t>(e[0] * e[1] * e[2])) {
    return MakeError(ErrorCode::kInvalidArgument, "dense block size does not match its index box");
  }
  openvdb::tools::Dense<ValueType, openvdb::tools::LayoutXYZ> view(
      ToBBox(box), const_cast<ValueType*>(values.data()));
  openvdb::tools::copyFromDense(view, *grid_, tolerance);
  return {};
}

template <typename GridT>
DenseVolume<typename GridT::ValueType> GridVolume<GridT>::ToDense(const IndexBox& box) const {
  Geometry g = geometry_;
  g.origin = geometry_.IndexToWorld(
      Eigen::Vector3d(double(box.min[0]), double(box.min[1]), double(box.min[2])));
  DenseVolume<ValueType> dense(box.extent(), g, Background());
  if (box.empty()) return dense;
  openvdb::tools::Dense<ValueType, openvdb::tools::LayoutXYZ> view(ToBBox(box), dense.data.data());
  openvdb::tools::copyToDense(*grid_, view);
  return dense;
}

template <typename GridT>
DenseVolume<typename GridT::ValueType> GridVolume<GridT>::ToDense() const {
  return ToDense(IndexBox{{0, 0, 0}, {extent_[0] - 1, extent_[1] - 1, extent_[2] - 1}});
}

template <typename GridT>
typename GridT::ValueType GridVolume<GridT>::GetValue(std::int64_t i, std::int64_t j,
                                                      std::int64_t k) const {
  return grid_->getConstAccessor().getValue(ToCoord(i, j, k));
}

template <typename GridT>
void GridVolume<GridT>::SetValue(std::int64_t i, std::int64_t j, std::int64_t k, ValueType v) {
  auto accessor = grid_->getAccessor();
  if (IsBackgroundValue(v, Background(), ValueType{})) {
    accessor.setValueOff(ToCoord(i, j, k), Background());
  } else {
    accessor.setValueOn(ToCoord(i, j, k), v);
  }
}

template <typename GridT>
IndexBox GridVolume<GridT>::ActiveBoundingBox() const {
  const openvdb::CoordBBox bbox = grid_->evalActiveVoxelBoundingBox();
  if (bbox.empty() || grid_->activeVoxelCount() == 0) return IndexBox{};
  return IndexBox{{bbox.min().x(), bbox.min().y(), bbox.min().z()},
                  {bbox.max().x(), bbox.max().y(), bbox.max().z()}};
}

template <typename GridT>
std::int64_t GridVolume<GridT>::ActiveVoxelCount() const {
  return static_cast<std::int64_t>(grid_->activeVoxelCount());
}

template <typename GridT>
VolumeStats GridVolume<GridT>::Statistics() const {
  VolumeStats stats;
  double sum = 0.0, sum_sq = 0.0;
  stats.min = std::numeric_limits<double>::infinity();
  stats.max = -std::numeric_limits<double>::infinity();
  for (auto it = grid_->cbeginValueOn(); it; ++it) {
    const double v = static_cast<double>(*it);
    const auto n = static_cast<std::int64_t>(it.getVoxelCount());
    if (std::isnan(v)) {
      stats.has_nan = true;
      continue;
    }
    stats.active_voxels += n;
    sum += v * double(n);
    sum_sq += v * v * double(n);
    stats.min = std::min(stats.min, v);
    stats.max = std::max(stats.max, v);
  }
  if (stats.active_voxels == 0) {
    stats.min = stats.max = 0.0;
    return stats;
  }
  const double count = double(stats.active_voxels);
  stats.mean = sum / count;
  stats.stddev = std::sqrt(std::max(0.0, sum_sq / count - stats.mean * stats.mean));
  return stats;
}

template <typename GridT>
GridVolume<GridT> GridVolume<GridT>::DeepCopy() const {
  return GridVolume(grid_->deepCopy(), geometry_, extent_);
}

template class GridVolume<openvdb::FloatGrid>;
template class GridVolume<openvdb::Int32Grid>;

namespace {
bool Matches(std::int32_t value, std::int32_t label) {
  return label == 0 ? value != 0 : value == label;
}
}  // namespace

std::int64_t CountLabel(const LabelVolume& labels, std::int32_t label) {
  std::int64_t count = 0;
  for (auto it = labels.grid().cbeginValueOn(); it; ++it) {
    if (Matches(*it, label)) count += static_cast<std::int64_t>(it.getVoxelCount());
  }
  return count;
}

Expected<WorldBox> LabelWorldBox(const LabelVolume& labels, std::int32_t label) {
  openvdb::CoordBBox box;
  for (auto it = labels.grid().cbeginValueOn(); it; ++it) {
    if (!Matches(*it, label)) continue;
    openvdb::CoordBBox voxels;
    it.getBoundingBox(voxels);
    box.expand(voxels);
  }
  if (box.empty()) {
    return MakeError(ErrorCode::kNotFound, "label volume '" + labels.name() + "' has no voxel " +
                                               (label == 0 ? std::string("with a non-zero label")
                                                           : "labelled " + std::to_string(label)));
  }
  WorldBox world;
  world.min = Eigen::Vector3d::Constant(std::numeric_limits<double>::infinity());
  world.max = -world.min;
  // The corners of the voxels' extents, half a voxel beyond the centres.
  for (int corner = 0; corner < 8; ++corner) {
    const Eigen::Vector3d index((corner & 1) ? box.max().x() + 0.5 : box.min().x() - 0.5,
                                (corner & 2) ? box.max().y() + 0.5 : box.min().y() - 0.5,
                                (corner & 4) ? box.max().z() + 0.5 : box.min().z() - 0.5);
    const Eigen::Vector3d w = labels.geometry().IndexToWorld(index);
    world.min = world.min.cwiseMin(w);
    world.max = world.max.cwiseMax(w);
  }
  return world;
}

}  // namespace mewm
