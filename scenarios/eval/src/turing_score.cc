// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm turing score`: readers' answers against the key.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "method_scores.h"
#include "mewm/core/file_util.h"
#include "mewm/core/raster.h"
#include "mewm/core/seed.h"
#include "mewm/core/stats.h"
#include "mewm/eval/turing.h"
#include "study_json.h"

namespace mewm::scenarios {
namespace fs = std::filesystem;

namespace {

/// The largest answers file read (a reader answers a few hundred cases; a line is ~200 bytes).
constexpr std::uint64_t kMaxAnswersBytes = 16u << 20;
constexpr double kMaxAnswerSeconds = 86400.0;

Proportion MakeProportion(int k, int n) {
  Proportion p;
  p.k = k;
  p.n = n;
  p.value = n > 0 ? double(k) / double(n) : std::nan("");
  std::tie(p.lo, p.hi) = WilsonInterval(k, n);
  return p;
}

nlohmann::json ProportionJson(const Proportion& p) {
  return {{"k", p.k}, {"n", p.n}, {"value", NumberOrNull(p.value)}, {"ci95", {p.lo, p.hi}}};
}

std::string FormatProportion(const Proportion& p) {
  if (p.n == 0) return "-";
  char text[64];
  std::snprintf(text, sizeof text, "%.3f [%.3f, %.3f]", p.value, p.lo, p.hi);
  return text;
}

/// Whether the answer is correct, and the category index for agreement statistics.
bool Correct(const TuringAnswer& a, const TuringKeyCase& truth) { return a.answer == truth.truth; }
int Category(const TuringAnswer& a) { return a.answer == "synthetic" || a.answer == "A" ? 1 : 0; }

}  // namespace

bool ValidReaderId(const std::string& id) {
  if (id.empty() || id.size() > 64 || id.front() == '-') return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

Expected<TuringAnswer> ParseAnswerLine(const std::string& line, const TuringManifest& manifest,
                                       const std::string& reader, const std::string& origin) {
  const nlohmann::json j = ParseStudyJson(line);
  if (!j.is_object()) {
    return MakeError(ErrorCode::kParse, origin + ": not a JSON object");
  }
  // A line names its reader, and it must be the reader whose file holds it (a line of
  // "mallory" in r.jsonl was counted as r's).
  if (const auto it = j.find("reader"); it != j.end() && (!it->is_string() || *it != reader)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     origin + ": the answer's reader " + it->dump() + " is not '" + reader + "'");
  }
  const auto field = [&](const char* name, nlohmann::json::value_t type) -> const nlohmann::json* {
    const auto it = j.find(name);
    if (it == j.end()) return nullptr;
    const bool number = type == nlohmann::json::value_t::number_float;
    if (number ? !it->is_number() : it->type() != type) return nullptr;
    return &*it;
  };
  using V = nlohmann::json::value_t;
  TuringAnswer a;
  a.reader = reader;
  a.origin = origin;
  const nlohmann::json* c = field("case", V::string);
  const nlohmann::json* ans = field("answer", V::string);
  const nlohmann::json* conf = field("confidence", V::number_float);
  const nlohmann::json* secs = field("seconds", V::number_float);
  const nlohmann::json* time = field("time", V::string);
  const nlohmann::json* hash = field("key_sha256", V::string);
  if (c == nullptr || ans == nullptr || conf == nullptr || secs == nullptr || time == nullptr ||
      hash == nullptr) {
    return MakeError(ErrorCode::kInvalidArgument,
                     origin +
                         ": an answer needs \"case\" (string), \"answer\" (string), "
                         "\"confidence\" (1-5), \"seconds\" (number), \"time\" (string) and "
                         "\"key_sha256\" (string)");
  }
  a.case_id = c->get<std::string>();
  a.answer = ans->get<std::string>();
  a.time = time->get<std::string>();
  a.key_sha256 = hash->get<std::string>();
  a.seconds = secs->get<double>();
  const double confidence = conf->get<double>();
  if (manifest.Find(a.case_id) == nullptr) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        origin + ": unknown case '" + a.case_id + "' (not in " + manifest.dir + "/manifest.json)");
  }
  const bool pair = manifest.design == TuringDesign::kPair;
  if (pair ? (a.answer != "A" && a.answer != "B")
           : (a.answer != "real" && a.answer != "synthetic")) {
    return MakeError(ErrorCode::kInvalidArgument,
                     origin + ": answer '" + a.answer + "' (expected " +
                         (pair ? "A or B, the synthetic one" : "real or synthetic") + ")");
  }
  if (confidence != std::floor(confidence) || confidence < 1 || confidence > 5) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        origin + ": confidence must be an integer from 1 to 5 (got " + conf->dump() + ")");
  }
  a.confidence = int(confidence);
  // A case read for over a day is not a reading time (1e308 was stored and printed).
  if (!(a.seconds >= 0.0 && a.seconds <= kMaxAnswerSeconds)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     origin + ": seconds must be from 0 to 86400 (got " + secs->dump() + ")");
  }
  a.seconds += 0.0;  // -0.0 reads as 0
  if (a.key_sha256 != manifest.key_sha256) {
    return MakeError(ErrorCode::kMismatch, origin + ": key_sha256 " + a.key_sha256 +
                                               " is not the export's " + manifest.key_sha256 +
                                               " (an answer to another study)");
  }
  return a;
}

std::string AnswerToJsonLine(const TuringAnswer& a) {
  return nlohmann::json{{"reader", a.reader},         {"case", a.case_id},    {"answer", a.answer},
                        {"confidence", a.confidence}, {"seconds", a.seconds}, {"time", a.time},
                        {"key_sha256", a.key_sha256}}
      .dump();
}

Expected<std::map<std::string, std::vector<TuringAnswer>>> ReadAnswers(
    const std::string& answers_dir, const TuringManifest& manifest) {
  std::error_code ec;
  if (!fs::is_directory(answers_dir, ec)) {
    return MakeError(ErrorCode::kNotFound, answers_dir + ": no such answers folder");
  }
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(answers_dir, ec)) {
    if (entry.path().extension() != ".jsonl") continue;
    if (entry.is_symlink()) {
      // The answers are the study's own files: a link could read (or, for the server, append
      // to) a file anywhere.
      return MakeError(
          ErrorCode::kInvalidArgument,
          entry.path().string() + ": a symbolic link; answers must be files of " + answers_dir);
    }
    files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  std::map<std::string, std::vector<TuringAnswer>> answers;
  for (const fs::path& file : files) {
    const std::string reader = file.stem().string();
    if (!ValidReaderId(reader)) {
      return MakeError(
          ErrorCode::kInvalidArgument,
          file.string() + ": '" + reader + "' is not a valid reader ID (1-64 of A-Z a-z 0-9 _ -)");
    }
    MEWM_TRY(const std::string text, ReadRegularFile(file.string(), kMaxAnswersBytes));
    std::istringstream in(text);
    std::string line;
    std::map<std::string, int> seen;
    std::vector<TuringAnswer>& list = answers[reader];
    for (int number = 1; std::getline(in, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string origin = file.string() + ":" + std::to_string(number);
      MEWM_TRY(TuringAnswer a, ParseAnswerLine(line, manifest, reader, origin));
      if (const auto it = seen.find(a.case_id); it != seen.end()) {
        return MakeError(ErrorCode::kInvalidArgument, origin + ": duplicate answer to case '" +
                                                          a.case_id + "' (first answered on line " +
                                                          std::to_string(it->second) + ")");
      }
      seen[a.case_id] = number;
      list.push_back(std::move(a));
    }
    if (list.empty()) answers.erase(reader);
  }
  return answers;
}

namespace {

/// Reader -> case -> answer category (1: "synthetic" or "A"), for the agreement statistics.
using ReaderCategories = std::map<std::string, std::map<std::string, int>>;

/// Scores one reader's answers: accuracy (with sensitivity and specificity in a single design),
/// binomial p, AUC and median time; records each answer's category in `categories` and the
/// reader's (correct, answered) counts in `tally`.
ReaderScore ScoreReader(const std::string& reader, const std::vector<TuringAnswer>& list,
                        const TuringKey& key, ReaderCategories& categories,
                        std::pair<int, int>& tally) {
  const bool single = key.design == TuringDesign::kSingle;
  ReaderScore r;
  r.reader = reader;
  int correct = 0, pos = 0, pos_hit = 0, neg = 0, neg_hit = 0;
  std::vector<double> scores, seconds;
  std::vector<int> positive;
  for (const TuringAnswer& a : list) {
    const auto it = key.cases.find(a.case_id);
    if (it == key.cases.end()) continue;  // ReadAnswers refuses these; callers may not
    const bool hit = Correct(a, it->second);
    correct += hit ? 1 : 0;
    const bool truth_positive = single ? it->second.truth == "synthetic" : it->second.truth == "A";
    if (truth_positive) {
      ++pos;
      pos_hit += hit ? 1 : 0;
    } else {
      ++neg;
      neg_hit += hit ? 1 : 0;
    }
    // Signed confidence: positive when the reader says "synthetic" (or "A is synthetic").
    scores.push_back(Category(a) == 1 ? a.confidence : -a.confidence);
    positive.push_back(truth_positive ? 1 : 0);
    seconds.push_back(a.seconds);
    categories[reader][a.case_id] = Category(a);
  }
  const int n = int(scores.size());
  r.accuracy = MakeProportion(correct, n);
  if (single) {
    r.sensitivity = MakeProportion(pos_hit, pos);
    r.specificity = MakeProportion(neg_hit, neg);
  }
  r.binomial_p = BinomialTestHalf(correct, n);
  r.auc = RocAuc(scores, positive);
  r.median_seconds = Median(seconds);
  tally = {correct, n};
  return r;
}

/// Agreement between readers into `s`: Fleiss' kappa over the cases every reader answered, and
/// Cohen's kappa per pair of readers over the cases both answered.
void ScoreAgreement(const TuringKey& key, ReaderCategories& categories, TuringScores& s) {
  s.fleiss_kappa = std::nan("");
  if (s.readers.size() < 2) return;
  std::vector<std::vector<int>> table;
  for (const auto& [id, truth] : key.cases) {
    std::vector<int> row(2, 0);
    bool all = true;
    for (const ReaderScore& r : s.readers) {
      const auto& mine = categories[r.reader];
      const auto it = mine.find(id);
      if (it == mine.end()) {
        all = false;
        break;
      }
      ++row[std::size_t(it->second)];
    }
    if (all) table.push_back(row);
  }
  s.fleiss_cases = int(table.size());
  if (!table.empty()) s.fleiss_kappa = FleissKappa(table);
  for (std::size_t a = 0; a < s.readers.size(); ++a) {
    for (std::size_t b = a + 1; b < s.readers.size(); ++b) {
      const auto& ma = categories[s.readers[a].reader];
      const auto& mb = categories[s.readers[b].reader];
      std::vector<int> va, vb;
      for (const auto& [id, cat] : ma) {
        const auto it = mb.find(id);
        if (it == mb.end()) continue;
        va.push_back(cat);
        vb.push_back(it->second);
      }
      s.cohen.push_back({s.readers[a].reader, s.readers[b].reader,
                         va.empty() ? std::nan("") : CohenKappa(va, vb), int(va.size())});
    }
  }
}

/// Pooled accuracy over all readers; its CI resamples readers (a reader's answers stay together)
/// `bootstrap` times, drawing from a stream derived from `seed`.
Proportion PooledAccuracy(const std::vector<std::pair<int, int>>& per_reader, int bootstrap,
                          std::uint64_t seed) {
  int k = 0, n = 0;
  for (const auto& [c, m] : per_reader) {
    k += c;
    n += m;
  }
  Proportion pooled = MakeProportion(k, n);
  pooled.lo = pooled.hi = std::nan("");
  if (!per_reader.empty() && bootstrap > 0) {
    Rng rng(DeriveSeed(seed, "turing-reader-bootstrap"));
    std::vector<double> values;
    for (int b = 0; b < bootstrap; ++b) {
      int bk = 0, bn = 0;
      for (std::size_t r = 0; r < per_reader.size(); ++r) {
        const auto& [c, m] =
            per_reader[std::size_t(rng.UniformInt(0, std::int64_t(per_reader.size()) - 1))];
        bk += c;
        bn += m;
      }
      if (bn > 0) values.push_back(double(bk) / double(bn));
    }
    std::sort(values.begin(), values.end());
    if (!values.empty()) {
      const auto at = [&](double q) {
        return values[std::min(values.size() - 1,
                               std::size_t(std::lround(q * double(values.size() - 1))))];
      };
      pooled.lo = at(0.025);
      pooled.hi = at(0.975);
    }
  }
  return pooled;
}

}  // namespace

TuringScores ScoreReaders(const TuringKey& key,
                          const std::map<std::string, std::vector<TuringAnswer>>& answers,
                          int bootstrap, std::uint64_t seed) {
  TuringScores s;
  s.design = key.design;
  s.cases = int(key.cases.size());
  s.bootstrap = bootstrap;
  std::vector<std::pair<int, int>> per_reader;  // (correct, answered)
  ReaderCategories categories;
  for (const auto& [reader, list] : answers) {
    std::pair<int, int> tally;
    s.readers.push_back(ScoreReader(reader, list, key, categories, tally));
    per_reader.push_back(tally);
  }
  ScoreAgreement(key, categories, s);
  s.pooled = PooledAccuracy(per_reader, bootstrap, seed);
  return s;
}

std::string TuringScores::FormatTable() const {
  std::string out = "turing test, " + std::string(TuringDesignName(design)) + " design, " +
                    std::to_string(cases) + " cases, " + std::to_string(readers.size()) +
                    " readers\n";
  char line[512];
  std::snprintf(line, sizeof line, "%-16s %6s %24s %24s %24s %10s %6s %7s\n", "reader", "n",
                "accuracy [95% CI]", "sensitivity [95% CI]", "specificity [95% CI]", "binom.p",
                "AUC", "med.s");
  out += line;
  for (const ReaderScore& r : readers) {
    std::snprintf(line, sizeof line, "%-16s %6d %24s %24s %24s %10.4g %6.3f %7.1f\n",
                  r.reader.c_str(), r.accuracy.n, FormatProportion(r.accuracy).c_str(),
                  FormatProportion(r.sensitivity).c_str(), FormatProportion(r.specificity).c_str(),
                  r.binomial_p, r.auc, r.median_seconds);
    out += line;
  }
  if (pooled.n > 0) {
    std::snprintf(line, sizeof line,
                  "pooled accuracy %.3f (%d/%d), by-reader bootstrap 95%% CI [%.3f, %.3f] (%d "
                  "resamples)\n",
                  pooled.value, pooled.k, pooled.n, pooled.lo, pooled.hi, bootstrap);
    out += line;
  }
  if (!std::isnan(fleiss_kappa)) {
    std::snprintf(line, sizeof line, "Fleiss' kappa %.3f over %d cases answered by every reader\n",
                  fleiss_kappa, fleiss_cases);
    out += line;
  }
  for (const Pair& p : cohen) {
    std::snprintf(line, sizeof line, "Cohen's kappa %s vs %s: %.3f (%d cases)\n", p.a.c_str(),
                  p.b.c_str(), p.kappa, p.cases);
    out += line;
  }
  out += "positive = synthetic" +
         std::string(design == TuringDesign::kPair ? " (pair: \"A is synthetic\")" : "") +
         "; CIs Wilson 95%; binom.p exact two-sided vs 50%; AUC of the confidence signed by "
         "the answer\n";
  return out;
}

std::string TuringScores::ToJson() const {
  nlohmann::json j = {{"design", TuringDesignName(design)}, {"cases", cases}};
  j["readers"] = nlohmann::json::array();
  for (const ReaderScore& r : readers) {
    nlohmann::json e = {{"reader", r.reader},
                        {"accuracy", ProportionJson(r.accuracy)},
                        {"binomial_p", r.binomial_p},
                        {"auc", NumberOrNull(r.auc)},
                        {"median_seconds", r.median_seconds}};
    if (design == TuringDesign::kSingle) {
      e["sensitivity"] = ProportionJson(r.sensitivity);
      e["specificity"] = ProportionJson(r.specificity);
    }
    j["readers"].push_back(e);
  }
  j["pooled"] = {{"k", pooled.k},
                 {"n", pooled.n},
                 {"accuracy", NumberOrNull(pooled.value)},
                 {"ci95", {NumberOrNull(pooled.lo), NumberOrNull(pooled.hi)}},
                 {"ci_method", "by-reader percentile bootstrap"},
                 {"resamples", bootstrap}};
  j["fleiss_kappa"] = {{"kappa", NumberOrNull(fleiss_kappa)}, {"cases", fleiss_cases}};
  j["cohen_kappa"] = nlohmann::json::array();
  for (const Pair& p : cohen) {
    j["cohen_kappa"].push_back(
        {{"a", p.a}, {"b", p.b}, {"kappa", NumberOrNull(p.kappa)}, {"cases", p.cases}});
  }
  return j.dump(2);
}

Status PlotReaderAccuracy(const TuringScores& scores, const std::string& png_path) {
  const int rows = int(scores.readers.size()) + (scores.pooled.n > 0 ? 1 : 0);
  constexpr int kLeft = 150, kRight = 30, kTop = 40, kRow = 34, kBottom = 60, kPlot = 500;
  const int width = kLeft + kPlot + kRight, height = kTop + std::max(1, rows) * kRow + kBottom;
  const Rgb white{255, 255, 255}, black{0, 0, 0}, grey{200, 200, 200}, red{200, 40, 40},
      blue{30, 70, 180};
  RgbImage image = BlankImage(width, height, white);
  const auto x_of = [&](double v) {
    return kLeft + int(std::lround(std::clamp(v, 0.0, 1.0) * kPlot));
  };
  const int y_axis = kTop + std::max(1, rows) * kRow;
  for (int t = 0; t <= 10; ++t) {
    const int x = x_of(t / 10.0);
    DrawLine(image, x, kTop, x, y_axis, grey);
    DrawLine(image, x, y_axis, x, y_axis + 5, black);
    if (t % 2 == 0) {
      const std::string label = std::to_string(t * 10);
      DrawText(image, x - TextWidth(label) / 2, y_axis + 9, label, black);
    }
  }
  DrawLine(image, kLeft, y_axis, kLeft + kPlot, y_axis, black);
  DrawLine(image, kLeft, kTop, kLeft, y_axis, black);
  DrawLine(image, x_of(0.5), kTop, x_of(0.5), y_axis, red, 2);
  DrawText(image, x_of(0.5) + 4, kTop - 12, "CHANCE 50%", red);
  const std::string x_label = "ACCURACY (%), WILSON 95% CI";
  DrawText(image, kLeft + kPlot / 2 - TextWidth(x_label, 2) / 2, y_axis + 25, x_label, black, 2);
  DrawText(image, 8, 10, "TURING TEST: READER ACCURACY", black, 2);
  const auto draw_row = [&](int row, const std::string& name, const Proportion& p,
                            const Rgb& color) {
    const int y = kTop + row * kRow + kRow / 2;
    DrawText(image, kLeft - 8 - TextWidth(name.substr(0, 22)), y - 3, name.substr(0, 22), black);
    if (p.n == 0 || std::isnan(p.lo)) return;
    DrawLine(image, x_of(p.lo), y, x_of(p.hi), y, color, 2);
    DrawLine(image, x_of(p.lo), y - 5, x_of(p.lo), y + 5, color, 2);
    DrawLine(image, x_of(p.hi), y - 5, x_of(p.hi), y + 5, color, 2);
    FillRect(image, x_of(p.value) - 4, y - 4, x_of(p.value) + 4, y + 4, color);
  };
  for (std::size_t r = 0; r < scores.readers.size(); ++r) {
    draw_row(int(r), scores.readers[r].reader, scores.readers[r].accuracy, blue);
  }
  if (scores.pooled.n > 0) {
    draw_row(int(scores.readers.size()), "POOLED (BOOTSTRAP)", scores.pooled, black);
  }
  return WritePng(png_path, image);
}

}  // namespace mewm::scenarios
