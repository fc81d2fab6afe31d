// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/run/runner.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>
#include <vector>

#include "mewm/core/file_util.h"
#include "mewm/core/nifti_io.h"
#include "mewm/core/render.h"
#include "mewm/core/vdb_io.h"
#include "mewm/core/volume_file.h"
#include "mewm/eval/evaluation.h"
#include "planning_fixture.h"

namespace mewm::scenarios {
namespace {

namespace fs = std::filesystem;

class CollectingSink final : public EventSink {
 public:
  Status Emit(const Event& event) override {
    events.push_back(event);
    return {};
  }
  std::vector<Event> events;
  template <typename T>
  std::vector<T> Of() const {
    std::vector<T> out;
    for (const Event& e : events) {
      if (const T* body = std::get_if<T>(&e.body)) out.push_back(*body);
    }
    return out;
  }
};

class RunnerTest : public testing::VdbTest {
 protected:
  void SetUp() override { testing::WriteTestModels(dir_.path().string()); }

  ScenarioSpec Spec(const std::string& cohort_toml) {
    const std::string text = R"([run]
name = "rt"
seed = 5
output = ")" + dir_.File("out") +
                             R"("

[cohort]
)" + cohort_toml + testing::kTestModelsToml +
                             R"(
[planner]
beams = 2
samples = 2
)";
    auto spec = ParseScenario(text, "rt.toml", dir_.path().string());
    EXPECT_TRUE(spec) << spec.error().message;
    return *spec;
  }
  ScenarioSpec Synthetic() {
    return Spec("source = \"synthetic\"\nn = 3\nseed = 4\nspacing_mm = 2.0");
  }

  Expected<RunSummary> Run(const ScenarioSpec& spec, RunOptions options, CollectingSink* sink) {
    if (options.backends == nullptr) options.backends = &testing::WorldBackends();
    MEWM_TRY(auto runner, Runner::Create(spec, options));
    return runner->Run(*sink);
  }

  std::string Read(const std::string& path) {
    auto text = ReadFile(path);
    EXPECT_TRUE(text) << path;
    return text ? *text : "";
  }

  testing::TempDir dir_;
};

TEST_F(RunnerTest, RunsEveryPatientEmitsOrderedEventsAndWritesResults) {
  CollectingSink sink;
  auto summary = Run(Synthetic(), {}, &sink);
  ASSERT_TRUE(summary) << summary.error().message;
  EXPECT_EQ(summary->finished, 3);
  EXPECT_EQ(summary->failed, 0);
  ASSERT_FALSE(sink.events.empty());
  for (std::size_t i = 0; i < sink.events.size(); ++i) {
    EXPECT_EQ(sink.events[i].seq, i + 1);
    EXPECT_EQ(sink.events[i].run_id, summary->run_id);
  }
  // Generating the cohort comes first, as progress events; then the run starts.
  const auto progress = sink.Of<Progress>();
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back().stage, "cohort");
  EXPECT_EQ(progress.back().done, 3);
  EXPECT_EQ(progress.back().total, 3);
  EXPECT_TRUE(std::holds_alternative<RunStarted>(sink.events[progress.size()].body));
  EXPECT_TRUE(std::holds_alternative<RunFinished>(sink.events.back().body));
  EXPECT_EQ(sink.Of<PlanDecided>().size(), 3u);
  EXPECT_EQ(sink.Of<ProposalMade>().size(), 3u);
  EXPECT_GT(sink.Of<CandidateEvaluated>().size(), 30u);
  // events.jsonl holds exactly the same events.
  auto logged = ReadEvents(dir_.File("out/events.jsonl"));
  ASSERT_TRUE(logged) << logged.error().message;
  ASSERT_EQ(logged->size(), sink.events.size());
  for (std::size_t i = 0; i < logged->size(); ++i) {
    EXPECT_EQ(EventToJson((*logged)[i]), EventToJson(sink.events[i]));
  }
  for (const char* id : {"P0001", "P0002", "P0003"}) {
    const std::string p = dir_.File(std::string("out/patients/") + id);
    EXPECT_TRUE(fs::exists(p + "/result.json"));
    auto vdb = ReadVdb(p + "/post_chosen.vdb");
    ASSERT_TRUE(vdb) << vdb.error().message;
    EXPECT_TRUE(vdb->Scalar("ct"));
    EXPECT_TRUE(vdb->Label("viable"));
  }
  EXPECT_TRUE(fs::exists(dir_.File("out/summary.csv")));
  EXPECT_NE(Read(dir_.File("out/summary.json")).find("\"finished\": 3"), std::string::npos);
}

TEST_F(RunnerTest, RerunReproducesResultsAndResumeSkipsFinishedPatients) {
  CollectingSink first;
  ASSERT_TRUE(Run(Synthetic(), {}, &first));
  const std::string result = Read(dir_.File("out/patients/P0002/result.json"));
  const std::string volume = Read(dir_.File("out/patients/P0002/post_chosen.vdb"));
  const std::string summary = Read(dir_.File("out/summary.json"));

  CollectingSink second;
  ASSERT_TRUE(Run(Synthetic(), {}, &second));
  EXPECT_EQ(Read(dir_.File("out/patients/P0002/result.json")), result);
  EXPECT_EQ(Read(dir_.File("out/patients/P0002/post_chosen.vdb")), volume);
  EXPECT_EQ(Read(dir_.File("out/summary.json")), summary);

  fs::remove_all(dir_.File("out/patients/P0002"));
  CollectingSink resumed;
  RunOptions options;
  options.resume = true;
  auto r = Run(Synthetic(), options, &resumed);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->finished, 1);
  EXPECT_EQ(r->skipped, 2);
  ASSERT_EQ(resumed.Of<PatientStarted>().size(), 1u);
  EXPECT_EQ(resumed.Of<PatientStarted>().front().patient_id, "P0002");
  EXPECT_EQ(Read(dir_.File("out/patients/P0002/result.json")), result);
  EXPECT_EQ(Read(dir_.File("out/summary.json")), summary);
}

TEST_F(RunnerTest, ShardsMergeIntoTheFullRun) {
  CollectingSink full;
  ASSERT_TRUE(Run(Synthetic(), {}, &full));
  const std::string expected = Read(dir_.File("out/patients/P0003/result.json"));
  std::vector<std::string> shards;
  for (int i = 0; i < 2; ++i) {
    RunOptions options;
    options.shard_index = i;
    options.shard_count = 2;
    options.output_dir = dir_.File("shard-" + std::to_string(i));
    CollectingSink sink;
    auto s = Run(Synthetic(), options, &sink);
    ASSERT_TRUE(s) << s.error().message;
    EXPECT_EQ(s->finished, i == 0 ? 2 : 1);
    shards.push_back(options.output_dir);
  }
  ASSERT_TRUE(MergeResults(shards, dir_.File("merged")));
  EXPECT_EQ(Read(dir_.File("merged/patients/P0003/result.json")), expected);
  // The NIfTI views and the plot travel with their patient (P0003 is shard 0's: 0-based row 2).
  for (const char* name : {"post_chosen_ct.nii.gz", "post_chosen_labels.nii.gz", "survival.png"}) {
    EXPECT_EQ(Read(dir_.File(std::string("merged/patients/P0003/") + name)),
              Read(dir_.File(std::string("shard-0/patients/P0003/") + name)))
        << name;
  }
  // A merge over an earlier merge accepts the files a run wrote.
  ASSERT_TRUE(MergeResults(shards, dir_.File("merged")));
  EXPECT_NE(Read(dir_.File("merged/summary.json")).find("\"finished\": 3"), std::string::npos);
  // But not a folder where a run writes a file: it is refused, and it and everything beside it
  // stay (moving the patients in first, then failing on it, left the output half replaced).
  fs::remove(dir_.File("merged/summary.csv"));
  fs::create_directories(dir_.File("merged/summary.csv/notes"));
  const std::string merged_run = Read(dir_.File("merged/run.json"));
  auto folder = MergeResults(shards, dir_.File("merged"));
  ASSERT_FALSE(folder);
  EXPECT_NE(folder.error().message.find("summary.csv' is not a file a mewm run wrote"),
            std::string::npos)
      << folder.error().message;
  EXPECT_TRUE(fs::is_directory(dir_.File("merged/summary.csv/notes")));
  EXPECT_EQ(Read(dir_.File("merged/run.json")), merged_run);
  EXPECT_TRUE(fs::exists(dir_.File("merged/patients/P0003/result.json")));
  fs::remove_all(dir_.File("merged/summary.csv"));
  // A shard's result.json whose fields have other types is refused naming the field (an array
  // risk_mean shifted the summary's columns; simulations 1e30 overflowed).
  const std::string result_path = shards[1] + "/patients/P0002/result.json";
  const std::string good_result = Read(result_path);
  for (const auto& [field, value, needle] :
       std::vector<std::tuple<std::string, nlohmann::json, std::string>>{
           {"risk_mean", nlohmann::json::array({1, 2}),
            "chosen.risk_mean is [1,2], expected a finite number"},
           {"simulations", 1e30, "counters.simulations is 1e+30, expected a count"},
           {"memo_hits", -3, "counters.memo_hits is -3"},
           {"plan", 7, "chosen.plan is 7, expected a string"}}) {
    nlohmann::json r = nlohmann::json::parse(good_result);
    (field == "risk_mean" || field == "plan" ? r["chosen"] : r["counters"])[field] = value;
    ASSERT_TRUE(WriteFileAtomic(result_path, r.dump()));
    auto typed = MergeResults(shards, dir_.File("typed"));
    ASSERT_FALSE(typed) << field;
    EXPECT_NE(typed.error().message.find(needle), std::string::npos) << typed.error().message;
    EXPECT_FALSE(fs::exists(dir_.File("typed")));
  }
  ASSERT_TRUE(WriteFileAtomic(result_path, good_result));
  // The same shard twice, or a missing shard, is refused.
  auto twice = MergeResults({shards[0], shards[0]}, dir_.File("bad"));
  ASSERT_FALSE(twice);
  EXPECT_NE(twice.error().message.find("distinct shard"), std::string::npos);
  auto missing = MergeResults({shards[1]}, dir_.File("bad"));
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("1 of 2 shards"), std::string::npos);
  RunOptions bad;
  bad.shard_index = 2;
  bad.shard_count = 2;
  EXPECT_FALSE(Runner::Create(Synthetic(), bad));
  // A shard's file that is a link is refused: the merge would copy whatever it leads to.
  ASSERT_TRUE(WriteFileAtomic(dir_.File("secret.txt"), "not the run's"));
  const std::string plot = shards[0] + "/patients/P0003/survival.png";
  fs::remove(plot);
  fs::create_symlink(dir_.File("secret.txt"), plot);
  auto linked = MergeResults(shards, dir_.File("linked"));
  ASSERT_FALSE(linked);
  EXPECT_NE(linked.error().message.find("survival.png' is not a file of a mewm run"),
            std::string::npos)
      << linked.error().message;
  EXPECT_FALSE(fs::exists(dir_.File("linked/patients/P0003/survival.png")));
  // Nor does a run resume into a patients/ that is a link: it would write where the link leads.
  fs::remove(plot);
  fs::create_directories(dir_.File("elsewhere"));
  fs::remove_all(shards[1] + "/patients");
  fs::create_directory_symlink(dir_.File("elsewhere"), shards[1] + "/patients");
  RunOptions resume;
  resume.shard_index = 1;
  resume.shard_count = 2;
  resume.resume = true;
  resume.output_dir = shards[1];
  CollectingSink sink;
  auto through = Run(Synthetic(), resume, &sink);
  ASSERT_FALSE(through);
  EXPECT_NE(through.error().message.find("is a symbolic link"), std::string::npos)
      << through.error().message;
  EXPECT_TRUE(fs::is_empty(dir_.File("elsewhere")));
}

TEST_F(RunnerTest, ASyntheticCohortComesFromTheSourcePluggedIntoTheRegistry) {
  // The run library does not link the synthetic world: without a synthetic cohort source the
  // run fails with a clear error and generates nothing.
  const BackendRegistry without = BackendRegistry::Builtin();
  ASSERT_FALSE(without.HasSyntheticCohorts());
  RunOptions options;
  options.backends = &without;
  CollectingSink sink;
  auto refused = Run(Synthetic(), options, &sink);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(refused.error().message.find("no synthetic world"), std::string::npos);
  ASSERT_FALSE(sink.Of<RunFailed>().empty());
  EXPECT_FALSE(fs::exists(dir_.File("out") + "/cohort/manifest.json"));

  // A source plugged in is the one the run asks, with the scenario's cohort table and folder.
  BackendRegistry counting = BackendRegistry::Builtin();
  std::vector<std::string> asked;
  counting.SetSyntheticCohorts([&](const CohortSpec& cohort, const ActionBase& actions,
                                   const std::string& dir, const auto& progress,
                                   const auto& cancelled) {
    asked.push_back(dir + " n=" + std::to_string(cohort.n));
    return SyntheticWorldCohorts()(cohort, actions, dir, progress, cancelled);
  });
  options.backends = &counting;
  options.force = true;
  CollectingSink again;
  ASSERT_TRUE(Run(Synthetic(), options, &again));
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(asked[0], dir_.File("out") + "/cohort n=3");
  EXPECT_EQ(again.Of<PlanDecided>().size(), 3u);
}

TEST_F(RunnerTest, NiftiAndPlotBesideTheVdbHoldItsGridsAndCurves) {
  CollectingSink sink;
  ASSERT_TRUE(Run(Synthetic(), {}, &sink));
  for (const char* id : {"P0001", "P0002", "P0003"}) {
    SCOPED_TRACE(id);
    const std::string p = dir_.File(std::string("out/patients/") + id);
    auto vdb = ReadVdb(p + "/post_chosen.vdb");
    ASSERT_TRUE(vdb) << vdb.error().message;
    const Volume& ct = vdb->scalars.at("ct");
    NiftiInfo info;
    auto nii = ReadNifti(p + "/post_chosen_ct.nii.gz", &info);
    ASSERT_TRUE(nii) << nii.error().message;
    const DenseFloat dense = ct.ToDense();
    EXPECT_EQ(nii->dims, dense.dims);
    EXPECT_EQ(nii->data, dense.data);
    EXPECT_TRUE(nii->geometry.ApproxEquals(ct.geometry(), 1e-5));
    // RAS+ as nibabel reads it: the LPS affine with x and y negated.
    Eigen::Matrix4d ras = ct.geometry().Affine();
    ras.row(0) *= -1.0;
    ras.row(1) *= -1.0;
    EXPECT_LT((info.affine_ras - ras).cwiseAbs().maxCoeff(), 1e-4);
    // Labels: 2 where viable, 1 where the tumor was and is not viable, 0 elsewhere.
    NiftiInfo label_info;
    auto labels = ReadNiftiLabels(p + "/post_chosen_labels.nii.gz", &label_info);
    ASSERT_TRUE(labels) << labels.error().message;
    EXPECT_EQ(label_info.intent_code, 1002);
    EXPECT_EQ(labels->dims, dense.dims);
    EXPECT_TRUE(labels->geometry.ApproxEquals(ct.geometry(), 1e-5));
    const DenseLabel viable = vdb->labels.at("viable").ToDense();
    const DenseLabel pre = vdb->labels.at("pre_tumor").ToDense();
    std::size_t counts[3] = {0, 0, 0}, wrong = 0;
    for (std::size_t n = 0; n < labels->data.size(); ++n) {
      const int want = viable.data[n] != 0 ? 2 : (pre.data[n] != 0 ? 1 : 0);
      wrong += labels->data[n] != want;
      if (labels->data[n] >= 0 && labels->data[n] <= 2) ++counts[labels->data[n]];
    }
    EXPECT_EQ(wrong, 0u);
    EXPECT_GT(counts[1] + counts[2], 0u);
  }
  // survival.png beside result.json: a PNG with the chosen plan's colour (blue) and the
  // next-best plan's (orange).
  for (const char* id : {"P0001", "P0002", "P0003"}) {
    auto png = ReadPng(dir_.File(std::string("out/patients/") + id + "/survival.png"));
    ASSERT_TRUE(png) << id;
    EXPECT_EQ(png->width, 760);
    int chosen = 0, next = 0;
    for (std::size_t n = 0; n + 2 < png->pixels.size(); n += 3) {
      const std::uint8_t* p = &png->pixels[n];
      chosen += p[0] == 31 && p[1] == 100 && p[2] == 200;
      next += p[0] == 230 && p[1] == 120 && p[2] == 20;
    }
    EXPECT_GT(chosen, 500) << id;
    EXPECT_GT(next, 500) << id;
  }
  // --kind auto of the run's own files: the CT as CT, the labels as labels.
  NiftiKindDecision ct_kind, label_kind;
  ASSERT_TRUE(ReadVolumeFile(dir_.File("out/patients/P0001/post_chosen_ct.nii.gz"),
                             NiftiKind::kAuto, "", &ct_kind));
  ASSERT_TRUE(ReadVolumeFile(dir_.File("out/patients/P0001/post_chosen_labels.nii.gz"),
                             NiftiKind::kAuto, "", &label_kind));
  EXPECT_EQ(ct_kind.kind, NiftiKind::kScalar);
  EXPECT_EQ(label_kind.kind, NiftiKind::kLabel);
}

TEST_F(RunnerTest, ResultsNiftiOffWritesTheVdbAloneAndTheSameResults) {
  CollectingSink with;
  ASSERT_TRUE(Run(Synthetic(), {}, &with));
  ScenarioSpec off = Synthetic();
  off.results.nifti = false;
  off.results.plots = false;
  RunOptions options;
  options.output_dir = dir_.File("off");
  options.run_id = DefaultRunId(Synthetic());  // the same id, so the files compare byte for byte
  CollectingSink without;
  ASSERT_TRUE(Run(off, options, &without));
  for (const char* id : {"P0001", "P0002", "P0003"}) {
    const std::string p = dir_.File(std::string("off/patients/") + id);
    EXPECT_TRUE(fs::exists(p + "/post_chosen.vdb"));
    EXPECT_FALSE(fs::exists(p + "/post_chosen_ct.nii.gz"));
    EXPECT_FALSE(fs::exists(p + "/post_chosen_labels.nii.gz"));
    EXPECT_FALSE(fs::exists(p + "/survival.png"));
    EXPECT_EQ(Read(p + "/result.json"),
              Read(dir_.File(std::string("out/patients/") + id + "/result.json")));
  }
  // summary.json differs only in the results folder run.json names (its cohort path).
  auto a = nlohmann::json::parse(Read(dir_.File("out/summary.json")));
  auto b = nlohmann::json::parse(Read(dir_.File("off/summary.json")));
  a.erase("run");
  b.erase("run");
  EXPECT_EQ(a, b);
  // The key is read from the scenario, and checked.
  auto parsed = ParseScenario(Synthetic().text + "\n[results]\nnifti = false\nplots = false\n",
                              "x.toml", dir_.path().string());
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_FALSE(parsed->results.nifti);
  EXPECT_FALSE(parsed->results.plots);
  EXPECT_TRUE(Synthetic().results.nifti);
  EXPECT_TRUE(Synthetic().results.plots);
  auto bad = ParseScenario(Synthetic().text + "\n[results]\nnifti = 1\npng = true\n", "x.toml",
                           dir_.path().string());
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("results.nifti"), std::string::npos) << bad.error().message;
  EXPECT_NE(bad.error().message.find("png"), std::string::npos) << bad.error().message;
}

TEST_F(RunnerTest, SummaryCsvLeavesAnUnreachedMedianEmptyAndRunJsonSeedIsANumber) {
  CollectingSink sink;
  ASSERT_TRUE(Run(Synthetic(), {}, &sink));
  const auto run = nlohmann::json::parse(Read(dir_.File("out/run.json")));
  ASSERT_TRUE(run.at("seed").is_number_unsigned()) << run.dump();
  EXPECT_EQ(run.at("seed").get<std::uint64_t>(), 5u);
  EXPECT_TRUE(
      nlohmann::json::parse(Read(dir_.File("out/summary.json"))).at("run").at("seed").is_number());
  // A curve that never reaches 0.5: result.json says -1, summary.csv leaves the field empty.
  const std::string path = dir_.File("out/patients/P0002/result.json");
  auto result = nlohmann::json::parse(Read(path));
  result["median_months"] = -1.0;
  ASSERT_TRUE(WriteFileAtomic(path, result.dump(1) + "\n"));
  ASSERT_TRUE(WriteSummary(dir_.File("out")));
  const std::string csv = Read(dir_.File("out/summary.csv"));
  EXPECT_EQ(csv.find("-1"), std::string::npos) << csv;
  std::istringstream lines(csv);
  std::string line;
  std::getline(lines, line);
  ASSERT_EQ(line,
            "patient_id,status,plan,risk_mean,risk_std,median_months,simulations,memo_hits,"
            "error");
  int rows = 0;
  while (std::getline(lines, line)) {
    ++rows;
    std::vector<std::string> fields;
    std::string field;
    std::istringstream cells(line);
    while (std::getline(cells, field, ',')) fields.push_back(field);
    ASSERT_GE(fields.size(), 8u) << line;
    if (fields[0] == "P0002") {
      EXPECT_EQ(fields[5], "") << line;
    } else if (!fields[5].empty()) {
      EXPECT_GT(std::stod(fields[5]), 0.0) << line;
    }
  }
  EXPECT_EQ(rows, 3);
}

TEST_F(RunnerTest, FailingPatientsAreReportedAndTheRunGoesOn) {
  CollectingSink synthetic;
  ASSERT_TRUE(Run(Synthetic(), {}, &synthetic));
  const std::string pre = dir_.File("out/cohort/patients/P0001/pre.vdb");
  // A tumor mask on another lattice, and an empty one.
  VolumeSet small;
  small.labels.emplace("tumor", LabelVolume(Geometry::Isotropic(1.0), Index3{8, 8, 8}, "tumor"));
  ASSERT_TRUE(WriteVdb(dir_.File("small.vdb"), small));
  auto set = ReadVdb(pre);
  ASSERT_TRUE(set);
  VolumeSet empty;
  empty.labels.emplace("tumor", LabelVolume(set->labels.at("tumor").geometry(),
                                            set->labels.at("tumor").extent(), "tumor"));
  ASSERT_TRUE(WriteVdb(dir_.File("empty.vdb"), empty));
  const std::string clinical = ",62,M,A,B,30,1,40,0\n";
  std::ofstream(dir_.File("patients.csv"))
      << "patient_id,ct,tumor,age_years,sex,child_pugh,bclc_stage,afp_ng_ml,lesion_count,"
         "max_diameter_mm,vascular_invasion\n"
      << "ok," << pre << "," << pre << clinical << "missing,nowhere.nii.gz," << pre << clinical
      << "mismatch," << pre << ",small.vdb" << clinical << "empty," << pre << ",empty.vdb"
      << clinical;
  CollectingSink sink;
  RunOptions options;
  options.output_dir = dir_.File("manifest-out");
  auto summary = Run(Spec("source = \"manifest\"\nmanifest = \"patients.csv\""), options, &sink);
  ASSERT_TRUE(summary) << summary.error().message;
  EXPECT_EQ(summary->finished, 1);
  EXPECT_EQ(summary->failed, 3);
  const auto failed = sink.Of<PatientFailed>();
  ASSERT_EQ(failed.size(), 3u);
  EXPECT_EQ(failed[0].patient_id, "missing");
  EXPECT_NE(failed[0].error.find("nowhere.nii.gz"), std::string::npos) << failed[0].error;
  EXPECT_NE(failed[1].error.find("patient 'mismatch'"), std::string::npos) << failed[1].error;
  EXPECT_NE(failed[1].error.find("small.vdb"), std::string::npos) << failed[1].error;
  EXPECT_NE(failed[2].error.find("empty"), std::string::npos) << failed[2].error;
  EXPECT_TRUE(fs::exists(dir_.File("manifest-out/patients/ok/post_chosen.vdb")));
  const std::string csv = Read(dir_.File("manifest-out/summary.csv"));
  EXPECT_NE(csv.find("missing,failed"), std::string::npos) << csv;
  // No truth for a manifest cohort.
  auto eval = EvaluatePlans(dir_.File("manifest-out"));
  ASSERT_FALSE(eval);
  EXPECT_EQ(eval.error().code, ErrorCode::kNotFound);
}

TEST_F(RunnerTest, ACohortFolderThatOverlapsTheResultsIsRefusedBeforeAnythingIsWritten) {
  // cohort.dir is relative to the working directory, like run.output: absolute paths here.
  for (const std::string& dir : {dir_.File("out"), dir_.File("out/patients"),
                                 dir_.File("out/patients/P0001"), dir_.path().string()}) {
    const ScenarioSpec spec = Spec("source = \"synthetic\"\nn = 2\nseed = 4\nspacing_mm = 2.0\n" +
                                   std::string("dir = \"") + dir + "\"");
    RunOptions options;
    options.backends = &testing::WorldBackends();
    auto runner = Runner::Create(spec, options);
    ASSERT_FALSE(runner) << dir;
    EXPECT_EQ(runner.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(runner.error().message.find("overlap"), std::string::npos) << runner.error().message;
    EXPECT_FALSE(fs::exists(dir_.File("out"))) << dir;
  }
  // The folder the run would give its cohort anyway, named explicitly, is the run's own.
  CollectingSink sink;
  EXPECT_TRUE(Run(Spec("source = \"synthetic\"\nn = 2\nseed = 4\nspacing_mm = 2.0\ndir = \"" +
                       dir_.File("out/cohort") + "\""),
                  {}, &sink));
}

TEST_F(RunnerTest, CancelKeepsFinishedPatients) {
  CollectingSink sink;
  RunOptions options;
  options.cancelled = [&] { return !sink.Of<PatientFinished>().empty(); };
  auto summary = Run(Synthetic(), options, &sink);
  ASSERT_TRUE(summary) << summary.error().message;
  EXPECT_TRUE(summary->cancelled);
  EXPECT_EQ(summary->finished, 1);
  EXPECT_TRUE(std::holds_alternative<RunCancelled>(sink.events.back().body));
  EXPECT_TRUE(fs::exists(dir_.File("out/patients/P0001/result.json")));
  EXPECT_FALSE(fs::exists(dir_.File("out/patients/P0002")));
}

TEST_F(RunnerTest, EvaluatePlansAgainstTruthWithBaselines) {
  CollectingSink sink;
  ASSERT_TRUE(Run(Synthetic(), {}, &sink));
  auto eval = EvaluatePlans(dir_.File("out"));
  ASSERT_TRUE(eval) << eval.error().message;
  EXPECT_EQ(eval->patients, 3);
  ASSERT_EQ(eval->methods.size(), 4u);
  for (const MethodScores& m : eval->methods) {
    EXPECT_GE(m.f1, 0.0);
    EXPECT_LE(m.f1, 1.0);
    EXPECT_GE(m.regret, 0.0) << m.method;  // nothing beats the true optimum
    EXPECT_GE(m.risk_ratio, 1.0) << m.method;
  }
  EXPECT_NE(eval->FormatTable().find("guideline first choice"), std::string::npos);
  EXPECT_NE(eval->ToJson().find("\"regret_mean\""), std::string::npos);
  // The search's cost is the mean of the run's own counters.
  std::ifstream in(dir_.File("out/summary.json"));
  const auto summary = nlohmann::json::parse(in);
  double simulations = 0.0;
  for (const auto& p : summary["patients"])
    simulations += p["counters"]["simulations"].get<double>();
  EXPECT_GT(simulations, 0.0);
  EXPECT_DOUBLE_EQ(eval->simulations_per_patient, simulations / 3.0);
  EXPECT_NE(eval->FormatTable().find("outcome simulations per patient"), std::string::npos);
  // A summary listing a patient twice is refused: counted twice, the patient would also be among
  // the "other" patients of its own leave-one-out majority.
  nlohmann::json twice = summary;
  twice["patients"].push_back(twice["patients"][0]);
  ASSERT_TRUE(WriteFileAtomic(dir_.File("out/summary.json"), twice.dump()));
  auto refused = EvaluatePlans(dir_.File("out"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(refused.error().message.find("is listed twice"), std::string::npos)
      << refused.error().message;
  ASSERT_TRUE(WriteFileAtomic(dir_.File("out/summary.json"), summary.dump()));
  // A plan-writing policy's first choice is its own most probable plan, and the row says so.
  EXPECT_EQ(eval->methods[3].method, "guideline first choice");
  nlohmann::json written = summary;
  for (auto& p : written["patients"]) {
    p["proposal"]["plans"] = {{{"plan", p["proposal"]["first_choice"]}, {"log_prob", -0.1}}};
  }
  ASSERT_TRUE(WriteFileAtomic(dir_.File("out/summary.json"), written.dump()));
  auto by_plans = EvaluatePlans(dir_.File("out"));
  ASSERT_TRUE(by_plans) << by_plans.error().message;
  EXPECT_EQ(by_plans->methods[3].method, "policy first plan");
  EXPECT_DOUBLE_EQ(by_plans->methods[3].regret, eval->methods[3].regret);
  EXPECT_EQ(by_plans->FormatTable().find("guideline first choice"), std::string::npos);
  ASSERT_TRUE(WriteFileAtomic(dir_.File("out/summary.json"), summary.dump()));

  // The run names its cohort's seed; a cohort generated again in its folder with another seed
  // (its truth says so) is refused rather than scored against the wrong truth.
  EXPECT_EQ(summary["run"]["cohort_seed"], "4");
  const std::string truth_file = summary["run"]["cohort"].get<std::string>() + "/truth/truth.json";
  std::ifstream truth_in(truth_file);
  nlohmann::json truth = nlohmann::json::parse(truth_in);
  truth_in.close();
  truth["generation"]["seed"] = "5";
  ASSERT_TRUE(WriteFileAtomic(truth_file, truth.dump()));
  auto regenerated = EvaluatePlans(dir_.File("out"));
  ASSERT_FALSE(regenerated);
  EXPECT_EQ(regenerated.error().code, ErrorCode::kMismatch);
  EXPECT_NE(regenerated.error().message.find("planned the cohort of seed \"4\""), std::string::npos)
      << regenerated.error().message;
  // A truth whose risk is not a positive number is refused (0 printed HR/opt "-nan").
  truth["generation"]["seed"] = "4";
  auto& risks = truth["patients"].begin().value()["plan_risks"];
  risks.begin().value() = 0.0;
  ASSERT_TRUE(WriteFileAtomic(truth_file, truth.dump()));
  auto zero = EvaluatePlans(dir_.File("out"));
  ASSERT_FALSE(zero);
  EXPECT_EQ(zero.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(zero.error().message.find("not a positive number"), std::string::npos)
      << zero.error().message;
  // A summary.json that is a FIFO is refused, not waited on for ever.
  fs::remove(dir_.File("out/summary.json"));
  ASSERT_EQ(::mkfifo(dir_.File("out/summary.json").c_str(), 0600), 0);
  auto fifo = EvaluatePlans(dir_.File("out"));
  ASSERT_FALSE(fifo);
  EXPECT_NE(fifo.error().message.find("summary.json"), std::string::npos) << fifo.error().message;
}

TEST_F(RunnerTest, ComparePlanRunsPoolsPairsOfRunsOfSeveralCohorts) {
  CollectingSink sink;
  ASSERT_TRUE(Run(Synthetic(), {}, &sink));
  RunOptions second;
  second.output_dir = dir_.File("out2");
  ASSERT_TRUE(
      Run(Spec("source = \"synthetic\"\nn = 2\nseed = 6\nspacing_mm = 2.0"), second, &sink));
  // Run B of the first cohort: its first patient chose the worst valid plan other than A's.
  fs::copy(dir_.File("out"), dir_.File("b"), fs::copy_options::recursive);
  std::ifstream in(dir_.File("b/summary.json"));
  nlohmann::json summary = nlohmann::json::parse(in);
  in.close();
  std::ifstream truth_in(summary["run"]["cohort"].get<std::string>() + "/truth/truth.json");
  const nlohmann::json truth = nlohmann::json::parse(truth_in);
  const std::string id = summary["patients"][0]["patient_id"].get<std::string>();
  const nlohmann::json& risks = truth["patients"][id]["plan_risks"];
  const double chosen_risk = risks[summary["patients"][0]["plan"].get<std::string>()].get<double>();
  std::string worst;
  for (const auto& [plan, risk] : risks.items()) {
    if (risk.get<double>() == chosen_risk) continue;
    if (worst.empty() || risk.get<double>() > risks[worst].get<double>()) worst = plan;
  }
  ASSERT_FALSE(worst.empty());
  summary["patients"][0]["plan"] = worst;
  std::ofstream(dir_.File("b/summary.json")) << summary.dump(1);

  const auto first = ComparePlanRuns(dir_.File("out"), dir_.File("b"));
  const auto other = ComparePlanRuns(dir_.File("out2"), dir_.File("out2"));
  ASSERT_TRUE(first && other);
  auto pooled =
      ComparePlanRuns({{dir_.File("out"), dir_.File("b")}, {dir_.File("out2"), dir_.File("out2")}});
  ASSERT_TRUE(pooled) << pooled.error().message;
  // Every patient of both pairs, each once; the means are over all of them.
  EXPECT_EQ(pooled->patients, 5);
  EXPECT_EQ(pooled->runs_a, (std::vector<std::string>{dir_.File("out"), dir_.File("out2")}));
  EXPECT_EQ(pooled->runs_b, (std::vector<std::string>{dir_.File("b"), dir_.File("out2")}));
  ASSERT_EQ(pooled->cohort_dirs.size(), 2u);
  EXPECT_NE(pooled->cohort_dirs[0], pooled->cohort_dirs[1]);
  EXPECT_NEAR(pooled->a.regret, (3 * first->a.regret + 2 * other->a.regret) / 5, 1e-12);
  EXPECT_NEAR(pooled->b.regret, (3 * first->b.regret + 2 * other->b.regret) / 5, 1e-12);
  EXPECT_NEAR(pooled->regret_diff.mean, first->regret_diff.mean * 3 / 5, 1e-12);
  EXPECT_EQ(pooled->same, first->same + 2);
  // The patient that differs is named with its pair's number, as the table numbers the runs.
  ASSERT_EQ(pooled->decisive.size(), 1u);
  EXPECT_EQ(pooled->decisive[0].patient, "1:" + id);
  // Split by the largest lesion's size: the bands hold every patient once, and the band holding
  // the patient that differs holds all of the difference.
  const double diameter = truth["patients"][id]["covariates"]["max_diameter_mm"].get<double>();
  const std::string differing_band = diameter < 50.0   ? "under 50 mm"
                                     : diameter < 75.0 ? "50 to 75 mm"
                                                       : "75 mm and over";
  int banded = 0;
  double regret_a = 0.0, f1_b = 0.0;
  for (const auto& band : pooled->by_size) {
    EXPECT_GT(band.patients, 0) << band.band;
    banded += band.patients;
    regret_a += band.regret_a * band.patients;
    f1_b += band.f1_b * band.patients;
    EXPECT_NEAR(band.summed_difference,
                band.band == differing_band
                    ? pooled->decisive[0].regret_a - pooled->decisive[0].regret_b
                    : 0.0,
                1e-12)
        << band.band;
  }
  EXPECT_EQ(banded, 5);
  EXPECT_NEAR(regret_a / 5, pooled->a.regret, 1e-12);
  EXPECT_NEAR(f1_b / 5, pooled->b.f1, 1e-12);
  const std::string table = pooled->FormatTable();
  EXPECT_NE(table.find("on 5 patients"), std::string::npos) << table;
  EXPECT_NE(table.find("B2: " + dir_.File("out2")), std::string::npos) << table;
  EXPECT_NE(table.find(pooled->cohort_dirs[1]), std::string::npos) << table;
  const auto j = nlohmann::json::parse(pooled->ToJson());
  EXPECT_EQ(j["runs_a"].size(), 2u);
  EXPECT_EQ(j["cohort_dirs"][1], pooled->cohort_dirs[1]);
  EXPECT_EQ(j["by_largest_lesion"].size(), pooled->by_size.size());
  EXPECT_NE(table.find("by the largest lesion's diameter"), std::string::npos) << table;
  EXPECT_NE(table.find(differing_band), std::string::npos) << table;

  // One cohort pooled twice would count its patients twice: refused, naming a patient.
  for (const auto& twice :
       {ComparePlanRuns({{dir_.File("out"), dir_.File("b")}, {dir_.File("b"), dir_.File("out")}}),
        ComparePlanRuns(
            {{dir_.File("out2"), dir_.File("out2")}, {dir_.File("out2"), dir_.File("out2")}})}) {
    ASSERT_FALSE(twice);
    EXPECT_EQ(twice.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(twice.error().message.find("count once"), std::string::npos) << twice.error().message;
  }
  // No pairs, and a pair that fails, fail the whole comparison.
  EXPECT_EQ(ComparePlanRuns(std::vector<std::pair<std::string, std::string>>{}).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_FALSE(ComparePlanRuns(
      {{dir_.File("out"), dir_.File("b")}, {dir_.File("out2"), dir_.File("nowhere")}}));
}

TEST_F(RunnerTest, ComparePlanRunsPairsTheSamePatients) {
  CollectingSink sink;
  ASSERT_TRUE(Run(Synthetic(), {}, &sink));
  const auto read_json = [&](const std::string& path) {
    std::ifstream in(path);
    return nlohmann::json::parse(in);
  };
  const auto write_json = [](const std::string& path, const nlohmann::json& j) {
    std::ofstream(path) << j.dump(1);
  };
  // A run against itself: no difference, every patient equal.
  auto self = ComparePlanRuns(dir_.File("out"), dir_.File("out"));
  ASSERT_TRUE(self) << self.error().message;
  EXPECT_EQ(self->patients, 3);
  EXPECT_EQ(self->same, 3);
  EXPECT_DOUBLE_EQ(self->regret_diff.mean, 0.0);
  EXPECT_DOUBLE_EQ(self->regret_diff.lo, 0.0);
  EXPECT_DOUBLE_EQ(self->regret_diff.hi, 0.0);
  EXPECT_DOUBLE_EQ(self->a.regret, self->b.regret);
  EXPECT_DOUBLE_EQ(self->regret_diff_median, 0.0);
  EXPECT_DOUBLE_EQ(self->sign_test_p, 1.0);  // every patient ties
  EXPECT_TRUE(self->decisive.empty());       // so none decides anything
  // Nor in any size band.
  ASSERT_FALSE(self->by_size.empty());
  for (const auto& band : self->by_size) EXPECT_EQ(band.summed_difference, 0.0);
  EXPECT_NE(self->FormatTable().find("summed regret A - B +0.0000"), std::string::npos)
      << self->FormatTable();
  if (self->b.regret > 0.0) {
    EXPECT_DOUBLE_EQ(self->regret_ratio, 1.0);
  } else {
    EXPECT_TRUE(std::isnan(self->regret_ratio));
  }

  // Run B: a copy whose first patient chose the worst valid plan other than A's (so the two
  // differ; A's may be the worst) and whose last patient failed.
  fs::copy(dir_.File("out"), dir_.File("b"), fs::copy_options::recursive);
  nlohmann::json summary = read_json(dir_.File("b/summary.json"));
  const std::string cohort = summary["run"]["cohort"].get<std::string>();
  const nlohmann::json truth = read_json(cohort + "/truth/truth.json");
  const std::string id = summary["patients"][0]["patient_id"].get<std::string>();
  const nlohmann::json& risks = truth["patients"][id]["plan_risks"];
  const std::string chosen = summary["patients"][0]["plan"].get<std::string>();
  const double chosen_risk = risks[chosen].get<double>();
  std::string worst;
  for (const auto& [plan, risk] : risks.items()) {
    if (risk.get<double>() == chosen_risk) continue;
    if (worst.empty() || risk.get<double>() > risks[worst].get<double>()) worst = plan;
  }
  ASSERT_FALSE(worst.empty()) << "every valid plan of " << id << " has one risk";
  summary["patients"][0]["plan"] = worst;
  summary["patients"][2]["status"] = "failed";
  write_json(dir_.File("b/summary.json"), summary);
  auto paired = ComparePlanRuns(dir_.File("out"), dir_.File("b"));
  ASSERT_TRUE(paired) << paired.error().message;
  EXPECT_EQ(paired->patients, 2);
  EXPECT_EQ(paired->only_a, 1);
  EXPECT_EQ(paired->only_b, 0);
  // Only the first patient differs, by the risk between the two plans.
  const double d = chosen_risk - risks[worst].get<double>();
  ASSERT_NE(d, 0.0);
  EXPECT_NEAR(paired->regret_diff.mean, d / 2.0, 1e-12);
  EXPECT_LE(paired->regret_diff.lo, paired->regret_diff.mean);
  EXPECT_GE(paired->regret_diff.hi, paired->regret_diff.mean);
  EXPECT_EQ(paired->same, 1);
  EXPECT_EQ(paired->a_better, d < 0.0 ? 1 : 0);
  EXPECT_EQ(paired->a_worse, d > 0.0 ? 1 : 0);
  // Two patients, differences d and 0: the median is their mean; one win is no evidence.
  EXPECT_NEAR(paired->regret_diff_median, d / 2.0, 1e-12);
  EXPECT_DOUBLE_EQ(paired->sign_test_p, 1.0);
  ASSERT_GT(paired->b.regret, 0.0);  // B chose a bad plan for its first patient
  EXPECT_NEAR(paired->regret_ratio, paired->a.regret / paired->b.regret, 1e-12);
  const auto j = nlohmann::json::parse(paired->ToJson());
  EXPECT_EQ(j["patients"], 2);
  EXPECT_NEAR(j["a_minus_b"]["regret"]["mean"].get<double>(), d / 2.0, 1e-12);
  EXPECT_NEAR(j["a_minus_b"]["regret_median"].get<double>(), d / 2.0, 1e-12);
  EXPECT_NEAR(j["a_minus_b"]["regret_ratio"].get<double>(), paired->regret_ratio, 1e-12);
  EXPECT_DOUBLE_EQ(j["a_minus_b"]["sign_test_p"].get<double>(), 1.0);
  EXPECT_NE(paired->FormatTable().find("sign test p = 1"), std::string::npos);
  // The F1 difference split by item kind: each part's mean is that kind's A - B.
  EXPECT_NEAR(paired->drug_f1_diff.mean, paired->a.drug_f1 - paired->b.drug_f1, 1e-12);
  EXPECT_NEAR(paired->embolic_f1_diff.mean, paired->a.embolic_f1 - paired->b.embolic_f1, 1e-12);
  const auto plan = [](const std::string& text) { return *ActionBase::Default().ParsePlan(text); };
  const Plan optimal = plan(truth["patients"][id]["optimal_plan"].get<std::string>());
  const PlanMatch was = ComparePlanItems(plan(chosen), optimal);
  const PlanMatch now = ComparePlanItems(plan(worst), optimal);
  EXPECT_NEAR(paired->drug_f1_diff.mean, (was.drug_f1 - now.drug_f1) / 2.0, 1e-12);
  EXPECT_NEAR(paired->embolic_f1_diff.mean, (was.embolic_f1 - now.embolic_f1) / 2.0, 1e-12);
  EXPECT_NEAR(j["a_minus_b"]["f1_drugs"]["mean"].get<double>(), paired->drug_f1_diff.mean, 1e-12);
  EXPECT_EQ(j["methods"][0]["f1_embolics"].get<double>(), paired->a.embolic_f1);
  EXPECT_NE(paired->FormatTable().find("F1 by item kind: drugs"), std::string::npos);
  EXPECT_EQ(j["methods"].size(), 2u);
  EXPECT_NE(paired->FormatTable().find("by A only"), std::string::npos) << paired->FormatTable();
  // The one patient that differs is named, with both plans, and without it the runs tie.
  ASSERT_EQ(paired->decisive.size(), 1u);
  const PlanRunComparison::Decisive& p = paired->decisive[0];
  EXPECT_EQ(p.patient, id);
  EXPECT_NEAR(p.regret_a - p.regret_b, d, 1e-12);
  EXPECT_EQ(p.plan_b, worst);
  EXPECT_EQ(p.plan_a, chosen);
  if (paired->a.regret * 2 - p.regret_a > 0.0) {
    EXPECT_NEAR(p.ratio_without, 1.0, 1e-12);
  } else {
    EXPECT_TRUE(std::isnan(p.ratio_without));
  }
  EXPECT_EQ(j["decisive"][0]["patient"], id);
  EXPECT_EQ(j["decisive"][0]["plan_b"], worst);
  EXPECT_NE(paired->FormatTable().find("differ most"), std::string::npos);
  EXPECT_NE(paired->FormatTable().find("B: " + worst), std::string::npos);
  // Swapping the runs flips the sign and the counts.
  auto swapped = ComparePlanRuns(dir_.File("b"), dir_.File("out"));
  ASSERT_TRUE(swapped) << swapped.error().message;
  EXPECT_NEAR(swapped->regret_diff.mean, -d / 2.0, 1e-12);
  EXPECT_EQ(swapped->only_b, 1);
  EXPECT_EQ(swapped->a_worse, paired->a_better);

  // The same cohort read from another folder is still the same cohort ...
  fs::copy(cohort, dir_.File("cohort-copy"), fs::copy_options::recursive);
  summary["run"]["cohort"] = dir_.File("cohort-copy");
  write_json(dir_.File("b/summary.json"), summary);
  EXPECT_TRUE(ComparePlanRuns(dir_.File("out"), dir_.File("b")));
  // ... but a cohort whose truth differs is refused, naming the patient.
  nlohmann::json other = truth;
  other["patients"][id]["plan_risks"][worst] = risks[worst].get<double>() + 1.0;
  write_json(dir_.File("cohort-copy/truth/truth.json"), other);
  auto different = ComparePlanRuns(dir_.File("out"), dir_.File("b"));
  ASSERT_FALSE(different);
  EXPECT_EQ(different.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(different.error().message.find("different cohorts"), std::string::npos)
      << different.error().message;
  EXPECT_NE(different.error().message.find(id), std::string::npos);
  // A truth whose optimal plan has no risk is corrupt, not a crash.
  other["patients"][id]["plan_risks"].erase(
      other["patients"][id]["optimal_plan"].get<std::string>());
  write_json(dir_.File("cohort-copy/truth/truth.json"), other);
  for (const auto& corrupt : {ComparePlanRuns(dir_.File("out"), dir_.File("b")),
                              ComparePlanRuns(dir_.File("b"), dir_.File("out"))}) {
    ASSERT_FALSE(corrupt);
    EXPECT_EQ(corrupt.error().code, ErrorCode::kCorruptData);
    EXPECT_NE(corrupt.error().message.find("has no risk"), std::string::npos)
        << corrupt.error().message;
  }
  EXPECT_EQ(EvaluatePlans(dir_.File("b")).error().code, ErrorCode::kCorruptData);
  // A truth without the covariates: one run is still evaluated (it does not read the size), but
  // the comparison's size bands need it, so the comparison is refused, naming the field.
  other = truth;
  other["patients"][id].erase("covariates");
  write_json(dir_.File("cohort-copy/truth/truth.json"), other);
  EXPECT_TRUE(EvaluatePlans(dir_.File("b")));
  auto sizeless = ComparePlanRuns(dir_.File("b"), dir_.File("out"));
  ASSERT_FALSE(sizeless);
  EXPECT_EQ(sizeless.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(sizeless.error().message.find("max_diameter_mm"), std::string::npos)
      << sizeless.error().message;

  // No patient finished by both runs.
  summary["run"]["cohort"] = cohort;
  summary["patients"][0]["status"] = "failed";
  summary["patients"][1]["status"] = "failed";
  summary["patients"][2]["status"] = "finished";
  write_json(dir_.File("b/summary.json"), summary);
  nlohmann::json a = read_json(dir_.File("out/summary.json"));
  a["patients"][2]["status"] = "failed";
  write_json(dir_.File("out/summary.json"), a);
  auto disjoint = ComparePlanRuns(dir_.File("out"), dir_.File("b"));
  ASSERT_FALSE(disjoint);
  EXPECT_EQ(disjoint.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(disjoint.error().message.find("no finished patient in common"), std::string::npos)
      << disjoint.error().message;
  // A run that is not there, and a run whose summary is cut short.
  EXPECT_FALSE(ComparePlanRuns(dir_.File("out"), dir_.File("nowhere")));
  const std::string text = summary.dump(1);
  std::ofstream(dir_.File("b/summary.json")) << text.substr(0, text.size() / 2);
  auto truncated = ComparePlanRuns(dir_.File("out"), dir_.File("b"));
  ASSERT_FALSE(truncated);
  EXPECT_EQ(truncated.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(truncated.error().message.find("summary.json"), std::string::npos)
      << truncated.error().message;
}

TEST_F(RunnerTest, MajorityBaselineNeedsTwoOtherPatients) {
  CollectingSink sink;
  ASSERT_TRUE(Run(Spec("source = \"synthetic\"\nn = 2\nseed = 4\nspacing_mm = 2.0"), {}, &sink));
  auto eval = EvaluatePlans(dir_.File("out"));
  ASSERT_TRUE(eval) << eval.error().message;
  ASSERT_EQ(eval->methods.size(), 4u);
  EXPECT_EQ(eval->methods[2].method, "majority plan");
  EXPECT_FALSE(eval->methods[2].available);
  EXPECT_TRUE(eval->methods[0].available);
  const auto j = nlohmann::json::parse(eval->ToJson());
  EXPECT_TRUE(j["methods"][2]["f1"].is_null());
  EXPECT_TRUE(j["methods"][2]["regret_mean"].is_null());
  EXPECT_EQ(j["methods"][2]["available"], false);
  EXPECT_NE(eval->FormatTable().find("n/a"), std::string::npos);
}

TEST_F(RunnerTest, RunRefusesAForeignFolderBeforeWritingAnything) {
  fs::create_directories(dir_.File("out/patients/mine"));
  std::ofstream(dir_.File("out/patients/mine/scan.nii.gz")) << "a user's file";
  CollectingSink sink;
  auto refused = Run(Synthetic(), {}, &sink);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(sink.events.empty());
  EXPECT_FALSE(fs::exists(dir_.File("out/run.json")));
  RunOptions force;
  force.force = true;
  auto forced = Run(Synthetic(), force, &sink);
  ASSERT_FALSE(forced);
  EXPECT_NE(forced.error().message.find("scan.nii.gz"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir_.File("out/patients/mine/scan.nii.gz")));
  EXPECT_FALSE(CheckRunFolder(Synthetic(), {}));
}

TEST_F(RunnerTest, AFolderHoldingOnlyTheScenariosOwnCohortIsAcceptedAsEmpty) {
  // models/README.md generates the cohort inside the run's folder before `mewm run`.
  fs::create_directories(dir_.File("out/cohort"));
  std::ofstream(dir_.File("out/cohort/.mewm-cohort")) << R"({"generator": "mewm synthetic world"})";
  EXPECT_TRUE(CheckRunFolder(Synthetic(), {}));
  // Anything else beside it is still a foreign folder.
  std::ofstream(dir_.File("out/notes.txt")) << "a user's file";
  EXPECT_FALSE(CheckRunFolder(Synthetic(), {}));
}

TEST_F(RunnerTest, AFolderHoldingOneFileOfTheUsersIsNotEmpty) {
  // The one entry used to be taken for the cohort, which did not exist yet: the folder counted as
  // empty, and the run overwrote a lone summary.csv of the user's without --force.
  for (const char* name : {"notes.txt", "summary.csv", "events.jsonl"}) {
    fs::remove_all(dir_.File("out"));
    fs::create_directories(dir_.File("out"));
    std::ofstream(dir_.File("out/") + name) << "a user's file";
    auto refused = CheckRunFolder(Synthetic(), {});
    ASSERT_FALSE(refused) << name;
    EXPECT_NE(refused.error().message.find("is not empty"), std::string::npos)
        << refused.error().message;
    CollectingSink sink;
    EXPECT_FALSE(Run(Synthetic(), {}, &sink)) << name;
    auto kept = ReadFile(dir_.File("out/") + name);
    ASSERT_TRUE(kept) << name;
    EXPECT_EQ(*kept, "a user's file") << name;
  }
  // A file named like the cohort folder is not the cohort either.
  fs::remove_all(dir_.File("out"));
  fs::create_directories(dir_.File("out"));
  std::ofstream(dir_.File("out/cohort")) << "a user's file";
  EXPECT_FALSE(CheckRunFolder(Synthetic(), {}));
}

TEST(EventsTest, JsonRoundTripAndCutOffLastLine) {
  testing::TempDir dir;
  Event e{"run-1", 7, 123, CandidateEvaluated{"P1", "drug", 2, {{"A", "B"}, 0.5, 0.1}, true}};
  auto back = EventFromJson(EventToJson(e));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(EventToJson(*back), EventToJson(e));
  EXPECT_STREQ(EventTypeName(back->body), "candidate_evaluated");
  EXPECT_EQ(EventFromJson("{").error().code, ErrorCode::kParse);
  EXPECT_EQ(EventFromJson(R"({"run_id":"r","seq":1,"timestamp_ns":0,"type":"nope"})").error().code,
            ErrorCode::kCorruptData);
  // A crash can cut the last line short; the complete lines before it still read.
  const std::string line = EventToJson(e);
  std::ofstream(dir.File("events.jsonl")) << line << "\n" << line << "\n" << line.substr(0, 20);
  auto events = ReadEvents(dir.File("events.jsonl"));
  ASSERT_TRUE(events) << events.error().message;
  EXPECT_EQ(events->size(), 2u);
  // A corrupt line in the middle is an error naming the line.
  std::ofstream(dir.File("bad.jsonl")) << line << "\n{oops}\n" << line << "\n";
  auto bad = ReadEvents(dir.File("bad.jsonl"));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("bad.jsonl:2"), std::string::npos) << bad.error().message;
}

TEST(PlanMatchTest, ItemSetMetrics) {
  const auto m = ComparePlanItems(Plan({"A", "B", "C"}), Plan({"A", "B", "D", "E"}));
  EXPECT_DOUBLE_EQ(m.precision, 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(m.recall, 0.5);
  EXPECT_DOUBLE_EQ(m.f1, 2 * (2.0 / 3.0) * 0.5 / (2.0 / 3.0 + 0.5));
  EXPECT_DOUBLE_EQ(m.jaccard, 2.0 / 5.0);
  EXPECT_FALSE(m.exact);
  EXPECT_TRUE(ComparePlanItems(Plan({"A"}), Plan({"A"})).exact);
  EXPECT_EQ(ComparePlanItems(Plan({"A"}), Plan({"B"})).f1, 0.0);
}

TEST(PlanMatchTest, SplitsTheAgreementIntoDrugsAndTheOtherItems) {
  // The right embolics with the wrong drug: the drugs disagree, the rest agrees.
  const auto wrong_drug = ComparePlanItems(Plan({"Lipiodol", "PVA", "Raltitrexed"}),
                                           Plan({"Lipiodol", "PVA", "Nedaplatin"}));
  EXPECT_DOUBLE_EQ(wrong_drug.drug_f1, 0.0);
  EXPECT_DOUBLE_EQ(wrong_drug.embolic_f1, 1.0);
  EXPECT_DOUBLE_EQ(wrong_drug.f1, 2.0 / 3.0);
  // One drug of the optimum's two, and another embolic beside Lipiodol.
  const auto half = ComparePlanItems(Plan({"Gelatin Sponge", "Lipiodol", "Raltitrexed"}),
                                     Plan({"Lipiodol", "Nedaplatin", "PVA", "Raltitrexed"}));
  EXPECT_DOUBLE_EQ(half.drug_f1, 2 * 1.0 * 0.5 / 1.5);
  EXPECT_DOUBLE_EQ(half.embolic_f1, 0.5);
  // Neither plan has a drug: they agree on having none. A drug where the optimum has none is 0.
  EXPECT_DOUBLE_EQ(ComparePlanItems(Plan({"Lipiodol"}), Plan({"Lipiodol", "PVA"})).drug_f1, 1.0);
  EXPECT_DOUBLE_EQ(ComparePlanItems(Plan({"Lipiodol", "Mitomycin"}), Plan({"Lipiodol"})).drug_f1,
                   0.0);
  // Items outside the vocabulary count with the embolics, never as drugs.
  EXPECT_DOUBLE_EQ(ComparePlanItems(Plan({"A"}), Plan({"A"})).embolic_f1, 1.0);
  EXPECT_DOUBLE_EQ(ComparePlanItems(Plan({"A"}), Plan({"A"})).drug_f1, 1.0);
}

}  // namespace
}  // namespace mewm::scenarios
