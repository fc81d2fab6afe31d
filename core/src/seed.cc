// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/seed.h"

#include <cmath>

namespace mewm {

std::uint64_t SplitMix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

std::uint64_t HashString(std::string_view text) {
  std::uint64_t h = 0xCBF29CE484222325ULL;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001B3ULL;
  }
  return h;
}

std::uint64_t DeriveSeed(std::uint64_t parent, std::initializer_list<std::uint64_t> labels) {
  std::uint64_t h = SplitMix64(parent);
  for (std::uint64_t label : labels) h = SplitMix64(h ^ SplitMix64(label));
  return h;
}

std::uint64_t DeriveSeed(std::uint64_t parent, std::string_view label) {
  return DeriveSeed(parent, {HashString(label)});
}

double HashUniform(std::uint64_t seed, std::uint64_t counter) {
  return static_cast<double>(SplitMix64(seed ^ SplitMix64(counter)) >> 11) * 0x1.0p-53;
}

double HashNormal(std::uint64_t seed, std::uint64_t counter) {
  // Box-Muller on two decorrelated counter draws.
  const std::uint64_t h = SplitMix64(seed ^ SplitMix64(counter));
  const double u1 = (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53;
  const double u2 = static_cast<double>(SplitMix64(h) >> 11) * 0x1.0p-53;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

double ValueNoise(std::uint64_t seed, double x, double y, double z, double scale_mm) {
  const double q[3] = {x / scale_mm, y / scale_mm, z / scale_mm};
  double t[3];
  std::uint64_t mixed[3][2];  // SplitMix64 of the lower and upper lattice coordinate per axis
  for (int a = 0; a < 3; ++a) {
    const double f = std::floor(q[a]);
    t[a] = q[a] - f;
    t[a] = t[a] * t[a] * (3.0 - 2.0 * t[a]);
    const auto c = std::uint64_t(std::int64_t(f));
    mixed[a][0] = SplitMix64(c);
    mixed[a][1] = SplitMix64(c + 1);
  }
  // Each corner's value is keyed by DeriveSeed(seed, {cx, cy, cz}); the corners share the
  // chain's prefixes, so each prefix is hashed once (21 SplitMix64 calls instead of 56).
  const std::uint64_t root = SplitMix64(seed);
  std::uint64_t by_x[2], by_xy[2][2];
  for (int bx = 0; bx < 2; ++bx) {
    by_x[bx] = SplitMix64(root ^ mixed[0][bx]);
    for (int by = 0; by < 2; ++by) by_xy[bx][by] = SplitMix64(by_x[bx] ^ mixed[1][by]);
  }
  double v = 0.0;
  for (int corner = 0; corner < 8; ++corner) {
    const int bx = corner & 1, by = (corner >> 1) & 1, bz = (corner >> 2) & 1;
    const double w = (bx ? t[0] : 1 - t[0]) * (by ? t[1] : 1 - t[1]) * (bz ? t[2] : 1 - t[2]);
    const std::uint64_t key = SplitMix64(by_xy[bx][by] ^ mixed[2][bz]);
    v += w * (2.0 * (double(key >> 11) * 0x1.0p-53) - 1.0);
  }
  return v;
}

namespace {
std::uint64_t Rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(std::uint64_t seed) {
  std::uint64_t x = seed;
  for (auto& s : s_) {
    x = SplitMix64(x);
    s = x;
  }
}

std::uint64_t Rng::NextU64() {
  const std::uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const std::uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

double Rng::Uniform() { return static_cast<double>(NextU64() >> 11) * 0x1.0p-53; }

double Rng::Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }

std::int64_t Rng::UniformInt(std::int64_t lo, std::int64_t hi) {
  const std::uint64_t span = static_cast<std::uint64_t>(hi - lo) + 1;
  if (span == 0) return static_cast<std::int64_t>(NextU64());  // full 64-bit range
  // Rejection sampling avoids modulo bias.
  const std::uint64_t limit = ~std::uint64_t{0} - (~std::uint64_t{0} % span);
  std::uint64_t r;
  do {
    r = NextU64();
  } while (r >= limit);
  return lo + static_cast<std::int64_t>(r % span);
}

double Rng::Normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u1;
  do {
    u1 = Uniform();
  } while (u1 <= 0.0);
  const double u2 = Uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double theta = 2.0 * M_PI * u2;
  spare_ = r * std::sin(theta);
  has_spare_ = true;
  return r * std::cos(theta);
}

double Rng::Normal(double mean, double stddev) { return mean + stddev * Normal(); }

bool Rng::Bernoulli(double p) { return Uniform() < p; }

}  // namespace mewm
