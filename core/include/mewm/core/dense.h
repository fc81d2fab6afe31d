// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// A dense voxel array with its geometry: the exchange format between sparse grids, NIfTI files,
// crops and tensors. Memory order is i fastest, then j, then k (NIfTI's order; as a tensor it is
// shaped [k][j][i] = [D][H][W]).
#pragma once

#include <cstddef>
#include <vector>

#include "mewm/core/geometry.h"

namespace mewm {

template <typename T>
struct DenseVolume {
  Index3 dims{0, 0, 0};
  Geometry geometry;
  std::vector<T> data;

  DenseVolume() = default;
  DenseVolume(const Index3& d, const Geometry& g, T fill = T{})
      : dims(d), geometry(g), data(static_cast<std::size_t>(d[0] * d[1] * d[2]), fill) {}

  std::size_t size() const { return data.size(); }
  std::size_t Offset(std::int64_t i, std::int64_t j, std::int64_t k) const {
    return static_cast<std::size_t>(i + dims[0] * (j + dims[1] * k));
  }
  bool Contains(std::int64_t i, std::int64_t j, std::int64_t k) const {
    return i >= 0 && j >= 0 && k >= 0 && i < dims[0] && j < dims[1] && k < dims[2];
  }
  T& at(std::int64_t i, std::int64_t j, std::int64_t k) { return data[Offset(i, j, k)]; }
  const T& at(std::int64_t i, std::int64_t j, std::int64_t k) const {
    return data[Offset(i, j, k)];
  }
};

using DenseFloat = DenseVolume<float>;
using DenseLabel = DenseVolume<std::int32_t>;

}  // namespace mewm
