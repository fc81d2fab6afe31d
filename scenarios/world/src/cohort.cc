// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/world/cohort.h"

#include <tbb/parallel_for.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mewm/core/file_util.h"
#include "mewm/core/nifti_io.h"
#include "mewm/core/seed.h"
#include "mewm/core/stats.h"
#include "mewm/core/vdb_io.h"
#include "mewm/run/cohort_source.h"
#include "mewm/run/scenario.h"
#include "mewm/survival/cox.h"
#include "mewm/survival/metrics.h"
#include "mewm/tace/pharmacology.h"
#include "mewm/world/clinical_note.h"

namespace mewm::scenarios {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string Sex(const Covariates& c) { return c.sex == Covariates::Sex::kMale ? "M" : "F"; }

json BiologyJson(const dynamics::TumorBiology& b) {
  json s = json::object();
  for (std::size_t c = 0; c < dynamics::kDrugClasses.size(); ++c)
    s[dynamics::kDrugClasses[c]] = b.sensitivity[c];
  return {{"proliferation_per_day", b.proliferation_per_day},
          {"infiltration_mm2_per_day", b.infiltration_mm2_per_day},
          {"vascularity", b.vascularity},
          {"sensitivity", s}};
}

json CovariatesJson(const Covariates& c) {
  return {{"age_years", c.age_years},
          {"sex", Sex(c)},
          {"child_pugh", std::string(1, c.child_pugh)},
          {"bclc_stage", std::string(1, c.bclc_stage)},
          {"afp_ng_ml", c.afp_ng_ml},
          {"lesion_count", c.lesion_count},
          {"max_diameter_mm", c.max_diameter_mm},
          {"vascular_invasion", c.vascular_invasion}};
}

Expected<Covariates> CovariatesFromJson(const json& j) {
  try {
    Covariates c;
    c.age_years = j.at("age_years").get<double>();
    c.sex =
        j.at("sex").get<std::string>() == "M" ? Covariates::Sex::kMale : Covariates::Sex::kFemale;
    c.child_pugh = j.at("child_pugh").get<std::string>().at(0);
    c.bclc_stage = j.at("bclc_stage").get<std::string>().at(0);
    c.afp_ng_ml = j.at("afp_ng_ml").get<double>();
    c.lesion_count = j.at("lesion_count").get<int>();
    c.max_diameter_mm = j.at("max_diameter_mm").get<double>();
    c.vascular_invasion = j.at("vascular_invasion").get<bool>();
    MEWM_RETURN_IF_ERROR(c.Validate());
    return c;
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, std::string("covariates: ") + e.what());
  }
}

/// A patient's folders, relative to the cohort folder: what the planner may read, and the truth.
std::string PatientDir(const std::string& id) { return "patients/" + id; }
std::string TruthPatientDir(const std::string& id) { return "truth/patients/" + id; }

json TruthJson(const SyntheticPatient& p, const PatientTruth& t) {
  json risks = json::object();
  for (const PlanTruth& pt : t.plans) risks[pt.plan.ToString()] = pt.risk;
  json cf = json::array(), cf_posts = json::array();
  for (std::size_t k = 0; k < p.counterfactual.size(); ++k) {
    cf.push_back(p.counterfactual[k].ToString());
    cf_posts.push_back(TruthPatientDir(p.id) + "/post_cf" + std::to_string(k + 1) + ".vdb");
  }
  const PlanTruth& opt = t.plans[t.optimal];
  const PlanTruth& adm = t.plans[t.administered];
  return {{"covariates", CovariatesJson(p.covariates)},
          {"biology", BiologyJson(p.biology)},
          {"pre_viable_ml", t.pre_viable_ml},
          {"pre_mask_ml", t.pre_mask_ml},
          {"administered_plan", adm.plan.ToString()},
          {"administered_post_mask_ml", adm.post_mask_ml},
          {"administered_risk", adm.risk},
          {"administered_post_viable_ml", adm.post_viable_ml},
          {"counterfactual_plans", cf},
          {"counterfactual_posts", cf_posts},
          {"event_time_months", t.event_time_months},
          {"event", t.event},
          {"optimal_plan", opt.plan.ToString()},
          {"optimal_risk", opt.risk},
          {"plan_risks", risks}};
}

/// Baseline covariates only: what a clinician knows before treatment.
std::string ClinicalCsv(const std::vector<SyntheticPatient>& patients) {
  std::ostringstream out;
  out.precision(10);
  out << "patient_id,age_years,sex,child_pugh,bclc_stage,afp_ng_ml,lesion_count,max_diameter_mm,"
         "vascular_invasion\n";
  for (const SyntheticPatient& p : patients) {
    const Covariates& c = p.covariates;
    out << p.id << "," << c.age_years << "," << Sex(c) << "," << c.child_pugh << "," << c.bclc_stage
        << "," << c.afp_ng_ml << "," << c.lesion_count << "," << c.max_diameter_mm << ","
        << (c.vascular_invasion ? 1 : 0) << "\n";
  }
  return out.str();
}

/// What happened after treatment (the plan given, observed time and event): training and
/// evaluation read it, the planner never does.
std::string OutcomesCsv(const std::vector<SyntheticPatient>& patients,
                        const std::vector<PatientTruth>& truths) {
  std::ostringstream out;
  out.precision(10);
  out << "patient_id,administered_plan,time_months,event\n";
  for (std::size_t n = 0; n < patients.size(); ++n) {
    out << patients[n].id << ",\"" << patients[n].administered.ToString() << "\","
        << truths[n].event_time_months << "," << (truths[n].event ? 1 : 0) << "\n";
  }
  return out.str();
}

Status WriteOutcome(const std::string& dir, const std::string& stem, const Outcome& o,
                    const SyntheticPatient& p, const LabelVolume& pre_tumor, bool nifti) {
  VolumeSet set;
  set.metadata.patient_id = p.id;
  set.metadata.provenance_json = json{
      {"generator", "mewm synthetic world"},
      {"world_version", kWorldVersion},
      {"plan", o.plan.ToString()}}.dump();
  set.scalars.emplace("ct", o.post_ct);
  set.labels.emplace("viable", o.viable);
  if (o.viable_fraction) set.scalars.emplace("viable_fraction", *o.viable_fraction);
  set.labels.emplace("pre_tumor", pre_tumor);  // the pre-treatment mask, for reference
  MEWM_RETURN_IF_ERROR(WriteVdb(dir + "/" + stem + ".vdb", set));
  if (nifti) {
    MEWM_RETURN_IF_ERROR(WriteNifti(dir + "/post_ct.nii.gz", o.post_ct.ToDense()));
    MEWM_RETURN_IF_ERROR(WriteNiftiLabels(dir + "/viable.nii.gz", o.viable.ToDense()));
  }
  return {};
}

/// Moves a finished temporary folder into place, replacing what a previous generation left.
Status MoveIntoPlace(const std::string& temp, const std::string& final_dir, const std::string& id) {
  std::error_code ec;
  fs::remove_all(final_dir, ec);
  fs::rename(temp, final_dir, ec);
  if (ec) {
    const std::string message = ec.message();
    fs::remove_all(temp, ec);
    return MakeError(ErrorCode::kIo,
                     "cannot move patient " + id + " into '" + final_dir + "': " + message);
  }
  return {};
}

/// Generates one patient atomically (temporary sibling folders, then renames): what the planner
/// may read into `out_dir`/patients/<id>, its truth and counterfactual outcomes into
/// `out_dir`/truth/patients/<id>. The truth folder is moved first, so a complete patients/<id>
/// always has its truth.
Expected<PatientTruth> GeneratePatient(const SyntheticWorld& world, const SyntheticPatient& p,
                                       const CohortOptions& options) {
  const auto cancelled = [&] { return options.cancelled && options.cancelled(); };
  MEWM_TRY(const PatientCase rendered, world.Render(p, false, options.cancelled));
  const auto& mech = world.config().mechanistic;
  MEWM_TRY(std::vector<dynamics::TumorField> fields, dynamics::BuildTumorFields(rendered, mech));
  dynamics::TabulateCollateralPattern(fields, p.biology.pattern_seed);
  MEWM_TRY(PatientTruth truth, world.Truth(p, fields, options.cancelled));

  const fs::path out(options.out_dir);
  const std::string visible_dir = (out / PatientDir(p.id)).string();
  const std::string truth_dir = (out / TruthPatientDir(p.id)).string();
  const std::string suffix = "/.tmp-" + p.id + "-" + std::to_string(::getpid());
  const std::string temp = (out / "patients").string() + suffix;
  const std::string truth_temp = (out / "truth" / "patients").string() + suffix;
  std::error_code ec;
  for (const std::string& dir : {temp, truth_temp}) {
    fs::remove_all(dir, ec);
    if (!fs::create_directories(dir, ec)) {
      return MakeError(ErrorCode::kIo, "cannot create '" + dir + "': " + ec.message());
    }
  }
  auto write_all = [&]() -> Status {
    VolumeSet pre;
    pre.metadata.patient_id = p.id;
    // No seed: the patient seed reproduces every hidden draw (it lives in truth/truth.json).
    pre.metadata.provenance_json =
        json{{"generator", kCohortGenerator}, {"world_version", kWorldVersion}}.dump();
    pre.scalars.emplace("ct", rendered.ct);
    pre.labels.emplace("liver", *rendered.liver);
    pre.labels.emplace("tumor", rendered.tumor);
    MEWM_RETURN_IF_ERROR(WriteVdb(temp + "/pre.vdb", pre));
    MEWM_RETURN_IF_ERROR(WriteFileAtomic(temp + "/note.txt", ClinicalNote(p)));
    if (options.write_nifti) {
      MEWM_RETURN_IF_ERROR(WriteNifti(temp + "/pre_ct.nii.gz", rendered.ct.ToDense()));
      MEWM_RETURN_IF_ERROR(WriteNiftiLabels(temp + "/liver.nii.gz", rendered.liver->ToDense()));
      MEWM_RETURN_IF_ERROR(WriteNiftiLabels(temp + "/tumor.nii.gz", rendered.tumor.ToDense()));
    }
    std::vector<Plan> plans = {p.administered};
    plans.insert(plans.end(), p.counterfactual.begin(), p.counterfactual.end());
    for (std::size_t k = 0; k < plans.size(); ++k) {
      if (cancelled()) return MakeError(ErrorCode::kCancelled, "cancelled");
      std::vector<dynamics::FieldResponse> responses;
      MEWM_RETURN_IF_ERROR(dynamics::SimulateResponse(
          fields, p.biology, plans[k], p.covariates.child_pugh, mech, 0, &responses));
      const std::uint64_t render_seed = DeriveSeed(p.seed, plans[k].ToString());
      MEWM_TRY(const Outcome outcome, dynamics::RenderOutcome(rendered, fields, responses, plans[k],
                                                              0, render_seed, mech));
      // The administered follow-up CT is an observed outcome; counterfactuals never are.
      if (k == 0) {
        MEWM_RETURN_IF_ERROR(WriteOutcome(temp, "post_administered", outcome, p, rendered.tumor,
                                          options.write_nifti));
      } else {
        MEWM_RETURN_IF_ERROR(WriteOutcome(truth_temp, "post_cf" + std::to_string(k), outcome, p,
                                          rendered.tumor, false));
      }
    }
    return WriteFileAtomic(truth_temp + "/truth.json", TruthJson(p, truth).dump(2) + "\n");
  };
  Status written = write_all();
  if (written) written = MoveIntoPlace(truth_temp, truth_dir, p.id);
  if (written) written = MoveIntoPlace(temp, visible_dir, p.id);
  if (!written) {
    fs::remove_all(temp, ec);
    fs::remove_all(truth_temp, ec);
    return written.error().WithContext("patient " + p.id);
  }
  return truth;
}

}  // namespace

namespace {

/// True for a name a cohort writes into a patient's folder (this layout or the first, where the
/// truth and counterfactual outcomes sat beside the planner's files), or a temporary file of a
/// write cut short.
bool IsCohortPatientFile(const std::string& name) {
  static constexpr const char* kNames[] = {
      "pre.vdb",      "note.txt",       "pre_ct.nii.gz",         "liver.nii.gz",
      "tumor.nii.gz", "post_ct.nii.gz", "post_administered.vdb", "viable.nii.gz",
      "truth.json"};
  if (std::any_of(std::begin(kNames), std::end(kNames), [&](const char* n) { return name == n; }))
    return true;
  if (name.rfind(".tmp-", 0) == 0) return true;
  // post_cf<k>.vdb, k >= 1
  const std::string prefix = "post_cf", suffix = ".vdb";
  if (name.size() <= prefix.size() + suffix.size() || name.rfind(prefix, 0) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return false;
  }
  const std::string k = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  return std::all_of(k.begin(), k.end(), [](char c) { return c >= '0' && c <= '9'; });
}

/// OK when `parent` (a cohort's patients/ or truth/patients/) is absent or holds only patient
/// folders of files a cohort writes, and temporary folders of an interrupted generation. A forced
/// regeneration removes these folders whole, so anything else in them is refused first, with its
/// path: `--force` replaces the cohort, never a file of the user's put inside it.
Status CheckCohortPatients(const fs::path& parent) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(parent, ec))) return {};
  const auto foreign = [&](const fs::path& p, const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + p.string() + "' " + why +
                         "; mewm replaces only the files a cohort writes, so move it away first "
                         "or choose another folder");
  };
  if (fs::is_symlink(parent, ec) || !fs::is_directory(parent, ec)) {
    return foreign(parent, "is not a folder of patients mewm wrote");
  }
  for (const auto& entry : fs::directory_iterator(parent, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_symlink() || !entry.is_directory()) {
      return foreign(entry.path(), "is not a patient folder of a mewm cohort");
    }
    if (name.rfind(".tmp-", 0) == 0) continue;  // an interrupted patient: incomplete by design
    for (const auto& file : fs::directory_iterator(entry.path(), ec)) {
      if (file.is_symlink() || !file.is_regular_file() ||
          !IsCohortPatientFile(file.path().filename().string())) {
        return foreign(file.path(), "was not written by mewm cohort generate");
      }
    }
    if (ec) break;
  }
  if (ec) {
    return MakeError(ErrorCode::kIo, "cannot list '" + parent.string() + "': " + ec.message());
  }
  return {};
}

/// Checks the cohort folder and makes it ready: a previous mewm cohort there is replaced (with
/// force), the marker is written first (a generation cut short before manifest.json stays
/// replaceable), and patient folders an interrupted generation left are removed.
Status PrepareCohortFolder(const CohortOptions& options) {
  if (options.n <= 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "--n must be >= 1 (got " + std::to_string(options.n) + ")");
  }
  if (options.out_dir.empty()) return MakeError(ErrorCode::kInvalidArgument, "--out is required");
  std::error_code ec;
  if (fs::exists(options.out_dir, ec)) {
    if (!fs::is_directory(options.out_dir, ec)) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "'" + options.out_dir + "' exists and is not a folder");
    }
    if (!fs::is_empty(options.out_dir, ec) && !options.force) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "output folder '" + options.out_dir +
                           "' is not empty (use --force to replace its cohort)");
    }
  }
  if (options.force && !IsEmptyOrMewmCohort(options.out_dir)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + options.out_dir + "' is not a cohort written by mewm (no " +
                         kCohortMarker + " or manifest.json from the synthetic world); mewm " +
                         "replaces only its own cohorts, so choose another folder or empty it");
  }
  if (options.force) {
    // Replace the previous cohort (its patients, truth and index files, of this layout or the
    // first), nothing else in the folder: under truth/ only what a cohort writes there, and the
    // patient folders only when they hold nothing else.
    const fs::path out(options.out_dir);
    // A link under a cohort's names would have the removals below, and the writes after them,
    // reach through it: a truth/ linked to another cohort's lost that cohort's truth.
    for (const char* name : {"patients", "truth", "manifest.json", "clinical.csv", "outcomes.csv",
                             "truth.json", "truth/truth.json", "truth/patients", kCohortMarker}) {
      if (fs::is_symlink(out / name, ec)) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "'" + (out / name).string() +
                             "' is a symbolic link, which no cohort writes; mewm replaces only "
                             "the files a cohort writes, so move it away first or choose "
                             "another folder");
      }
    }
    if (fs::exists(fs::symlink_status(out / "truth", ec)) && !fs::is_directory(out / "truth", ec)) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "'" + (out / "truth").string() + "' is not a folder a cohort writes");
    }
    MEWM_RETURN_IF_ERROR(CheckCohortPatients(out / "patients"));
    MEWM_RETURN_IF_ERROR(CheckCohortPatients(out / "truth" / "patients"));
    for (const char* name : {"patients", "manifest.json", "clinical.csv", "outcomes.csv",
                             "truth.json", "truth/truth.json", "truth/patients"}) {
      fs::remove_all(out / name, ec);
    }
    fs::remove(out / "truth", ec);  // only when empty
  }
  // The marker comes first: a generation cut short (before manifest.json) stays replaceable.
  fs::create_directories(options.out_dir, ec);
  if (!ec) {
    MEWM_RETURN_IF_ERROR(WriteFileAtomic(
        (fs::path(options.out_dir) / kCohortMarker).string(),
        json{{"generator", kCohortGenerator}, {"world_version", kWorldVersion}}.dump() + "\n"));
  }
  fs::create_directories(fs::path(options.out_dir) / "patients", ec);
  if (!ec) fs::create_directories(fs::path(options.out_dir) / "truth" / "patients", ec);
  if (ec || access(options.out_dir.c_str(), W_OK) != 0) {
    return MakeError(ErrorCode::kIo,
                     "cannot write to '" + options.out_dir + "'" +
                         (ec ? ": " + ec.message() : std::string(": permission denied")));
  }
  // Folders left by an interrupted run are incomplete by construction: remove them.
  for (const fs::path& parent :
       {fs::path(options.out_dir) / "patients", fs::path(options.out_dir) / "truth" / "patients"}) {
    for (const auto& entry : fs::directory_iterator(parent, ec)) {
      if (entry.path().filename().string().rfind(".tmp-", 0) == 0) {
        fs::remove_all(entry.path(), ec);
      }
    }
  }

  return {};
}

/// Generates every patient's files and truth, in parallel; kCancelled when `cancelled` stopped
/// it, else the first patient's error.
Expected<std::vector<PatientTruth>> GeneratePatients(const SyntheticWorld& world,
                                                     const std::vector<SyntheticPatient>& patients,
                                                     const CohortOptions& options) {
  std::vector<PatientTruth> truths(patients.size());
  std::vector<std::optional<Error>> errors(patients.size());
  std::atomic<int> done{0};
  std::atomic<bool> stop{false};
  std::mutex progress_mutex;
  tbb::parallel_for(std::size_t(0), patients.size(), [&](std::size_t n) {
    if (stop.load() || (options.cancelled && options.cancelled())) {
      stop.store(true);
      return;
    }
    auto truth = GeneratePatient(world, patients[n], options);
    if (truth) {
      truths[n] = std::move(*truth);
    } else if (truth.error().code == ErrorCode::kCancelled) {
      stop.store(true);
      return;
    } else {
      errors[n] = truth.error();
    }
    const int finished = ++done;
    if (options.progress) {
      std::lock_guard<std::mutex> lock(progress_mutex);
      options.progress(finished, int(patients.size()));
    }
  });
  if (stop.load()) {
    // No manifest is written: the folder is not a complete cohort, and the next generation
    // replaces it. Patients finished before the cancel stay complete in their own folders.
    return MakeError(ErrorCode::kCancelled, "cohort generation in '" + options.out_dir +
                                                "' was cancelled after " +
                                                std::to_string(done.load()) + " of " +
                                                std::to_string(options.n) + " patients");
  }
  for (const auto& e : errors) {
    if (e) return *e;
  }

  return truths;
}

/// The index files, manifest.json last (it marks a complete cohort). The seeds reproduce every
/// hidden draw: they go with the truth, never beside the planner's files.
Status WriteCohortIndex(const CohortOptions& options, const SyntheticWorld& world,
                        const std::vector<SyntheticPatient>& patients,
                        const std::vector<PatientTruth>& truths) {
  json generation = {{"seed", std::to_string(options.seed)}, {"patient_seeds", json::object()}};
  json truth = {{"world_version", kWorldVersion},
                {"layout", kCohortLayout},
                {"generation", json::object()},
                {"patients", json::object()}};
  json manifest = {
      {"generator", kCohortGenerator},
      {"world_version", kWorldVersion},
      {"layout", kCohortLayout},
      {"n", options.n},
      {"plans_per_patient", options.world.counterfactual_plans},
      {"counterfactual_design", ToString(options.world.counterfactual_design)},
      {"spacing_mm", options.world.spacing_mm},
      {"fov_mm", {options.world.fov_mm[0], options.world.fov_mm[1], options.world.fov_mm[2]}},
      {"follow_up_days", options.world.mechanistic.follow_up_days},
      {"valid_plans", world.plans().size()},
      {"patients", json::array()}};
  for (std::size_t n = 0; n < patients.size(); ++n) {
    const SyntheticPatient& p = patients[n];
    truth["patients"][p.id] = TruthJson(p, truths[n]);
    generation["patient_seeds"][p.id] = std::to_string(p.seed);
    const std::string dir = PatientDir(p.id);
    json entry = {{"id", p.id},
                  {"dir", dir},
                  {"pre", dir + "/pre.vdb"},
                  {"note", dir + "/note.txt"},
                  {"post_administered", dir + "/post_administered.vdb"}};
    if (options.write_nifti) {
      entry["nifti"] = {{"pre_ct", dir + "/pre_ct.nii.gz"},
                        {"liver", dir + "/liver.nii.gz"},
                        {"tumor", dir + "/tumor.nii.gz"},
                        {"post_ct", dir + "/post_ct.nii.gz"},
                        {"viable", dir + "/viable.nii.gz"}};
    }
    manifest["patients"].push_back(entry);
  }
  truth["generation"] = generation;
  const fs::path out(options.out_dir);
  MEWM_RETURN_IF_ERROR(
      WriteFileAtomic((out / "truth" / "truth.json").string(), truth.dump(1) + "\n"));
  MEWM_RETURN_IF_ERROR(
      WriteFileAtomic((out / "outcomes.csv").string(), OutcomesCsv(patients, truths)));
  MEWM_RETURN_IF_ERROR(WriteFileAtomic((out / "clinical.csv").string(), ClinicalCsv(patients)));
  MEWM_RETURN_IF_ERROR(WriteFileAtomic((out / "manifest.json").string(), manifest.dump(2) + "\n"));
  return {};
}

}  // namespace

Status GenerateCohort(const CohortOptions& options, const ActionBase& actions) {
  MEWM_RETURN_IF_ERROR(PrepareCohortFolder(options));
  MEWM_TRY(const SyntheticWorld world, SyntheticWorld::Create(options.world, actions));
  std::vector<SyntheticPatient> patients;
  for (int n = 0; n < options.n; ++n) patients.push_back(world.Sample(options.seed, n));
  MEWM_TRY(const std::vector<PatientTruth> truths, GeneratePatients(world, patients, options));
  return WriteCohortIndex(options, world, patients, truths);
}

bool IsCohortOf(const std::string& dir, const CohortOptions& options, const ActionBase& actions) {
  const fs::path base(dir);
  if (!CheckSyntheticLayout(dir)) return false;
  auto text = ReadFile((base / "manifest.json").string());
  if (!text) return false;
  try {
    const json m = json::parse(*text);
    if (m.at("generator").get<std::string>() != kCohortGenerator ||
        m.at("world_version").get<std::string>() != kWorldVersion ||
        m.at("n").get<int>() != options.n ||
        m.at("spacing_mm").get<double>() != options.world.spacing_mm) {
      return false;
    }
  } catch (const std::exception&) {
    return false;
  }
  // No seed is stored beside the planner's files; the seed shows in what it draws. Drawing a
  // patient is cheap (no rendering), and continuous covariates written with 10 digits do not
  // match another seed's by chance.
  auto clinical = CsvTable::Load((base / "clinical.csv").string());
  auto world = SyntheticWorld::Create(options.world, actions);
  if (!clinical || !world || clinical->rows() != std::size_t(options.n)) return false;
  const auto close = [](double a, double b) { return std::abs(a - b) <= 1e-7 * std::abs(b); };
  for (int n = 0; n < options.n; ++n) {
    const SyntheticPatient p = world->Sample(options.seed, n);
    auto id = clinical->Get(std::size_t(n), "patient_id");
    auto c = ReadCovariates(*clinical, std::size_t(n));
    if (!id || !c || *id != p.id || c->sex != p.covariates.sex ||
        !close(c->age_years, p.covariates.age_years) ||
        !close(c->afp_ng_ml, p.covariates.afp_ng_ml)) {
      return false;
    }
  }
  return true;
}

namespace {

/// Mean of per-patient values with a 95% percentile-bootstrap interval over patients (2000
/// resamples, a fixed seed: the interval is reproducible). Non-finite values are left out.
/// `transform` maps the mean (e.g. exp of a mean log hazard ratio).
Figure Bootstrap(const std::vector<double>& values, double (*transform)(double) = nullptr) {
  std::vector<double> v;
  for (double x : values) {
    if (std::isfinite(x)) v.push_back(x);
  }
  Figure f;
  if (v.empty()) return f;
  // The transform is increasing, so it maps the interval's ends.
  const auto map = [&](double m) { return transform ? transform(m) : m; };
  const MeanInterval m = BootstrapMean(v, DeriveSeed(0x5eed, "world-stats-bootstrap"));
  f.value = map(m.mean);
  if (v.size() < 2) return f;
  f.lo = map(m.lo);
  f.hi = map(m.hi);
  return f;
}

double Exp(double x) { return std::exp(x); }

/// The drugs among a plan's items (by the pharmacology table).
std::vector<std::string> DrugsOf(const Plan& plan) {
  std::vector<std::string> drugs;
  for (const std::string& item : plan.items()) {
    auto physics = PhysicsOf(item);
    if (physics && !physics->drug_class.empty()) drugs.push_back(item);
  }
  return drugs;
}

/// The plan's embolic besides Lipiodol, or "none".
std::string EmbolicOf(const Plan& plan) {
  for (const std::string& item : plan.items()) {
    auto physics = PhysicsOf(item);
    if (physics && physics->drug_class.empty() && !physics->lipiodol) return item;
  }
  return "none";
}

/// mRECIST category from the viable volume before and after: 0 CR, 1 PR, 2 SD, 3 PD. Volumes
/// stand in for diameters: -30% in diameter is 0.7^3 in volume, +20% is 1.2^3.
int ResponseCategory(double pre_ml, double post_ml) {
  if (post_ml < 0.1) return 0;
  const double ratio = post_ml / std::max(pre_ml, 1e-9);
  if (ratio <= 0.343) return 1;
  if (ratio >= 1.728) return 3;
  return 2;
}

/// Squared Pearson correlation of estimate and truth (NaN when either is constant).
double Correlation2(const std::vector<std::pair<double, double>>& pairs) {
  if (pairs.size() < 3) return std::numeric_limits<double>::quiet_NaN();
  double ma = 0.0, mb = 0.0;
  for (const auto& [a, b] : pairs) {
    ma += a;
    mb += b;
  }
  ma /= double(pairs.size());
  mb /= double(pairs.size());
  double sab = 0.0, saa = 0.0, sbb = 0.0;
  for (const auto& [a, b] : pairs) {
    sab += (a - ma) * (b - mb);
    saa += (a - ma) * (a - ma);
    sbb += (b - mb) * (b - mb);
  }
  return saa > 0.0 && sbb > 1e-6 ? sab * sab / (saa * sbb)
                                 : std::numeric_limits<double>::quiet_NaN();
}

/// 1 - SS_res / SS_tot of an estimate against the truth (NaN when the truth is constant).
double RSquared(const std::vector<std::pair<double, double>>& pairs) {
  if (pairs.size() < 2) return std::numeric_limits<double>::quiet_NaN();
  double mean = 0.0;
  for (const auto& [estimate, truth] : pairs) mean += truth;
  mean /= double(pairs.size());
  double residual = 0.0, total = 0.0;
  for (const auto& [estimate, truth] : pairs) {
    residual += (estimate - truth) * (estimate - truth);
    total += (truth - mean) * (truth - mean);
  }
  return total > 0.0 ? 1.0 - residual / total : std::numeric_limits<double>::quiet_NaN();
}

struct DrugEffects {
  double chemo_vs_bland = 0.0;  ///< mean log HR of one drug against bland embolization (NaN: none)
  double second_drug = 0.0;     ///< mean log HR of a second drug against one (NaN: none)
};

/// Chemoembolization against bland embolization, and a second drug against one, on the most used
/// embolic (gelatin sponge) where the plan space has it.
DrugEffects MeanDrugEffects(const PatientTruth& t, const std::map<std::string, double>& risk_of) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Plan bland({"Gelatin Sponge", "Lipiodol"});
  std::vector<std::string> drugs;
  for (const PlanTruth& pt : t.plans) {
    for (const std::string& d : DrugsOf(pt.plan)) {
      if (std::find(drugs.begin(), drugs.end(), d) == drugs.end()) drugs.push_back(d);
    }
  }
  const auto risk = [&](const Plan& plan) {
    auto it = risk_of.find(plan.ToString());
    return it == risk_of.end() ? nan : it->second;
  };
  double chemo_sum = 0.0, second_sum = 0.0;
  int chemo_n = 0, second_n = 0;
  for (const std::string& d1 : drugs) {
    const double one = risk(bland.With(d1));
    if (!std::isfinite(one) || !std::isfinite(risk(bland))) continue;
    chemo_sum += std::log(one / risk(bland));
    ++chemo_n;
    for (const std::string& d2 : drugs) {
      const double two = risk(bland.With(d1).With(d2));
      if (d2 == d1 || !std::isfinite(two)) continue;
      second_sum += std::log(two / one);
      ++second_n;
    }
  }
  return {chemo_n ? chemo_sum / chemo_n : nan, second_n ? second_sum / second_n : nan};
}

/// The 95% interval of the Kaplan-Meier median by bootstrap (refitted per resample); left unset
/// when fewer than 100 of the 400 resamples reach a median.
void BootstrapKmMedianInterval(const std::vector<survival::SurvivalRecord>& records,
                               Figure* median) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Rng rng(DeriveSeed(0x5eed, "world-stats-km"));
  std::vector<double> medians;
  for (int b = 0; b < 400; ++b) {
    std::vector<survival::SurvivalRecord> sample;
    for (std::size_t k = 0; k < records.size(); ++k) {
      sample.push_back(records[std::size_t(rng.UniformInt(0, std::int64_t(records.size()) - 1))]);
    }
    auto fit = survival::FitKaplanMeier(sample);
    auto m = fit ? survival::MedianSurvival(*fit) : Expected<double>(nan);
    if (m && std::isfinite(*m)) medians.push_back(*m);
  }
  if (medians.size() >= 100) {
    std::sort(medians.begin(), medians.end());
    median->lo = medians[std::size_t(0.025 * double(medians.size() - 1))];
    median->hi = medians[std::size_t(0.975 * double(medians.size() - 1))];
  }
}

/// Harrell's C of a Cox model on what a clinician sees (volumes and covariates), 2-fold
/// cross-validated; NaN when a fold cannot be fitted.
double VisibleCoxCIndex(const std::vector<SyntheticPatient>& patients,
                        const std::vector<PatientTruth>& truths,
                        const std::vector<survival::SurvivalRecord>& records) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<std::string> names = {
      "log_pre_viable_ml", "log10_afp", "child_pugh_b", "child_pugh_c",    "bclc_a", "bclc_c",
      "vascular_invasion", "age",       "lesions",      "log_max_diameter"};
  Eigen::MatrixXd x(long(patients.size()), long(names.size()));
  for (std::size_t n = 0; n < patients.size(); ++n) {
    const Covariates& c = patients[n].covariates;
    x.row(long(n)) << std::log1p(truths[n].pre_viable_ml), std::log10(c.afp_ng_ml),
        c.child_pugh == 'B', c.child_pugh == 'C', c.bclc_stage == 'A', c.bclc_stage == 'C',
        c.vascular_invasion ? 1.0 : 0.0, c.age_years, double(c.lesion_count),
        std::log(c.max_diameter_mm);
  }
  std::vector<double> predicted(patients.size(), 0.0);
  bool cox_ok = true;
  for (int fold = 0; fold < 2; ++fold) {
    std::vector<long> train;
    for (std::size_t n = 0; n < patients.size(); ++n) {
      if (int(n % 2) != fold) train.push_back(long(n));
    }
    Eigen::MatrixXd xt(long(train.size()), x.cols());
    std::vector<survival::SurvivalRecord> yt;
    for (std::size_t r = 0; r < train.size(); ++r) {
      xt.row(long(r)) = x.row(train[r]);
      yt.push_back(records[std::size_t(train[r])]);
    }
    auto fit = survival::FitCox(xt, yt, names);
    if (!fit) {
      cox_ok = false;
      break;
    }
    for (std::size_t n = 0; n < patients.size(); ++n) {
      if (int(n % 2) == fold) predicted[n] = fit->LinearPredictor(x.row(long(n)).transpose());
    }
  }
  if (!cox_ok) return nan;
  auto c = survival::HarrellC(predicted, records);
  return c ? *c : nan;
}

}  // namespace

Expected<WorldStats> SummarizeTruths(const std::vector<SyntheticPatient>& patients,
                                     const std::vector<PatientTruth>& truths) {
  if (patients.size() != truths.size() || patients.size() < 4) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "world stats need at least 4 patients with truths");
  }
  WorldStats s;
  s.patients = int(patients.size());
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::map<std::string, int> optimal_counts;
  std::vector<double> oracle, hr_median, cr, objective, pd, chemo, second, conflict;
  std::vector<survival::SurvivalRecord> records;
  int events = 0;
  std::array<int, 5> categories{};
  for (std::size_t n = 0; n < patients.size(); ++n) {
    const PatientTruth& t = truths[n];
    std::map<std::string, double> risk_of;
    std::vector<double> risks;
    for (const PlanTruth& pt : t.plans) {
      risks.push_back(pt.risk);
      risk_of[pt.plan.ToString()] = pt.risk;
    }
    std::nth_element(risks.begin(), risks.begin() + long(risks.size() / 2), risks.end());
    hr_median.push_back(risks[risks.size() / 2] / t.plans[t.optimal].risk);
    const Plan& optimal = t.plans[t.optimal].plan;
    ++optimal_counts[optimal.ToString()];
    s.optimal_drugs_share[std::min<std::size_t>(DrugsOf(optimal).size(), 2)] += 1.0;
    s.optimal_embolic_share[EmbolicOf(optimal)] += 1.0;
    conflict.push_back(
        patients[n].covariates.child_pugh != 'A' && optimal.Contains("Absolute Alcohol") ? 1.0
                                                                                         : 0.0);
    const PlanTruth& given = t.plans[t.administered];
    oracle.push_back(given.linear_predictor);
    records.push_back({t.event_time_months, t.event});
    events += t.event ? 1 : 0;
    const int category = ResponseCategory(t.pre_mask_ml, given.post_mask_ml);
    ++categories[std::size_t(category)];
    cr.push_back(category == 0);
    objective.push_back(category <= 1);
    pd.push_back(category == 3);

    const DrugEffects effects = MeanDrugEffects(t, risk_of);
    chemo.push_back(effects.chemo_vs_bland);
    second.push_back(effects.second_drug);
  }
  s.mean_hr_median_vs_optimal = Bootstrap(hr_median);
  s.distinct_optimal_plans = int(optimal_counts.size());
  for (const auto& [plan, count] : optimal_counts) {
    const double share = double(count) / double(patients.size());
    if (share > s.max_optimal_share) {
      s.max_optimal_share = share;
      s.most_common_optimal = plan;
    }
  }
  for (double& share : s.optimal_drugs_share) share /= double(patients.size());
  for (auto& [embolic, share] : s.optimal_embolic_share) share /= double(patients.size());
  s.complete_response = Bootstrap(cr);
  s.objective_response = Bootstrap(objective);
  s.progressive_disease = Bootstrap(pd);
  s.partial_response = double(categories[1]) / double(patients.size());
  s.stable_disease = double(categories[2]) / double(patients.size());
  s.chemo_vs_bland_hr = Bootstrap(chemo, Exp);
  s.second_drug_hr = Bootstrap(second, Exp);
  s.guideline_conflict = Bootstrap(conflict);
  s.event_fraction = double(events) / double(patients.size());
  // Survival figures need enough events; a small cohort reports them as not measurable (NaN).
  auto oracle_c = survival::HarrellC(oracle, records);
  s.oracle_c_index = oracle_c ? *oracle_c : nan;
  MEWM_TRY(const survival::KaplanMeier km, survival::FitKaplanMeier(records));
  auto median = survival::MedianSurvival(km);
  s.km_median_os_months.value = median ? *median : nan;
  BootstrapKmMedianInterval(records, &s.km_median_os_months);

  s.visible_cox_c_index = VisibleCoxCIndex(patients, truths, records);
  s.liver_hu = s.viable_tumor_hu = s.necrosis_hu = s.lipiodol_hu = s.air_hu = nan;
  return s;
}

Expected<WorldStats> SimulateWorldStats(const WorldConfig& config, const ActionBase& actions,
                                        std::uint64_t seed, int n, int visibility_plans) {
  if (n < 4) return MakeError(ErrorCode::kInvalidArgument, "world stats need at least 4 patients");
  if (visibility_plans < 0) {
    return MakeError(ErrorCode::kInvalidArgument, "visibility plans must be >= 0");
  }
  MEWM_TRY(const SyntheticWorld world, SyntheticWorld::Create(config, actions));
  std::vector<SyntheticPatient> patients;
  for (int i = 0; i < n; ++i) patients.push_back(world.Sample(seed, i));
  std::vector<PatientTruth> truths(patients.size());
  // Per patient: (image estimate, truth) of the residual for each rendered plan.
  std::vector<std::vector<std::pair<double, double>>> visibility(patients.size());
  std::vector<std::optional<Error>> errors(patients.size());
  const auto& mech = config.mechanistic;
  tbb::parallel_for(std::size_t(0), patients.size(), [&](std::size_t i) {
    auto run = [&]() -> Status {
      MEWM_TRY(const PatientCase rendered, world.Render(patients[i], /*tumor_region_only=*/true));
      MEWM_TRY(std::vector<dynamics::TumorField> fields,
               dynamics::BuildTumorFields(rendered, mech));
      dynamics::TabulateCollateralPattern(fields, patients[i].biology.pattern_seed);
      MEWM_TRY(truths[i], world.Truth(patients[i], fields));
      const auto& plans = truths[i].plans;
      for (int k = 0; k < visibility_plans; ++k) {
        // Plans spread evenly over the canonical order, offset per patient.
        const std::size_t at =
            (i * 7 + std::size_t(k) * plans.size() / std::size_t(visibility_plans)) % plans.size();
        std::vector<dynamics::FieldResponse> responses;
        MEWM_RETURN_IF_ERROR(dynamics::SimulateResponse(fields, patients[i].biology, plans[at].plan,
                                                        patients[i].covariates.child_pugh, mech,
                                                        /*sample_seed=*/0, &responses));
        MEWM_TRY(const Outcome outcome,
                 dynamics::RenderOutcome(rendered, fields, responses, plans[at].plan, 0,
                                         DeriveSeed(patients[i].seed, {std::uint64_t(at)}), mech));
        MEWM_TRY(const double estimate,
                 dynamics::EstimateResidualFromImage(rendered, fields, outcome.post_ct));
        visibility[i].emplace_back(estimate, plans[at].post_viable_ml);
      }
      return {};
    };
    if (Status done = run(); !done) errors[i] = done.error();
  });
  for (const auto& e : errors) {
    if (e) return *e;
  }
  MEWM_TRY(WorldStats stats, SummarizeTruths(patients, truths));
  stats.seed = seed;
  if (visibility_plans > 0) {
    std::vector<std::pair<double, double>> pooled;
    double within = 0.0;
    int varying = 0;
    for (const auto& cases : visibility) {
      pooled.insert(pooled.end(), cases.begin(), cases.end());
      const double r2 = Correlation2(cases);
      if (std::isfinite(r2)) {
        within += r2;
        ++varying;
      }
    }
    stats.visibility_cases = int(pooled.size());
    stats.visibility_r2 = RSquared(pooled);
    stats.visibility_within_r2 =
        varying ? within / varying : std::numeric_limits<double>::quiet_NaN();
  }
  return stats;
}

namespace {

struct HuAccumulator {
  double sum = 0.0;
  std::int64_t count = 0;
  void Add(double v) {
    sum += v;
    ++count;
  }
  double Mean() const {
    return count ? sum / double(count) : std::numeric_limits<double>::quiet_NaN();
  }
};

}  // namespace

Expected<WorldStats> ComputeCohortStats(const std::string& cohort_dir, int max_hu_patients) {
  const fs::path dir(cohort_dir);
  MEWM_TRY(const std::string truth_path, SyntheticTruthPath(cohort_dir));
  MEWM_TRY(const std::string truth_text, ReadFile(truth_path));
  json truth;
  try {
    truth = json::parse(truth_text);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, "'" + truth_path + "': " + e.what());
  }
  std::vector<SyntheticPatient> patients;
  std::vector<PatientTruth> truths;
  try {
    for (const auto& [id, entry] : truth.at("patients").items()) {
      SyntheticPatient p;
      p.id = id;
      MEWM_TRY(p.covariates, CovariatesFromJson(entry.at("covariates")));
      PatientTruth t;
      t.pre_viable_ml = entry.at("pre_viable_ml").get<double>();
      t.pre_mask_ml = entry.at("pre_mask_ml").get<double>();
      t.event = entry.at("event").get<bool>();
      t.event_time_months = entry.at("event_time_months").get<double>();
      const std::string optimal = entry.at("optimal_plan").get<std::string>();
      const std::string administered = entry.at("administered_plan").get<std::string>();
      for (const auto& [plan, risk] : entry.at("plan_risks").items()) {
        PlanTruth pt;
        pt.risk = risk.get<double>();
        pt.linear_predictor = std::log(pt.risk);
        std::vector<std::string> items;
        std::stringstream parts(plan);
        for (std::string item; std::getline(parts, item, '+');) items.push_back(item);
        pt.plan = Plan(items);
        if (plan == optimal) t.optimal = t.plans.size();
        if (plan == administered) {
          t.administered = t.plans.size();
          pt.post_mask_ml = entry.at("administered_post_mask_ml").get<double>();
        }
        t.plans.push_back(pt);
      }
      patients.push_back(std::move(p));
      truths.push_back(std::move(t));
    }
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData, "'" + truth_path + "': " + e.what());
  }
  MEWM_TRY(WorldStats stats, SummarizeTruths(patients, truths));

  HuAccumulator liver, viable, necrosis, lipiodol, air;
  int measured = 0;
  for (const SyntheticPatient& p : patients) {
    if (measured >= max_hu_patients) break;
    const fs::path pdir = dir / PatientDir(p.id);
    MEWM_TRY(const VolumeSet pre, ReadVdb((pdir / "pre.vdb").string()));
    MEWM_TRY(const VolumeSet post, ReadVdb((pdir / "post_administered.vdb").string()));
    MEWM_TRY(const Volume pre_ct, pre.Scalar("ct"));
    MEWM_TRY(const LabelVolume liver_mask, pre.Label("liver"));
    MEWM_TRY(const LabelVolume tumor_mask, pre.Label("tumor"));
    MEWM_TRY(const Volume post_ct, post.Scalar("ct"));
    MEWM_TRY(const Volume viable_fraction, post.Scalar("viable_fraction"));
    const DenseFloat a = pre_ct.ToDense(), b = post_ct.ToDense(), u = viable_fraction.ToDense();
    const DenseLabel lv = liver_mask.ToDense(), tm = tumor_mask.ToDense();
    for (std::size_t x = 0; x < a.data.size(); ++x) {
      const bool tumor = tm.data[x] != 0;
      if (lv.data[x] != 0 && !tumor) liver.Add(a.data[x]);
      if (!tumor) continue;
      // The post-treatment image mixes viable and dead tissue per voxel; only nearly pure voxels
      // measure a tissue: the necrotic core (necrotic before treatment), fully viable tumor, and
      // fully dead tumor holding Lipiodol.
      const double delta = double(b.data[x]) - double(a.data[x]);
      if (a.data[x] < 40.0f) {
        necrosis.Add(b.data[x]);
      } else if (u.data[x] >= 0.9f) {
        viable.Add(b.data[x]);
      } else if (u.data[x] < 0.1f && delta > 150.0) {
        lipiodol.Add(b.data[x]);
      }
    }
    air.Add(a.data.front());
    air.Add(a.data.back());
    ++measured;
  }
  stats.hu_patients = measured;
  stats.liver_hu = liver.Mean();
  stats.viable_tumor_hu = viable.Mean();
  stats.necrosis_hu = necrosis.Mean();
  stats.lipiodol_hu = lipiodol.Mean();
  stats.air_hu = air.Mean();
  return stats;
}

namespace {

struct Check {
  std::string what;
  Figure figure;
  double lo, hi;
  std::string source;  ///< where the target comes from
  bool judged = true;  ///< false: a known gap of the world, shown against its target only
  bool Passes() const {
    return std::isnan(figure.value) || !judged ? true : figure.value >= lo && figure.value <= hi;
  }
};

/// Population figures are only judged on cohorts this large (smaller ones are shown, not judged).
constexpr int kMinPatientsForPopulationChecks = 100;

Figure Point(double v) {
  return Figure{v, std::numeric_limits<double>::quiet_NaN(),
                std::numeric_limits<double>::quiet_NaN()};
}

std::vector<Check> Checks(const WorldStats& s) {
  const double inf = std::numeric_limits<double>::infinity();
  const auto pop = [&](Figure f) {
    return s.patients >= kMinPatientsForPopulationChecks ? f : Figure{};
  };
  return {
      {"mean HR median plan / optimal plan", pop(s.mean_hr_median_vs_optimal), 1.3, inf,
       "the plan must matter"},
      {"largest share of one optimal plan", pop(Point(s.max_optimal_share)), 0.0, 0.35,
       "no one-size-fits-all optimum"},
      {"share of optima with two drugs", pop(Point(s.optimal_drugs_share[2])), 0.0, 0.40,
       "most cTACE uses one agent"},
      {"chemo- vs bland embolization HR", pop(s.chemo_vs_bland_hr), 0.80, 1.00,
       "meta-analyses: no clear survival gain"},
      {"HR of adding a second drug", pop(s.second_drug_hr), s.chemo_vs_bland_hr.value, inf,
       "diminishing returns"},
      {"complete response (mRECIST)", pop(s.complete_response), 0.15, 0.35, "about 1 in 4"},
      {"objective response (mRECIST)", pop(s.objective_response), 0.40, 0.62,
       "Lencioni 2016: 52.5%"},
      {"progressive disease (mRECIST)", pop(s.progressive_disease), 0.02, 0.20,
       "known gap: no new lesions", /*judged=*/false},
      {"optimum forbidden by the guideline", pop(s.guideline_conflict), 0.0, 0.05, "rare"},
      {"oracle C-index (true risk)", pop(Point(s.oracle_c_index)), 0.70, 0.85, ""},
      {"visible-feature Cox C-index (2-fold)", pop(Point(s.visible_cox_c_index)), 0.0,
       s.oracle_c_index - 0.03, "below the oracle"},
      {"Kaplan-Meier median OS (months)", pop(s.km_median_os_months), 15.0, 35.0,
       "Lencioni 2016: 19.4"},
      {"image residual estimate R^2 (pooled)", Point(s.visibility_r2), 0.9, 1.0,
       "residual visible"},
      {"liver HU (portal-venous)", Point(s.liver_hu), 90.0, 125.0, ""},
      {"viable tumor HU", Point(s.viable_tumor_hu), 60.0, 130.0, ""},
      {"necrosis HU", Point(s.necrosis_hu), 0.0, 40.0, ""},
      {"Lipiodol deposit HU", Point(s.lipiodol_hu), 200.0, inf, ""},
      {"air HU", Point(s.air_hu), -1000.0, -1000.0, ""},
  };
}

}  // namespace

std::vector<std::string> WorldStats::Failures() const {
  std::vector<std::string> failures;
  for (const Check& c : Checks(*this)) {
    if (!c.Passes()) {
      std::ostringstream out;
      out << c.what << " is " << c.figure.value << ", expected in [" << c.lo << ", " << c.hi << "]";
      failures.push_back(out.str());
    }
  }
  return failures;
}

std::string WorldStats::Format() const {
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(3);
  out << "synthetic world: " << patients << " patients" << (seed ? ", seed " : "");
  if (seed) out << seed;
  out << ", " << distinct_optimal_plans
      << " distinct optimal plans (most common: " << most_common_optimal << "), events "
      << 100.0 * event_fraction << "%, HU measured on " << hu_patients << " patients\n";
  out << "  response of the administered plan: CR " << complete_response.value << ", PR "
      << partial_response << ", SD " << stable_disease << ", PD " << progressive_disease.value
      << "\n  optimal plans by drug count: 0 " << optimal_drugs_share[0] << ", 1 "
      << optimal_drugs_share[1] << ", 2 " << optimal_drugs_share[2] << "; by embolic:";
  for (const auto& [embolic, share] : optimal_embolic_share) out << " " << embolic << " " << share;
  out << "\n";
  if (visibility_cases > 0) {
    out << "  image residual estimate vs truth: R^2 " << visibility_r2 << " pooled over "
        << visibility_cases << " (patient, plan) cases, mean within-patient r^2 "
        << visibility_within_r2 << "\n";
  }
  if (patients < kMinPatientsForPopulationChecks) {
    out << "  (population figures are judged from " << kMinPatientsForPopulationChecks
        << " patients; try `mewm cohort stats --simulate 200`)\n";
    out << "  mean HR median/optimal " << mean_hr_median_vs_optimal.value
        << ", largest optimal share " << max_optimal_share << ", chemo vs bland HR "
        << chemo_vs_bland_hr.value << ", second drug HR " << second_drug_hr.value << ", oracle C "
        << oracle_c_index << ", visible Cox C " << visible_cox_c_index << ", KM median OS "
        << km_median_os_months.value << " months\n";
  }
  for (const Check& c : Checks(*this)) {
    const bool inside = c.figure.value >= c.lo && c.figure.value <= c.hi;
    out << "  "
        << (std::isnan(c.figure.value) ? "  -  "
            : !c.judged                ? (inside ? "[ok] " : "[gap]")
            : c.Passes()               ? "[ok] "
                                       : "[FAIL]")
        << " ";
    out.width(38);
    out << std::left << c.what << std::right;
    out.width(9);
    out << c.figure.value;
    std::ostringstream ci;
    ci.setf(std::ios::fixed);
    ci.precision(3);
    if (std::isfinite(c.figure.lo)) ci << "[" << c.figure.lo << ", " << c.figure.hi << "]";
    out << " " << std::left;
    out.width(18);
    out << ci.str() << std::right << " target [" << c.lo << ", " << c.hi << "]";
    if (!c.source.empty()) out << "  " << c.source;
    out << "\n";
  }
  return out.str();
}

CohortOptions ScenarioCohortOptions(const CohortSpec& cohort) {
  CohortOptions c;
  c.n = cohort.n;
  c.seed = cohort.seed;
  c.world.spacing_mm = cohort.spacing_mm;
  return c;
}

SyntheticCohortSource SyntheticWorldCohorts() {
  return [](const CohortSpec& cohort, const ActionBase& actions, const std::string& dir,
            const std::function<void(int, int)>& progress,
            const std::function<bool()>& cancelled) -> Status {
    CohortOptions c = ScenarioCohortOptions(cohort);
    c.out_dir = dir;
    c.force = true;
    c.write_nifti = false;
    c.progress = progress;
    c.cancelled = cancelled;
    if (IsCohortOf(dir, c, actions)) return {};
    return GenerateCohort(c, actions);
  };
}

}  // namespace mewm::scenarios
