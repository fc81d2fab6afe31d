// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The Turing-test reader study (`mewm turing export | audit | score | simulate-readers`):
// blinded real-versus-synthetic post-treatment CT, a leak audit, and the readers' statistics.
//
// Inputs: a cohort with follow-up (a synthetic cohort folder, whose administered post-treatment
// image is the truth, or a manifest CSV with `post` and `administered_plan` columns) and a
// dynamics model. "Real" is the true post-treatment CT of the administered plan; "synthetic" is
// the model's outcome for the same patient and plan.
//
// An export folder holds `manifest.json` (public: the case list, the key's SHA-256, the crop and
// window; nothing that depends on a case's class) and `cases/<ID>[_A|_B].{nii.gz,vdb,png}`. The
// answer key `key.json` lives outside that folder. Readers' answers are JSON lines in
// `answers/<reader>.jsonl` (see ParseAnswerLine).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "mewm/core/crop.h"
#include "mewm/core/expected.h"
#include "mewm/dynamics/dynamics_model.h"
#include "mewm/tace/action_base.h"

namespace mewm::scenarios {

/// `single`: each case is one volume, rated real or synthetic. `pair`: each case is both volumes
/// of one patient (A and B, order random), and the reader picks the synthetic one.
enum class TuringDesign { kSingle, kPair };

/// "single" | "pair" (kInvalidArgument otherwise).
Expected<TuringDesign> ParseTuringDesign(const std::string& text);
const char* TuringDesignName(TuringDesign design);

struct TuringExportOptions {
  std::string cohort;  ///< synthetic cohort folder, or a manifest .csv with post + plan columns
  std::string out;     ///< export folder (created; refused when non-empty and not an export)
  std::string key;     ///< key.json path, outside `out`
  TuringDesign design = TuringDesign::kSingle;
  int n = 40;  ///< cases: single uses n/2 patients (n even), pair uses n patients
  std::uint64_t seed = 1;
  double crop_mm = 96.0;  ///< edge of the cubic crop around the tumor, mm (at the native spacing)
  std::string backend_description;  ///< recorded in the key only (e.g. "mechanistic")
};

struct TuringExportResult {
  int cases = 0, patients = 0, volumes = 0;
  std::string key_sha256;
  double seconds = 0.0;
};

/// Writes the export. Patients are the first ones of the cohort that have a follow-up image, in
/// cohort order. Each volume is the native-lattice crop (no resampling) of `crop_mm` around the
/// largest lesion's centroid, identical for both classes of a patient, rounded to whole HU
/// (real CT is stored in integers), stored as float32 NIfTI (the patient's affine), as a .vdb
/// with blinded metadata and as a PNG montage (axial | coronal | sagittal through the crop
/// centre, kLiverWindow). Every file is stored without content-dependent compression (gzip and
/// zlib level 0, an uncompressed .vdb with every crop voxel active), so file sizes follow the
/// crop's dims and cannot tell a noisy image from a smooth one. Files are written in case-ID order
/// and their mtimes set to one value, so neither the file system's order nor time stamps follow the
/// class. kInvalidArgument for a key inside `out`, an odd n in the single design, too few patients;
/// kIo for a non-empty `out` that is not an earlier export (or holds answers); the model's errors
/// with the patient named.
Expected<TuringExportResult> ExportTuringCases(const TuringExportOptions& options,
                                               dynamics::DynamicsModel& model,
                                               const ActionBase& actions,
                                               const std::function<void(int, int)>& progress = {});

// ---- The export as read back ----

/// One volume of a case: its label ("" in the single design, "A" / "B" in pairs) and files,
/// relative to the export folder.
struct TuringVolume {
  std::string label, nifti, vdb, png;
};

struct TuringCase {
  std::string id;
  std::vector<TuringVolume> volumes;
};

struct TuringManifest {
  std::string dir;
  TuringDesign design = TuringDesign::kSingle;
  std::string key_sha256;
  std::vector<TuringCase> cases;
  const TuringCase* Find(const std::string& id) const;
};

/// Reads `dir/manifest.json`. kNotFound, kCorruptData naming the file and the field.
Expected<TuringManifest> ReadTuringManifest(const std::string& dir);

/// The answer key: per case, the patient, the plan and the truth.
struct TuringKeyCase {
  std::string id, patient, plan;
  std::string truth;  ///< single: "real" or "synthetic"; pair: the synthetic volume's label
};

struct TuringKey {
  TuringDesign design = TuringDesign::kSingle;
  std::string sha256;  ///< of the file's bytes
  std::map<std::string, TuringKeyCase> cases;
};

/// Reads a key and checks it against the manifest: the file's SHA-256 must equal the manifest's
/// key_sha256 (kMismatch naming both hashes otherwise) and it must list exactly the manifest's
/// cases (kMismatch).
Expected<TuringKey> ReadTuringKey(const std::string& path, const TuringManifest& manifest);

// ---- Answers ----

/// One reader's answer to one case.
struct TuringAnswer {
  std::string reader, case_id;
  std::string answer;    ///< single: "real" | "synthetic"; pair: "A" | "B" (the synthetic one)
  int confidence = 3;    ///< 1 (guess) .. 5 (certain)
  double seconds = 0.0;  ///< time on the case
  std::string time;      ///< UTC timestamp, ISO 8601
  std::string key_sha256;
  std::string origin;  ///< "file:line"
};

/// Whether `id` may name a reader: 1-64 characters of [A-Za-z0-9_-], not starting with '-'.
bool ValidReaderId(const std::string& id);

/// Parses and validates one answers line against the manifest: JSON object with "case" (a case of
/// the manifest), "answer" (fits the design), "confidence" (integer 1-5), "seconds" (>= 0), "time"
/// (string) and "key_sha256" (the manifest's). kParse / kInvalidArgument / kMismatch with
/// `origin` ("file:line") at the head of the message.
Expected<TuringAnswer> ParseAnswerLine(const std::string& line, const TuringManifest& manifest,
                                       const std::string& reader, const std::string& origin);

/// The JSON line of an answer (without the newline), as the server and the simulated readers
/// write it.
std::string AnswerToJsonLine(const TuringAnswer& answer);

/// Reads every `<reader>.jsonl` of `answers_dir` (sorted by reader). Errors name file and line:
/// a malformed line, an unknown case, a duplicate answer to a case, a wrong key hash, a file name
/// that is not a valid reader ID. Blank lines are skipped.
Expected<std::map<std::string, std::vector<TuringAnswer>>> ReadAnswers(
    const std::string& answers_dir, const TuringManifest& manifest);

// ---- Scores ----

struct Proportion {
  int k = 0, n = 0;
  double value = 0.0;         ///< k / n (NaN when n = 0)
  double lo = 0.0, hi = 0.0;  ///< Wilson 95%
};

struct ReaderScore {
  std::string reader;
  Proportion accuracy;
  Proportion sensitivity;   ///< single design: synthetic cases called synthetic
  Proportion specificity;   ///< single design: real cases called real
  double binomial_p = 1.0;  ///< exact two-sided binomial test of accuracy against 50%
  double auc = 0.5;  ///< AUC of the signed confidence (positive = synthetic / "A is synthetic")
  double median_seconds = 0.0;
};

struct TuringScores {
  TuringDesign design = TuringDesign::kSingle;
  int cases = 0;
  std::vector<ReaderScore> readers;
  double fleiss_kappa = 0.0;  ///< over the cases every reader answered (NaN when < 2 readers)
  int fleiss_cases = 0;
  struct Pair {
    std::string a, b;
    double kappa = 0.0;
    int cases = 0;
  };
  std::vector<Pair> cohen;  ///< every pair of readers, on the cases both answered
  Proportion pooled;        ///< all answers; lo/hi = by-reader bootstrap percentile 95% CI
  int bootstrap = 0;
  std::string FormatTable() const;
  std::string ToJson() const;
};

/// Scores the readers against the key. The bootstrap resamples readers `bootstrap` times, seeded.
TuringScores ScoreReaders(const TuringKey& key,
                          const std::map<std::string, std::vector<TuringAnswer>>& answers,
                          int bootstrap = 2000, std::uint64_t seed = 1);

/// Plots per-reader accuracy with Wilson CIs, the pooled accuracy and the 50% line to a PNG.
Status PlotReaderAccuracy(const TuringScores& scores, const std::string& png_path);

// ---- Audit ----

/// Per volume of an export: its class (1 = synthetic), its patient and three feature sets.
struct TuringFeatures {
  std::vector<int> label, group;
  std::vector<std::vector<double>> metadata, histogram, noise;
};

/// File sizes (.nii.gz, .vdb, .png), the gzip header, the NIfTI header (348 bytes, decompressed)
/// and the .vdb header bytes other than its random per-file UUID; the HU histogram of the crop
/// (-200..400 HU, 20 HU bins, fractions of body voxels); the noise power spectrum (power of the
/// Laplacian residual's DFT along i and j, 8 frequency bands each, log10).
Expected<TuringFeatures> ExtractTuringFeatures(const TuringManifest& manifest,
                                               const TuringKey& key);

struct AuditRow {
  std::string features;
  int dims = 0;  ///< features that vary across volumes
  double auc = 0.5, lo = 0.0, hi = 1.0;
  std::vector<double> scores;  ///< out-of-fold scores per volume (higher = synthetic)
};

struct TuringAudit {
  int volumes = 0, patients = 0, folds = 0;
  std::vector<AuditRow> rows;  ///< metadata, histogram, noise
  bool metadata_leak = false;  ///< metadata CI lies above 0.5
  std::string FormatTable() const;
  std::string ToJson() const;
};

/// Cross-validated ridge logistic regression on each feature set (standardised within the
/// training folds; folds by patient, so a patient's volumes are never split); AUC of the
/// out-of-fold scores with a patient-cluster bootstrap 95% CI.
Expected<TuringAudit> AuditTuringExport(const TuringFeatures& features, int folds,
                                        std::uint64_t seed);

/// Simulated readers for the docs and tests: "guesser" (coin flips, random confidence),
/// "machine" (the audit's histogram + noise classifier's out-of-fold score) and "histogram" (the
/// HU histogram classifier's). Answers per reader, in case order.
Expected<std::map<std::string, std::vector<TuringAnswer>>> SimulateReaders(
    const TuringManifest& manifest, const TuringKey& key, const TuringFeatures& features,
    std::uint64_t seed);

}  // namespace mewm::scenarios
