// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Runs the real `mewm` binary on real files and checks exit codes, outputs and messages.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "../core/test_env.h"
#include "mewm/core/file_util.h"
#include "mewm/core/nifti_io.h"
#include "mewm/core/render.h"
#include "mewm/core/sha256.h"
#include "mewm/core/vdb_io.h"
#include "mewm/core/volume_file.h"

// Last: httplib.h includes <resolv.h>, whose `_res` macro breaks Eigen headers included after it.
#include <httplib.h>  // NOLINT(llvm-include-order)

namespace mewm {
namespace {

struct Result {
  int code = -1;
  std::string output;  // stdout and stderr together
};

/// Runs mewm through the shell: `prefix` goes before the command (environment, `timeout ...`).
Result RunMewmWith(const std::string& prefix, const std::string& args) {
  Result r;
  const std::string command = prefix + std::string(MEWM_CLI) + " " + args + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return r;
  std::array<char, 4096> buffer{};
  std::size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
    r.output.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

Result RunMewm(const std::string& args) { return RunMewmWith("", args); }

class CliTest : public testing::VdbTest {
 protected:
  void SetUp() override {
    Geometry g;
    g.spacing = Eigen::Vector3d(0.8, 0.8, 2.0);
    g.origin = Eigen::Vector3d(-10, -20, 30);
    DenseFloat ct({20, 18, 6}, g, -1000.0f);
    DenseLabel tumor({20, 18, 6}, g, 0);
    for (int k = 0; k < 6; ++k)
      for (int j = 2; j < 16; ++j)
        for (int i = 2; i < 18; ++i) {
          ct.at(i, j, k) = 55.0f + float(i);
          if (i > 8 && i < 12 && j > 7 && j < 11) tumor.at(i, j, k) = 1;
        }
    ct_path_ = dir_.File("ct.nii.gz");
    tumor_path_ = dir_.File("tumor.nii.gz");
    ASSERT_TRUE(WriteNifti(ct_path_, ct));
    ASSERT_TRUE(WriteNiftiLabels(tumor_path_, tumor));
  }
  testing::TempDir dir_;
  std::string ct_path_, tumor_path_;
};

TEST_F(CliTest, VersionAndHelp) {
  const Result version = RunMewm("--version");
  EXPECT_EQ(version.code, 0);
  EXPECT_NE(version.output.find("mewm 0."), std::string::npos);
  for (const char* sub : {"inspect", "convert", "render", "bench", "cohort", "cohort generate"}) {
    const Result help = RunMewm(std::string(sub) + " --help");
    EXPECT_EQ(help.code, 0) << sub;
    EXPECT_NE(help.output.find("Usage"), std::string::npos) << sub;
  }
  EXPECT_NE(RunMewm("frobnicate").code, 0);
}

TEST_F(CliTest, UsageErrorsExitTwoAndNameTheProblem) {
  // An unknown command is named, with the list of commands.
  Result r = RunMewm("frobnicate");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("unknown command 'frobnicate'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("  run\n"), std::string::npos) << r.output;
  // Also below a command: the subcommands of that command are listed.
  r = RunMewm("train frobnicate --cohort x");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("unknown command 'train frobnicate'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("  dynamics\n"), std::string::npos) << r.output;
  // CLI11's own codes (105, 106, ...) become 2: a missing argument, an unknown flag, a bad value.
  for (const char* args : {"render", "inspect --frobnicate x", "run",
                           "eval dynamics --cohort x "
                           "--model y --config gpu",
                           "render x --out y.png --index abc"}) {
    r = RunMewm(args);
    EXPECT_EQ(r.code, 2) << args << ": " << r.output;
  }
  // Runtime errors stay 1.
  r = RunMewm("inspect " + dir_.File("none.vdb"));
  EXPECT_EQ(r.code, 1) << r.output;
  // --log-level's value is not mistaken for a command.
  r = RunMewm("--log-level error inspect --json " + ct_path_);
  EXPECT_EQ(r.code, 0) << r.output;
}

TEST_F(CliTest, EveryCommandsHelpShowsAnExample) {
  for (const char* sub : {"run",
                          "merge",
                          "serve",
                          "submit",
                          "watch",
                          "status",
                          "cancel",
                          "keygen",
                          "train survival",
                          "train mechanistic",
                          "train dynamics",
                          "train drug-average",
                          "train policy",
                          "eval plans",
                          "eval policy",
                          "eval survival",
                          "eval dynamics",
                          "inspect",
                          "convert",
                          "render",
                          "cohort generate",
                          "cohort stats",
                          "bench core",
                          "bench world",
                          "bench planner",
                          "bench stream",
                          "bench dynamics"}) {
    const Result help = RunMewm(std::string(sub) + " --help");
    EXPECT_EQ(help.code, 0) << sub;
    const std::size_t at = help.output.find("Example:\n  mewm " + std::string(sub));
    ASSERT_NE(at, std::string::npos) << sub << ": " << help.output;
    // Every flag the example uses is one the command offers (an example that is a usage error
    // teaches the wrong thing): the options part of the help lists it.
    const std::string options = help.output.substr(0, at);
    const std::string example = help.output.substr(at, help.output.find('\n', at + 11) - at);
    for (std::size_t p = example.find(" --"); p != std::string::npos;
         p = example.find(" --", p + 1)) {
      const std::string flag = example.substr(p + 1, example.find_first_of(" \n=", p + 1) - p - 1);
      bool offered = false;  // the flag itself, not a longer one that starts with it
      for (std::size_t q = options.find(flag); q != std::string::npos && !offered;
           q = options.find(flag, q + 1)) {
        const char next = q + flag.size() < options.size() ? options[q + flag.size()] : ' ';
        offered = std::isalnum(static_cast<unsigned char>(next)) == 0 && next != '-';
      }
      EXPECT_TRUE(offered) << sub << ": example flag " << flag;
    }
  }
}

TEST_F(CliTest, RenderRefusesNegativeIndicesAndOtherFormats) {
  Result r = RunMewm("render " + ct_path_ + " --index -5 --out " + dir_.File("a.png"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("outside"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("a.png")));
  r = RunMewm("render " + ct_path_ + " --out " + dir_.File("a.jpg"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("*.png"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("a.jpg")));
  r = RunMewm("render " + ct_path_ + " --index -1 --out " + dir_.File("a.png"));
  EXPECT_EQ(r.code, 0) << r.output;
}

TEST_F(CliTest, AnExistingOutputFileIsReplacedOnlyWithForce) {
  // Every command that writes a file named on its command line: an existing file there is the
  // user's until they say otherwise. Refused before any input is read (the inputs here do not
  // exist), the file unchanged; --force replaces it.
  const std::string mine = dir_.File("mine.out");
  std::ofstream(mine) << "the user's file";
  const std::string none = dir_.File("none");
  for (const std::string& args : {
           "render " + ct_path_ + " --out " + mine,
           "convert " + ct_path_ + " " + mine,
           "train survival --cohort " + none + " --out " + mine,
           "train mechanistic --cohort " + none + " --out " + mine,
           "train dynamics --cohort " + none + " --out " + mine,
           "train policy --cohort " + none + " --out " + mine,
           "eval plans " + none + " --json-out " + mine,
           "eval survival --model " + none + " --cohort " + none + " --train-cohort " + none +
               " --plot " + mine,
           "eval dynamics --cohort " + none + " --model " + none + " --json-out " + mine,
           "eval policy --cohort " + none + " --checkpoint " + none + " --json-out " + mine,
           "bench planner " + none + " --json-out " + mine,
           "bench dynamics " + none + " --json-out " + mine,
           "turing audit " + none + " --key " + none + " --json-out " + mine,
           "turing score " + none + " --key " + none + " --plot " + mine,
           "import dicom " + none + " --out " + dir_.File("mine.vdb"),
       }) {
    if (args.rfind("import", 0) == 0) std::ofstream(dir_.File("mine.vdb")) << "the user's file";
    const Result r = RunMewm(args);
    EXPECT_EQ(r.code, 1) << args << ": " << r.output;
    EXPECT_NE(r.output.find("' exists; choose another name, or pass --force"), std::string::npos)
        << args << ": " << r.output;
  }
  EXPECT_EQ(*ReadFile(mine), "the user's file");
  EXPECT_EQ(*ReadFile(dir_.File("mine.vdb")), "the user's file");
  // Two outputs of one command naming one file: the PNG replaced the JSON report, --force or not.
  const std::string report = dir_.File("report.out");
  for (const std::string& args : {
           "eval survival --model " + none + " --cohort " + none + " --train-cohort " + none +
               " --json-out " + report + " --plot " + dir_.path().string() +
               "/./report.out --force",
           "turing score " + none + " --key " + none + " --json-out " + report + " --plot " +
               report,
       }) {
    const Result r = RunMewm(args);
    EXPECT_EQ(r.code, 1) << args << ": " << r.output;
    EXPECT_NE(r.output.find("--json-out and --plot name the same file"), std::string::npos)
        << args << ": " << r.output;
  }
  EXPECT_FALSE(std::filesystem::exists(report));
  // Asked to, the commands replace it.
  const std::string png = dir_.File("slice.png"), nii = dir_.File("copy.nii.gz");
  for (const std::string& args :
       {"render " + ct_path_ + " --out " + png, "convert " + ct_path_ + " " + nii}) {
    ASSERT_EQ(RunMewm(args).code, 0) << args;
    EXPECT_EQ(RunMewm(args).code, 1) << args;
    const Result r = RunMewm(args + " --force");
    EXPECT_EQ(r.code, 0) << args << ": " << r.output;
  }
}

TEST_F(CliTest, TrainingChecksItsOutputsBeforeItStarts) {
  // The cohort does not matter: the unwritable --out is refused first, before any reading.
  for (const char* kind : {"survival", "mechanistic", "dynamics", "policy"}) {
    const Result r = RunMewm(std::string("train ") + kind + " --cohort " + dir_.File("none") +
                             " --out " + dir_.File("no/such/folder/m.out"));
    EXPECT_EQ(r.code, 1) << kind << ": " << r.output;
    EXPECT_NE(r.output.find("does not exist"), std::string::npos) << kind << ": " << r.output;
    EXPECT_NE(r.output.find("m.out"), std::string::npos) << kind << ": " << r.output;
  }
  // The state folder of `train dynamics` too: a file where the folder should be.
  const std::string file = dir_.File("a_file");
  std::ofstream(file) << "x";
  const Result r = RunMewm("train dynamics --cohort " + dir_.File("none") + " --out " +
                           dir_.File("d.pt") + " --state-dir " + file + "/state");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("a_file/state"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("d.pt")));
  // A device this build cannot use is refused before the cohort is read, and the state folder is
  // not created. With a CUDA build on a GPU machine, `cuda` passes and the missing cohort stops it.
  for (const char* device : {"gpu", "cuda"}) {
    const Result d =
        RunMewm("train dynamics --cohort " + dir_.File("none") + " --out " + dir_.File("d.pt") +
                " --state-dir " + dir_.File("d_state") + " --device " + device);
    EXPECT_NE(d.code, 0) << device << ": " << d.output;
    const bool refused = d.output.find(std::string("--device")) != std::string::npos;
    if (std::string(device) == "gpu") {
      EXPECT_TRUE(refused) << d.output;
      EXPECT_NE(d.output.find("expected cpu, cuda or cuda:N"), std::string::npos) << d.output;
    } else if (refused) {
      EXPECT_NE(d.output.find("no usable CUDA"), std::string::npos) << d.output;
    }
    if (refused) {
      EXPECT_FALSE(std::filesystem::exists(dir_.File("d_state"))) << device;
    }
    EXPECT_FALSE(std::filesystem::exists(dir_.File("d.pt"))) << device;
  }
  // `eval dynamics` resolves its device before it reads the checkpoint.
  const Result eval = RunMewm("eval dynamics --cohort " + dir_.File("none") + " --model " +
                              dir_.File("none.pt") + " --device gpu");
  EXPECT_NE(eval.code, 0) << eval.output;
  EXPECT_NE(eval.output.find("expected cpu, cuda or cuda:N"), std::string::npos) << eval.output;
  // Another run's policy state beside a new --out is kept: refused without --resume or --force,
  // before any cohort is read.
  std::filesystem::create_directories(dir_.File("p.pt.state"));
  std::ofstream(dir_.File("p.pt.state/state.json")) << "{\"epoch\": 3}";
  const Result state =
      RunMewm("train policy --cohort " + dir_.File("none") + " --out " + dir_.File("p.pt"));
  EXPECT_EQ(state.code, 1) << state.output;
  EXPECT_NE(state.output.find("p.pt.state' exists"), std::string::npos) << state.output;
  EXPECT_EQ(*ReadFile(dir_.File("p.pt.state/state.json")), "{\"epoch\": 3}");
  // A file where OUT.state/ goes is refused before training, even with --force, and kept.
  std::ofstream(dir_.File("q.pt.state")) << "mine";
  for (const char* flag : {"", " --force", " --resume"}) {
    const Result file_state = RunMewm("train policy --cohort " + dir_.File("none") + " --out " +
                                      dir_.File("q.pt") + flag);
    EXPECT_EQ(file_state.code, 1) << flag << ": " << file_state.output;
    EXPECT_NE(file_state.output.find("q.pt.state' exists and is not a folder"), std::string::npos)
        << flag << ": " << file_state.output;
  }
  EXPECT_EQ(*ReadFile(dir_.File("q.pt.state")), "mine");
  // Thread counts past any machine's, and negative patient counts, are usage errors.
  const Result threads = RunMewm("eval policy --cohort " + dir_.File("none") + " --threads 2000");
  EXPECT_EQ(threads.code, 2) << threads.output;
  EXPECT_NE(threads.output.find("not in range"), std::string::npos) << threads.output;
  const Result negative =
      RunMewm("eval policy --cohort " + dir_.File("none") + " --checkpoint x.pt --max-patients -5");
  EXPECT_EQ(negative.code, 2) << negative.output;
}

TEST_F(CliTest, BenchCoreKeepsItsFilesOnlyInAnExistingFolderAndReplacesThemOnlyWithForce) {
  const std::string file = dir_.File("a_file");
  std::ofstream(file) << "x";
  Result r = RunMewm("bench core --repeats 1 --keep " + file);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("is not an existing folder"), std::string::npos) << r.output;
  r = RunMewm("bench core --repeats 1 --keep " + dir_.File("no/such"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("no")));
  std::filesystem::create_directories(dir_.File("keep"));
  std::ofstream(dir_.File("keep/phantom.vdb")) << "mine";
  r = RunMewm("bench core --repeats 1 --keep " + dir_.File("keep"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_EQ(*ReadFile(dir_.File("keep/phantom.vdb")), "mine");
}

TEST_F(CliTest, OutputsInsideTheCommandsInputsAreRefusedBeforeAnythingIsRead) {
  // `train survival --out COHORT/manifest.json` replaced the cohort it trained on; `turing score
  // --json-out KEY` the study's answer key.
  const std::string cohort = dir_.File("cohort");
  std::filesystem::create_directories(cohort + "/answers");
  std::ofstream(cohort + "/manifest.json") << "the user's manifest";
  const std::string key = dir_.File("key.json");
  std::ofstream(key) << "the study's key";
  for (const std::string& args :
       {"train survival --cohort " + cohort + " --out " + cohort + "/manifest.json",
        "train mechanistic --cohort " + cohort + " --out " + cohort + "/m.json",
        "train survival --cohort " + dir_.File("none") + " --eval-cohort " + cohort + " --out " +
            cohort + "/answers/../s.json",
        "train dynamics --cohort " + cohort + " --out " + cohort + "/d.pt",
        "train policy --cohort " + cohort + " --out " + cohort + "/p.pt",
        "turing score " + cohort + " --key " + key + " --json-out " + key,
        "turing score " + cohort + " --key " + key + " --plot " + cohort + "/answers/a.png",
        "turing audit " + cohort + " --key " + key + " --json-out " + dir_.File(".") +
            "/key.json"}) {
    const Result r = RunMewm(args);
    EXPECT_EQ(r.code, 1) << args << ": " << r.output;
    EXPECT_NE(r.output.find("which this command reads and does not replace"), std::string::npos)
        << args << ": " << r.output;
  }
  const auto text = [](const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(text(cohort + "/manifest.json"), "the user's manifest");
  EXPECT_EQ(text(key), "the study's key");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(cohort),
                          std::filesystem::directory_iterator()),
            2);  // manifest.json and answers/, nothing written
}

TEST_F(CliTest, AMissingTableIsNamedByTheBinary) {
  // A scenario without its [cohort] table: the message names the table, never a placeholder.
  const std::string scenario = dir_.File("s.toml");
  std::ofstream(scenario) << "[run]\nname = \"t\"\n";
  const Result r = RunMewm("run " + scenario + " --out " + dir_.File("out"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("[cohort]"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("__missing__"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("out")));
}

TEST_F(CliTest, AFullDiskFailsEachPatientCleanlyAndARerunPlansThem) {
  // A full disk, made reproducible by a file-size limit (64-128 KiB: the shell's ulimit unit is
  // 512 or 1024 bytes): every patient's volume is cut short. Each patient must be recorded as
  // failed with the reason, no half-written folder may stay, and the run must go on; a rerun
  // with room plans them.
  const std::string cohort = dir_.File("c");
  Result r =
      RunMewm("cohort generate --n 2 --seed 3 --spacing 3 --no-nifti --quiet --out " + cohort);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string models = std::string(MEWM_SOURCE_DIR) + "/models/";
  const std::string scenario = dir_.File("s.toml");
  std::ofstream(scenario) << "[run]\nname = \"d\"\nseed = 1\n[cohort]\nsource = \"synthetic\"\n"
                             "n = 2\nseed = 3\nspacing_mm = 3.0\ndir = \""
                          << cohort << "\"\n[dynamics]\nbackend = \"mechanistic\"\ncalibration = \""
                          << models << "mechanistic_calibration.json\"\n[survival]\nbackend = "
                          << "\"cox\"\nmodel = \"" << models
                          << "cox_survival.json\"\n[planner]\nbeams = 1\nsamples = 1\n"
                             "drug_horizon = 1\nembolic_horizon = 1\n";
  const std::string out = dir_.File("out");
  r = RunMewmWith("trap '' XFSZ; ulimit -f 128; ", "run " + scenario + " --quiet --out " + out);
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("0 planned, 2 failed"), std::string::npos) << r.output;
  EXPECT_EQ(testing::FileNames(out + "/patients"), (std::set<std::string>{"P0001", "P0002"}));
  for (const std::string id : {"P0001", "P0002"}) {
    EXPECT_EQ(testing::FileNames(out + "/patients/" + id), std::set<std::string>{"result.json"})
        << id;
    const auto result = nlohmann::json::parse(*ReadFile(out + "/patients/" + id + "/result.json"));
    EXPECT_EQ(result.at("status"), "failed");
    EXPECT_NE(result.at("error").get<std::string>().find("short write"), std::string::npos)
        << result.dump();
  }
  r = RunMewm("run " + scenario + " --quiet --out " + out);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("2 planned, 0 failed"), std::string::npos) << r.output;
  EXPECT_TRUE(ReadVdb(out + "/patients/P0002/post_chosen.vdb"));
}

TEST_F(CliTest, ADiffusionScenarioPlansThroughTheBinarysBackendRegistry) {
  // The binary's registry carries the libtorch backend: a diffusion scenario plans (a registry
  // without it would end the run with "built without the diffusion dynamics backend").
  const std::string models = std::string(MEWM_SOURCE_DIR) + "/models/";
  const std::string scenario = dir_.File("d.toml");
  std::ofstream(scenario) << "[run]\nname = \"d\"\nseed = 1\noutput = \"" << dir_.File("out")
                          << "\"\n[cohort]\nsource = \"synthetic\"\n"
                             "n = 1\nseed = 5\nspacing_mm = 1.0\n[dynamics]\nbackend = "
                             "\"diffusion\"\nmodel = \""
                          << models
                          << "dynamics_diffusion.pt\"\nsteps = 2\n[survival]\nbackend = \"cox\"\n"
                             "model = \""
                          << models
                          << "cox_survival_diffusion.json\"\n[planner]\nbeams = 1\nsamples = 1\n"
                             "drug_horizon = 1\nembolic_horizon = 1\n";
  const Result r = RunMewm("run " + scenario + " --quiet --out " + dir_.File("out"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("1 planned, 0 failed"), std::string::npos) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir_.File("out/patients/P0001/post_chosen.vdb")));
  // `bench dynamics --patient` names a patient of the scenario's cohort; another id is refused
  // before anything is timed.
  const Result bench = RunMewm("bench dynamics " + scenario + " --patient P0009");
  EXPECT_EQ(bench.code, 1) << bench.output;
  EXPECT_NE(bench.output.find("the cohort has no patient 'P0009'"), std::string::npos)
      << bench.output;
  // Its figures never go into the cohort it reads, even with --force (they replaced its
  // manifest); `bench planner` reads the same folder.
  const std::string manifest = dir_.File("out/cohort/manifest.json");
  const Expected<std::string> before = ReadFile(manifest);
  ASSERT_TRUE(before) << before.error().message;
  for (const char* bench_kind : {"dynamics", "planner"}) {
    const Result into = RunMewm(std::string("bench ") + bench_kind + " " + scenario +
                                " --json-out " + manifest + " --force");
    EXPECT_EQ(into.code, 1) << bench_kind << ": " << into.output;
    EXPECT_NE(into.output.find("--json-out"), std::string::npos) << into.output;
    EXPECT_EQ(*ReadFile(manifest), *before) << bench_kind;
  }
}

TEST_F(CliTest, TheShippedDiffusionScenariosPlanAPatient) {
  // The shipped scenario files themselves, their models and settings as they are, on one patient
  // of their cohort: only the cohort's size and the two folders change, and the models are read
  // where the scenario names them (its folder's ../../models).
  for (const char* name : {"tace_cohort_eval_diffusion", "tace_cohort_eval_vlm_diffusion"}) {
    const std::string source = std::string(MEWM_SOURCE_DIR) + "/scenarios/" + name;
    Expected<std::string> text = ReadFile(source + "/scenario.toml");
    ASSERT_TRUE(text) << text.error().message;
    const std::string out = dir_.File(std::string("out_") + name);
    const std::string cohort = dir_.File(std::string("cohort_") + name);
    std::string edited;
    std::istringstream lines(*text);
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("n = ", 0) == 0) line = "n = 1";
      if (line.rfind("dir = ", 0) == 0) line = "dir = \"" + cohort + "\"";
      if (line.rfind("output = ", 0) == 0) line = "output = \"" + out + "\"";
      const std::string relative_models = "../../models/";
      for (std::size_t at; (at = line.find(relative_models)) != std::string::npos;) {
        line.replace(at, relative_models.size(), std::string(MEWM_SOURCE_DIR) + "/models/");
      }
      edited += line + "\n";
    }
    const std::string scenario = dir_.File(std::string(name) + ".toml");
    std::ofstream(scenario) << edited;
    const Result r = RunMewm("run " + scenario + " --quiet");
    EXPECT_EQ(r.code, 0) << name << ": " << r.output;
    EXPECT_NE(r.output.find("1 planned, 0 failed"), std::string::npos) << name << ": " << r.output;
    EXPECT_TRUE(std::filesystem::exists(out + "/patients/P0001/post_chosen.vdb")) << name;
  }
}

TEST_F(CliTest, AnOpenAiPolicyScenarioSearchesOnlyWithinTheEndpointsPlans) {
  // A chat endpoint on 127.0.0.1: the first request is rate limited, then every answer names
  // two plans (one by an alias). The run plans each patient within those plans.
  httplib::Server endpoint;
  std::atomic<int> requests{0};
  endpoint.Post("/v1/chat/completions", [&](const httplib::Request& req, httplib::Response& res) {
    const auto body = nlohmann::json::parse(req.body, nullptr, false);
    if (requests++ == 0 || body.is_discarded()) {
      res.status = 429;
      res.set_header("Retry-After", "0");
      return;
    }
    const nlohmann::json plans = {
        {"plans",
         {{{"items", {"Lipiodol", "THP"}}, {"rationale", "hypervascular"}},
          {{"items", {"Lipiodol", "Gelatin Sponge", "Raltitrexed"}}, {"rationale", "large"}}}}};
    res.set_content(
        nlohmann::json{
            {"choices", {{{"message", {{"role", "assistant"}, {"content", plans.dump()}}}}}}}
            .dump(),
        "application/json");
  });
  const int port = endpoint.bind_to_any_port("127.0.0.1");
  std::thread serve([&] { endpoint.listen_after_bind(); });
  const std::string models = std::string(MEWM_SOURCE_DIR) + "/models/";
  const std::string scenario = dir_.File("o.toml");
  std::ofstream(scenario) << "[run]\nname = \"o\"\nseed = 1\n[cohort]\nsource = \"synthetic\"\n"
                             "n = 2\nseed = 5\nspacing_mm = 2.0\n[policy]\nbackend = \"openai\"\n"
                             "endpoint = \"http://127.0.0.1:"
                          << port
                          << "/v1\"\nmodel = \"m\"\napi_key_env = \"\"\nmax_backoff_s = 0.1\n"
                             "[dynamics]\nbackend = \"mechanistic\"\ncalibration = \""
                          << models << "mechanistic_calibration.json\"\n[survival]\nbackend = "
                          << "\"cox\"\nmodel = \"" << models
                          << "cox_survival.json\"\n[planner]\nbeams = 2\nsamples = 1\n";
  const Result r = RunMewm("run " + scenario + " --quiet --out " + dir_.File("out"));
  endpoint.stop();
  serve.join();
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("2 planned, 0 failed"), std::string::npos) << r.output;
  EXPECT_EQ(requests.load(), 3);  // one 429, then one answer per patient
  for (const char* id : {"P0001", "P0002"}) {
    auto text = ReadFile(dir_.File(std::string("out/patients/") + id + "/result.json"));
    ASSERT_TRUE(text) << id;
    const auto result = nlohmann::json::parse(*text);
    // The search walks from Lipiodol alone to the endpoint's plans, and nowhere else.
    const std::set<std::string> walk = {"Lipiodol", "Lipiodol+Pirarubicin",
                                        "Gelatin Sponge+Lipiodol", "Lipiodol+Raltitrexed",
                                        "Gelatin Sponge+Lipiodol+Raltitrexed"};
    EXPECT_TRUE(walk.count(result["chosen"]["plan"])) << result["chosen"]["plan"];
    EXPECT_EQ(result["candidates"].front()["plan"], "Lipiodol");
    for (const auto& candidate : result["candidates"]) {
      EXPECT_TRUE(walk.count(candidate["plan"]))
          << "searched outside the endpoint's plans: " << candidate["plan"];
    }
    ASSERT_TRUE(result["proposal"].contains("plans")) << result["proposal"].dump();
    EXPECT_EQ(result["proposal"]["plans"].size(), 2u) << result["proposal"].dump();
  }
}

TEST_F(CliTest, ALibtorchErrorIsOneLineUnlessVerbose) {
  // A file that is no checkpoint, with no checksum beside it: libtorch's reader fails, and the
  // person sees its cause in one line; the backtrace (frame #0 ...) only with --verbose.
  const std::string model = dir_.File("broken.pt");
  std::ofstream(model) << std::string("PK\x03\x04 not a zip archive at all", 33);
  Result r = RunMewm("inspect " + model);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("broken.pt"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("frame #"), std::string::npos) << r.output;
  EXPECT_LE(std::count(r.output.begin(), r.output.end(), '\n'), 2) << r.output;
  r = RunMewm("--verbose inspect " + model);
  EXPECT_EQ(r.code, 1) << r.output;
}

TEST_F(CliTest, ConvertNiftiToVdbAndBackThenInspect) {
  const std::string vdb = dir_.File("ct.vdb");
  const std::string back = dir_.File("back.nii");
  Result r = RunMewm("convert " + ct_path_ + " " + vdb + " --patient-id P1");
  ASSERT_EQ(r.code, 0) << r.output;
  r = RunMewm("convert " + vdb + " " + back);
  ASSERT_EQ(r.code, 0) << r.output;
  auto a = ReadNifti(ct_path_);
  auto b = ReadNifti(back);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->data, b->data);
  EXPECT_TRUE(a->geometry.ApproxEquals(b->geometry, 1e-5));

  r = RunMewm("inspect " + vdb);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("grid 'ct'"), std::string::npos);
  EXPECT_NE(r.output.find("patient 'P1'"), std::string::npos);
  EXPECT_NE(r.output.find("[20,18,6]"), std::string::npos);
  r = RunMewm("inspect --json " + ct_path_);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("\"affine_ras\""), std::string::npos);
}

TEST_F(CliTest, RenderWithOverlayWritesAPng) {
  const std::string png = dir_.File("slice.png");
  const Result r =
      RunMewm("render " + ct_path_ + " --plane axial --index 3 --window -175,600 --overlay " +
              tumor_path_ + " --out " + png);
  ASSERT_EQ(r.code, 0) << r.output;
  auto image = ReadPng(png);
  ASSERT_TRUE(image);
  EXPECT_EQ(image->width, 20);
}

TEST_F(CliTest, ConvertWritesEveryGridOfAMultiGridVdbOrTheGridAsked) {
  // A .vdb of two grids, as `mewm convert` writes one from a CT and a mask.
  const std::string vdb = dir_.File("patient.vdb");
  auto ct = ReadVolumeFile(ct_path_, NiftiKind::kScalar, "ct");
  auto tumor = ReadVolumeFile(tumor_path_, NiftiKind::kLabel, "tumor");
  ASSERT_TRUE(ct && tumor);
  VolumeSet set = *ct;
  set.labels = tumor->labels;
  ASSERT_TRUE(WriteVdb(vdb, set));
  Result r = RunMewm("convert " + vdb + " " + dir_.File("out.nii.gz"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("wrote " + dir_.File("out_ct.nii.gz")), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("wrote " + dir_.File("out_tumor.nii.gz")), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("out.nii.gz")));
  auto a = ReadNifti(ct_path_);
  auto b = ReadNifti(dir_.File("out_ct.nii.gz"));
  auto m = ReadNiftiLabels(tumor_path_);
  auto n = ReadNiftiLabels(dir_.File("out_tumor.nii.gz"));
  ASSERT_TRUE(a && b && m && n);
  EXPECT_EQ(a->data, b->data);
  EXPECT_EQ(m->data, n->data);
  EXPECT_TRUE(a->geometry.ApproxEquals(b->geometry, 1e-5));
  EXPECT_TRUE(m->geometry.ApproxEquals(n->geometry, 1e-5));
  // --grid still picks one grid into the file named.
  r = RunMewm("convert " + vdb + " " + dir_.File("only.nii") + " --grid tumor");
  ASSERT_EQ(r.code, 0) << r.output;
  auto only = ReadNiftiLabels(dir_.File("only.nii"));
  ASSERT_TRUE(only);
  EXPECT_EQ(only->data, m->data);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("only_ct.nii")));
  r = RunMewm("convert " + vdb + " " + dir_.File("x.nii") + " --grid liver");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("liver"), std::string::npos) << r.output;
}

TEST_F(CliTest, ConvertAutoReadsAnInt16CtWithNegativeHuAsCtAndSaysWhy) {
  const std::string kind = std::string(MEWM_TEST_DATA_DIR) + "/nifti/kind/";
  // An int16 CT (written by nibabel with scl_slope 1, as dcm2niix writes them).
  Result r = RunMewm("convert " + kind + "int16_hu.nii.gz " + dir_.File("ct.vdb"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("as CT (int16 data with negative values"), std::string::npos) << r.output;
  auto ct = ReadVdb(dir_.File("ct.vdb"));
  ASSERT_TRUE(ct);
  ASSERT_TRUE(ct->Scalar("ct")) << r.output;
  EXPECT_TRUE(ct->labels.empty());
  // A mask with the label intent code, and a uint8 mask without one.
  for (const char* name : {"int16_intent_label.nii.gz", "uint8_few_values.nii.gz"}) {
    const std::string seg_path = dir_.File(std::string(name) + ".vdb");
    r = RunMewm("convert " + kind + name + " " + seg_path);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("as labels ("), std::string::npos) << r.output;
    auto seg = ReadVdb(seg_path);
    ASSERT_TRUE(seg);
    EXPECT_TRUE(seg->Label("label")) << name;
  }
  // --kind overrides the evidence, and then nothing is said about it.
  r = RunMewm("convert " + kind + "uint8_few_values.nii.gz " + dir_.File("f.vdb") + " --kind ct");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("read "), std::string::npos) << r.output;
  auto forced = ReadVdb(dir_.File("f.vdb"));
  ASSERT_TRUE(forced);
  EXPECT_TRUE(forced->Scalar("ct"));
}

TEST_F(CliTest, ErrorsExitNonZeroAndNameTheFileAndProblem) {
  Result r = RunMewm("inspect " + dir_.File("missing.vdb"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("missing.vdb"), std::string::npos);
  EXPECT_NE(r.output.find("does not exist"), std::string::npos);

  // A name that is not UTF-8 cannot go into JSON: a usage error before anything runs (it exited
  // 70 inside the JSON encoder, after `run` had created its folder).
  for (const std::string& args :
       {"inspect '" + dir_.File("\xff.json") + "'",
        "run scenarios/tace_demo/scenario.toml --out '" + dir_.File("o_\xff") + "'"}) {
    r = RunMewm(args);
    EXPECT_EQ(r.code, 2) << args << ": " << r.output;
    EXPECT_NE(r.output.find("\\xff"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("' is not valid UTF-8"), std::string::npos) << r.output;
  }
  EXPECT_FALSE(std::filesystem::exists(dir_.File("o_\xff")));
  // A model file cut short is not JSON: an error, not "format": null and exit 0.
  std::ofstream(dir_.File("cut.json")) << "{\"format\": \"mewm.cox_surv";
  r = RunMewm("inspect " + dir_.File("cut.json"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("cut.json' is not JSON"), std::string::npos) << r.output;

  r = RunMewm("render " + ct_path_ + " --window 600 --out " + dir_.File("x.png"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--window"), std::string::npos);

  r = RunMewm("render " + ct_path_ + " --index 99 --out " + dir_.File("x.png"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("outside"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("x.png")));

  r = RunMewm("convert " + ct_path_ + " " + dir_.File("out.mha"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("unknown image format"), std::string::npos);

  std::filesystem::copy_file(ct_path_, dir_.File("cut.nii.gz"));
  testing::Truncate(dir_.File("cut.nii.gz"), std::filesystem::file_size(ct_path_) / 2);
  r = RunMewm("convert " + dir_.File("cut.nii.gz") + " " + dir_.File("cut.vdb"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("cut.nii.gz"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("cut.vdb")));
}

TEST_F(CliTest, CohortGenerateThenStats) {
  const std::string out = dir_.File("cohort");
  Result r = RunMewm("cohort generate --n 4 --seed 3 --spacing 3 --no-nifti --quiet --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(out + "/patients/P0004/pre.vdb"));
  r = RunMewm("cohort stats " + out + " --hu-patients 2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("oracle C-index"), std::string::npos);
  EXPECT_NE(r.output.find("liver HU"), std::string::npos);
  r = RunMewm("inspect " + out + "/patients/P0001/pre.vdb");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("grid 'tumor'"), std::string::npos);
}

TEST_F(CliTest, InterruptedCohortLeavesOnlyCompletePatients) {
  const std::string out = dir_.File("interrupted");
  const std::string command = std::string(MEWM_CLI) +
                              " cohort generate --n 40 --spacing 3 --no-nifti --quiet --out " +
                              out + " > /dev/null 2>&1 & echo $!";
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  int pid = 0;
  ASSERT_EQ(std::fscanf(pipe, "%d", &pid), 1);
  ::pclose(pipe);
  // Wait (bounded) until at least one patient is complete, then kill the generator mid-run.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!std::filesystem::exists(out + "/patients/P0001") &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  ASSERT_TRUE(std::filesystem::exists(out + "/patients/P0001"));
  EXPECT_FALSE(std::filesystem::exists(out + "/manifest.json"));  // the run did not finish
  for (const auto& entry : std::filesystem::directory_iterator(out + "/patients")) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(".tmp-", 0) == 0) continue;  // hidden, and removed by the next run
    for (const char* file : {"pre.vdb", "post_administered.vdb"}) {
      EXPECT_TRUE(std::filesystem::exists(entry.path() / file)) << name << "/" << file;
    }
    // The truth of a patient is moved into place before its visible files.
    EXPECT_TRUE(std::filesystem::exists(out + "/truth/patients/" + name + "/truth.json")) << name;
  }
  // A rerun with --force completes the cohort and clears the leftovers.
  const Result r =
      RunMewm("cohort generate --n 2 --spacing 3 --no-nifti --quiet --force --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const auto& entry : std::filesystem::directory_iterator(out + "/patients")) {
    EXPECT_NE(entry.path().filename().string().rfind(".tmp-", 0), 0u);
  }
}

TEST_F(CliTest, CohortRefusesBadRequests) {
  Result r = RunMewm("cohort generate --n 0 --out " + dir_.File("x"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--n must be >= 1"), std::string::npos);
  std::filesystem::create_directories(dir_.File("full"));
  std::filesystem::copy_file(ct_path_, dir_.File("full/keep.nii.gz"));
  r = RunMewm("cohort generate --n 1 --spacing 3 --out " + dir_.File("full"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("not empty"), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(dir_.File("full/keep.nii.gz")));
  r = RunMewm("cohort generate --n 1 --out /proc/mewm-no");
  EXPECT_EQ(r.code, 1);
  r = RunMewm("cohort generate --n abc --out " + dir_.File("y"));
  EXPECT_NE(r.code, 0);
  r = RunMewm("cohort stats " + dir_.File("nothing"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("no manifest.json"), std::string::npos) << r.output;
  // A cohort of the old layout (seed in the manifest, truth.json beside it): regenerate it.
  std::filesystem::create_directories(dir_.File("v1"));
  std::ofstream(dir_.File("v1/manifest.json"))
      << "{\"generator\": \"mewm synthetic world\", \"world_version\": \"1\", \"seed\": \"3\"}";
  std::ofstream(dir_.File("v1/truth.json")) << "{\"patients\": {}}";
  for (const std::string& command : {"cohort stats " + dir_.File("v1"),
                                     "eval survival --model " + std::string(MEWM_SOURCE_DIR) +
                                         "/models/cox_survival.json --cohort " + dir_.File("v1") +
                                         " --train-cohort " + dir_.File("v1")}) {
    r = RunMewm(command);
    EXPECT_EQ(r.code, 1) << command << ": " << r.output;
    EXPECT_NE(r.output.find("'" + dir_.File("v1") + "' is a synthetic cohort of the old layout"),
              std::string::npos)
        << command << ": " << r.output;
    EXPECT_NE(r.output.find("mewm cohort generate --force --out " + dir_.File("v1")),
              std::string::npos)
        << command << ": " << r.output;
  }
}

/// The issue's leak test: a planning run on a complete cohort, traced with strace, touches the
/// planner's files (manifest.json, clinical.csv, pre.vdb) and nothing under truth/, no
/// outcomes.csv and no follow-up image.
TEST_F(CliTest, PlanningRunUnderStraceTouchesOnlyThePlannersFiles) {
  if (std::system("strace -f -qq -e trace=%file -o /dev/null true > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "strace is missing or cannot trace here (tools/dev.sh setup installs it)";
  }
  const std::string cohort = dir_.File("cohort"), out = dir_.File("out");
  Result r =
      RunMewm("cohort generate --n 2 --seed 9 --spacing 2 --no-nifti --quiet --out " + cohort);
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_TRUE(std::filesystem::exists(cohort + "/truth/truth.json"));
  ASSERT_TRUE(std::filesystem::exists(cohort + "/outcomes.csv"));
  const auto manifest_time = std::filesystem::last_write_time(cohort + "/manifest.json");
  const std::string models = std::string(MEWM_SOURCE_DIR) + "/models/";
  // The scenario names the cohort's seed, n and spacing: the run reuses it as it is.
  std::ofstream(dir_.File("leak.toml"))
      << "[run]\nname = \"leak\"\nseed = 1\n[cohort]\nsource = \"synthetic\"\nn = 2\nseed = 9\n"
      << "spacing_mm = 2.0\ndir = \"" << cohort << "\"\n[dynamics]\nbackend = \"mechanistic\"\n"
      << "calibration = \"" << models << "mechanistic_calibration.json\"\n[survival]\n"
      << "backend = \"cox\"\nmodel = \"" << models << "cox_survival.json\"\n[planner]\n"
      << "beams = 1\nsamples = 1\n";
  const std::string trace = dir_.File("trace.txt");
  r = RunMewmWith("strace -f -qq -e trace=%file -o " + trace + " ",
                  "run " + dir_.File("leak.toml") + " --quiet --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_TRUE(std::filesystem::exists(out + "/patients/P0002/result.json"));
  EXPECT_EQ(std::filesystem::last_write_time(cohort + "/manifest.json"), manifest_time)
      << "the run generated the cohort again instead of reusing it";
  // Every path in the trace: the quoted arguments of each file system call.
  std::ifstream in(trace);
  std::string line;
  int lines = 0;
  std::set<std::string> touched;
  while (std::getline(in, line)) {
    ++lines;
    for (std::size_t a = line.find('"'); a != std::string::npos; a = line.find('"', a)) {
      const std::size_t b = line.find('"', a + 1);
      if (b == std::string::npos) break;
      touched.insert(line.substr(a + 1, b - a - 1));
      a = b + 1;
    }
  }
  ASSERT_GT(lines, 0);
  const auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  bool read_pre = false, read_manifest = false, read_clinical = false;
  for (const std::string& path : touched) {
    EXPECT_TRUE(path.find("/truth/") == std::string::npos && path.rfind("truth/", 0) != 0 &&
                !ends_with(path, "/truth") && !ends_with(path, "truth.json"))
        << "the planning run touched " << path;
    EXPECT_FALSE(ends_with(path, "outcomes.csv")) << "the planning run touched " << path;
    EXPECT_EQ(path.find("post_administered"), std::string::npos)
        << "the planning run touched " << path;
    read_pre = read_pre || path == cohort + "/patients/P0001/pre.vdb";
    read_manifest = read_manifest || path == cohort + "/manifest.json";
    read_clinical = read_clinical || path == cohort + "/clinical.csv";
  }
  // The trace saw the planner's own reads, so the absence above means something.
  EXPECT_TRUE(read_pre && read_manifest && read_clinical)
      << "pre.vdb " << read_pre << ", manifest.json " << read_manifest << ", clinical.csv "
      << read_clinical << " in " << touched.size() << " traced paths";
}

TEST_F(CliTest, RunRefusesDeepTomlUnsafeNamesAndFoldersThatAreNotMewmCohorts) {
  const std::string models = std::string(MEWM_SOURCE_DIR) + "/models/";
  const auto scenario = [&](const std::string& name, const std::string& cohort_dir) {
    return "[run]\nname = \"" + name +
           "\"\nseed = 1\n[cohort]\nsource = \"synthetic\"\nn = 1\nseed = 2\nspacing_mm = 4.0\n" +
           "dir = \"" + cohort_dir + "\"\n[dynamics]\nbackend = \"mechanistic\"\ncalibration = \"" +
           models + "mechanistic_calibration.json\"\n[survival]\nbackend = \"cox\"\nmodel = \"" +
           models + "cox_survival.json\"\n[planner]\nbeams = 1\nsamples = 1\n";
  };
  const std::string out = dir_.File("out"), user = dir_.File("user");
  // 50,000 dotted parts crashed `mewm run` inside the TOML parser (a segfault, no message).
  std::string key = "a";
  for (int i = 1; i < 50000; ++i) key += ".a";
  std::ofstream(dir_.File("deep.toml")) << scenario("ok", user) << key << " = 1\n";
  Result r = RunMewm("run " + dir_.File("deep.toml") + " --quiet --out " + out);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("deep.toml:19: nested too deeply"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("64 levels"), std::string::npos) << r.output;
  // A name that is a path.
  std::ofstream(dir_.File("name.toml")) << scenario("../escape", user);
  r = RunMewm("run " + dir_.File("name.toml") + " --quiet --out " + out);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("name.toml:2: run.name must be 1 to 64 characters from A-Z a-z 0-9"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(out));
  // A cohort.dir that holds someone's own patients/ is not a cohort to regenerate.
  std::filesystem::create_directories(user + "/patients");
  std::filesystem::copy_file(ct_path_, user + "/patients/mine.nii.gz");
  std::ofstream(dir_.File("user.toml")) << scenario("ok", user);
  r = RunMewm("run " + dir_.File("user.toml") + " --quiet --out " + out);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("is not a cohort written by mewm"), std::string::npos) << r.output;
  EXPECT_TRUE(std::filesystem::exists(user + "/patients/mine.nii.gz"));
  r = RunMewm("cohort generate --n 1 --spacing 4 --no-nifti --quiet --force --out " + user);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_TRUE(std::filesystem::exists(user + "/patients/mine.nii.gz"));
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// The diffusion pipeline with the real commands on a small cohort with counterfactual plans: a
/// (very short) training, its fidelity evaluation with both baselines, and a survival model fit
/// and scored on the generator's outcomes.
TEST_F(CliTest, DiffusionTrainEvaluateAndFitSurvivalOnGeneratedOutcomes) {
  const std::string cohort = dir_.File("dd");
  Result r = RunMewm(
      "cohort generate --n 12 --seed 8 --spacing 3 --plans-per-patient 2 "
      "--counterfactual-design item-contrast --no-nifti --quiet --out " +
      cohort);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(ReadText(cohort + "/manifest.json")).at("counterfactual_design"),
            "item-contrast");
  r = RunMewm(
      "cohort generate --n 1 --plans-per-patient 2 --counterfactual-design contrast "
      "--out " +
      dir_.File("bad_design"));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("embolic-contrast"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("item-contrast"), std::string::npos) << r.output;
  const std::string model = dir_.File("dd.pt");
  r = RunMewm("train dynamics --quiet --cohort " + cohort + " --out " + model +
              " --ae-steps 2 --denoiser-steps 2 --ae-batch 2 --denoiser-batch 2 "
              "--validation-fraction 0.25 --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("recommended guidance"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("residual error of reconstructions"), std::string::npos) << r.output;
  r = RunMewm("eval dynamics --quiet --cohort " + cohort + " --model " + model +
              " --calibration \"\" --patients 3 --folds 2 --steps 2 --threads 1 --json-out " +
              dir_.File("dd.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* method :
       {"no change", "complete response", "autoencoder ceiling", "diffusion"}) {
    EXPECT_NE(r.output.find(method), std::string::npos) << method << "\n" << r.output;
  }
  const nlohmann::json eval = nlohmann::json::parse(ReadText(dir_.File("dd.json")));
  EXPECT_EQ(eval.at("patients"), 3);
  for (const auto& m : eval.at("methods")) {
    EXPECT_EQ(m.at("cases"), 9);
    // The complete-response baseline has no image: no HU error and no Turing test.
    EXPECT_EQ(m.at("hu_mae").is_null(), m.at("method") == "complete response");
    EXPECT_EQ(m.contains("turing"), m.at("method") != "complete response");
    // Item effects within patients. Lipiodol is in every plan: no effect to measure. The truth's
    // effects are the same whichever method; post = pre and no residual predict none.
    const auto& effects = m.at("item_effects");
    ASSERT_FALSE(effects.empty()) << m.dump();
    const auto& reference = eval.at("methods").front().at("item_effects");
    ASSERT_EQ(effects.size(), reference.size());
    const bool constant = m.at("method") == "no change" || m.at("method") == "complete response";
    for (std::size_t i = 0; i < effects.size(); ++i) {
      const auto& e = effects[i];
      EXPECT_NE(e.at("item"), "Lipiodol");
      EXPECT_EQ(e.at("item"), reference[i].at("item"));
      EXPECT_GE(e.at("patients").get<int>(), 1) << e.dump();
      EXPECT_EQ(e.at("true_residual_ml"), reference[i].at("true_residual_ml"));
      EXPECT_EQ(e.contains("lipiodol_coverage"), m.at("method") != "complete response");
      if (constant) {
        EXPECT_EQ(e.at("residual_ml").get<double>(), 0.0) << e.dump();
      }
    }
  }
  EXPECT_NE(r.output.find("item effects within patients"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("patient level"), std::string::npos) << r.output;
  // Per patient, in cohort order: the patients' errors average to the method's (3 plans each),
  // and the truth is the same whichever method.
  const auto& truth_rows = eval.at("methods").front().at("per_patient");
  for (const auto& m : eval.at("methods")) {
    const auto& rows = m.at("per_patient");
    ASSERT_EQ(rows.size(), 3u) << m.dump();
    const bool constant = m.at("method") == "no change" || m.at("method") == "complete response";
    double mae = 0.0, bias = 0.0, level = 0.0, within = 0.0;
    for (std::size_t p = 0; p < rows.size(); ++p) {
      level += std::abs(rows[p].at("residual_bias_ml").get<double>()) / 3.0;
      within += rows[p].at("residual_within_mae_ml").get<double>() / 3.0;
      EXPECT_EQ(rows[p].at("id"), "P000" + std::to_string(p + 1));
      EXPECT_GE(rows[p].at("lesion_crops").get<int>(), 1);
      EXPECT_EQ(rows[p].at("true_residual_ml"), truth_rows[p].at("true_residual_ml"));
      // Spearman is missing only where the truth has nothing to rank (the same patients for
      // every method); a constant prediction counts 0.
      EXPECT_EQ(rows[p].at("spearman").is_null(), truth_rows[p].at("spearman").is_null());
      if (constant && !rows[p].at("spearman").is_null()) {
        EXPECT_EQ(rows[p].at("spearman").get<double>(), 0.0) << rows[p].dump();
      }
      EXPECT_GE(rows[p].at("residual_mae_ml").get<double>(),
                std::abs(rows[p].at("residual_bias_ml").get<double>()) - 1e-9);
      mae += rows[p].at("residual_mae_ml").get<double>() / 3.0;
      bias += rows[p].at("residual_bias_ml").get<double>() / 3.0;
      // Each plan's figures: the truth's are every method's, and they average to the patient's.
      const auto& plans = rows[p].at("plans");
      ASSERT_EQ(plans.size(), 3u) << rows[p].dump();
      double true_ml = 0.0, diff = 0.0;
      for (std::size_t q = 0; q < plans.size(); ++q) {
        const auto& truth_plan = truth_rows[p].at("plans")[q];
        EXPECT_EQ(plans[q].at("plan"), truth_plan.at("plan"));
        EXPECT_NE(plans[q].at("plan").get<std::string>().find("Lipiodol"), std::string::npos);
        EXPECT_EQ(plans[q].at("true_residual_ml"), truth_plan.at("true_residual_ml"));
        EXPECT_EQ(plans[q].contains("lipiodol_coverage"), m.at("method") != "complete response");
        // No change predicts the pre-treatment tumor under every plan; complete response none.
        if (constant) {
          EXPECT_EQ(plans[q].at("residual_ml"), plans[0].at("residual_ml"));
        }
        if (m.at("method") == "complete response") {
          EXPECT_EQ(plans[q].at("residual_ml").get<double>(), 0.0) << plans[q].dump();
        }
        true_ml += plans[q].at("true_residual_ml").get<double>() / 3.0;
        diff += (plans[q].at("residual_ml").get<double>() -
                 plans[q].at("true_residual_ml").get<double>()) /
                3.0;
      }
      EXPECT_NEAR(true_ml, rows[p].at("true_residual_ml").get<double>(), 1e-9);
      EXPECT_NEAR(diff, rows[p].at("residual_bias_ml").get<double>(), 1e-9);
    }
    EXPECT_NEAR(mae, m.at("residual_mae_ml").get<double>(), 1e-9) << m.dump();
    EXPECT_NEAR(bias, m.at("residual_bias_ml").get<double>(), 1e-9) << m.dump();
    EXPECT_NEAR(level, m.at("residual_patient_level_ml").get<double>(), 1e-9) << m.dump();
    EXPECT_NEAR(within, m.at("residual_within_patient_ml").get<double>(), 1e-9) << m.dump();
    EXPECT_LE(m.at("residual_mae_ml").get<double>(), level + within + 1e-9) << m.dump();
    if (m.at("method") == "complete response") {
      // No residual anywhere: the error is the truth, all of it under.
      EXPECT_NEAR(rows[0].at("residual_bias_ml").get<double>(),
                  -rows[0].at("true_residual_ml").get<double>(), 1e-9);
    }
  }
  // Two samples per plan, seeded as the planner's: the residual figures read their mean, the
  // images the first sample, which is the one-sample run's; the deterministic baselines and the
  // ceiling draw one each and score as before.
  r = RunMewm("eval dynamics --quiet --cohort " + cohort + " --model " + model +
              " --calibration \"\" --patients 3 --folds 2 --steps 2 --threads 1 --samples 2 "
              "--json-out " +
              dir_.File("dd2.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("SD across samples"), std::string::npos) << r.output;
  const nlohmann::json eval2 = nlohmann::json::parse(ReadText(dir_.File("dd2.json")));
  EXPECT_EQ(eval.at("samples"), 1);
  EXPECT_EQ(eval2.at("samples"), 2);
  ASSERT_EQ(eval2.at("methods").size(), eval.at("methods").size());
  for (std::size_t m = 0; m < eval.at("methods").size(); ++m) {
    const auto& one = eval.at("methods")[m];
    const auto& two = eval2.at("methods")[m];
    ASSERT_EQ(one.at("method"), two.at("method"));
    EXPECT_EQ(two.at("cases"), 9);
    EXPECT_EQ(one.at("residual_mae_single_ml"), one.at("residual_mae_ml")) << one.dump();
    EXPECT_EQ(one.at("residual_sample_sd_ml").get<double>(), 0.0);
    // The same first sample, denoised in another batch: oneDNN may order its sums differently
    // (an AVX-512 machine did), so the voxels agree to float precision, not bit for bit.
    const double hu_one = one.at("hu_mae").is_null() ? 0.0 : one.at("hu_mae").get<double>();
    EXPECT_NEAR(two.at("hu_mae").is_null() ? 0.0 : two.at("hu_mae").get<double>(), hu_one,
                1e-6 * std::max(1.0, hu_one))
        << two.dump();
    if (one.at("method") == "diffusion") {
      // Mean of two samples against the truth: never worse than the single samples on average.
      EXPECT_LE(two.at("residual_mae_ml").get<double>(),
                two.at("residual_mae_single_ml").get<double>() + 1e-9);
      EXPECT_GT(two.at("residual_sample_sd_ml").get<double>(), 0.0) << two.dump();
    } else {
      EXPECT_EQ(two.at("residual_mae_ml"), one.at("residual_mae_ml")) << two.dump();
      EXPECT_EQ(two.at("residual_sample_sd_ml").get<double>(), 0.0);
    }
  }
  r = RunMewm("eval dynamics --quiet --cohort " + cohort + " --model " + model +
              " --calibration \"\" --samples 0");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("--samples"), std::string::npos) << r.output;
  // Fine-tuned on the same cohort with the residual and the paired-plan terms (every patient has
  // 3 plans), on the crops the backend serves, with a response head: the command records where
  // it started, the terms' weights, the crops and the head's fit. A negative weight is refused
  // before anything is read.
  const std::string tuned = dir_.File("dd_tuned.pt");
  r = RunMewm("train dynamics --quiet --cohort " + cohort + " --out " + tuned + " --init-from " +
              model +
              " --denoiser-steps 2 --denoiser-batch 2 --validation-fraction 0.25 --threads 1 "
              "--residual-weight 0.5 --pair-weight 0.25 --serving-crops --response-head "
              "--lesion-size --response-item-size --guidance-grid 1,1.5");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("response head: level RMS error"), std::string::npos) << r.output;
  // Only the guidance scales asked for are scored on validation.
  EXPECT_NE(r.output.find("guidance 1.0 on validation"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("guidance 1.5 on validation"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("guidance 2.0 on validation"), std::string::npos) << r.output;
  r = RunMewm("inspect --json " + tuned);
  EXPECT_NE(r.output.find("--guidance-grid 1.0,1.5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--init-from"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("fine_tuned_from"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--residual-weight 0.5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"residual_weight\":0.5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--pair-weight 0.25"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"pair_weight\":0.25"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--serving-crops"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--response-head"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"response_head\":{"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--response-item-size"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"response_item_size\":true"), std::string::npos) << r.output;
  // The head's size slopes need the size: refused, naming what is missing, before training.
  r = RunMewm("train dynamics --quiet --cohort " + cohort + " --out " + dir_.File("no_size.pt") +
              " --init-from " + model + " --response-head --response-item-size");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("response_item_size needs response_head and lesion_size"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("no_size.pt")));
  // Likewise the head's drug term, which needs the covariates.
  r = RunMewm("train dynamics --quiet --cohort " + cohort + " --out " +
              dir_.File("no_covariates.pt") + " --init-from " + model +
              " --response-head --response-drug-classes");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("drug_classes needs response_head and clinical"), std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("no_covariates.pt")));
  // The drug term fitted alone keeps the network: it needs denoiser steps 0.
  r = RunMewm("train dynamics --quiet --cohort " + cohort + " --out " + dir_.File("drug_only.pt") +
              " --init-from " + model +
              " --clinical --response-head --response-drug-classes --response-drug-only "
              "--denoiser-steps 3");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("drug term alone"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("drug_only.pt")));
  // Averaging drug terms (the library's test averages two): refused for checkpoints without one,
  // and for an output that is one of the inputs, even with --force; nothing is written.
  r = RunMewm("train drug-average --out " + dir_.File("average.pt") + " " + model + " " + tuned);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("no drug term"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("average.pt")));
  const std::string tuned_sha = *Sha256File(tuned);
  r = RunMewm("train drug-average --force --out " + tuned + " " + model + " " + tuned);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("--out"), std::string::npos) << r.output;
  EXPECT_EQ(*Sha256File(tuned), tuned_sha);
  // The fine-tuned checkpoint paired by patient against the one it started from. The "against"
  // method is the first run's "diffusion" again (same checkpoint, same sample seeds), and the
  // paired means are the methods' differences (every patient has 3 plans).
  r = RunMewm("eval dynamics --quiet --cohort " + cohort + " --model " + tuned + " --against " +
              model +
              " --calibration \"\" --patients 3 --folds 2 --steps 2 --threads 1 --json-out " +
              dir_.File("paired.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("paired by patient, diffusion - against"), std::string::npos) << r.output;
  {
    const nlohmann::json paired = nlohmann::json::parse(ReadText(dir_.File("paired.json")));
    std::map<std::string, nlohmann::json> by_name;
    for (const auto& m : paired.at("methods")) by_name[m.at("method")] = m;
    for (const auto& m : eval.at("methods")) {
      if (m.at("method") == "diffusion") {
        const double mae = m.at("residual_mae_ml").get<double>();
        EXPECT_NEAR(by_name.at("against").at("residual_mae_ml").get<double>(), mae,
                    1e-5 * std::max(1.0, mae));
      }
    }
    const auto& a = by_name.at("diffusion");
    const auto& b = by_name.at("against");
    const auto& d = paired.at("paired");
    EXPECT_EQ(d.at("patients"), 3);
    EXPECT_NEAR(d.at("residual_mae_ml").at("mean").get<double>(),
                a.at("residual_mae_ml").get<double>() - b.at("residual_mae_ml").get<double>(),
                1e-9);
    EXPECT_EQ(d.at("spearman_patients"), a.at("spearman_patients"));
    if (d.at("spearman_patients").get<int>() > 0) {
      EXPECT_NEAR(d.at("spearman").at("mean").get<double>(),
                  a.at("spearman").get<double>() - b.at("spearman").get<double>(), 1e-9);
    }
    EXPECT_EQ(d.at("spearman_higher").get<int>() + d.at("spearman_lower").get<int>() +
                  d.at("spearman_same").get<int>(),
              d.at("spearman_patients").get<int>());
    for (const char* figure : {"residual_mae_ml", "residual_patient_level_ml", "spearman"}) {
      EXPECT_LE(d.at(figure).at("lo").get<double>(), d.at(figure).at("mean").get<double>());
      EXPECT_GE(d.at(figure).at("hi").get<double>(), d.at(figure).at("mean").get<double>());
    }
  }
  r = RunMewm("eval dynamics --quiet --cohort " + cohort + " --model " + tuned + " --against " +
              dir_.File("missing.pt") + " --calibration \"\" --patients 3");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("missing.pt"), std::string::npos) << r.output;
  // Its residuals moved to its head's levels (--anchor-level). The model it started from has no
  // head and is refused, naming it.
  r = RunMewm("eval dynamics --quiet --cohort " + cohort + " --model " + tuned +
              " --anchor-level --calibration \"\" --patients 3 --folds 2 --steps 2 --threads 1");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("diffusion"), std::string::npos) << r.output;
  r = RunMewm("eval dynamics --quiet --cohort " + cohort + " --model " + model +
              " --anchor-level --calibration \"\" --patients 3 --steps 2 --threads 1");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("response head"), std::string::npos) << r.output;
  // Loss options refused before training, naming the option; nothing is written.
  for (const auto& [option, named] : std::vector<std::pair<std::string, std::string>>{
           {"--residual-weight -1", "--residual-weight"},
           {"--pair-weight -1", "--pair-weight"},
           {"--pair-neighbours", "--pair-weight"},
           {"--guidance-grid 1,30", "--guidance-grid"}}) {
    r = RunMewm("train dynamics --quiet --cohort " + cohort + " --out " + dir_.File("dd_bad.pt") +
                " --init-from " + model + " " + option);
    EXPECT_NE(r.code, 0) << option << ": " << r.output;
    EXPECT_NE(r.output.find(named), std::string::npos) << option << ": " << r.output;
    EXPECT_FALSE(std::filesystem::exists(dir_.File("dd_bad.pt"))) << option;
  }
  // Its guidance distilled into a student whose drugs share one embedding: the command and the
  // config record both, and the student refuses to be guided again.
  const std::string student = dir_.File("dd_student.pt");
  r = RunMewm("train dynamics --quiet --cohort " + cohort + " --out " + student +
              " --distill-from " + model +
              " --distill-guidance 2 --drug-sharing all --denoiser-steps 2 "
              "--denoiser-batch 2 --validation-fraction 0.25 --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("recommended guidance 1.0"), std::string::npos) << r.output;
  r = RunMewm("inspect --json " + student);
  EXPECT_NE(r.output.find("guidance_distilled"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--distill-from"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("item_groups"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--drug-sharing all"), std::string::npos) << r.output;
  // The student's decoder fine-tuned alone: it stays a distilled student, and the command and
  // the metadata record the decoder's steps.
  const std::string decoder = dir_.File("dd_decoder.pt");
  r = RunMewm("train dynamics --quiet --cohort " + cohort + " --out " + decoder + " --init-from " +
              student +
              " --denoiser-steps 0 --decoder-steps 2 --validation-fraction 0.25 "
              "--threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("recommended guidance 1.0"), std::string::npos) << r.output;
  r = RunMewm("inspect --json " + decoder);
  EXPECT_NE(r.output.find("guidance_distilled"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--decoder-steps 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"decoder_steps\":2"), std::string::npos) << r.output;
  // No denoiser steps without a checkpoint whose decoder alone is tuned.
  r = RunMewm("train dynamics --quiet --cohort " + cohort + " --out " + dir_.File("dd_bad.pt") +
              " --denoiser-steps 0 --decoder-steps 2 --threads 1");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("denoiser steps may be 0 only"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("dd_bad.pt")));
  r = RunMewm("train dynamics --cohort " + cohort + " --out " + dir_.File("dd_bad.pt") +
              " --drug-sharing potency");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("class"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("dd_bad.pt")));
  // A saturating group needs groups to saturate.
  r = RunMewm("train dynamics --cohort " + cohort + " --out " + dir_.File("dd_bad.pt") +
              " --drug-saturate");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("group_once needs item_groups"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("dd_bad.pt")));
  r = RunMewm("eval dynamics --quiet --cohort " + cohort + " --model " + student +
              " --calibration \"\" --patients 3 --folds 2 --steps 2 --guidance 2 --threads 1");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("distilled into it"), std::string::npos) << r.output;
  r = RunMewm("train survival --quiet --cohort " + cohort + " --out " + dir_.File("gen_cox.json") +
              " --generator " + model + " --generator-steps 2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(ReadText(dir_.File("gen_cox.json")).find("--generator"), std::string::npos);
  // Fitted on the head's anchored outcomes, the provenance says so.
  r = RunMewm("train survival --quiet --cohort " + cohort + " --out " +
              dir_.File("anchored_cox.json") + " --generator " + tuned +
              " --generator-steps 2 --generator-anchor-level");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(ReadText(dir_.File("anchored_cox.json")).find("--generator-anchor-level"),
            std::string::npos);
  r = RunMewm("eval survival --model " + dir_.File("gen_cox.json") + " --cohort " + cohort +
              " --train-cohort " + cohort + " --generator " + model + " --generator-steps 2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("Harrell C"), std::string::npos);
  r = RunMewm("eval survival --model " + dir_.File("gen_cox.json") + " --cohort " + cohort +
              " --train-cohort " + cohort + " --generator " + dir_.File("missing.pt"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("missing.pt"), std::string::npos) << r.output;
}

/// Trains both models on a small cohort with the real commands, then plans, evaluates, shards,
/// merges and interrupts runs of a scenario that uses them.
TEST_F(CliTest, TrainRunEvaluateMergeAndInterrupt) {
  const std::string train = dir_.File("train");
  Result r =
      RunMewm("cohort generate --n 24 --seed 5 --spacing 3 --no-nifti --quiet --out " + train);
  ASSERT_EQ(r.code, 0) << r.output;
  r = RunMewm("train mechanistic --quiet --cohort " + train + " --out " + dir_.File("mech.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir_.File("mech.json.sha256")));  // checked at load
  EXPECT_NE(r.output.find("log_proliferation"), std::string::npos);
  r = RunMewm("train survival --quiet --backend cox --cohort " + train + " --out " +
              dir_.File("cox.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("plan_toxicity"), std::string::npos);
  r = RunMewm("eval survival --model " + dir_.File("cox.json") + " --cohort " + train +
              " --train-cohort " + train + " --plot " + dir_.File("km.png"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("Harrell C"), std::string::npos);
  // The cohort's Kaplan-Meier curve (black) against the predicted curves (blue).
  auto km = ReadPng(dir_.File("km.png"));
  ASSERT_TRUE(km) << r.output;
  int black = 0, blue = 0;
  for (std::size_t n = 0; n + 2 < km->pixels.size(); n += 3) {
    const std::uint8_t* p = &km->pixels[n];
    black += p[0] == 20 && p[1] == 20 && p[2] == 20;
    blue += p[0] == 31 && p[1] == 100 && p[2] == 200;
  }
  EXPECT_GT(black, 500);
  EXPECT_GT(blue, 500);

  const auto scenario = [&](int n, const std::string& planner = "beams = 2\nsamples = 1\n") {
    return "[run]\nname = \"cli\"\nseed = 1\n[cohort]\nsource = \"synthetic\"\nn = " +
           std::to_string(n) +
           "\nseed = 77\nspacing_mm = 3.0\n[dynamics]\nbackend = \"mechanistic\"\n"
           "calibration = \"mech.json\"\n[survival]\nbackend = \"cox\"\nmodel = \"cox.json\"\n"
           "[planner]\n" +
           planner;
  };
  std::ofstream(dir_.File("s.toml")) << scenario(2);
  const std::string out = dir_.File("out");
  r = RunMewm("run " + dir_.File("s.toml") + " --json --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("\"type\":\"run_started\""), std::string::npos);
  EXPECT_NE(r.output.find("\"type\":\"plan_decided\""), std::string::npos);
  EXPECT_NE(r.output.find("\"type\":\"run_finished\""), std::string::npos);
  r = RunMewm("eval plans " + out + " --json-out " + dir_.File("eval.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("majority plan"), std::string::npos);
  EXPECT_NE(ReadText(dir_.File("eval.json")).find("\"regret_mean\""), std::string::npos);
  // --json is a flag everywhere: the same numbers as JSON on stdout.
  r = RunMewm("eval plans " + out + " --json");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("{", 0), 0u) << r.output;
  EXPECT_NE(r.output.find("\"regret_mean\""), std::string::npos);

  // Shards and merge give the same summary as the whole run.
  for (int i = 0; i < 2; ++i) {
    r = RunMewm("run " + dir_.File("s.toml") + " --quiet --shard " + std::to_string(i) +
                "/2 --out " + dir_.File("shard" + std::to_string(i)));
    ASSERT_EQ(r.code, 0) << r.output;
  }
  r = RunMewm("merge --out " + dir_.File("merged") + " " + dir_.File("shard0") + " " +
              dir_.File("shard1"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(ReadText(dir_.File("merged/patients/P0002/result.json")),
            ReadText(out + "/patients/P0002/result.json"));
  // The merged run against the whole run, patient by patient: the same plans.
  r = RunMewm("eval plans " + dir_.File("merged") + " --against " + out + " --json-out " +
              dir_.File("paired.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("paired plan selection on 2 patients"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("equal for 2"), std::string::npos) << r.output;
  EXPECT_NE(ReadText(dir_.File("paired.json")).find("\"a_minus_b\""), std::string::npos);
  r = RunMewm("eval plans " + out + " --against " + dir_.File("nowhere"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("nowhere"), std::string::npos) << r.output;
  // Several pairs pool their patients; each run needs its partner, and a cohort counts once.
  r = RunMewm("eval plans " + dir_.File("merged") + " " + out + " --against " + out);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("2 runs to compare against 1"), std::string::npos) << r.output;
  r = RunMewm("eval plans " + dir_.File("merged") + " " + out);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("against 0"), std::string::npos) << r.output;
  r = RunMewm("eval plans " + dir_.File("merged") + " " + out + " --against " + out + " " +
              dir_.File("merged"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("count once"), std::string::npos) << r.output;

  // Bad input: an invalid scenario, a bad shard.
  std::ofstream(dir_.File("bad.toml")) << scenario(2) << "[planner2]\n";
  r = RunMewm("run " + dir_.File("bad.toml"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("bad.toml:"), std::string::npos) << r.output;
  r = RunMewm("run " + dir_.File("s.toml") + " --shard 2/2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("shard"), std::string::npos) << r.output;
  // Counts past int are refused as written, not wrapped (0/4294967297 ran as 0/1).
  for (const char* shard : {"0/4294967297", "0/99999999999999999999", "-1/2", "0/2x", "0/+2"}) {
    r = RunMewm("run " + dir_.File("s.toml") + " --shard " + shard);
    EXPECT_EQ(r.code, 1) << shard;
    EXPECT_NE(r.output.find(std::string("got '") + shard + "'"), std::string::npos) << r.output;
  }
  // A run estimated at days says so before it starts. This one is then refused, before anything
  // is written: its cohort.dir is its own output folder.
  std::string huge = scenario(100000);
  huge.replace(huge.find("spacing_mm = 3.0\n"), 17,
               "spacing_mm = 0.5\ndir = \"" + dir_.File("huge") + "\"\n");
  std::ofstream(dir_.File("huge.toml")) << huge;
  r = RunMewm("run " + dir_.File("huge.toml") + " --out " + dir_.File("huge"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("warning: this run is estimated at"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("overlap"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("huge")));

  // Ctrl-C: finished patients stay, the run ends with run_cancelled and exit 130.
  // Exhaustive search with 4 samples takes seconds per patient, so the signal lands mid-run.
  std::ofstream(dir_.File("long.toml")) << scenario(6, "search = \"exhaustive\"\nsamples = 4\n");
  const std::string long_out = dir_.File("long"), long_toml = dir_.File("long.toml");
  const pid_t pid = ::fork();  // our own child, so its exit status can be read
  if (pid == 0) {
    const int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, STDOUT_FILENO);
    ::dup2(devnull, STDERR_FILENO);
    ::execl(MEWM_CLI, MEWM_CLI, "run", long_toml.c_str(), "--quiet", "--out", long_out.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ASSERT_GT(pid, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(240);
  while (!std::filesystem::exists(long_out + "/patients/P0001/result.json") &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(pid, SIGINT);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  EXPECT_TRUE(std::filesystem::exists(long_out + "/patients/P0001/post_chosen.vdb"));
  const std::string events = ReadText(long_out + "/events.jsonl");
  EXPECT_NE(events.find("\"type\":\"run_cancelled\""), std::string::npos);
  EXPECT_NE(ReadText(long_out + "/summary.json").find("P0001"), std::string::npos);
}

}  // namespace
}  // namespace mewm

namespace mewm {
namespace {

/// A `mewm` child process with its output in a file; killed (SIGKILL) if the test leaves early.
class Child {
 public:
  Child(std::vector<std::string> args, const std::string& log) {
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
      std::vector<char*> argv{const_cast<char*>(MEWM_CLI)};
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(MEWM_CLI, argv.data());
      ::_exit(127);
    }
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  /// Sends `signal` and returns the exit code (-1 when killed by a signal).
  int Stop(int signal) {
    ::kill(pid_, signal);
    return Wait();
  }
  int Wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  pid_t pid_ = -1;
};

/// Two loopback TCP ports that are free now: both bound with port 0 at once (so they differ),
/// read back, then released for the server under test.
std::pair<int, int> FreePorts() {
  int fds[2] = {::socket(AF_INET, SOCK_STREAM, 0), ::socket(AF_INET, SOCK_STREAM, 0)};
  int ports[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    if (fds[i] >= 0 &&
        ::bind(fds[i], reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
        ::getsockname(fds[i], reinterpret_cast<sockaddr*>(&address), &length) == 0) {
      ports[i] = ntohs(address.sin_port);
    }
  }
  for (int fd : fds) {
    if (fd >= 0) ::close(fd);
  }
  return {ports[0], ports[1]};
}

class CliStreamTest : public testing::VdbTest {
 protected:
  void SetUp() override {
    // Ports the kernel hands out as free, so parallel test processes do not collide (ports
    // derived from the pid did: consecutive pids shared them).
    const auto [control, events] = FreePorts();
    control_ = "tcp://127.0.0.1:" + std::to_string(control);
    events_ = "tcp://127.0.0.1:" + std::to_string(events);
    const std::filesystem::path models = std::filesystem::path(MEWM_SOURCE_DIR) / "models";
    std::filesystem::copy_file(models / "mechanistic_calibration.json", dir_.File("mech.json"));
    std::filesystem::copy_file(models / "cox_survival.json", dir_.File("cox.json"));
  }

  std::string Scenario(int n, const std::string& planner, const std::string& output = "runs") {
    return "[run]\nname = \"cs\"\nseed = 1\noutput = \"" + output +
           "\"\n[cohort]\nsource = \"synthetic\"\nn = " + std::to_string(n) +
           "\nseed = 77\nspacing_mm = 3.0\n[dynamics]\nbackend = \"mechanistic\"\n"
           "calibration = \"mech.json\"\n[survival]\nbackend = \"cox\"\nmodel = \"cox.json\"\n"
           "[planner]\n" +
           planner;
  }
  std::string Endpoints() const { return " --control " + control_ + " --events " + events_; }

  /// Waits (bounded) until a server answers on the control endpoint.
  bool WaitForServer() {
    for (int i = 0; i < 100; ++i) {
      if (RunMewm("status --timeout-ms 200" + Endpoints()).code == 0) return true;
    }
    return false;
  }

  testing::TempDir dir_;
  std::string control_, events_;
};

TEST_F(CliStreamTest, ServeSubmitWatchStatusCancelAndShutdown) {
  Child server(
      {"serve", "--control", control_, "--events", events_, "--results-root", dir_.File("results"),
       "--scenario-base", dir_.path().string(), "--heartbeat-ms", "100"},
      dir_.File("serve.log"));
  ASSERT_TRUE(WaitForServer()) << ReadText(dir_.File("serve.log"));

  std::ofstream(dir_.File("s.toml")) << Scenario(2, "beams = 2\nsamples = 1\n");
  // Relative to the scenario base, as the server resolves it.
  const std::string scenario = dir_.File("s.toml");
  Result r = RunMewm("submit " + scenario + " --wait" + Endpoints());
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string id = r.output.substr(0, r.output.find('\n'));
  EXPECT_EQ(id.rfind("cs-", 0), 0u) << r.output;
  EXPECT_NE(r.output.find("finished 2 patients"), std::string::npos) << r.output;

  // A watcher that starts after the run gets its whole history.
  r = RunMewm("watch --json --run " + id + Endpoints());
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string log = ReadText(dir_.File("results/runs/" + id + "/events.jsonl"));
  EXPECT_EQ(r.output, log);
  EXPECT_NE(log.substr(0, log.find('\n')).find("\"type\":\"run_accepted\""), std::string::npos);

  r = RunMewm("status" + Endpoints());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find(id), std::string::npos);
  EXPECT_NE(r.output.find("finished"), std::string::npos);
  EXPECT_NE(r.output.find("model dynamics:mechanistic"), std::string::npos) << r.output;
  r = RunMewm("cancel " + id + Endpoints());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("not_cancellable"), std::string::npos) << r.output;

  // A long run, cancelled while it plans: the watcher exits 4.
  std::ofstream(dir_.File("long.toml")) << Scenario(6, "search = \"exhaustive\"\nsamples = 4\n");
  r = RunMewm("submit " + dir_.File("long.toml") + Endpoints());
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string long_id = r.output.substr(0, r.output.find('\n'));
  r = RunMewm("cancel " + long_id + Endpoints());
  EXPECT_EQ(r.code, 0) << r.output;
  r = RunMewm("watch --run " + long_id + Endpoints());
  EXPECT_EQ(r.code, 4) << r.output;
  EXPECT_NE(r.output.find("cancelled"), std::string::npos) << r.output;

  // Scenarios may not write outside the results root.
  std::ofstream(dir_.File("escape.toml")) << Scenario(1, "beams = 1\n", "../outside");
  r = RunMewm("submit " + dir_.File("escape.toml") + Endpoints());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("forbidden_path"), std::string::npos) << r.output;

  EXPECT_EQ(server.Stop(SIGTERM), 0) << ReadText(dir_.File("serve.log"));
  EXPECT_NE(ReadText(dir_.File("serve.log")).find("closed"), std::string::npos);
  r = RunMewm("status --timeout-ms 300" + Endpoints());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("no reply"), std::string::npos) << r.output;
}

TEST_F(CliStreamTest, ServesAdmissionFlagsAreEnforcedAndReported) {
  Child server(
      {"serve", "--control", control_, "--events", events_, "--results-root", dir_.File("results"),
       "--scenario-base", dir_.path().string(), "--max-patients", "3", "--max-beam-samples", "4"},
      dir_.File("serve.log"));
  ASSERT_TRUE(WaitForServer()) << ReadText(dir_.File("serve.log"));
  std::ofstream(dir_.File("many.toml")) << Scenario(6, "beams = 2\nsamples = 1\n");
  Result r = RunMewm("submit " + dir_.File("many.toml") + Endpoints());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("over_limit"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--max-patients"), std::string::npos) << r.output;
  std::ofstream(dir_.File("wide.toml")) << Scenario(2, "beams = 2\nsamples = 4\n");
  r = RunMewm("submit " + dir_.File("wide.toml") + Endpoints());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("--max-beam-samples"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("--max-patients"), std::string::npos) << r.output;
  r = RunMewm("status" + Endpoints());  // the limits in force, as health reports them
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("limits: patients 3,"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("beams x samples 4,"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("results/cohorts")));  // nothing generated
  EXPECT_EQ(server.Stop(SIGTERM), 0) << ReadText(dir_.File("serve.log"));
}

TEST_F(CliStreamTest, EmbeddedRunPublishesForWatchersThatJoinLate) {
  std::ofstream(dir_.File("s.toml"))
      << Scenario(3, "search = \"exhaustive\"\nsamples = 2\n", dir_.File("out"));
  Child run({"run", dir_.File("s.toml"), "--quiet", "--publish", events_, "--control", control_},
            dir_.File("run.log"));
  // The run's id, once it is listed.
  std::string id;
  for (int i = 0; i < 200 && id.empty(); ++i) {
    Result r = RunMewm("status --timeout-ms 200" + Endpoints());
    const auto at = r.output.find("cs-");
    if (r.code == 0 && at != std::string::npos) id = r.output.substr(at, 11);
  }
  ASSERT_FALSE(id.empty()) << ReadText(dir_.File("run.log"));
  Result r = RunMewm("watch --json --run " + id + Endpoints());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(run.Wait(), 0) << ReadText(dir_.File("run.log"));
  EXPECT_EQ(r.output, ReadText(dir_.File("out/events.jsonl")));
  EXPECT_NE(r.output.find("\"type\":\"run_finished\""), std::string::npos);
}

TEST_F(CliStreamTest, SigtermStopsServeWhileACohortIsGenerated) {
  Child server({"serve", "--control", control_, "--events", events_, "--results-root",
                dir_.File("results"), "--scenario-base", dir_.path().string()},
               dir_.File("serve.log"));
  ASSERT_TRUE(WaitForServer()) << ReadText(dir_.File("serve.log"));
  // 8 patients at 1 mm: tens of seconds of generation.
  std::string scenario = Scenario(8, "beams = 2\nsamples = 1\n");
  scenario.replace(scenario.find("spacing_mm = 3.0"), 16, "spacing_mm = 1.0");
  std::ofstream(dir_.File("slow.toml")) << scenario;
  Result r = RunMewm("submit " + dir_.File("slow.toml") + Endpoints());
  ASSERT_EQ(r.code, 0) << r.output;
  // Generation has begun once a patient's temporary folder (.tmp-P0001-<pid>) appears.
  bool generating = false;
  for (int i = 0; i < 3000 && !generating; ++i) {
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(dir_.File("results"), ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      generating = generating || it->path().filename().string().rfind(".tmp-P", 0) == 0;
    }
    if (!generating) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(generating) << ReadText(dir_.File("serve.log"));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(server.Stop(SIGTERM), 0) << ReadText(dir_.File("serve.log"));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("mewm serve exited %.3f s after SIGTERM during cohort generation\n", seconds);
  EXPECT_LT(seconds, 2.0);
  EXPECT_NE(ReadText(dir_.File("serve.log")).find("closed"), std::string::npos);
}

/// Runs mewm through the shell with a bound on its time (exit 137 when it would have hung).
Result RunMewmBounded(const std::string& prefix, const std::string& args) {
  return RunMewmWith(prefix + "timeout -s KILL 20 ", args);
}

TEST_F(CliStreamTest, ServeRejectsBadFlagsBeforeStarting) {
  const std::string serve = "serve --control tcp://127.0.0.1:* --events tcp://127.0.0.1:* ";
  std::ofstream(dir_.File("a_file")) << "not a folder\n";
  Result r = RunMewmBounded("", serve + "--results-root " + dir_.File("a_file"));
  EXPECT_EQ(r.code, 2) << r.output;  // a usage error, refused before serving
  EXPECT_NE(r.output.find("--results-root"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("not a folder"), std::string::npos) << r.output;
  r = RunMewmBounded("", serve + "--results-root " + dir_.File("a_file/below"));
  EXPECT_EQ(r.code, 2) << r.output;  // a usage error, refused before serving
  EXPECT_NE(r.output.find("is not a folder"), std::string::npos) << r.output;
  r = RunMewmBounded("", serve + "--metrics-port 99999 --results-root " + dir_.File("results"));
  EXPECT_EQ(r.code, 2) << r.output;  // a usage error, refused before serving
  EXPECT_NE(r.output.find("--metrics-port"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("99999"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.File("results")));  // nothing started
  for (const char* bad : {"--max-patients -1", "--queue 0", "--max-hours -2"}) {
    r = RunMewmBounded("", serve + bad + " --results-root " + dir_.File("results"));
    EXPECT_EQ(r.code, 2) << bad << ": " << r.output;
    EXPECT_NE(r.output.find(std::string(bad).substr(0, std::string(bad).find(' '))),
              std::string::npos)
        << r.output;
  }
  for (const char* command : {"status", "submit x.toml", "watch", "cancel x"}) {
    r = RunMewmBounded("", std::string(command) + " --timeout-ms -1" + Endpoints());
    EXPECT_EQ(r.code, 2) << command << ": " << r.output;
    EXPECT_NE(r.output.find("--timeout-ms"), std::string::npos) << command << ": " << r.output;
    EXPECT_EQ(r.output.find("no reply"), std::string::npos) << command << ": " << r.output;
  }
}

TEST_F(CliStreamTest, KeygenCreatesAPrivateKeyAndNeverOverwritesOneSilently) {
  // Even with a permissive umask the secret key is 0600 (it is created so, never chmodded later).
  const std::string base = dir_.File("server");
  Result r = RunMewmBounded("umask 000; ", "keygen " + base);
  ASSERT_EQ(r.code, 0) << r.output;
  struct stat st {};
  ASSERT_EQ(::stat((base + ".key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat((base + ".pub").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  const std::string secret = ReadText(base + ".key"), public_key = ReadText(base + ".pub");
  // A second keygen on the same base refuses and says what to do; the keys stay as they were.
  r = RunMewmBounded("", "keygen " + base);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("already exists"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--force"), std::string::npos) << r.output;
  EXPECT_EQ(ReadText(base + ".key"), secret);
  EXPECT_EQ(ReadText(base + ".pub"), public_key);
  // A public key left alone (a lost secret) also stops it, and no secret is written beside it.
  std::filesystem::remove(base + ".key");
  r = RunMewmBounded("", "keygen " + base);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_FALSE(std::filesystem::exists(base + ".key"));
  // --force replaces the pair, still 0600.
  r = RunMewmBounded("umask 000; ", "keygen --force " + base);
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_EQ(::stat((base + ".key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_NE(ReadText(base + ".pub"), public_key);
  // Where the key cannot be created, it fails and says where.
  r = RunMewmBounded("", "keygen " + dir_.File("no/such/folder/k"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("no/such/folder/k.key"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace mewm

// --- Data safety of run, merge and resume; model checksums; the voxel limit ---------------------

namespace mewm {
namespace {

namespace fs = std::filesystem;

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void Spit(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

/// Runs of a 2-patient synthetic scenario on the shipped models (with their checksum files).
class CliDataTest : public testing::VdbTest {
 protected:
  std::string Scenario(const std::string& name = "data", const std::string& extra = "") {
    const std::string models = std::string(MEWM_SOURCE_DIR) + "/models/";
    return "[run]\nname = \"" + name +
           "\"\nseed = 1\n[cohort]\nsource = \"synthetic\"\nn = 2\nseed = 77\nspacing_mm = 3.0\n"
           "[dynamics]\nbackend = \"mechanistic\"\ncalibration = \"" +
           models + "mechanistic_calibration.json\"\n[survival]\nbackend = \"cox\"\nmodel = \"" +
           models + "cox_survival.json\"\n[planner]\nbeams = 1\nsamples = 1\n" + extra;
  }
  std::string Write(const std::string& file, const std::string& text) {
    Spit(dir_.File(file), text);
    return dir_.File(file);
  }
  /// Every file under `root` with its bytes, to show that a refused command changed nothing.
  static std::map<std::string, std::string> Snapshot(const std::string& root) {
    std::map<std::string, std::string> files;
    for (const auto& e : fs::recursive_directory_iterator(root)) {
      files[e.path().string()] = e.is_regular_file() ? Slurp(e.path().string()) : "<dir>";
    }
    return files;
  }
  testing::TempDir dir_;
};

TEST_F(CliDataTest, RunRefusesAFolderItDidNotWriteAndForceDeletesNothingItDidNotWrite) {
  const std::string s = Write("s.toml", Scenario());
  const std::string out = dir_.File("mine");
  fs::create_directories(out + "/patients");
  Spit(out + "/patients/scan.nii.gz", "a user's image");
  Spit(out + "/notes.txt", "a user's notes");
  const auto before = Snapshot(out);

  Result r = RunMewm("run " + s + " --quiet --out " + out);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("is not empty and is not a results folder"), std::string::npos)
      << r.output;
  EXPECT_EQ(Snapshot(out), before);  // nothing deleted, nothing written
  // The same with --publish: refused before the one-run server starts (no run_failed logged).
  r = RunMewm("run " + s + " --quiet --out " + out +
              " --publish tcp://127.0.0.1:9 --control tcp://127.0.0.1:10");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_EQ(Snapshot(out), before);

  // --force still never deletes what mewm did not write.
  r = RunMewm("run " + s + " --quiet --force --out " + out);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("scan.nii.gz"), std::string::npos) << r.output;
  EXPECT_EQ(Snapshot(out), before);

  // With the user's patients/ moved away, --force writes the run beside the notes.
  fs::remove_all(out + "/patients");
  r = RunMewm("run " + s + " --quiet --force --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(Slurp(out + "/notes.txt"), "a user's notes");
  EXPECT_TRUE(fs::exists(out + "/patients/P0002/result.json"));

  // Now it is a results folder of this scenario: a rerun replaces it without --force...
  r = RunMewm("run " + s + " --quiet --out " + out);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(Slurp(out + "/notes.txt"), "a user's notes");
  // ... but another scenario needs --force, and a file mewm did not write in a patient folder
  // is refused even then.
  const std::string other = Write("other.toml", Scenario("other"));
  r = RunMewm("run " + other + " --quiet --out " + out);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("scenario 'data'"), std::string::npos) << r.output;
  Spit(out + "/patients/P0001/annotation.txt", "mine");
  r = RunMewm("run " + s + " --quiet --out " + out);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("annotation.txt"), std::string::npos) << r.output;
  EXPECT_EQ(Slurp(out + "/patients/P0001/annotation.txt"), "mine");
}

TEST_F(CliDataTest, EmptyManifestAndRefusedResumeWriteNothing) {
  Spit(dir_.File("patients.csv"),
       "patient_id,ct,tumor,age_years,sex,child_pugh,bclc_stage,afp_ng_ml,lesion_count,"
       "max_diameter_mm,vascular_invasion\n");
  std::string text = Scenario();
  text.replace(text.find("source = \"synthetic\""), std::string("source = \"synthetic\"").size(),
               "source = \"manifest\"\nmanifest = \"patients.csv\"");
  for (const char* key : {"n = 2\n", "seed = 77\n", "spacing_mm = 3.0\n"}) {
    text.erase(text.find(key), std::string(key).size());
  }
  const std::string manifest = Write("m.toml", text);
  Result r = RunMewm("run " + manifest + " --quiet --out " + dir_.File("empty"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("patients.csv"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_.File("empty")));

  // A log of another run: --resume refuses it and creates nothing beside it.
  const std::string s = Write("s.toml", Scenario());
  ASSERT_EQ(RunMewm("run " + s + " --quiet --out " + dir_.File("a")).code, 0);
  fs::create_directories(dir_.File("b"));
  fs::copy_file(dir_.File("a/events.jsonl"), dir_.File("b/events.jsonl"));
  const std::string changed = Write("changed.toml", Scenario("data", "# another text\n"));
  const auto before = Snapshot(dir_.File("b"));
  r = RunMewm("run " + changed + " --quiet --resume --out " + dir_.File("b"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("cannot resume"), std::string::npos) << r.output;
  EXPECT_EQ(Snapshot(dir_.File("b")), before);
  EXPECT_FALSE(fs::exists(dir_.File("b/patients")));

  // A cohort.dir holding someone else's files: refused before the run writes anything, and the
  // files stay as they were.
  fs::create_directories(dir_.File("theirs"));
  Spit(dir_.File("theirs/keep.txt"), "mine");
  std::string foreign = Scenario();
  foreign.replace(foreign.find("spacing_mm = 3.0\n"), std::string("spacing_mm = 3.0\n").size(),
                  "spacing_mm = 3.0\ndir = \"" + dir_.File("theirs") + "\"\n");
  r = RunMewm("run " + Write("f.toml", foreign) + " --quiet --out " + dir_.File("f"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("not a cohort written by mewm"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_.File("f")));
  EXPECT_EQ(Slurp(dir_.File("theirs/keep.txt")), "mine");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_.File("theirs")), fs::directory_iterator()),
            1);
}

TEST_F(CliDataTest, ResumeStopsOnACutLogOrGarbageAndLeavesTheLogAsItIs) {
  const std::string s = Write("s.toml", Scenario());
  const std::string out = dir_.File("out");
  ASSERT_EQ(RunMewm("run " + s + " --quiet --out " + out).code, 0);
  const std::string log = Slurp(out + "/events.jsonl");
  const auto lines = std::count(log.begin(), log.end(), '\n');

  // A last line cut short by a kill: an error naming the line, as docs/SCENARIOS.md says.
  Spit(out + "/events.jsonl", log + "{\"run_id\":\"data-");
  fs::remove_all(out + "/patients/P0002");
  auto before = Snapshot(out);
  Result r = RunMewm("run " + s + " --quiet --resume --out " + out);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("line " + std::to_string(lines + 1) + " is cut short"), std::string::npos)
      << r.output;
  EXPECT_EQ(Snapshot(out), before);

  // Random bytes: refused, and not rewritten.
  std::string garbage;
  for (int i = 0; i < 4096; ++i) garbage += char((i * 7919 + 13) % 251);
  Spit(out + "/events.jsonl", garbage);
  before = Snapshot(out);
  r = RunMewm("run " + s + " --quiet --resume --out " + out);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("events.jsonl"), std::string::npos) << r.output;
  EXPECT_EQ(Snapshot(out), before);

  // The whole log back: resume plans the missing patient and continues the sequence.
  Spit(out + "/events.jsonl", log);
  r = RunMewm("run " + s + " --quiet --resume --out " + out);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(Slurp(out + "/events.jsonl").rfind(log, 0), 0u);
  EXPECT_TRUE(fs::exists(out + "/patients/P0002/result.json"));

  // Two patients: the leave-one-out majority baseline would use the truth. Not available.
  r = RunMewm("eval plans " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto at = r.output.find("majority plan");
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::string row = r.output.substr(at, r.output.find('\n', at) - at);
  EXPECT_NE(row.find("n/a"), std::string::npos) << r.output;
}

TEST_F(CliDataTest, MergeChecksEveryShardBeforeWritingAndNamesTheShardsFile) {
  const std::string s = Write("s.toml", Scenario());
  for (int i = 0; i < 2; ++i) {
    const Result r = RunMewm("run " + s + " --quiet --shard " + std::to_string(i) + "/2 --out " +
                             dir_.File("shard" + std::to_string(i)));
    ASSERT_EQ(r.code, 0) << r.output;
  }
  const std::string good0 = dir_.File("shard0"), good1 = dir_.File("shard1");
  const std::string merged = dir_.File("merged");
  ASSERT_EQ(RunMewm("merge --out " + merged + " " + good0 + " " + good1).code, 0);
  const auto merged_before = Snapshot(merged);

  const auto variant = [&](const std::string& name) {
    fs::copy(good1, dir_.File(name), fs::copy_options::recursive);
    return dir_.File(name);
  };
  // A shard index out of range.
  const std::string seven = variant("seven");
  std::string run = Slurp(seven + "/run.json");
  run.replace(run.find("\"1/2\""), 5, "\"7/2\"");
  Spit(seven + "/run.json", run);
  Result r = RunMewm("merge --out " + dir_.File("m1") + " " + good0 + " " + seven);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find(seven + "/run.json"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("7/2"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_.File("m1")));

  // patients/ that is a file.
  const std::string flat = variant("flat");
  fs::remove_all(flat + "/patients");
  Spit(flat + "/patients", "not a folder");
  r = RunMewm("merge --out " + dir_.File("m2") + " " + good0 + " " + flat);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find(flat + "/patients"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_.File("m2")));

  // A corrupt result.json: named in the shard, and an earlier merge stays whole.
  const std::string corrupt = variant("corrupt");
  Spit(corrupt + "/patients/P0002/result.json", "{\"format\": \"mewm.patient_res");
  r = RunMewm("merge --out " + merged + " " + good0 + " " + corrupt);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find(corrupt + "/patients/P0002/result.json"), std::string::npos) << r.output;
  EXPECT_EQ(Snapshot(merged), merged_before);
}

TEST_F(CliDataTest, ModelChecksumsAreCheckedAtLoadAndShownByInspect) {
  const fs::path models = fs::path(MEWM_SOURCE_DIR) / "models";
  // The shipped models carry checksum files that match.
  for (const char* name :
       {"dynamics_diffusion.pt", "dynamics_diffusion_distilled.pt",
        "dynamics_diffusion_lesion_size.pt", "dynamics_diffusion_drug_saturate.pt",
        "dynamics_diffusion_paste.pt", "dynamics_diffusion_residual.pt",
        "dynamics_diffusion_response.pt", "dynamics_diffusion_response_refit.pt",
        "cox_survival.json", "mechanistic_calibration.json"}) {
    const std::string recorded = Slurp((models / (std::string(name) + ".sha256")).string());
    ASSERT_GE(recorded.size(), 64u) << name;
    Result r = RunMewm("inspect --json " + (models / name).string());
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("\"sha256\":\"" + recorded.substr(0, 64) + "\""), std::string::npos)
        << r.output;
  }
  // One flipped bit in a copy: inspect and loading refuse it, naming both hashes.
  for (const char* name : {"dynamics_diffusion.pt", "cox_survival.json"}) {
    const std::string copy = dir_.File(name);
    fs::copy_file(models / name, copy);
    fs::copy_file(models / (std::string(name) + ".sha256"), copy + ".sha256");
    std::string bytes = Slurp(copy);
    bytes[bytes.size() / 2] = char(bytes[bytes.size() / 2] ^ 0x04);
    Spit(copy, bytes);
    const std::string expected = Slurp(copy + ".sha256").substr(0, 64);
    Result r = RunMewm("inspect " + copy);
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_NE(r.output.find(copy), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(expected), std::string::npos) << r.output;
  }
  std::string text = Scenario();
  text.replace(text.find(models.string() + "/cox_survival.json"),
               (models.string() + "/cox_survival.json").size(), dir_.File("cox_survival.json"));
  const Result r = RunMewm("run " + Write("s.toml", text) + " --quiet --out " + dir_.File("out"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("is damaged or was replaced"), std::string::npos) << r.output;
}

TEST_F(CliDataTest, ImagesOverTheVoxelLimitAreRefusedBeforeAllocating) {
  // A small image written whole, then its header made to claim 1024^3 uint8 voxels and padded
  // with incompressible bytes, so that its gzip is big enough to pass the deflate-ratio check.
  DenseFloat small({4, 4, 4}, Geometry{}, 1.0f);
  const std::string plain = dir_.File("bomb.nii");
  ASSERT_TRUE(WriteNifti(plain, small));
  std::string bytes = Slurp(plain);
  ASSERT_GE(bytes.size(), 352u);
  const auto put16 = [&](std::size_t at, std::int16_t v) { std::memcpy(&bytes[at], &v, 2); };
  for (int d = 1; d <= 3; ++d) put16(40 + 2 * d, 1024);  // dim[1..3]
  put16(70, 2);                                          // datatype uint8
  put16(72, 8);                                          // bitpix
  std::uint32_t x = 12345;
  for (int i = 0; i < (3 << 19); ++i) {
    x = x * 1664525u + 1013904223u;
    bytes += char(x >> 24);
  }
  Spit(plain, bytes);
  ASSERT_EQ(std::system(("gzip -1 -f " + plain).c_str()), 0);
  const std::string bomb = plain + ".gz";
  Result r = RunMewm("convert " + bomb + " " + dir_.File("bomb.vdb"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("bomb.nii.gz"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("1024 x 1024 x 1024"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("MEWM_MAX_VOXELS"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("GiB"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("bad_alloc"), std::string::npos) << r.output;

  // The limit is the environment's: a 64-voxel image over a limit of 10, and a bad value.
  const std::string ok = dir_.File("ok.nii.gz");
  ASSERT_TRUE(WriteNifti(ok, small));
  r = RunMewm("convert " + ok + " " + dir_.File("ok.vdb"));
  EXPECT_EQ(r.code, 0) << r.output;
  const std::string env = "env MEWM_MAX_VOXELS=10 ";
  const std::string command =
      env + MEWM_CLI + " convert " + ok + " " + dir_.File("ok2.vdb") + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output(4096, '\0');
  output.resize(std::fread(output.data(), 1, output.size(), pipe));
  const int status = ::pclose(pipe);
  EXPECT_EQ(WEXITSTATUS(status), 1) << output;
  EXPECT_NE(output.find("over the limit of 10"), std::string::npos) << output;
  // .vdb files are bounded the same way (readers densify their extent).
  const std::string vdb_command =
      env + MEWM_CLI + " convert " + dir_.File("ok.vdb") + " " + dir_.File("back.nii") + " 2>&1";
  pipe = ::popen(vdb_command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  output.assign(4096, '\0');
  output.resize(std::fread(output.data(), 1, output.size(), pipe));
  EXPECT_EQ(WEXITSTATUS(::pclose(pipe)), 1) << output;
  EXPECT_NE(output.find("ok.vdb"), std::string::npos) << output;
}

/// results.nifti through the binary: the NIfTI files of every patient match post_chosen.vdb,
/// travel through merge and resume, and `mewm convert` of the .vdb gives the same CT.
TEST_F(CliDataTest, RunWritesNiftiBesideTheVdbAndMergeAndResumeKeepIt) {
  const std::string s = Write("s.toml", Scenario());
  for (int i = 0; i < 2; ++i) {
    const Result r = RunMewm("run " + s + " --quiet --shard " + std::to_string(i) + "/2 --out " +
                             dir_.File("shard" + std::to_string(i)));
    ASSERT_EQ(r.code, 0) << r.output;
  }
  const std::string merged = dir_.File("merged");
  Result r =
      RunMewm("merge --out " + merged + " " + dir_.File("shard0") + " " + dir_.File("shard1"));
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* id : {"P0001", "P0002"}) {
    SCOPED_TRACE(id);
    const std::string p = merged + "/patients/" + id;
    auto vdb = ReadVdb(p + "/post_chosen.vdb");
    ASSERT_TRUE(vdb) << vdb.error().message;
    const Volume& ct = vdb->scalars.at("ct");
    NiftiInfo info;
    auto nii = ReadNifti(p + "/post_chosen_ct.nii.gz", &info);
    ASSERT_TRUE(nii) << nii.error().message;
    EXPECT_EQ(nii->data, ct.ToDense().data);
    EXPECT_TRUE(nii->geometry.ApproxEquals(ct.geometry(), 1e-5));
    EXPECT_EQ(info.sform_code, 1);
    auto labels = ReadNiftiLabels(p + "/post_chosen_labels.nii.gz");
    ASSERT_TRUE(labels);
    const DenseLabel viable = vdb->labels.at("viable").ToDense();
    std::size_t viable_voxels = 0, two = 0;
    for (std::size_t n = 0; n < viable.data.size(); ++n) {
      viable_voxels += viable.data[n] != 0;
      two += labels->data[n] == 2;
    }
    EXPECT_EQ(two, viable_voxels);
  }
  // `mewm convert` of the run's .vdb, one file per grid: its CT is the run's NIfTI CT.
  const std::string vdb = merged + "/patients/P0001/post_chosen.vdb";
  r = RunMewm("convert " + vdb + " " + dir_.File("conv.nii.gz"));
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* grid : {"ct", "viable", "viable_fraction", "pre_tumor"}) {
    EXPECT_TRUE(fs::exists(dir_.File(std::string("conv_") + grid + ".nii.gz"))) << r.output;
  }
  auto converted = ReadNifti(dir_.File("conv_ct.nii.gz"));
  auto written = ReadNifti(merged + "/patients/P0001/post_chosen_ct.nii.gz");
  ASSERT_TRUE(converted && written);
  EXPECT_EQ(converted->data, written->data);
  EXPECT_TRUE(converted->geometry.ApproxEquals(written->geometry, 1e-6));

  // Resume replans a removed patient with its NIfTI, and keeps the others' files as they were.
  const std::string shard0 = dir_.File("shard0");  // shard 0/2 of two patients: P0001
  const auto before = Slurp(shard0 + "/patients/P0001/post_chosen_ct.nii.gz");
  ASSERT_FALSE(before.empty());
  fs::remove_all(shard0 + "/patients/P0001");
  r = RunMewm("run " + s + " --quiet --resume --shard 0/2 --out " + shard0);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(Slurp(shard0 + "/patients/P0001/post_chosen_ct.nii.gz"), before);

  // run.json's seed is a number; summary.csv has its header.
  const auto run = nlohmann::json::parse(Slurp(merged + "/run.json"));
  EXPECT_TRUE(run.at("seed").is_number()) << run.dump();
  EXPECT_EQ(Slurp(merged + "/summary.csv").rfind("patient_id,status,plan,", 0), 0u);

  // results.nifti = false: the .vdb alone.
  const std::string off = Write("off.toml", Scenario("data", "[results]\nnifti = false\n"));
  r = RunMewm("run " + off + " --quiet --out " + dir_.File("off"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir_.File("off/patients/P0001/post_chosen.vdb")));
  EXPECT_FALSE(fs::exists(dir_.File("off/patients/P0001/post_chosen_ct.nii.gz")));
  EXPECT_FALSE(fs::exists(dir_.File("off/patients/P0001/post_chosen_labels.nii.gz")));
  r = RunMewm("run " + Write("bad.toml", Scenario("data", "[results]\nnifti = \"yes\"\n")) +
              " --quiet --out " + dir_.File("bad"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("results.nifti"), std::string::npos) << r.output;
}

/// The VLM policy end to end through the binary: train on a small cohort, score it alone (no
/// invalid plan), then plan with it from a scenario under strace: the planning run, model
/// included, never opens the cohort's truth.
TEST_F(CliTest, PolicyTrainEvaluateAndPlanWithTheVlmWithoutReadingTheTruth) {
  const std::string cohort = dir_.File("pc");
  Result r =
      RunMewm("cohort generate --n 6 --seed 11 --spacing 3 --no-nifti --quiet --out " + cohort);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string model = dir_.File("vlm.pt");
  r = RunMewm("train policy --quiet --cohort " + cohort + " --out " + model +
              " --epochs 2 --batch 2 --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(model + ".sha256"));
  r = RunMewm("eval policy --quiet --cohort " + cohort + " --checkpoint " + model +
              " --ablations --top-k 5 --json-out " + dir_.File("p.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* row :
       {"vlm first plan", "vlm (image only)", "vlm (note only)", "guideline first choice",
        "majority plan", "random valid plan", "guideline ordering"}) {
    EXPECT_NE(r.output.find(row), std::string::npos) << row << "\n" << r.output;
  }
  const nlohmann::json eval = nlohmann::json::parse(ReadText(dir_.File("p.json")));
  EXPECT_EQ(eval.at("patients"), 6);
  ASSERT_EQ(eval.at("policies").size(), 3u);
  for (const auto& p : eval.at("policies")) {
    EXPECT_EQ(p.at("invalid_plans"), 0);
    EXPECT_EQ(p.at("plans_checked"), 30);
  }
  // A truth file whose optimal plan has no risk is reported as corrupt, not a crash.
  const std::string corrupt = dir_.File("pc-corrupt");
  std::filesystem::copy(cohort, corrupt, std::filesystem::copy_options::recursive);
  nlohmann::json truth = nlohmann::json::parse(ReadText(corrupt + "/truth/truth.json"));
  nlohmann::json& first = truth.at("patients").at("P0001");
  first.at("plan_risks").erase(first.at("optimal_plan").get<std::string>());
  std::ofstream(corrupt + "/truth/truth.json") << truth.dump();
  r = RunMewm("eval policy --quiet --cohort " + corrupt + " --checkpoint " + model);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("has no risk"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("truth.json"), std::string::npos) << r.output;

  std::ofstream(dir_.File("vlm.toml"))
      << "[run]\nname = \"vlm\"\nseed = 1\n[cohort]\nsource = \"synthetic\"\nn = 6\nseed = 11\n"
      << "spacing_mm = 3.0\ndir = \"" << cohort << "\"\n[policy]\nbackend = \"vlm\"\n"
      << "checkpoint = \"" << model << "\"\ntop_k = 3\nthreads = 1\n[dynamics]\n"
      << "backend = \"mechanistic\"\ncalibration = \"" << MEWM_SOURCE_DIR
      << "/models/mechanistic_calibration.json\"\n[survival]\nbackend = \"cox\"\nmodel = \""
      << MEWM_SOURCE_DIR << "/models/cox_survival.json\"\n[planner]\nbeams = 1\nsamples = 1\n";
  const std::string out = dir_.File("out");
  const bool traced =
      std::system("strace -f -qq -e trace=%file -o /dev/null true > /dev/null 2>&1") == 0;
  const std::string trace = dir_.File("trace.txt");
  r = RunMewmWith(traced ? "strace -f -qq -e trace=%file -o " + trace + " " : "",
                  "run " + dir_.File("vlm.toml") + " --quiet --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json result =
      nlohmann::json::parse(ReadText(out + "/patients/P0001/result.json"));
  ASSERT_EQ(result.at("proposal").at("plans").size(), 3u);
  EXPECT_EQ(result.at("proposal").at("first_choice"),
            result.at("proposal").at("plans")[0].at("plan"));
  EXPECT_NE(result.at("proposal").at("rationale").get<std::string>().find("VLM findings"),
            std::string::npos);
  // The planner scored exactly the proposed plans.
  EXPECT_EQ(result.at("candidates").size(), 3u) << result.dump(1).substr(0, 2000);
  if (!traced) GTEST_SKIP() << "strace is missing: the truth check did not run";
  std::ifstream in(trace);
  std::string line;
  bool read_model = false;
  while (std::getline(in, line)) {
    EXPECT_EQ(line.find("/truth"), std::string::npos) << line;
    EXPECT_EQ(line.find("outcomes.csv"), std::string::npos) << line;
    read_model = read_model || line.find("vlm.pt") != std::string::npos;
  }
  EXPECT_TRUE(read_model) << "the trace did not see the checkpoint being read";
}

// The VLM policy on a user's own cohort: a manifest CSV whose rows name images and, for one
// patient, a clinical note; the other patient has none (the model reads an empty note).
TEST_F(CliTest, VlmPolicyPlansAManifestCohortWithAndWithoutNotes) {
  const std::string cohort = dir_.File("gen");
  Result r =
      RunMewm("cohort generate --n 2 --seed 12 --spacing 3 --no-nifti --quiet --out " + cohort);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string mine = dir_.File("mine");
  std::filesystem::create_directories(mine);
  std::ifstream clinical(cohort + "/clinical.csv");
  std::string header, line;
  ASSERT_TRUE(std::getline(clinical, header));
  std::ofstream csv(mine + "/patients.csv");
  csv << "ct,tumor,note," << header << "\n";
  for (const char* id : {"P0001", "P0002"}) {
    ASSERT_TRUE(std::getline(clinical, line));
    ASSERT_EQ(line.rfind(id, 0), 0u) << line;
    std::filesystem::copy_file(cohort + "/patients/" + id + "/pre.vdb", mine + "/" + id + ".vdb");
    std::string note;
    if (std::string(id) == "P0001") {
      std::filesystem::copy_file(cohort + "/patients/" + id + "/note.txt",
                                 mine + "/" + id + ".txt");
      note = std::string(id) + ".txt";
    }
    csv << id << ".vdb," << id << ".vdb," << note << "," << line << "\n";
  }
  csv.close();
  std::ofstream(mine + "/scenario.toml")
      << "[run]\nname = \"vlm-manifest\"\nseed = 1\n[cohort]\nsource = \"manifest\"\n"
      << "manifest = \"patients.csv\"\n[policy]\nbackend = \"vlm\"\ncheckpoint = \""
      << MEWM_SOURCE_DIR << "/models/policy_vlm.pt\"\ntop_k = 3\nthreads = 1\n[dynamics]\n"
      << "backend = \"mechanistic\"\ncalibration = \"" << MEWM_SOURCE_DIR
      << "/models/mechanistic_calibration.json\"\n[survival]\nbackend = \"cox\"\nmodel = \""
      << MEWM_SOURCE_DIR << "/models/cox_survival.json\"\n[planner]\nbeams = 1\nsamples = 1\n";
  const std::string out = dir_.File("out");
  r = RunMewm("run " + mine + "/scenario.toml --quiet --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* id : {"P0001", "P0002"}) {
    const nlohmann::json result =
        nlohmann::json::parse(ReadText(out + "/patients/" + id + "/result.json"));
    EXPECT_EQ(result.at("status"), "finished") << id;
    EXPECT_EQ(result.at("proposal").at("plans").size(), 3u) << id;
    // Beam search from Lipiodol alone, through the 3 proposed plans' sub-plans only.
    EXPECT_EQ(result.at("candidates").front().at("plan"), "Lipiodol") << id;
    for (const auto& candidate : result.at("candidates")) {
      const auto inside = [&](const nlohmann::json& proposed) {
        const std::string plan = "+" + proposed.at("plan").get<std::string>() + "+";
        for (const auto& item : candidate.at("items")) {
          if (plan.find("+" + item.get<std::string>() + "+") == std::string::npos) return false;
        }
        return true;
      };
      const auto& plans = result.at("proposal").at("plans");
      EXPECT_TRUE(std::any_of(plans.begin(), plans.end(), inside)) << id << " " << candidate;
    }
    EXPECT_NE(result.at("proposal").at("rationale").get<std::string>().find("VLM findings"),
              std::string::npos)
        << id;
  }
}

}  // namespace
}  // namespace mewm
