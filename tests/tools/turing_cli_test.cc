// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm turing ...` end to end on the real binary: one small synthetic cohort (8 patients at 3
// mm, generated once for the suite), exported with the mechanistic backend.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <tuple>

#include "../core/test_env.h"
#include "mewm/core/file_util.h"
#include "mewm/core/nifti_io.h"
#include "mewm/core/render.h"
#include "mewm/core/sha256.h"
#include "mewm/core/vdb_io.h"

// Last: <resolv.h>, which httplib includes, defines a macro `_res` that breaks Eigen's headers.
#include <httplib.h>  // NOLINT(llvm-include-order)

namespace mewm {
namespace {
namespace fs = std::filesystem;

struct Result {
  int code = -1;
  std::string output;  // stdout and stderr together
};

Result RunMewm(const std::string& args) {
  Result r;
  const std::string command = std::string(MEWM_CLI) + " " + args + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return r;
  std::array<char, 4096> buffer{};
  std::size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
    r.output.append(buffer.data(), n);
  }
  const int status = ::pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Gunzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  std::string out;
  std::array<char, 65536> buffer{};
  int n;
  while ((n = gzread(f, buffer.data(), unsigned(buffer.size()))) > 0)
    out.append(buffer.data(), std::size_t(n));
  gzclose(f);
  return out;
}

const std::string kCalibration =
    std::string(MEWM_SOURCE_DIR) + "/models/mechanistic_calibration.json";

class TuringCliTest : public testing::VdbTest {
 protected:
  static void SetUpTestSuite() {
    testing::VdbTest::SetUpTestSuite();
    root_ = new fs::path(fs::temp_directory_path() / ("mewm-turing-" + std::to_string(::getpid())));
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    cohort_ = (*root_ / "cohort").string();
    const Result r =
        RunMewm("cohort generate --n 8 --seed 11 --spacing 3 --no-nifti --quiet --out " + cohort_);
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*root_, ec);
    delete root_;
  }
  static std::string Export(const std::string& name, const std::string& design, int n,
                            Result* result = nullptr) {
    const std::string out = (*root_ / name).string();
    const std::string key = (*root_ / (name + "-key.json")).string();
    const Result r = RunMewm("turing export --cohort " + cohort_ +
                             " --dynamics-backend mechanistic --calibration " + kCalibration +
                             " --seed 5 --n " + std::to_string(n) + " --design " + design +
                             " --quiet --out " + out + " --key " + key);
    if (result != nullptr) *result = r;
    EXPECT_EQ(r.code, 0) << r.output;
    return out;
  }
  static nlohmann::json Json(const std::string& path) { return nlohmann::json::parse(Slurp(path)); }

  static fs::path* root_;
  static std::string cohort_;
};
fs::path* TuringCliTest::root_ = nullptr;
std::string TuringCliTest::cohort_;

// The one property the study rests on: within a patient, the real and the synthetic volume differ
// in their voxels and in nothing else a reader's software can see. Same file-name pattern, same
// NIfTI header bytes (dims, datatype, spacing, affine, every other field), same gzip header
// (compression level, OS, time stamp), the same .vdb grids, metadata and header (OpenVDB's random
// per-file UUID aside), the same PNG dimensions, one modification time for every file; and the
// public manifest says nothing about the class.
TEST_F(TuringCliTest, ExportedClassesDifferOnlyInPixels) {
  const std::string out = Export("single", "single", 16);
  const std::string key_path = out + "-key.json";
  const nlohmann::json manifest = Json(out + "/manifest.json");
  const nlohmann::json key = Json(key_path);
  std::set<std::string> fields;
  for (const auto& [k, v] : manifest.items()) fields.insert(k);
  EXPECT_EQ(fields,
            (std::set<std::string>{"format", "version", "design", "key_sha256", "window_hu",
                                   "crop_mm", "spacing_mm", "question", "written_by", "cases"}));
  ASSERT_EQ(manifest["cases"].size(), 16u);
  ASSERT_EQ(key["cases"].size(), 16u);
  // Case-level fields: an id and its files, nothing more.
  const std::regex name_pattern(R"(cases/T\d{3}\.(nii\.gz|vdb|png))");
  std::map<std::string, std::map<std::string, std::string>> by_patient;  // patient -> class -> id
  for (const auto& c : key["cases"]) {
    by_patient[c["patient"].get<std::string>()][c["truth"].get<std::string>()] = c["id"];
  }
  ASSERT_EQ(by_patient.size(), 8u);
  std::set<fs::file_time_type> mtimes;
  std::set<std::string> gzip_headers, png_headers;
  for (const auto& c : manifest["cases"]) {
    std::set<std::string> keys;
    for (const auto& [k, v] : c.items()) keys.insert(k);
    EXPECT_EQ(keys, (std::set<std::string>{"id", "volumes"}));
    ASSERT_EQ(c["volumes"].size(), 1u);
    const auto& v = c["volumes"][0];
    EXPECT_EQ(v["label"], "");
    for (const char* kind : {"nifti", "vdb", "png"}) {
      const std::string file = v[kind];
      EXPECT_TRUE(std::regex_match(file, name_pattern)) << file;
      EXPECT_EQ(file.substr(6, 4), c["id"].get<std::string>());
      mtimes.insert(fs::last_write_time(out + "/" + file));
    }
    gzip_headers.insert(Slurp(out + "/" + v["nifti"].get<std::string>()).substr(0, 10));
    png_headers.insert(Slurp(out + "/" + v["png"].get<std::string>()).substr(0, 16));
  }
  EXPECT_EQ(mtimes.size(), 1u) << "case files carry different modification times";
  EXPECT_EQ(gzip_headers.size(), 1u) << "gzip headers (level, OS, mtime) differ";
  EXPECT_EQ(png_headers.size(), 1u);
  int differing_patients = 0;
  for (const auto& [patient, ids] : by_patient) {
    ASSERT_EQ(ids.size(), 2u) << patient;
    const std::string real = out + "/cases/" + ids.at("real");
    const std::string synthetic = out + "/cases/" + ids.at("synthetic");
    // NIfTI: the 352 bytes before the voxels are identical; the voxels are not.
    const std::string a = Gunzip(real + ".nii.gz"), b = Gunzip(synthetic + ".nii.gz");
    ASSERT_EQ(a.size(), b.size()) << patient;
    EXPECT_EQ(a.substr(0, 352), b.substr(0, 352)) << patient;
    if (a.substr(352) != b.substr(352)) ++differing_patients;
    NiftiInfo ia, ib;
    auto da = ReadNifti(real + ".nii.gz", &ia);
    auto db = ReadNifti(synthetic + ".nii.gz", &ib);
    ASSERT_TRUE(da && db);
    EXPECT_EQ(ia.datatype, 16);  // float32
    EXPECT_TRUE(ia.affine_ras.isApprox(ib.affine_ras));
    EXPECT_EQ(da->dims, db->dims);
    // Whole HU in both classes.
    for (float x : da->data) ASSERT_EQ(x, std::round(x));
    for (float x : db->data) ASSERT_EQ(x, std::round(x));
    // .vdb: the same grids, metadata and geometry; the same header bytes apart from the UUID.
    auto va = ReadVdb(real + ".vdb");
    auto vb = ReadVdb(synthetic + ".vdb");
    ASSERT_TRUE(va && vb);
    EXPECT_EQ(va->GridNames(), (std::vector<std::string>{"ct"}));
    EXPECT_EQ(vb->GridNames(), va->GridNames());
    EXPECT_EQ(va->metadata.modality, vb->metadata.modality);
    EXPECT_EQ(va->metadata.provenance_json, vb->metadata.provenance_json);
    EXPECT_EQ(va->metadata.patient_id, ids.at("real"));  // the case ID, not the patient
    EXPECT_EQ(vb->metadata.patient_id, ids.at("synthetic"));
    EXPECT_EQ(va->scalars.at("ct").extent(), vb->scalars.at("ct").extent());
    EXPECT_TRUE(
        va->scalars.at("ct").geometry().origin.isApprox(vb->scalars.at("ct").geometry().origin));
    const std::string ha = Slurp(real + ".vdb").substr(0, 21),
                      hb = Slurp(synthetic + ".vdb").substr(0, 21);
    EXPECT_EQ(ha, hb);
    // File sizes follow the dims alone (no content-dependent compression).
    for (const char* ext : {".nii.gz", ".vdb", ".png"}) {
      EXPECT_EQ(fs::file_size(real + ext), fs::file_size(synthetic + ext)) << patient << ext;
    }
    // PNG: same size.
    auto pa = ReadPng(real + ".png");
    auto pb = ReadPng(synthetic + ".png");
    ASSERT_TRUE(pa && pb);
    EXPECT_EQ(pa->width, pb->width);
    EXPECT_EQ(pa->height, pb->height);
    EXPECT_GE(pa->width, 256);
  }
  EXPECT_GT(differing_patients, 0) << "the synthetic volumes equal the real ones";
  // The key's hash is in the manifest.
  const Result audit = RunMewm("turing audit " + out + " --key " + key_path + " --folds 4");
  EXPECT_EQ(audit.code, 0) << audit.output;
  EXPECT_NE(audit.output.find("file sizes + header bytes"), std::string::npos) << audit.output;
  EXPECT_NE(audit.output.find("noise power spectrum"), std::string::npos) << audit.output;
}

TEST_F(TuringCliTest, PairDesignHidesTheSyntheticVolumeBehindAOrB) {
  const std::string out = Export("pair", "pair", 8);
  const nlohmann::json manifest = Json(out + "/manifest.json");
  const nlohmann::json key = Json(out + "-key.json");
  ASSERT_EQ(manifest["cases"].size(), 8u);
  std::map<std::string, int> truths;
  std::set<std::string> patients;
  for (const auto& c : key["cases"]) {
    truths[c["truth"].get<std::string>()]++;
    patients.insert(c["patient"].get<std::string>());
  }
  EXPECT_EQ(patients.size(), 8u);
  EXPECT_EQ(truths["A"] + truths["B"], 8);
  for (const auto& c : manifest["cases"]) {
    ASSERT_EQ(c["volumes"].size(), 2u);
    EXPECT_EQ(c["volumes"][0]["label"], "A");
    EXPECT_EQ(c["volumes"][1]["label"], "B");
    const std::string id = c["id"];
    EXPECT_EQ(c["volumes"][0]["nifti"], "cases/" + id + "_A.nii.gz");
    EXPECT_EQ(c["volumes"][1]["vdb"], "cases/" + id + "_B.vdb");
  }
}

// A study's manifest and key are files a user may hand over: a damaged one is refused with exit 1,
// naming the problem ("format": 5 exited 70; a manifest could name ../key.json for the server to
// serve; duplicate cases and an invalid truth were accepted; 16 MiB of '[' took 1.4 GB).
TEST_F(TuringCliTest, DamagedStudyFilesAreRefusedNamingTheProblem) {
  const std::string out = Export("damaged", "single", 4);
  const std::string key_path = out + "-key.json";
  const std::string manifest_text = Slurp(out + "/manifest.json"), key_text = Slurp(key_path);
  const auto write = [](const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::trunc) << text;
  };
  const auto refused = [&](const std::string& what, const std::string& named) {
    const Result r = RunMewm("turing score " + out + " --key " + key_path);
    EXPECT_EQ(r.code, 1) << what << ": " << r.output;
    EXPECT_NE(r.output.find(named), std::string::npos) << what << ": " << r.output;
  };
  const nlohmann::json manifest = nlohmann::json::parse(manifest_text);
  nlohmann::json m = manifest;
  m["format"] = 5;
  write(out + "/manifest.json", m.dump());
  refused("a numeric format", "not a mewm turing export manifest");
  for (const std::string file : {"../damaged-key.json", "/etc/passwd", "cases/../x.png"}) {
    m = manifest;
    m["cases"][0]["volumes"][0]["png"] = file;
    write(out + "/manifest.json", m.dump());
    refused(file, "names the file '" + file + "', which is not a case file of the export");
  }
  m = manifest;
  m["cases"][1]["id"] = m["cases"][0]["id"];
  write(out + "/manifest.json", m.dump());
  refused("a duplicate case", "listed twice");
  write(out + "/manifest.json", std::string(1 << 20, '['));
  refused("deep nesting", "not a mewm turing export manifest");
  // The key: its hash must match the manifest's, so each damaged key gets a matching manifest.
  for (const auto& [field, value, named] :
       {std::tuple<std::string, std::string, std::string>{"truth", "maybe", "has truth 'maybe'"},
        {"id", "", "listed twice"}}) {
    nlohmann::json k = nlohmann::json::parse(key_text);
    k["cases"][1][field] = field == "id" ? k["cases"][0]["id"].get<std::string>() : value;
    write(key_path, k.dump());
    m = manifest;
    m["key_sha256"] = ToHex(Sha256(k.dump()));
    write(out + "/manifest.json", m.dump());
    refused(field, named);
  }
}

TEST_F(TuringCliTest, ExportRefusesAKeyInsideTheExportAndForeignFolders) {
  const std::string base = " --dynamics-backend mechanistic --calibration " + kCalibration +
                           " --n 4 --quiet --cohort " + cohort_;
  const std::string out = (*root_ / "refuse").string();
  Result r = RunMewm("turing export" + base + " --out " + out + " --key " + out + "/key.json");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("lies inside the export folder"), std::string::npos) << r.output;
  // A folder mewm did not write is not overwritten.
  fs::create_directories(out);
  std::ofstream(out + "/notes.txt") << "mine";
  r = RunMewm("turing export" + base + " --out " + out + " --key " + (*root_ / "k1.json").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("refusing to overwrite"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(out + "/notes.txt"));
  // Its own export is replaced; odd n in the single design is refused.
  const std::string again = (*root_ / "again").string();
  const std::string k2 = (*root_ / "k2.json").string();
  r = RunMewm("turing export" + base + " --out " + again + " --key " + k2);
  EXPECT_EQ(r.code, 0) << r.output;
  r = RunMewm("turing export" + base + " --out " + again + " --key " + k2);
  EXPECT_EQ(r.code, 0) << r.output;
  // But not over a file of the user's in its cases/ (the export removed cases/ whole), nor over
  // the key of another export (that study could no longer be scored): both refused, both kept.
  const std::string manifest = *ReadFile(again + "/manifest.json"), key = *ReadFile(k2);
  std::ofstream(again + "/cases/reader_notes.txt") << "mine";
  r = RunMewm("turing export" + base + " --out " + again + " --key " + k2);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("reader_notes.txt: not a case file of an export"), std::string::npos)
      << r.output;
  EXPECT_EQ(*ReadFile(again + "/cases/reader_notes.txt"), "mine");
  EXPECT_EQ(*ReadFile(again + "/manifest.json"), manifest);
  fs::remove(again + "/cases/reader_notes.txt");
  r = RunMewm("turing export" + base + " --out " + (*root_ / "third").string() + " --key " + k2);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("the answer key of another export"), std::string::npos) << r.output;
  EXPECT_EQ(*ReadFile(k2), key);
  EXPECT_FALSE(fs::exists(*root_ / "third"));
  r = RunMewm("turing export --dynamics-backend mechanistic --calibration " + kCalibration +
              " --n 3 --quiet --cohort " + cohort_ + " --out " + (*root_ / "odd").string() +
              " --key " + (*root_ / "k3.json").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("must be even"), std::string::npos) << r.output;
  // A crop of 1e5 mm allocated 4 GB before it failed (exit 70); inf exported a tiny crop.
  for (const char* crop : {"0", "1e5", "inf", "nan"}) {
    r = RunMewm("turing export --dynamics-backend mechanistic --calibration " + kCalibration +
                " --n 2 --quiet --cohort " + cohort_ + " --crop-mm " + crop + " --out " +
                (*root_ / "crop").string() + " --key " + (*root_ / "kc.json").string());
    EXPECT_EQ(r.code, 1) << crop << ": " << r.output;
    EXPECT_NE(r.output.find("--crop-mm must be > 0 and at most 1000 mm"), std::string::npos)
        << r.output;
    EXPECT_FALSE(std::filesystem::exists(*root_ / "kc.json")) << crop;
  }
  // A key that does not hash to the manifest's key_sha256 is refused by audit and score.
  std::ofstream(k2, std::ios::app) << " ";
  r = RunMewm("turing audit " + again + " --key " + k2 + " --folds 2");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("differs from the key_sha256"), std::string::npos) << r.output;
}

/// Writes one reader's answers file.
void WriteAnswers(const std::string& dir, const std::string& reader,
                  const std::vector<std::string>& lines) {
  fs::create_directories(dir);
  std::ofstream out(dir + "/" + reader + ".jsonl");
  for (const std::string& l : lines) out << l << "\n";
}

std::string Line(const std::string& c, const std::string& answer, int confidence,
                 const std::string& hash) {
  return nlohmann::json{{"case", c},
                        {"answer", answer},
                        {"confidence", confidence},
                        {"seconds", 12.5},
                        {"time", "2026-01-01T00:00:00Z"},
                        {"key_sha256", hash}}
      .dump();
}

// A reader who is always right and one who always answers "real", scored through the binary:
// the figures are those computed by hand from the counts.
TEST_F(TuringCliTest, ScoreComputesTheHandCheckedFiguresAndNamesBadLines) {
  const std::string out = Export("score", "single", 16);
  const std::string key_path = out + "-key.json";
  const nlohmann::json manifest = Json(out + "/manifest.json");
  const nlohmann::json key = Json(key_path);
  const std::string hash = manifest["key_sha256"];
  std::vector<std::string> oracle, real_only;
  for (const auto& c : key["cases"]) {
    oracle.push_back(Line(c["id"], c["truth"], 5, hash));
    real_only.push_back(Line(c["id"], "real", 1, hash));
  }
  const std::string answers = out + "/answers";
  WriteAnswers(answers, "oracle", oracle);
  WriteAnswers(answers, "lazy", real_only);
  const std::string plot = (*root_ / "accuracy.png").string();
  Result r = RunMewm("turing score " + out + " --key " + key_path + " --json --plot " + plot);
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json s = nlohmann::json::parse(r.output);
  ASSERT_EQ(s["readers"].size(), 2u);
  const auto& lazy = s["readers"][0];  // sorted by reader
  const auto& perfect = s["readers"][1];
  EXPECT_EQ(perfect["reader"], "oracle");
  EXPECT_EQ(perfect["accuracy"]["k"], 16);
  EXPECT_DOUBLE_EQ(perfect["accuracy"]["value"].get<double>(), 1.0);
  // Wilson 16/16: lower end n / (n + z^2) = 16 / 19.841459 = 0.8063918.
  EXPECT_NEAR(perfect["accuracy"]["ci95"][0].get<double>(), 0.8063918, 1e-6);
  // Exact binomial 16/16: 2 / 2^16.
  EXPECT_NEAR(perfect["binomial_p"].get<double>(), 2.0 / 65536.0, 1e-12);
  EXPECT_DOUBLE_EQ(perfect["auc"].get<double>(), 1.0);
  EXPECT_EQ(lazy["accuracy"]["k"], 8);
  EXPECT_DOUBLE_EQ(lazy["sensitivity"]["value"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(lazy["specificity"]["value"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(lazy["binomial_p"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(lazy["auc"].get<double>(), 0.5);  // one constant score
  // Cohen: the lazy reader's categories are constant, so p_e = 0.5 * 1 and p_o = 0.5: kappa 0.
  EXPECT_NEAR(s["cohen_kappa"][0]["kappa"].get<double>(), 0.0, 1e-12);
  // Pooled 24/32; Fleiss over 16 cases of 2 raters (by hand: P-bar = 0.5, p_syn = 0.25,
  // P_e = 0.625, kappa = (0.5 - 0.625) / 0.375 = -1/3).
  EXPECT_EQ(s["pooled"]["k"], 24);
  EXPECT_NEAR(s["fleiss_kappa"]["kappa"].get<double>(), -1.0 / 3.0, 1e-12);
  auto png = ReadPng(plot);
  ASSERT_TRUE(png) << png.error().message;
  EXPECT_GT(png->width, 400);

  // Bad input is named by file and line.
  const std::string bad = out + "/bad";
  const std::string first = key["cases"][0]["id"];
  const auto expect_error = [&](const std::vector<std::string>& lines, const std::string& what) {
    fs::remove_all(bad);
    WriteAnswers(bad, "r1", lines);
    const Result e = RunMewm("turing score " + out + " --key " + key_path + " --answers " + bad);
    EXPECT_EQ(e.code, 1) << e.output;
    EXPECT_NE(e.output.find(bad + "/r1.jsonl:2"), std::string::npos) << e.output;
    EXPECT_NE(e.output.find(what), std::string::npos) << e.output;
  };
  const std::string ok = Line(first, "real", 3, hash);
  expect_error({ok, Line("T999", "real", 3, hash)}, "unknown case 'T999'");
  expect_error({ok, Line(first, "synthetic", 3, hash)}, "duplicate answer to case '" + first + "'");
  expect_error({ok, Line(key["cases"][1]["id"], "real", 3, std::string(64, '0'))}, "key_sha256");
  expect_error({ok, "{not json"}, "not a JSON object");
  expect_error({ok, Line(key["cases"][1]["id"], "maybe", 3, hash)}, "answer 'maybe'");
  expect_error({ok, Line(key["cases"][1]["id"], "real", 7, hash)}, "confidence");
  nlohmann::json other_reader = nlohmann::json::parse(Line(key["cases"][1]["id"], "real", 3, hash));
  other_reader["reader"] = "mallory";
  expect_error({ok, other_reader.dump()}, "the answer's reader \"mallory\" is not 'r1'");
  // A link in the answers folder is refused (it could be any file).
  fs::remove_all(bad);
  fs::create_directories(bad);
  fs::create_symlink("/etc/passwd", bad + "/r1.jsonl");
  {
    const Result e = RunMewm("turing score " + out + " --key " + key_path + " --answers " + bad);
    EXPECT_EQ(e.code, 1) << e.output;
    EXPECT_NE(e.output.find("a symbolic link"), std::string::npos) << e.output;
  }
  // No answers at all (an empty folder, a reader's empty file) is an error, not an empty table.
  fs::remove_all(bad);
  fs::create_directories(bad);
  for (int round = 0; round < 2; ++round) {
    const Result e = RunMewm("turing score " + out + " --key " + key_path + " --answers " + bad);
    EXPECT_EQ(e.code, 1) << e.output;
    EXPECT_NE(e.output.find(bad + ": no answers to score"), std::string::npos) << e.output;
    std::ofstream(bad + "/r1.jsonl") << "\n";
  }
  // An existing report is replaced only with --force.
  r = RunMewm("turing score " + out + " --key " + key_path + " --plot " + plot);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("--plot '" + plot + "' exists"), std::string::npos) << r.output;
  r = RunMewm("turing score " + out + " --key " + key_path + " --plot " + plot + " --force");
  EXPECT_EQ(r.code, 0) << r.output;
}

// The simulated panel: the guesser stays near chance, the readers who use image statistics do
// better, and the statistics say so.
TEST_F(TuringCliTest, SimulatedReadersAreScored) {
  const std::string out = Export("panel", "single", 16);
  const std::string key_path = out + "-key.json";
  Result r = RunMewm("turing simulate-readers " + out + " --key " + key_path);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* reader : {"guesser", "machine", "histogram"}) {
    EXPECT_TRUE(fs::exists(out + "/answers/" + std::string(reader) + ".jsonl")) << reader;
  }
  // Run again, the answers there (a human reader may have chosen "guesser") are kept unless
  // --force says otherwise.
  const std::string before = Slurp(out + "/answers/guesser.jsonl");
  r = RunMewm("turing simulate-readers " + out + " --key " + key_path + " --seed 2");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("guesser.jsonl' exists"), std::string::npos) << r.output;
  EXPECT_EQ(Slurp(out + "/answers/guesser.jsonl"), before);
  r = RunMewm("turing simulate-readers " + out + " --key " + key_path + " --force");
  EXPECT_EQ(r.code, 0) << r.output;
  // With eval dynamics's machine Turing test (the 3D CNN) on the same volumes, side by side.
  r = RunMewm("turing score " + out + " --key " + key_path + " --machine --folds 4");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("machine Turing test"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Fleiss' kappa"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pooled accuracy"), std::string::npos) << r.output;
}

/// `mewm turing serve` in a child process on a free port; stopped with SIGTERM.
class ServeProcess {
 public:
  explicit ServeProcess(const std::string& args) {
    int fds[2];
    if (::pipe(fds) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], 1);
      ::close(fds[0]);
      const std::string command =
          "exec " + std::string(MEWM_CLI) + " turing serve --port 0 " + args;
      ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(fds[1]);
    // The first line names the port once the socket is bound: wait for it (30 s at most).
    std::string line;
    pollfd p{fds[0], POLLIN, 0};
    while (line.find('\n') == std::string::npos && ::poll(&p, 1, 30000) > 0) {
      char c[256];
      const ssize_t n = ::read(fds[0], c, sizeof c);
      if (n <= 0) break;
      line.append(c, std::size_t(n));
    }
    ::close(fds[0]);
    std::smatch m;
    if (std::regex_search(line, m, std::regex(R"(127\.0\.0\.1:(\d+)/)"))) port_ = std::stoi(m[1]);
    first_line_ = line;
  }
  ~ServeProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  ServeProcess(const ServeProcess&) = delete;
  ServeProcess& operator=(const ServeProcess&) = delete;
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  const std::string& first_line() const { return first_line_; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string first_line_;
};

std::vector<std::string> Lines(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string l; std::getline(in, l);) {
    if (!l.empty()) out.push_back(l);
  }
  return out;
}

// The server over a real socket: the page, a reader's session in an order seeded by the reader
// ID, answers stored durably (one JSON line each, with case, answer, confidence, time on case,
// timestamp), resumed after a restart, bad bodies refused with 400, and no path reaching the key
// or anything the manifest does not list.
/// A raw client on loopback that has sent `bytes` and reads only when told to (a 10 s receive
/// timeout); -1 when it cannot connect or send.
int OpenSending(int port, const std::string& bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(std::uint16_t(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) != ssize_t(bytes.size())) {
    ::close(fd);
    return -1;
  }
  return fd;
}

/// The same, having sent a whole GET of `target`.
int OpenGet(int port, const std::string& target) {
  return OpenSending(port, "GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n");
}

TEST_F(TuringCliTest, ServeStoresAnswersResumesAndNeverServesTheKey) {
  const std::string out = Export("serve", "single", 8);
  const std::string key_path = out + "-key.json";
  // The key beside the export's folder, and a copy inside it, as a careless study might leave it.
  fs::copy_file(key_path, out + "/key.json");
  const nlohmann::json key = Json(key_path);
  std::vector<std::string> order;
  {
    ServeProcess server(out);
    ASSERT_GT(server.port(), 0) << server.first_line();
    httplib::Client client("127.0.0.1", server.port());
    auto page = client.Get("/");
    ASSERT_TRUE(page);
    EXPECT_EQ(page->status, 200);
    EXPECT_NE(page->body.find("Reader ID"), std::string::npos);
    auto session = client.Get("/api/session?reader=alice");
    ASSERT_TRUE(session);
    ASSERT_EQ(session->status, 200) << session->body;
    const nlohmann::json s = nlohmann::json::parse(session->body);
    order = s["order"].get<std::vector<std::string>>();
    EXPECT_EQ(order.size(), 8u);
    EXPECT_TRUE(s["answered"].empty());
    EXPECT_EQ(s.dump().find("truth"), std::string::npos);
    // The order is a function of the reader ID.
    const auto again = nlohmann::json::parse(client.Get("/api/session?reader=alice")->body);
    EXPECT_EQ(again["order"].get<std::vector<std::string>>(), order);
    const auto bob = nlohmann::json::parse(client.Get("/api/session?reader=bob")->body);
    EXPECT_NE(bob["order"].get<std::vector<std::string>>(), order);
    // Three answers.
    for (int i = 0; i < 3; ++i) {
      const nlohmann::json body = {{"reader", "alice"},
                                   {"case", order[std::size_t(i)]},
                                   {"answer", i == 1 ? "synthetic" : "real"},
                                   {"confidence", i + 2},
                                   {"seconds", 4.5}};
      auto r = client.Post("/api/answer", body.dump(), "application/json");
      ASSERT_TRUE(r);
      EXPECT_EQ(r->status, 200) << r->body;
    }
    // Stored before the replies came back.
    const std::vector<std::string> lines = Lines(out + "/answers/alice.jsonl");
    ASSERT_EQ(lines.size(), 3u);
    for (std::size_t i = 0; i < 3; ++i) {
      const nlohmann::json l = nlohmann::json::parse(lines[i]);
      EXPECT_EQ(l["case"], order[i]);
      EXPECT_EQ(l["confidence"], int(i) + 2);
      EXPECT_DOUBLE_EQ(l["seconds"].get<double>(), 4.5);
      EXPECT_EQ(l["key_sha256"], Json(out + "/manifest.json")["key_sha256"]);
      EXPECT_TRUE(std::regex_match(l["time"].get<std::string>(),
                                   std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")));
    }
    // A second answer to a case is a conflict; bad bodies are 400s and store nothing.
    const auto post = [&](const std::string& body) {
      auto r = client.Post("/api/answer", body, "application/json");
      return r ? r->status : -1;
    };
    const nlohmann::json good = {{"reader", "alice"},
                                 {"case", order[3]},
                                 {"answer", "real"},
                                 {"confidence", 3},
                                 {"seconds", 1.0}};
    EXPECT_EQ(post(nlohmann::json{{"reader", "alice"},
                                  {"case", order[0]},
                                  {"answer", "real"},
                                  {"confidence", 3},
                                  {"seconds", 1.0}}
                       .dump()),
              409);
    const auto with = [&](const std::string& field, const nlohmann::json& value) {
      nlohmann::json b = good;
      b[field] = value;
      return b.dump();
    };
    EXPECT_EQ(post("{not json"), 400);
    EXPECT_EQ(post("[]"), 400);
    EXPECT_EQ(post(with("reader", "../../etc")), 400);
    EXPECT_EQ(post(with("reader", "a b")), 400);
    EXPECT_EQ(post(with("reader", std::string(65, 'a'))), 400);
    EXPECT_EQ(post(with("case", "T999")), 400);
    // Its reply names the case, not the server's folders.
    auto unknown = client.Post("/api/answer", with("case", "T999"), "application/json");
    ASSERT_TRUE(unknown);
    EXPECT_EQ(unknown->body, "unknown case \"T999\"");
    EXPECT_EQ(post(with("answer", "maybe")), 400);
    EXPECT_EQ(post(with("confidence", 0)), 400);
    EXPECT_EQ(post(with("confidence", 2.5)), 400);
    EXPECT_EQ(post(with("seconds", -1)), 400);
    EXPECT_EQ(post(with("extra", 1)), 400);
    EXPECT_EQ(post(std::string(64 * 1024, ' ')), 413);
    EXPECT_EQ(post(with("seconds", 1e308)), 400);  // over a day
    // Chunked, a body has no Content-Length to refuse: 1 MiB of it is refused as it arrives
    // (600 MiB used to be read whole). The server closes while the client still sends: the
    // client's write then raises SIGPIPE, which would end this test process.
    ::signal(SIGPIPE, SIG_IGN);
    std::size_t sent = 0;
    auto chunked = client.Post(
        "/api/answer",
        [&](std::size_t, httplib::DataSink& sink) {
          if (sent >= (1u << 20)) {
            sink.done();
            return true;
          }
          const std::string chunk(64 * 1024, ' ');
          sent += chunk.size();
          return sink.write(chunk.data(), chunk.size());
        },
        "application/json");
    EXPECT_TRUE(!chunked || chunked->status == 411) << (chunked ? chunked->body : "");
    // Another site's page can send text/plain without a preflight: refused, nothing stored.
    auto plain = client.Post("/api/answer", good.dump(), "text/plain");
    ASSERT_TRUE(plain);
    EXPECT_EQ(plain->status, 415);
    EXPECT_EQ(client.Get("/api/session?reader=../x")->status, 400);
    EXPECT_EQ(Lines(out + "/answers/alice.jsonl").size(), 3u);
    EXPECT_FALSE(fs::exists(out + "/answers/...jsonl"));
    // Clients that open a request and never finish it do not hold the page up: 100 of them
    // (a thread per connection, 64 threads, let 64 such clients stall every reader).
    std::vector<int> slow;
    for (int i = 0; i < 100; ++i) {
      const int fd = OpenSending(server.port(), "GET / HTTP/1.1\r\nHost: x\r\n");
      ASSERT_GE(fd, 0);  // connected, and the partial head sent
      slow.push_back(fd);
    }
    httplib::Client reader("127.0.0.1", server.port());
    reader.set_read_timeout(3, 0);
    auto meanwhile = reader.Get("/api/session?reader=carol");
    ASSERT_TRUE(meanwhile) << "the page stalled behind slow clients";
    EXPECT_EQ(meanwhile->status, 200);
    for (int fd : slow) ::close(fd);
    // Only the listed files are served: never the key, the manifest or the answers.
    EXPECT_EQ(client.Get("/cases/" + order[0] + ".png")->status, 200);
    for (const std::string& path : std::vector<std::string>{
             "/key.json", "/serve-key.json", "/../serve-key.json", "/cases/../key.json",
             "/cases/../../serve-key.json", "/%2e%2e/serve-key.json", "/cases/%2e%2e/key.json",
             "/cases/..%2fkey.json", "//key.json", "/manifest.json", "/answers/alice.jsonl",
             "/cases/", "/vendor/../key.json", "/" + fs::absolute(key_path).string()}) {
      auto r = client.Get(path.c_str());
      ASSERT_TRUE(r) << path;
      EXPECT_NE(r->status, 200) << path;
      EXPECT_EQ(r->body.find("\"truth\""), std::string::npos) << path;
    }
  }
  // A restart resumes: the reader's answers are read back from disk.
  {
    ServeProcess server(out);
    ASSERT_GT(server.port(), 0) << server.first_line();
    httplib::Client client("127.0.0.1", server.port());
    const auto s = nlohmann::json::parse(client.Get("/api/session?reader=alice")->body);
    EXPECT_EQ(s["answered"].get<std::vector<std::string>>(),
              (std::vector<std::string>{order[0], order[1], order[2]}));
  }
  fs::remove(out + "/key.json");
  const Result r = RunMewm("turing score " + out + " --key " + key_path);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("alice"), std::string::npos) << r.output;
}

/// The process's peak resident memory (VmHWM), in bytes; 0 when unreadable.
std::uint64_t PeakResidentBytes(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;  // in kB
  }
  return 0;
}

TEST_F(TuringCliTest, ServeSendsLargeCaseFilesInPiecesAsTheyAreTaken) {
  // A case file was read whole into every answer: eight clients asking for a 128 MiB file and
  // reading nothing held 1 GiB of the server's memory. It is now read as each client takes it.
  const std::string out = Export("serve-large", "single", 2);
  ServeProcess probe(out);
  ASSERT_GT(probe.port(), 0) << probe.first_line();
  httplib::Client client("127.0.0.1", probe.port());
  const auto session = nlohmann::json::parse(client.Get("/api/session?reader=alice")->body);
  const std::string first = session["order"][0];
  const std::string nifti = session["cases"][first][0]["nifti"];
  const std::string path = out + "/" + nifti;
  constexpr std::uint64_t kSize = std::uint64_t(128) << 20;
  fs::resize_file(path, 0);
  fs::resize_file(path, kSize);  // sparse zeros: no disk used
  const std::uint64_t base = PeakResidentBytes(probe.pid());
  ASSERT_GT(base, 0u);
  std::vector<int> idle;
  for (int i = 0; i < 8; ++i) {
    const int fd = OpenGet(probe.port(), "/" + nifti);
    ASSERT_GE(fd, 0);
    idle.push_back(fd);
  }
  // A reader meanwhile gets the whole file, byte for byte, at the socket's pace.
  auto whole = client.Get("/" + nifti);
  ASSERT_TRUE(whole);
  EXPECT_EQ(whole->status, 200);
  EXPECT_EQ(whole->get_header_value("Content-Length"), std::to_string(kSize));
  ASSERT_EQ(whole->body.size(), kSize);
  EXPECT_EQ(whole->body.find_first_not_of('\0'), std::string::npos);
  const std::uint64_t grown = PeakResidentBytes(probe.pid()) - base;
  std::printf("peak resident memory grew by %.1f MiB serving 9 copies of a %llu MiB file\n",
              double(grown) / (1 << 20), static_cast<unsigned long long>(kSize >> 20));
  EXPECT_LT(grown, kSize / 2);
  for (int fd : idle) ::close(fd);
  // A file that shrinks while it is sent ends its answer short, and the connection closes.
  const int fd = OpenGet(probe.port(), "/" + nifti);
  ASSERT_GE(fd, 0);
  char buffer[64 * 1024];
  const ssize_t head = ::recv(fd, buffer, sizeof buffer, 0);
  ASSERT_GT(head, 0);
  EXPECT_EQ(std::string(buffer, std::size_t(head)).rfind("HTTP/1.1 200", 0), 0u);
  fs::resize_file(path, 1 << 20);
  std::uint64_t received = std::uint64_t(head);
  for (ssize_t n; (n = ::recv(fd, buffer, sizeof buffer, 0)) > 0;) received += std::uint64_t(n);
  ::close(fd);
  EXPECT_LT(received, kSize);
  // A case file that became a FIFO is not found, at once (never a blocked loop).
  fs::remove(path);
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  httplib::Client after("127.0.0.1", probe.port());
  after.set_read_timeout(3, 0);
  auto fifo = after.Get("/" + nifti);
  ASSERT_TRUE(fifo);
  EXPECT_EQ(fifo->status, 404);
  EXPECT_EQ(after.Get("/api/session?reader=alice")->status, 200);
}

// A manifest cohort (CSV) whose patients have a follow-up image and an administered plan exports
// like a synthetic one; a manifest without follow-ups is refused with the count it has.
TEST_F(TuringCliTest, ExportsAManifestCohortWithFollowUps) {
  const std::string dir = (*root_ / "manifest").string();
  fs::create_directories(dir);
  std::ifstream clinical(cohort_ + "/clinical.csv");
  std::ifstream outcomes(cohort_ + "/outcomes.csv");
  std::string header, line;
  std::getline(clinical, header);
  std::map<std::string, std::string> plans;
  std::getline(outcomes, line);
  while (std::getline(outcomes, line)) {
    const auto q1 = line.find('"'), q2 = line.find('"', q1 + 1);
    plans[line.substr(0, line.find(','))] = line.substr(q1 + 1, q2 - q1 - 1);
  }
  std::ofstream csv(dir + "/patients.csv");
  std::ofstream bare(dir + "/bare.csv");
  csv << header << ",ct,tumor,post,administered_plan\n";
  bare << header << ",ct,tumor\n";
  for (int p = 0; p < 3 && std::getline(clinical, line); ++p) {
    const std::string id = line.substr(0, line.find(','));
    const std::string pre = cohort_ + "/patients/" + id + "/pre.vdb";
    csv << line << "," << pre << "," << pre << "," << cohort_ << "/patients/" << id
        << "/post_administered.vdb,\"" << plans.at(id) << "\"\n";
    bare << line << "," << pre << "," << pre << "\n";
  }
  csv.close();
  bare.close();
  const std::string base = "turing export --dynamics-backend mechanistic --calibration " +
                           kCalibration + " --n 6 --quiet --out " + dir + "/study --key " + dir;
  Result r = RunMewm(base + "/key.json --cohort " + dir + "/patients.csv");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(Json(dir + "/study/manifest.json")["cases"].size(), 6u);
  r = RunMewm(base + "/key2.json --cohort " + dir + "/bare.csv");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("has 0 patients with a follow-up image"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace mewm
