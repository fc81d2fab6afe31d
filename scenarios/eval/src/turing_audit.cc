// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm turing audit` (can simple classifiers tell the classes apart?) and the simulated readers.
#include <zlib.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "mewm/core/file_util.h"
#include "mewm/core/nifti_io.h"
#include "mewm/core/seed.h"
#include "mewm/core/stats.h"
#include "mewm/eval/turing.h"

namespace mewm::scenarios {
namespace fs = std::filesystem;

namespace {

constexpr float kBodyHu = -500.0f;  ///< voxels above this are the body (not air)
constexpr int kVdbHeaderBytes = 256, kPngHeaderBytes = 33;
/// The .vdb UUID (36 ASCII characters) at this offset: a hash of the rest of the file in the files
/// mewm writes, so it is left out (it would only add noise).
constexpr int kVdbUuidBegin = 21, kVdbUuidEnd = 57;

void AppendBytes(std::vector<double>& out, const std::string& bytes, std::size_t count,
                 int skip_begin = 0, int skip_end = 0) {
  for (std::size_t i = 0; i < count; ++i) {
    if (int(i) >= skip_begin && int(i) < skip_end) continue;
    out.push_back(i < bytes.size() ? double(static_cast<unsigned char>(bytes[i])) : -1.0);
  }
}

/// The first `count` decompressed bytes of a gzip file.
Expected<std::string> GunzipHead(const std::string& path, int count) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return MakeError(ErrorCode::kIo, path + ": cannot open");
  std::string out(std::size_t(count), '\0');
  const int n = gzread(f, out.data(), unsigned(count));
  gzclose(f);
  if (n < 0) return MakeError(ErrorCode::kCorruptData, path + ": gzip stream unreadable");
  out.resize(std::size_t(n));
  return out;
}

std::vector<double> Histogram(const DenseFloat& image) {
  constexpr double kLo = -200.0, kHi = 400.0, kBin = 20.0;
  std::vector<double> h(std::size_t((kHi - kLo) / kBin), 0.0);
  double body = 0.0;
  for (float v : image.data) {
    if (v <= kBodyHu) continue;
    body += 1.0;
    const int b = int(std::floor((std::clamp(double(v), kLo, kHi - 1e-6) - kLo) / kBin));
    h[std::size_t(b)] += 1.0;
  }
  for (double& x : h) x /= std::max(1.0, body);
  return h;
}

/// Noise power spectrum: the Laplacian residual (voxel minus the mean of its 6 neighbours, inside
/// the body; 0 elsewhere), its DFT power along rows of axis `axis`, averaged over rows and binned
/// into `bands` equal frequency bands (log10).
std::vector<double> NoisePower(const DenseFloat& image, int axis, int bands) {
  const Index3& d = image.dims;
  DenseFloat residual(d, image.geometry, 0.0f);
  for (std::int64_t k = 1; k + 1 < d[2]; ++k) {
    for (std::int64_t j = 1; j + 1 < d[1]; ++j) {
      for (std::int64_t i = 1; i + 1 < d[0]; ++i) {
        const float n[6] = {image.at(i - 1, j, k), image.at(i + 1, j, k), image.at(i, j - 1, k),
                            image.at(i, j + 1, k), image.at(i, j, k - 1), image.at(i, j, k + 1)};
        const float v = image.at(i, j, k);
        if (v <= kBodyHu || *std::min_element(n, n + 6) <= kBodyHu) continue;
        residual.at(i, j, k) = v - (n[0] + n[1] + n[2] + n[3] + n[4] + n[5]) / 6.0f;
      }
    }
  }
  const std::int64_t length = d[std::size_t(axis)];
  const int half = int(length / 2);
  std::vector<double> power(std::size_t(half + 1), 0.0);
  std::vector<std::complex<double>> twiddle(static_cast<std::size_t>(length));
  for (std::int64_t t = 0; t < length; ++t) {
    twiddle[std::size_t(t)] = std::polar(1.0, -2.0 * M_PI * double(t) / double(length));
  }
  const int a1 = axis == 0 ? 1 : 0, a2 = axis == 2 ? 1 : 2;
  std::int64_t rows = 0;
  std::vector<double> row(static_cast<std::size_t>(length));
  for (std::int64_t v = 0; v < d[std::size_t(a2)]; ++v) {
    for (std::int64_t u = 0; u < d[std::size_t(a1)]; ++u) {
      for (std::int64_t t = 0; t < length; ++t) {
        std::int64_t idx[3];
        idx[axis] = t;
        idx[a1] = u;
        idx[a2] = v;
        row[std::size_t(t)] = residual.at(idx[0], idx[1], idx[2]);
      }
      ++rows;
      for (int f = 1; f <= half; ++f) {
        std::complex<double> sum = 0.0;
        for (std::int64_t t = 0; t < length; ++t) {
          sum += row[std::size_t(t)] * twiddle[std::size_t((t * f) % length)];
        }
        power[std::size_t(f)] += std::norm(sum);
      }
    }
  }
  std::vector<double> out(std::size_t(bands), 0.0);
  std::vector<int> counts(std::size_t(bands), 0);
  for (int f = 1; f <= half; ++f) {
    const int b = std::min(bands - 1, (f - 1) * bands / std::max(1, half));
    out[std::size_t(b)] += power[std::size_t(f)] / double(std::max<std::int64_t>(1, rows));
    ++counts[std::size_t(b)];
  }
  for (std::size_t b = 0; b < out.size(); ++b) {
    out[b] = std::log10(1e-6 + out[b] / std::max(1, counts[b]));
  }
  return out;
}

/// Ridge logistic regression (Newton-Raphson), features standardised on the training rows;
/// returns the logits of the test rows.
std::vector<double> FitPredict(const std::vector<std::vector<double>>& x, const std::vector<int>& y,
                               const std::vector<int>& train, const std::vector<int>& test,
                               double lambda) {
  const std::size_t p = x.front().size();
  Eigen::VectorXd mean = Eigen::VectorXd::Zero(Eigen::Index(p)),
                  sd = Eigen::VectorXd::Zero(Eigen::Index(p));
  for (int r : train) {
    for (std::size_t c = 0; c < p; ++c) mean[Eigen::Index(c)] += x[std::size_t(r)][c];
  }
  mean /= double(train.size());
  for (int r : train) {
    for (std::size_t c = 0; c < p; ++c) {
      const double v = x[std::size_t(r)][c] - mean[Eigen::Index(c)];
      sd[Eigen::Index(c)] += v * v;
    }
  }
  for (Eigen::Index c = 0; c < Eigen::Index(p); ++c) {
    sd[c] = std::sqrt(sd[c] / double(train.size()));
  }
  const auto row = [&](int r) {
    Eigen::VectorXd v(Eigen::Index(p) + 1);
    v[0] = 1.0;
    for (std::size_t c = 0; c < p; ++c) {
      const double s = sd[Eigen::Index(c)];
      v[Eigen::Index(c) + 1] = s > 1e-12 ? (x[std::size_t(r)][c] - mean[Eigen::Index(c)]) / s : 0.0;
    }
    return v;
  };
  Eigen::MatrixXd a(Eigen::Index(train.size()), Eigen::Index(p) + 1);
  Eigen::VectorXd t(Eigen::Index(train.size()));
  for (std::size_t r = 0; r < train.size(); ++r) {
    a.row(Eigen::Index(r)) = row(train[r]).transpose();
    t[Eigen::Index(r)] = y[std::size_t(train[r])];
  }
  Eigen::VectorXd w = Eigen::VectorXd::Zero(Eigen::Index(p) + 1);
  Eigen::VectorXd penalty = Eigen::VectorXd::Constant(Eigen::Index(p) + 1, lambda);
  penalty[0] = 0.0;
  for (int iter = 0; iter < 30; ++iter) {
    const Eigen::VectorXd z = a * w;
    const Eigen::VectorXd prob = z.unaryExpr([](double v) { return 1.0 / (1.0 + std::exp(-v)); });
    const Eigen::VectorXd weight =
        prob.unaryExpr([](double q) { return std::max(q * (1.0 - q), 1e-9); });
    const Eigen::VectorXd grad = a.transpose() * (prob - t) + penalty.cwiseProduct(w);
    Eigen::MatrixXd h = a.transpose() * weight.asDiagonal() * a;
    h.diagonal() += penalty;
    h.diagonal().array() += 1e-9;
    const Eigen::VectorXd step = h.ldlt().solve(grad);
    w -= step;
    if (step.norm() < 1e-8) break;
  }
  std::vector<double> out;
  for (int r : test) out.push_back(row(r).dot(w));
  return out;
}

/// Out-of-fold logits, folds by group (patient).
std::vector<double> CrossValidatedScores(const std::vector<std::vector<double>>& x,
                                         const std::vector<int>& y, const std::vector<int>& group,
                                         int folds, std::uint64_t seed) {
  std::vector<int> groups(group);
  std::sort(groups.begin(), groups.end());
  groups.erase(std::unique(groups.begin(), groups.end()), groups.end());
  Rng rng(DeriveSeed(seed, "turing-audit-folds"));
  for (std::size_t i = groups.size(); i > 1; --i) {
    std::swap(groups[i - 1], groups[std::size_t(rng.UniformInt(0, std::int64_t(i) - 1))]);
  }
  std::map<int, int> fold_of;
  for (std::size_t i = 0; i < groups.size(); ++i) fold_of[groups[i]] = int(i) % folds;
  std::vector<double> scores(x.size(), 0.0);
  for (int f = 0; f < folds; ++f) {
    std::vector<int> train, test;
    for (std::size_t r = 0; r < x.size(); ++r) {
      (fold_of[group[r]] == f ? test : train).push_back(int(r));
    }
    if (test.empty() || train.empty()) continue;
    const std::vector<double> s = FitPredict(x, y, train, test, 1.0);
    for (std::size_t i = 0; i < test.size(); ++i) scores[std::size_t(test[i])] = s[i];
  }
  return scores;
}

/// Patient-cluster percentile bootstrap of the AUC.
std::pair<double, double> AucInterval(const std::vector<double>& scores, const std::vector<int>& y,
                                      const std::vector<int>& group, std::uint64_t seed) {
  std::map<int, std::vector<std::size_t>> members;
  for (std::size_t r = 0; r < group.size(); ++r) members[group[r]].push_back(r);
  std::vector<int> ids;
  for (const auto& [g, m] : members) ids.push_back(g);
  Rng rng(DeriveSeed(seed, "turing-audit-bootstrap"));
  std::vector<double> aucs;
  for (int b = 0; b < 2000; ++b) {
    std::vector<double> s;
    std::vector<int> l;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      for (std::size_t r :
           members[ids[std::size_t(rng.UniformInt(0, std::int64_t(ids.size()) - 1))]]) {
        s.push_back(scores[r]);
        l.push_back(y[r]);
      }
    }
    const double auc = RocAuc(s, l);
    if (!std::isnan(auc)) aucs.push_back(auc);
  }
  if (aucs.empty()) return {0.0, 1.0};
  std::sort(aucs.begin(), aucs.end());
  const auto at = [&](double q) {
    return aucs[std::min(aucs.size() - 1, std::size_t(std::lround(q * double(aucs.size() - 1))))];
  };
  return {at(0.025), at(0.975)};
}

/// Drops the columns that are the same in every row.
std::vector<std::vector<double>> Varying(const std::vector<std::vector<double>>& x) {
  if (x.empty()) return x;
  std::vector<std::size_t> keep;
  for (std::size_t c = 0; c < x.front().size(); ++c) {
    for (const auto& row : x) {
      if (row[c] != x.front()[c]) {
        keep.push_back(c);
        break;
      }
    }
  }
  std::vector<std::vector<double>> out;
  for (const auto& row : x) {
    std::vector<double> r;
    for (std::size_t c : keep) r.push_back(row[c]);
    out.push_back(std::move(r));
  }
  return out;
}

AuditRow Audit(const std::string& name, const std::vector<std::vector<double>>& raw,
               const TuringFeatures& f, int folds, std::uint64_t seed) {
  AuditRow row;
  row.features = name;
  const auto x = Varying(raw);
  row.dims = x.empty() ? 0 : int(x.front().size());
  if (row.dims == 0) {
    // Nothing varies: no classifier can do better than chance.
    row.scores.assign(raw.size(), 0.0);
  } else {
    row.scores = CrossValidatedScores(x, f.label, f.group, folds, seed);
  }
  row.auc = RocAuc(row.scores, f.label);
  std::tie(row.lo, row.hi) = AucInterval(row.scores, f.label, f.group, seed);
  return row;
}

}  // namespace

Expected<TuringFeatures> ExtractTuringFeatures(const TuringManifest& manifest,
                                               const TuringKey& key) {
  TuringFeatures f;
  std::map<std::string, int> patient_index;
  for (const TuringCase& c : manifest.cases) {
    const TuringKeyCase& truth = key.cases.at(c.id);
    const int group = patient_index.emplace(truth.patient, int(patient_index.size())).first->second;
    for (const TuringVolume& v : c.volumes) {
      const bool synthetic = manifest.design == TuringDesign::kSingle ? truth.truth == "synthetic"
                                                                      : truth.truth == v.label;
      f.label.push_back(synthetic ? 1 : 0);
      f.group.push_back(group);
      const std::string nifti = (fs::path(manifest.dir) / v.nifti).string();
      const std::string vdb = (fs::path(manifest.dir) / v.vdb).string();
      const std::string png = (fs::path(manifest.dir) / v.png).string();
      std::vector<double> meta;
      std::error_code ec;
      for (const std::string& path : {nifti, vdb, png}) {
        const auto size = fs::file_size(path, ec);
        if (ec) return MakeError(ErrorCode::kNotFound, path + ": " + ec.message());
        meta.push_back(double(size));
      }
      MEWM_TRY(const std::string gz, ReadFile(nifti));
      AppendBytes(meta, gz, 10);  // gzip header: flags, mtime, extra flags, OS
      MEWM_TRY(const std::string header, GunzipHead(nifti, 352));
      AppendBytes(meta, header, 352);
      MEWM_TRY(const std::string vdb_bytes, ReadFile(vdb));
      AppendBytes(meta, vdb_bytes, kVdbHeaderBytes, kVdbUuidBegin, kVdbUuidEnd);
      MEWM_TRY(const std::string png_bytes, ReadFile(png));
      AppendBytes(meta, png_bytes, kPngHeaderBytes);
      f.metadata.push_back(std::move(meta));
      MEWM_TRY(const DenseFloat image, ReadNifti(nifti));
      f.histogram.push_back(Histogram(image));
      std::vector<double> noise = NoisePower(image, 0, 8);
      const std::vector<double> noise_j = NoisePower(image, 1, 8);
      noise.insert(noise.end(), noise_j.begin(), noise_j.end());
      f.noise.push_back(std::move(noise));
    }
  }
  return f;
}

Expected<TuringAudit> AuditTuringExport(const TuringFeatures& features, int folds,
                                        std::uint64_t seed) {
  std::vector<int> groups(features.group);
  std::sort(groups.begin(), groups.end());
  groups.erase(std::unique(groups.begin(), groups.end()), groups.end());
  if (int(groups.size()) < folds || folds < 2) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the audit needs at least " + std::to_string(std::max(folds, 2)) +
                         " patients for " + std::to_string(folds) + " folds (the export has " +
                         std::to_string(groups.size()) + ")");
  }
  TuringAudit audit;
  audit.volumes = int(features.label.size());
  audit.patients = int(groups.size());
  audit.folds = folds;
  audit.rows.push_back(
      Audit("file sizes + header bytes", features.metadata, features, folds, seed));
  audit.rows.push_back(Audit("HU histogram", features.histogram, features, folds, seed));
  audit.rows.push_back(Audit("noise power spectrum", features.noise, features, folds, seed));
  audit.metadata_leak = audit.rows.front().lo > 0.5;
  return audit;
}

std::string TuringAudit::FormatTable() const {
  std::string out = "leak audit: " + std::to_string(volumes) + " volumes of " +
                    std::to_string(patients) + " patients, ridge logistic regression, " +
                    std::to_string(folds) + " patient-grouped folds\n";
  char line[256];
  std::snprintf(line, sizeof line, "%-28s %6s %7s %18s  %s\n", "features", "dims", "AUC",
                "95% CI (patients)", "verdict");
  out += line;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const AuditRow& row = rows[r];
    const bool above = row.lo > 0.5;
    const char* verdict = r == 0 ? (above ? "LEAK: file metadata tells the class" : "at chance")
                                 : (above ? "finding: the generator differs" : "at chance");
    std::snprintf(line, sizeof line, "%-28s %6d %7.3f    [%.3f, %.3f]  %s\n", row.features.c_str(),
                  row.dims, row.auc, row.lo, row.hi, verdict);
    out += line;
  }
  return out;
}

std::string TuringAudit::ToJson() const {
  nlohmann::json j = {{"volumes", volumes},
                      {"patients", patients},
                      {"folds", folds},
                      {"classifier", "ridge logistic regression (lambda 1, standardised)"},
                      {"ci_method", "patient-cluster percentile bootstrap, 2000 resamples"},
                      {"metadata_leak", metadata_leak}};
  for (const AuditRow& row : rows) {
    j["rows"].push_back({{"features", row.features},
                         {"dims", row.dims},
                         {"auc", row.auc},
                         {"ci95", {row.lo, row.hi}}});
  }
  return j.dump(2);
}

Expected<std::map<std::string, std::vector<TuringAnswer>>> SimulateReaders(
    const TuringManifest& manifest, const TuringKey& key, const TuringFeatures& features,
    std::uint64_t seed) {
  // Five folds, or one per patient for smaller exports.
  std::vector<int> patients(features.group);
  std::sort(patients.begin(), patients.end());
  const int folds =
      std::min<int>(5, int(std::unique(patients.begin(), patients.end()) - patients.begin()));
  MEWM_TRY(const TuringAudit audit, AuditTuringExport(features, folds, seed));
  std::vector<std::vector<double>> image;
  for (std::size_t r = 0; r < features.histogram.size(); ++r) {
    std::vector<double> row = features.histogram[r];
    row.insert(row.end(), features.noise[r].begin(), features.noise[r].end());
    image.push_back(std::move(row));
  }
  const std::vector<double> machine =
      CrossValidatedScores(Varying(image), features.label, features.group, folds, seed);
  const std::vector<double>& histogram = audit.rows[1].scores;
  Rng rng(DeriveSeed(seed, "turing-simulated-readers"));
  std::map<std::string, std::vector<TuringAnswer>> out;
  const auto confidence_of = [](double margin) {
    return std::clamp(1 + int(std::abs(margin) * 2.0), 1, 5);
  };
  std::size_t volume = 0;
  for (const TuringCase& c : manifest.cases) {
    const bool pair = manifest.design == TuringDesign::kPair;
    const auto answer = [&](const std::string& reader, const std::string& text, int confidence) {
      TuringAnswer a;
      a.reader = reader;
      a.case_id = c.id;
      a.answer = text;
      a.confidence = confidence;
      a.seconds = std::round(rng.Uniform(5.0, 60.0) * 10.0) / 10.0;
      a.time = "simulated";
      a.key_sha256 = manifest.key_sha256;
      out[reader].push_back(a);
    };
    const auto by_score = [&](const std::string& reader, const std::vector<double>& s) {
      if (pair) {
        const double d = s[volume] - s[volume + 1];  // > 0: A looks more synthetic
        answer(reader, d > 0 ? "A" : "B", confidence_of(d));
      } else {
        answer(reader, s[volume] > 0 ? "synthetic" : "real", confidence_of(s[volume]));
      }
    };
    if (pair) {
      answer("guesser", rng.Bernoulli(0.5) ? "A" : "B", int(rng.UniformInt(1, 5)));
    } else {
      answer("guesser", rng.Bernoulli(0.5) ? "synthetic" : "real", int(rng.UniformInt(1, 5)));
    }
    by_score("machine", machine);
    by_score("histogram", histogram);
    volume += c.volumes.size();
  }
  (void)key;
  return out;
}

}  // namespace mewm::scenarios
