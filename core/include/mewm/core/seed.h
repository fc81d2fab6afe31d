// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Deterministic seeding. Seeds are derived by hashing (parent seed, labels...) with SplitMix64, and
// Rng draws with its own distributions (not <random>'s, whose outputs differ between standard
// libraries), so the same seed gives byte-identical results everywhere.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string_view>

namespace mewm {

/// One SplitMix64 step: a strong 64-bit mix.
std::uint64_t SplitMix64(std::uint64_t x);

/// FNV-1a 64-bit hash of a string, for turning names (patient ids, plans) into seed labels.
std::uint64_t HashString(std::string_view text);

/// Derives a child seed from a parent and a sequence of labels; order matters.
std::uint64_t DeriveSeed(std::uint64_t parent, std::initializer_list<std::uint64_t> labels);
std::uint64_t DeriveSeed(std::uint64_t parent, std::string_view label);

/// Counter-based draws: a pure function of (seed, counter), so a voxel's noise does not depend on
/// which region is rendered or in which order. Uniform in [0, 1) and standard normal.
double HashUniform(std::uint64_t seed, std::uint64_t counter);
double HashNormal(std::uint64_t seed, std::uint64_t counter);

/// Smooth value noise in [-1, 1] at point (x, y, z) mm: hashed lattice values every `scale_mm`,
/// blended with a smoothstep. A pure function of (seed, position).
double ValueNoise(std::uint64_t seed, double x, double y, double z, double scale_mm);

/// xoshiro256** generator with portable distributions.
class Rng {
 public:
  explicit Rng(std::uint64_t seed);

  std::uint64_t NextU64();
  /// Uniform in [0, 1).
  double Uniform();
  double Uniform(double lo, double hi);
  /// Uniform integer in [lo, hi] (inclusive).
  std::int64_t UniformInt(std::int64_t lo, std::int64_t hi);
  /// Standard normal (Box-Muller, cached pair).
  double Normal();
  double Normal(double mean, double stddev);
  bool Bernoulli(double p);

 private:
  std::uint64_t s_[4];
  bool has_spare_ = false;
  double spare_ = 0.0;
};

}  // namespace mewm
