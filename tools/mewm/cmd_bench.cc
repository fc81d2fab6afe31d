// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// `mewm bench core`: sizes and timings of the core volume operations on a CT-like phantom,
// measured side by side in one run (docs/BENCHMARKS.md).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "commands.h"
#include "mewm/core/crop.h"
#include "mewm/core/file_util.h"
#include "mewm/core/nifti_io.h"
#include "mewm/core/seed.h"
#include "mewm/core/stats.h"
#include "mewm/core/vdb_io.h"
#include "mewm/core/version.h"
#include "mewm/planner/planner.h"
#include "mewm/policy/policy_model.h"
#include "mewm/run/cohort_source.h"
#include "mewm/run/runner.h"
#include "mewm/world/cohort.h"
#include "mewm/world/synthetic_world.h"

namespace mewm::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

/// A 256x256x128 abdomen-like volume: an elliptic body (fat rim, muscle, liver, spine) in air.
/// Air is exactly -1000 HU so it stays sparse; tissue carries 15 HU Gaussian noise.
DenseFloat MakeBenchPhantom(const Index3& dims, std::uint64_t seed) {
  Geometry g;
  g.spacing = Eigen::Vector3d(1.5, 1.5, 2.5);
  DenseFloat ct(dims, g, -1000.0f);
  Rng rng(seed);
  const double cx = dims[0] / 2.0, cy = dims[1] / 2.0;
  for (std::int64_t k = 0; k < dims[2]; ++k) {
    for (std::int64_t j = 0; j < dims[1]; ++j) {
      for (std::int64_t i = 0; i < dims[0]; ++i) {
        const double x = (i - cx) / (0.42 * dims[0]), y = (j - cy) / (0.32 * dims[1]);
        const double r = x * x + y * y;
        if (r > 1.0) continue;
        double hu = r > 0.8 ? -100.0 : 40.0;                       // subcutaneous fat, muscle
        const double lx = (i - 0.38 * dims[0]) / (0.2 * dims[0]);  // liver on the patient's right
        const double ly = (j - 0.45 * dims[1]) / (0.16 * dims[1]);
        if (lx * lx + ly * ly < 1.0) hu = 55.0;
        const double sx = (i - cx) / 10.0, sy = (j - 0.72 * dims[1]) / 10.0;
        if (sx * sx + sy * sy < 1.0) hu = 400.0;  // vertebral body
        ct.at(i, j, k) = static_cast<float>(hu + rng.Normal(0.0, 15.0));
      }
    }
  }
  return ct;
}

template <typename Fn>
double MedianMs(int repeats, Fn&& fn) {
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int RunCoreBench(int repeats, const std::string& json_path, const std::string& keep_dir) {
  const Index3 dims{256, 256, 128};
  const DenseFloat dense = MakeBenchPhantom(dims, 7);
  std::int64_t body_voxels = 0;
  for (float v : dense.data) body_voxels += v != -1000.0f;

  const fs::path dir =
      keep_dir.empty() ? fs::temp_directory_path() / ("mewm-bench-" + std::to_string(::getpid()))
                       : fs::path(keep_dir);
  fs::create_directories(dir);

  Expected<Volume> volume = Volume::FromDense(dense, "ct");
  if (!volume) return Fail(volume.error());
  const double dense_to_grid = MedianMs(repeats, [&] { (void)Volume::FromDense(dense, "ct"); });
  const double grid_to_dense = MedianMs(repeats, [&] { (void)volume->ToDense(); });

  VolumeSet set;
  set.metadata.patient_id = "bench";
  set.scalars.emplace("ct", *volume);
  const std::string vdb = (dir / "phantom.vdb").string();
  const std::string nii = (dir / "phantom.nii").string();
  const std::string niigz = (dir / "phantom.nii.gz").string();
  Status ok;
  const double write_vdb = MedianMs(repeats, [&] { ok = WriteVdb(vdb, set); });
  if (!ok) return Fail(ok.error());
  const double read_vdb = MedianMs(repeats, [&] { (void)ReadVdb(vdb); });
  const std::string vdb_half = (dir / "phantom_half.vdb").string();
  ok = WriteVdb(vdb_half, set, VdbWriteOptions{/*half_float=*/true});
  if (!ok) return Fail(ok.error());
  const double write_nii = MedianMs(repeats, [&] { ok = WriteNifti(nii, dense); });
  if (!ok) return Fail(ok.error());
  const double read_nii = MedianMs(repeats, [&] { (void)ReadNifti(nii); });
  ok = WriteNifti(niigz, dense);
  if (!ok) return Fail(ok.error());

  const Eigen::Vector3d centre = dense.geometry.IndexToWorld(Eigen::Vector3d(98, 115, 64));
  CropSpec mewm_crop{centre, {96, 96, 96}, Eigen::Vector3d::Constant(1.0)};
  CropSpec cpu_crop{centre, {64, 64, 64}, Eigen::Vector3d::Constant(1.5)};
  const double crop96 = MedianMs(repeats, [&] { (void)ExtractCrop(*volume, mewm_crop); });
  const double crop64 = MedianMs(repeats, [&] { (void)ExtractCrop(*volume, cpu_crop); });

  const double raw_bytes = double(dense.data.size() * sizeof(float));
  const auto size_of = [](const std::string& p) { return double(fs::file_size(p)); };
  nlohmann::json out = {{"mewm_version", Version()},
                        {"volume",
                         {{"dims", {dims[0], dims[1], dims[2]}},
                          {"body_fraction", double(body_voxels) / double(dense.data.size())}}},
                        {"threads", std::thread::hardware_concurrency()},
                        {"repeats", repeats},
                        {"bytes",
                         {{"dense_float32", raw_bytes},
                          {"nii", size_of(nii)},
                          {"nii_gz", size_of(niigz)},
                          {"vdb", size_of(vdb)},
                          {"vdb_half", size_of(vdb_half)}}},
                        {"ms",
                         {{"dense_to_grid", dense_to_grid},
                          {"grid_to_dense", grid_to_dense},
                          {"write_vdb", write_vdb},
                          {"read_vdb", read_vdb},
                          {"write_nii", write_nii},
                          {"read_nii", read_nii},
                          {"crop_96_1mm_trilinear", crop96},
                          {"crop_64_1p5mm_trilinear", crop64}}}};

  std::cout << std::fixed << std::setprecision(1)
            << "mewm bench core: 256x256x128 CT phantom, body "
            << 100.0 * body_voxels / double(dense.data.size()) << "% of voxels, median of "
            << repeats << "\n\n"
            << "  file sizes (vs dense float32 " << raw_bytes / 1e6 << " MB)\n"
            << "    .nii          " << std::setw(8) << size_of(nii) / 1e6 << " MB  "
            << size_of(nii) / raw_bytes << "x\n"
            << std::setprecision(3) << "    .nii.gz       " << std::setw(8) << size_of(niigz) / 1e6
            << " MB  " << size_of(niigz) / raw_bytes << "x\n"
            << "    .vdb          " << std::setw(8) << size_of(vdb) / 1e6 << " MB  "
            << size_of(vdb) / raw_bytes << "x\n"
            << "    .vdb (half)   " << std::setw(8) << size_of(vdb_half) / 1e6 << " MB  "
            << size_of(vdb_half) / raw_bytes << "x\n"
            << std::setprecision(1) << "\n  times (ms)\n"
            << "    dense -> grid " << std::setw(8) << dense_to_grid << "\n"
            << "    grid -> dense " << std::setw(8) << grid_to_dense << "\n"
            << "    write .vdb    " << std::setw(8) << write_vdb << "   read .vdb " << read_vdb
            << "\n"
            << "    write .nii    " << std::setw(8) << write_nii << "   read .nii " << read_nii
            << "\n"
            << "    crop 96^3 @1mm   " << std::setw(5) << crop96 << "  (MeWM-size)\n"
            << "    crop 64^3 @1.5mm " << std::setw(5) << crop64 << "  (CPU config)\n";
  if (!json_path.empty()) {
    if (auto w = WriteFileAtomic(json_path, out.dump(2) + "\n"); !w) return Fail(w.error());
  }
  if (keep_dir.empty()) fs::remove_all(dir);
  return 0;
}

double SecondsOf(const std::function<void()>& fn) {
  const auto t0 = Clock::now();
  fn();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int RunWorldBench(int patients, const std::string& json_path) {
  const ActionBase& actions = ActionBase::Default();
  auto world = scenarios::SyntheticWorld::Create(scenarios::WorldConfig{}, actions);
  if (!world) return Fail(world.error());
  nlohmann::json rows = nlohmann::json::array();
  double total_plans = 0, total_solve_s = 0;
  std::cout << std::fixed << std::setprecision(3) << "mewm bench world: " << patients
            << " patients of seed 1, " << world->plans().size() << " valid plans each\n\n"
            << "  patient lesions  tumor_ml  render_full_s  render_region_s  fields_s  "
               "exhaustive_s  plans_per_s\n";
  for (int i = 0; i < patients; ++i) {
    const scenarios::SyntheticPatient p = world->Sample(1, i);
    Expected<PatientCase> full = MakeError(ErrorCode::kInternal, "not rendered");
    Expected<PatientCase> region = MakeError(ErrorCode::kInternal, "not rendered");
    const double render_full = SecondsOf([&] { full = world->Render(p); });
    const double render_region = SecondsOf([&] { region = world->Render(p, true); });
    if (!full) return Fail(full.error());
    if (!region) return Fail(region.error());
    Expected<std::vector<dynamics::TumorField>> fields = MakeError(ErrorCode::kInternal, "");
    const double fields_s = SecondsOf(
        [&] { fields = dynamics::BuildTumorFields(*region, world->config().mechanistic); });
    if (!fields) return Fail(fields.error());
    Expected<scenarios::PatientTruth> truth = MakeError(ErrorCode::kInternal, "");
    const double truth_s = SecondsOf([&] { truth = world->Truth(p, *region); });
    if (!truth) return Fail(truth.error());
    const double solve_s = truth_s - fields_s;
    const double plans_per_s = double(world->plans().size()) / solve_s;
    total_plans += double(world->plans().size());
    total_solve_s += solve_s;
    std::cout << "  " << p.id << "   " << std::setw(7) << p.lesions.size() << std::setw(10)
              << truth->pre_viable_ml << std::setw(15) << render_full << std::setw(17)
              << render_region << std::setw(10) << fields_s << std::setw(14) << truth_s
              << std::setw(13) << std::setprecision(1) << plans_per_s << std::setprecision(3)
              << "\n";
    rows.push_back({{"patient", p.id},
                    {"lesions", p.lesions.size()},
                    {"pre_viable_ml", truth->pre_viable_ml},
                    {"render_full_s", render_full},
                    {"render_region_s", render_region},
                    {"fields_s", fields_s},
                    {"exhaustive_truth_s", truth_s},
                    {"plans_per_s", plans_per_s}});
  }
  // Whole-cohort generation, files included, per patient.
  const fs::path dir =
      fs::temp_directory_path() / ("mewm-bench-cohort-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  scenarios::CohortOptions options;
  options.n = 2;
  options.seed = 1;
  options.out_dir = dir.string();
  Status generated;
  const double cohort_s =
      SecondsOf([&] { generated = scenarios::GenerateCohort(options, actions); });
  fs::remove_all(dir);
  if (!generated) return Fail(generated.error());
  std::cout << "\n  mechanistic throughput: " << std::setprecision(1) << total_plans / total_solve_s
            << " plans/s (2 threads over plans, all valid plans of each patient)\n"
            << "  cohort generate, 2 patients with images and NIfTI: " << std::setprecision(2)
            << cohort_s / 2 << " s per patient (2 threads)\n";
  if (!json_path.empty()) {
    nlohmann::json out = {{"mewm_version", Version()},
                          {"patients", rows},
                          {"plans_per_s", total_plans / total_solve_s},
                          {"cohort_generate_s_per_patient", cohort_s / 2}};
    if (auto w = WriteFileAtomic(json_path, out.dump(2) + "\n"); !w) return Fail(w.error());
  }
  return 0;
}

/// The mean of a - b over paired values, with a 95% percentile-bootstrap interval (2,000
/// resamples of the pairs, fixed seed, so the figure is reproducible).
struct PairedDifference {
  double mean = 0, lo = 0, hi = 0;
};
PairedDifference ComparePaired(const std::vector<double>& a, const std::vector<double>& b) {
  const std::size_t n = a.size();
  std::vector<double> d(n);
  for (std::size_t i = 0; i < n; ++i) d[i] = a[i] - b[i];
  const auto mean = [](const std::vector<double>& v) { return MeanStd(v).first; };
  PairedDifference out;
  out.mean = mean(d);
  if (n < 2) {
    out.lo = out.hi = out.mean;
    return out;
  }
  std::mt19937_64 rng(20261130);
  std::uniform_int_distribution<std::size_t> pick(0, n - 1);
  std::vector<double> means(2000), sample(n);
  for (double& m : means) {
    for (double& x : sample) x = d[pick(rng)];
    m = mean(sample);
  }
  std::sort(means.begin(), means.end());
  out.lo = means[std::size_t(0.025 * double(means.size()))];
  out.hi = means[std::size_t(0.975 * double(means.size())) - 1];
  return out;
}

/// The lowest true risk among the plans the search could reach at all: plans of the truth whose
/// items all lie in the proposal (or are mandatory or required) and that hold no forbidden item.
/// Its gap to the true optimum is the regret the policy's exclusions cause, whatever the search.
Expected<double> BestReachableRisk(const nlohmann::json& plan_risks, const ActionBase& actions,
                                   const policy::Proposal& proposal,
                                   const std::vector<std::string>& mandatory,
                                   const std::vector<std::string>& require,
                                   const std::vector<std::string>& forbid) {
  std::set<std::string> allowed(proposal.drugs.begin(), proposal.drugs.end());
  allowed.insert(proposal.embolics.begin(), proposal.embolics.end());
  allowed.insert(mandatory.begin(), mandatory.end());
  allowed.insert(require.begin(), require.end());
  for (const std::string& item : forbid) allowed.erase(item);
  double best = HUGE_VAL;
  for (const auto& [plan, risk] : plan_risks.items()) {
    MEWM_TRY(const Plan parsed, actions.ParsePlan(plan));
    const std::set<std::string> items(parsed.items().begin(), parsed.items().end());
    bool ok = std::all_of(items.begin(), items.end(),
                          [&](const std::string& item) { return allowed.count(item) > 0; });
    for (const std::string& item : require) ok = ok && items.count(item) > 0;
    if (ok) best = std::min(best, risk.get<double>());
  }
  return best;
}

/// Beam search against MeWM's reference loop (and exhaustive search) on the same patients, in one
/// process: simulations, model evaluations, wall time and the true regret of each choice, the
/// paired regret difference of beam and reference with its interval, and how much of the regret
/// the policy's exclusions alone cause.
/// The search strategies' totals over a planner bench's patients.
struct PlannerBenchTotals {
  double seconds = 0, regret = 0;
  std::int64_t simulations = 0, evaluations = 0;
  int optimal = 0;
};

/// A synthetic cohort's truth.json (the true risk of every plan).
Expected<nlohmann::json> ReadCohortTruth(const std::string& cohort_dir) {
  MEWM_TRY(const std::string truth_path, scenarios::SyntheticTruthPath(cohort_dir));
  MEWM_TRY(const std::string text, ReadFile(truth_path));
  try {
    return nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, "'" + truth_path + "': " + e.what());
  }
}

/// Prints the planner bench's table and comparisons, and writes them to `json_path` (if set).
Status ReportPlannerBench(const std::string& scenario,
                          const std::vector<scenarios::SearchMode>& modes,
                          const std::vector<PlannerBenchTotals>& totals,
                          const std::vector<std::vector<double>>& regrets,
                          const std::vector<double>& exclusion_regrets,
                          const std::string& json_path) {
  const int n = int(exclusion_regrets.size());
  nlohmann::json rows = nlohmann::json::array();
  std::printf("%-11s %12s %12s %10s %12s %8s\n", "search", "simulations", "model evals", "wall s",
              "mean regret", "optimal");
  for (std::size_t m = 0; m < modes.size(); ++m) {
    const PlannerBenchTotals& k = totals[m];
    std::printf("%-11s %12lld %12lld %10.2f %12.4f %5d/%d\n", scenarios::ToString(modes[m]),
                static_cast<long long>(k.simulations), static_cast<long long>(k.evaluations),
                k.seconds, k.regret / n, k.optimal, n);
    rows.push_back({{"search", scenarios::ToString(modes[m])},
                    {"simulations", k.simulations},
                    {"model_evaluations", k.evaluations},
                    {"wall_s", k.seconds},
                    {"mean_regret", k.regret / n},
                    {"optimal", k.optimal}});
  }
  const double sim_ratio = double(totals[0].simulations) / double(totals[1].simulations);
  const double time_ratio = totals[0].seconds / totals[1].seconds;
  std::printf("beam / reference: simulations %.3f, wall time %.3f\n", sim_ratio, time_ratio);
  const PairedDifference beam_vs_reference = ComparePaired(regrets[0], regrets[1]);
  std::printf("regret, beam - reference (paired, %d patients): %+.4f, 95%% CI [%+.4f, %+.4f]\n", n,
              beam_vs_reference.mean, beam_vs_reference.lo, beam_vs_reference.hi);
  const std::vector<double> zeros(exclusion_regrets.size(), 0.0);
  const PairedDifference exclusion = ComparePaired(exclusion_regrets, zeros);
  std::printf(
      "regret the policy's exclusions alone cause (best plan within the proposal vs the true "
      "optimum): %.4f, 95%% CI [%.4f, %.4f]; %.0f%% of beam's regret\n",
      exclusion.mean, exclusion.lo, exclusion.hi,
      totals[0].regret > 0 ? 100.0 * exclusion.mean * n / totals[0].regret : 0.0);
  if (!json_path.empty()) {
    nlohmann::json out = {{"mewm_version", Version()},
                          {"scenario", scenario},
                          {"patients", n},
                          {"searches", rows},
                          {"beam_over_reference_simulations", sim_ratio},
                          {"beam_over_reference_wall_time", time_ratio},
                          {"regret_beam_minus_reference",
                           {{"mean", beam_vs_reference.mean},
                            {"ci95", {beam_vs_reference.lo, beam_vs_reference.hi}}}},
                          {"regret_from_policy_exclusions",
                           {{"mean", exclusion.mean}, {"ci95", {exclusion.lo, exclusion.hi}}}}};
    MEWM_RETURN_IF_ERROR(WriteFileAtomic(json_path, out.dump(2) + "\n"));
  }
  return {};
}

int RunPlannerBench(const std::string& scenario, int patients, bool exhaustive,
                    const std::string& json_path, const BackendRegistry& backends) {
  auto spec = scenarios::LoadScenario(scenario, &backends);
  if (!spec) return Fail(spec.error());
  if (spec->cohort.source != scenarios::CohortSpec::Source::kSynthetic) {
    return Fail(Error{ErrorCode::kInvalidArgument,
                      "bench planner needs a synthetic cohort (it reads the true risks)"});
  }
  auto cohort = scenarios::SyntheticCohortDir(*spec, spec->output);
  if (!cohort) return Fail(cohort.error());
  const std::string cohort_dir = *cohort;
  if (auto outside = RefuseOutputInInputs("--json-out", json_path, {cohort_dir}); !outside) {
    return Fail(outside.error());
  }
  auto entries = scenarios::PrepareCohort(*spec, backends, cohort_dir);
  if (!entries) return Fail(entries.error());
  auto truth = ReadCohortTruth(cohort_dir);
  if (!truth) return Fail(truth.error());
  auto models = scenarios::LoadModels(*spec, backends);
  if (!models) return Fail(models.error());
  std::vector<scenarios::SearchMode> modes = {scenarios::SearchMode::kBeam,
                                              scenarios::SearchMode::kReference};
  if (exhaustive) modes.push_back(scenarios::SearchMode::kExhaustive);
  std::vector<PlannerBenchTotals> totals(modes.size());
  std::vector<std::vector<double>> regrets(modes.size());
  std::vector<double> exclusion_regrets;
  auto mandatory = spec->actions.MandatoryItems(spec->protocol);
  if (!mandatory) return Fail(mandatory.error());
  const int n = std::min<int>(patients, int(entries->size()));
  std::cout << "planner bench: " << n << " patients of " << scenario
            << ", B=" << spec->planner.beams << " T=" << spec->planner.samples
            << " H=" << spec->planner.drug_horizon << "/" << spec->planner.embolic_horizon << "\n";
  for (int i = 0; i < n; ++i) {
    auto patient = scenarios::LoadPatient((*entries)[std::size_t(i)]);
    if (!patient) return Fail(patient.error());
    auto proposal = models->policy->Propose(*patient);
    if (!proposal) return Fail(proposal.error());
    const nlohmann::json& t = truth->at("patients").at(patient->id);
    const double optimal = t.at("optimal_risk").get<double>();
    auto reachable = BestReachableRisk(t.at("plan_risks"), spec->actions, *proposal, *mandatory,
                                       spec->require, spec->forbid);
    if (!reachable) return Fail(reachable.error().WithContext("the truth of " + patient->id));
    exclusion_regrets.push_back(*reachable - optimal);
    for (std::size_t m = 0; m < modes.size(); ++m) {
      scenarios::PlannerSpec ps = spec->planner;
      ps.search = modes[m];
      auto planner = scenarios::Planner::Create(ps, spec->actions, spec->protocol, spec->require,
                                                spec->forbid, *models->dynamics, *models->survival);
      if (!planner) return Fail(planner.error());
      auto decision = planner->Plan(*patient, *proposal, spec->seed);
      if (!decision) return Fail(decision.error());
      const auto known = t.at("plan_risks").find(decision->best.plan.ToString());
      if (known == t.at("plan_risks").end()) {
        return Fail(Error{ErrorCode::kInvalidArgument,
                          std::string(scenarios::ToString(modes[m])) + " chose " +
                              decision->best.plan.ToString() + " for " + patient->id +
                              ", which the cohort's truth does not score (horizons above 2/2?)"});
      }
      const double risk = known->get<double>();
      PlannerBenchTotals& k = totals[m];
      k.seconds += decision->counters.search_seconds;
      k.simulations += decision->counters.simulations;
      k.evaluations += decision->counters.model_evaluations;
      k.regret += risk - optimal;
      regrets[m].push_back(risk - optimal);
      k.optimal += decision->best.plan.ToString() == t.at("optimal_plan").get<std::string>();
    }
    std::cerr << "  " << patient->id << " done\n";
  }
  if (auto w = ReportPlannerBench(scenario, modes, totals, regrets, exclusion_regrets, json_path);
      !w) {
    return Fail(w.error());
  }
  return 0;
}

}  // namespace

Action RegisterBench(CLI::App& app, const BackendRegistry& backends) {
  auto repeats = std::make_shared<int>(5);
  auto json_path = std::make_shared<std::string>();
  auto keep = std::make_shared<std::string>();
  auto* core = app.add_subcommand("core", "Volume IO, dense<->grid and crop timings");
  core->add_option("--repeats", *repeats, "Repetitions per measurement (median reported)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  core->add_option("--json-out", *json_path, "Also write the figures as JSON to this file");
  core->add_option("--keep", *keep, "Keep the phantom files in this folder");
  auto world_patients = std::make_shared<int>(3);
  auto* world =
      app.add_subcommand("world", "Synthetic world: render, mechanistic and truth timings");
  world->add_option("--patients", *world_patients, "Patients to time")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  world->add_option("--json-out", *json_path, "Also write the figures as JSON to this file");
  auto planner_scenario = std::make_shared<std::string>();
  auto planner_patients = std::make_shared<int>(10);
  auto planner_skip_exhaustive = std::make_shared<bool>(false);
  auto* planner = app.add_subcommand(
      "planner", "Beam search vs MeWM's reference loop vs exhaustive, on the same patients");
  planner->add_option("SCENARIO", *planner_scenario, "Scenario with a synthetic cohort")
      ->required();
  planner->add_option("--patients", *planner_patients, "Patients to plan with each search")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  planner->add_flag("--skip-exhaustive", *planner_skip_exhaustive,
                    "Only beam and reference (exhaustive search costs most of the time)");
  planner->add_option("--json-out", *json_path, "Also write the figures as JSON to this file");
  auto stream_events = std::make_shared<int>(200000);
  auto* stream = app.add_subcommand(
      "stream", "Streaming server path vs a raw cppzmq PUB/SUB baseline: rate, latency, MB/s");
  stream->add_option("--events", *stream_events, "1 KiB events in the throughput run")
      ->check(CLI::Range(1000, 10000000))
      ->capture_default_str();
  stream->add_option("--json-out", *json_path, "Also write the figures as JSON to this file");
  auto force = std::make_shared<bool>(false);
  for (CLI::App* sub : {core, world, planner, stream}) AddForceFlag(sub, force.get());
  Action dynamics = AddBenchDynamics(app, backends);
  app.require_subcommand(1);
  return [=, &backends]() -> int {
    if (const int rc = dynamics(); rc >= 0) return rc;
    if (auto free = CheckOutput("--json-out", *json_path, *force, {*planner_scenario}); !free) {
      return Fail(free.error());
    }
    if (stream->parsed()) return RunStreamBench(*stream_events, *json_path);
    if (world->parsed()) return RunWorldBench(*world_patients, *json_path);
    if (planner->parsed()) {
      return RunPlannerBench(*planner_scenario, *planner_patients, !*planner_skip_exhaustive,
                             *json_path, backends);
    }
    if (!keep->empty()) {
      // The phantom files go into a folder the user has, and replace files there only with
      // --force (they replaced a user's phantom.vdb, and created missing parents anywhere).
      std::error_code ec;
      if (!fs::is_directory(*keep, ec)) {
        return Fail(
            Error{ErrorCode::kInvalidArgument, "--keep '" + *keep + "' is not an existing folder"});
      }
      if (auto free = CheckOutputs({{"--keep", (fs::path(*keep) / "phantom.vdb").string()},
                                    {"--keep", (fs::path(*keep) / "phantom.nii").string()}},
                                   *force);
          !free) {
        return Fail(free.error());
      }
    }
    return RunCoreBench(*repeats, *json_path, *keep);
  };
}

}  // namespace mewm::cli
