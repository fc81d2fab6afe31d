// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/crop.h"

#include <openvdb/tools/Interpolation.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>

namespace mewm {
namespace {

/// An affine map between two index spaces: to = linear * from + offset.
struct IndexMap {
  Eigen::Matrix3d linear;
  Eigen::Vector3d offset;
  Eigen::Vector3d operator()(const Eigen::Vector3d& from) const { return linear * from + offset; }
};

/// Maps `from`'s index space to `to`'s index space through world coordinates.
IndexMap MapBetween(const Geometry& from, const Geometry& to) {
  const Eigen::Matrix3d to_world = from.direction * from.spacing.asDiagonal();
  const Eigen::Matrix3d world_to =
      to.spacing.cwiseInverse().asDiagonal() * to.direction.transpose();
  return {world_to * to_world, world_to * (from.origin - to.origin)};
}

Status ValidateSpec(const CropSpec& spec) {
  for (int a = 0; a < 3; ++a) {
    if (spec.size[a] <= 0 || spec.size[a] > 4096) {
      return MakeError(ErrorCode::kInvalidArgument, "crop size must be in [1, 4096] per axis");
    }
    if (!(spec.spacing_mm[a] > 0.0) || !std::isfinite(spec.spacing_mm[a])) {
      return MakeError(ErrorCode::kInvalidArgument, "crop spacing must be finite and > 0 mm");
    }
  }
  if (!spec.center_world.allFinite()) {
    return MakeError(ErrorCode::kInvalidArgument, "crop centre must be finite");
  }
  return {};
}

template <typename VolumeT, typename Sampler>
DenseVolume<typename VolumeT::ValueType> Resample(const VolumeT& volume, const CropSpec& spec) {
  using ValueT = typename VolumeT::ValueType;
  DenseVolume<ValueT> crop(spec.size, CropGeometry(volume.geometry(), spec), VolumeT::Background());
  const IndexMap map = MapBetween(crop.geometry, volume.geometry());
  tbb::parallel_for(
      tbb::blocked_range<std::int64_t>(0, crop.dims[2]),
      [&](const tbb::blocked_range<std::int64_t>& range) {
        auto accessor = volume.grid().getConstAccessor();
        for (std::int64_t k = range.begin(); k != range.end(); ++k) {
          for (std::int64_t j = 0; j < crop.dims[1]; ++j) {
            for (std::int64_t i = 0; i < crop.dims[0]; ++i) {
              const Eigen::Vector3d v = map(Eigen::Vector3d(double(i), double(j), double(k)));
              crop.at(i, j, k) =
                  static_cast<ValueT>(Sampler::sample(accessor, openvdb::Vec3R(v[0], v[1], v[2])));
            }
          }
        }
      });
  return crop;
}

}  // namespace

float SampleTrilinear(const DenseFloat& dense, const Eigen::Vector3d& c) {
  std::int64_t lo[3];
  double t[3];
  for (int a = 0; a < 3; ++a) {
    const double x = std::clamp(c[a], 0.0, double(dense.dims[a] - 1));
    lo[a] = std::min<std::int64_t>(static_cast<std::int64_t>(std::floor(x)), dense.dims[a] - 1);
    t[a] = x - double(lo[a]);
  }
  const std::int64_t hi[3] = {std::min(lo[0] + 1, dense.dims[0] - 1),
                              std::min(lo[1] + 1, dense.dims[1] - 1),
                              std::min(lo[2] + 1, dense.dims[2] - 1)};
  double result = 0.0;
  for (int corner = 0; corner < 8; ++corner) {
    const std::int64_t i = (corner & 1) ? hi[0] : lo[0];
    const std::int64_t j = (corner & 2) ? hi[1] : lo[1];
    const std::int64_t k = (corner & 4) ? hi[2] : lo[2];
    const double w = ((corner & 1) ? t[0] : 1 - t[0]) * ((corner & 2) ? t[1] : 1 - t[1]) *
                     ((corner & 4) ? t[2] : 1 - t[2]);
    if (w != 0.0) result += w * double(dense.at(i, j, k));
  }
  return float(result);
}

namespace {

/// Calls fn(i, j, k, crop_index) for every volume voxel whose centre lies inside the crop lattice.
template <typename Fn>
void ForEachCoveredVoxel(const Geometry& volume_geometry, const Geometry& crop_geometry,
                         const Index3& crop_dims, Fn&& fn) {
  const IndexMap crop_to_volume = MapBetween(crop_geometry, volume_geometry);
  const IndexMap volume_to_crop = MapBetween(volume_geometry, crop_geometry);
  Eigen::Vector3d lo = Eigen::Vector3d::Constant(1e300), hi = -lo;
  for (int corner = 0; corner < 8; ++corner) {
    const Eigen::Vector3d c((corner & 1) ? double(crop_dims[0] - 1) : 0.0,
                            (corner & 2) ? double(crop_dims[1] - 1) : 0.0,
                            (corner & 4) ? double(crop_dims[2] - 1) : 0.0);
    const Eigen::Vector3d v = crop_to_volume(c);
    lo = lo.cwiseMin(v);
    hi = hi.cwiseMax(v);
  }
  constexpr double kEps = 1e-6;
  for (auto k = std::int64_t(std::ceil(lo[2] - kEps)); k <= std::int64_t(std::floor(hi[2] + kEps));
       ++k) {
    for (auto j = std::int64_t(std::ceil(lo[1] - kEps));
         j <= std::int64_t(std::floor(hi[1] + kEps)); ++j) {
      for (auto i = std::int64_t(std::ceil(lo[0] - kEps));
           i <= std::int64_t(std::floor(hi[0] + kEps)); ++i) {
        const Eigen::Vector3d c = volume_to_crop(Eigen::Vector3d(double(i), double(j), double(k)));
        bool inside = true;
        for (int a = 0; a < 3; ++a) {
          inside = inside && c[a] >= -kEps && c[a] <= double(crop_dims[a] - 1) + kEps;
        }
        if (inside) fn(i, j, k, c);
      }
    }
  }
}

template <typename T>
Status CheckDenseData(const DenseVolume<T>& dense, const char* what) {
  if (dense.data.size() !=
          static_cast<std::size_t>(dense.dims[0] * dense.dims[1] * dense.dims[2]) ||
      dense.data.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string(what) + " data size does not match its dims");
  }
  return dense.geometry.Validate();
}

}  // namespace

Geometry CropGeometry(const Geometry& source, const CropSpec& spec) {
  Geometry g;
  g.direction = source.direction;
  g.spacing = spec.spacing_mm;
  const Eigen::Vector3d half((spec.size[0] - 1) / 2.0, (spec.size[1] - 1) / 2.0,
                             (spec.size[2] - 1) / 2.0);
  g.origin = spec.center_world - g.direction * g.spacing.cwiseProduct(half);
  return g;
}

Expected<DenseFloat> ExtractCrop(const Volume& volume, const CropSpec& spec) {
  MEWM_RETURN_IF_ERROR(ValidateSpec(spec));
  return Resample<Volume, openvdb::tools::BoxSampler>(volume, spec);
}

Expected<DenseLabel> ExtractCrop(const LabelVolume& labels, const CropSpec& spec) {
  MEWM_RETURN_IF_ERROR(ValidateSpec(spec));
  return Resample<LabelVolume, openvdb::tools::PointSampler>(labels, spec);
}

/// What the paste functions need of a footprint's private parts.
struct PasteAccess {
  /// kMismatch unless `volume` and `crop` are the footprint's volume geometry and crop lattice.
  template <typename T>
  static Status Check(const PasteFootprint& footprint, const Geometry& volume,
                      const DenseVolume<T>& crop) {
    MEWM_RETURN_IF_ERROR(CheckDenseData(crop, "crop"));
    if (crop.dims != footprint.crop_dims_ ||
        !crop.geometry.ApproxEquals(footprint.crop_geometry_)) {
      return MakeError(ErrorCode::kMismatch,
                       "the crop's lattice differs from the paste footprint's (dims or geometry)");
    }
    if (!volume.ApproxEquals(footprint.volume_geometry_)) {
      return MakeError(
          ErrorCode::kMismatch,
          "the volume's geometry differs from the one the paste footprint was made for");
    }
    return {};
  }

  /// Sets every footprint voxel to combine(old value, w, crop value), the crop sampled
  /// trilinearly; a voxel that ends at the background goes inactive.
  template <typename Fn>
  static Status Combine(Volume& volume, const DenseFloat& crop, const PasteFootprint& footprint,
                        Fn combine) {
    MEWM_RETURN_IF_ERROR(Check(footprint, volume.geometry(), crop));
    for (float v : crop.data) {
      if (!std::isfinite(v))
        return MakeError(ErrorCode::kInvalidArgument, "crop has non-finite values");
    }
    auto accessor = volume.grid().getAccessor();
    const float background = Volume::Background();
    for (const PasteFootprint::Voxel& voxel : footprint.voxels_) {
      const float value =
          combine(accessor.getValue(voxel.ijk), voxel.weight, SampleTrilinear(crop, voxel.index));
      if (value == background) {
        accessor.setValueOff(voxel.ijk, background);
      } else {
        accessor.setValueOn(voxel.ijk, value);
      }
    }
    return {};
  }

  static Status Labels(LabelVolume& labels, const DenseLabel& crop,
                       const PasteFootprint& footprint) {
    MEWM_RETURN_IF_ERROR(Check(footprint, labels.geometry(), crop));
    auto accessor = labels.grid().getAccessor();
    for (const PasteFootprint::Voxel& voxel : footprint.voxels_) {
      if (!voxel.label) continue;
      const std::int32_t label = crop.data[std::size_t(voxel.nearest)];
      if (label == 0) {
        accessor.setValueOff(voxel.ijk, 0);
      } else {
        accessor.setValueOn(voxel.ijk, label);
      }
    }
    return {};
  }
};

Expected<PasteFootprint> PasteFootprint::Make(const Geometry& volume_geometry,
                                              const DenseFloat& weight,
                                              const std::optional<WorldBox>& within) {
  MEWM_RETURN_IF_ERROR(CheckDenseData(weight, "paste weight"));
  MEWM_RETURN_IF_ERROR(volume_geometry.Validate());
  for (float w : weight.data) {
    if (!(w >= 0.0f && w <= 1.0f)) {
      return MakeError(ErrorCode::kInvalidArgument, "paste weights must lie in [0, 1]");
    }
  }
  PasteFootprint footprint;
  footprint.volume_geometry_ = volume_geometry;
  footprint.crop_geometry_ = weight.geometry;
  footprint.crop_dims_ = weight.dims;
  ForEachCoveredVoxel(
      volume_geometry, weight.geometry, weight.dims,
      [&](std::int64_t i, std::int64_t j, std::int64_t k, const Eigen::Vector3d& c) {
        const float w = SampleTrilinear(weight, c);
        if (w <= 0.0f) return;
        if (within) {
          const Eigen::Vector3d p =
              volume_geometry.IndexToWorld(Eigen::Vector3d(double(i), double(j), double(k)));
          if ((p.array() < within->min.array()).any() || (p.array() >= within->max.array()).any()) {
            return;
          }
        }
        // Nearest lattice point, clamped: c may lie a rounding error outside the lattice.
        std::int64_t n[3];
        for (int a = 0; a < 3; ++a) {
          n[a] = std::clamp<std::int64_t>(std::llround(c[a]), 0, weight.dims[a] - 1);
        }
        const std::size_t nearest = weight.Offset(n[0], n[1], n[2]);
        // A nearest weight >= 0.5 makes the trilinear one >= 1/16, so no labelled voxel is lost.
        footprint.voxels_.push_back({openvdb::Coord{int(i), int(j), int(k)}, w, c,
                                     std::int64_t(nearest), weight.data[nearest] >= 0.5f});
      });
  return footprint;
}

namespace {

/// The weight overloads: a footprint made for this one paste.
Expected<PasteFootprint> FootprintFor(const Geometry& volume, const Index3& crop_dims,
                                      const DenseFloat& weight) {
  if (crop_dims != weight.dims) {
    return MakeError(ErrorCode::kMismatch, "paste weight dims differ from the crop's dims");
  }
  return PasteFootprint::Make(volume, weight);
}

float Blend(float old, float w, float value) { return w * value + (1.0f - w) * old; }
float Add(float old, float w, float change) { return old + w * change; }

}  // namespace

Status PasteCrop(Volume& volume, const DenseFloat& crop, const PasteFootprint& footprint) {
  return PasteAccess::Combine(volume, crop, footprint, Blend);
}

Status AddCrop(Volume& volume, const DenseFloat& delta, const PasteFootprint& footprint) {
  return PasteAccess::Combine(volume, delta, footprint, Add);
}

Status PasteCrop(LabelVolume& labels, const DenseLabel& crop, const PasteFootprint& footprint) {
  return PasteAccess::Labels(labels, crop, footprint);
}

Status PasteCrop(Volume& volume, const DenseFloat& crop, const DenseFloat& weight) {
  MEWM_TRY(const PasteFootprint footprint, FootprintFor(volume.geometry(), crop.dims, weight));
  return PasteCrop(volume, crop, footprint);
}

Status AddCrop(Volume& volume, const DenseFloat& delta, const DenseFloat& weight) {
  MEWM_TRY(const PasteFootprint footprint, FootprintFor(volume.geometry(), delta.dims, weight));
  return AddCrop(volume, delta, footprint);
}

Status PasteCrop(LabelVolume& labels, const DenseLabel& crop, const DenseFloat& weight) {
  MEWM_TRY(const PasteFootprint footprint, FootprintFor(labels.geometry(), crop.dims, weight));
  return PasteCrop(labels, crop, footprint);
}

float HuWindow::ToUnit(float hu) const {
  const float u = 2.0f * (hu - lo) / (hi - lo) - 1.0f;
  return std::clamp(u, -1.0f, 1.0f);
}

float HuWindow::FromUnit(float u) const {
  return lo + (std::clamp(u, -1.0f, 1.0f) + 1.0f) * 0.5f * (hi - lo);
}

Status HuWindow::Validate() const {
  if (!std::isfinite(lo) || !std::isfinite(hi) || !(hi > lo)) {
    return MakeError(ErrorCode::kInvalidArgument, "HU window must have finite lo < hi (got " +
                                                      std::to_string(lo) + ", " +
                                                      std::to_string(hi) + ")");
  }
  return {};
}

void WindowToUnit(DenseFloat& image, const HuWindow& window) {
  for (float& v : image.data) v = window.ToUnit(v);
}

void UnitToHu(DenseFloat& image, const HuWindow& window) {
  for (float& v : image.data) v = window.FromUnit(v);
}

}  // namespace mewm
