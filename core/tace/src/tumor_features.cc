// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/tace/tumor_features.h"

#include <cmath>
#include <set>

namespace mewm {
namespace {

template <typename A, typename B>
Status SameLattice(const A& a, const B& b, const std::string& what) {
  if (a.extent() != b.extent() || !a.geometry().ApproxEquals(b.geometry(), 1e-4)) {
    return MakeError(ErrorCode::kMismatch, what + ": CT and mask are on different lattices (" +
                                               a.geometry().ToString() + " vs " +
                                               b.geometry().ToString() + ")");
  }
  return {};
}

}  // namespace

Expected<TumorFeatures> ComputeTumorFeatures(const Volume& ct, const LabelVolume& tumor) {
  MEWM_RETURN_IF_ERROR(SameLattice(ct, tumor, "tumor features"));
  const Eigen::Vector3d& s = ct.geometry().spacing;
  const double face_area[3] = {s[1] * s[2], s[0] * s[2], s[0] * s[1]};
  auto ct_acc = ct.grid().getConstAccessor();
  auto mask = tumor.grid().getConstAccessor();
  double n = 0, sum = 0, sum2 = 0, necrotic = 0, enhancing_sum = 0, surface_mm2 = 0;
  std::set<std::int32_t> labels;
  for (auto it = tumor.grid().cbeginValueOn(); it; ++it) {
    if (*it == 0) continue;
    // Tiles are expanded voxel by voxel; masks are voxelised, so tiles are rare and small.
    const openvdb::CoordBBox box = it.getBoundingBox();
    for (auto c = box.begin(); c; ++c) {
      const double hu = ct_acc.getValue(*c);
      labels.insert(*it);
      n += 1;
      sum += hu;
      sum2 += hu * hu;
      if (hu < kNecroticHu) {
        necrotic += 1;
      } else {
        enhancing_sum += hu;
      }
      for (int axis = 0; axis < 3; ++axis) {
        for (int sign : {-1, 1}) {
          openvdb::Coord nb = *c;
          nb[axis] += sign;
          if (mask.getValue(nb) == 0) surface_mm2 += face_area[axis];
        }
      }
    }
  }
  if (n == 0) return MakeError(ErrorCode::kInvalidArgument, "tumor features: the mask is empty");
  TumorFeatures f;
  f.volume_ml = n * s.prod() / 1000.0;
  f.mean_hu = sum / n;
  f.sd_hu = std::sqrt(std::max(0.0, sum2 / n - f.mean_hu * f.mean_hu));
  f.necrotic_fraction = necrotic / n;
  f.enhancing_hu = n > necrotic ? enhancing_sum / (n - necrotic) : f.mean_hu;
  const double volume_mm3 = n * s.prod();
  f.sphericity = std::min(1.0, std::cbrt(36.0 * M_PI * volume_mm3 * volume_mm3) / surface_mm2);
  f.lesions = int(labels.size());
  return f;
}

double EquivalentDiameterMm(double volume_ml) { return std::cbrt(6.0 * volume_ml * 1000.0 / M_PI); }

Expected<double> LipiodolCoverage(const Volume& post_ct, const LabelVolume& pre_tumor) {
  MEWM_RETURN_IF_ERROR(SameLattice(post_ct, pre_tumor, "Lipiodol coverage"));
  auto ct = post_ct.grid().getConstAccessor();
  double n = 0, covered = 0;
  for (auto it = pre_tumor.grid().cbeginValueOn(); it; ++it) {
    if (*it == 0) continue;
    const openvdb::CoordBBox box = it.getBoundingBox();
    for (auto c = box.begin(); c; ++c) {
      n += 1;
      if (ct.getValue(*c) >= kLipiodolHu) covered += 1;
    }
  }
  if (n == 0) return MakeError(ErrorCode::kInvalidArgument, "Lipiodol coverage: the mask is empty");
  return covered / n;
}

}  // namespace mewm
