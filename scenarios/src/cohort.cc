// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/scenarios/cohort.h"

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
#include "mewm/core/vdb_io.h"
#include "mewm/scenarios/clinical_note.h"
#include "mewm/survival/cox.h"
#include "mewm/survival/metrics.h"

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

json TruthJson(const SyntheticPatient& p, const PatientTruth& t) {
  json risks = json::object();
  for (const PlanTruth& pt : t.plans) risks[pt.plan.ToString()] = pt.risk;
  json cf = json::array();
  for (const Plan& plan : p.counterfactual) cf.push_back(plan.ToString());
  const PlanTruth& opt = t.plans[t.optimal];
  const PlanTruth& adm = t.plans[t.administered];
  return {{"covariates", CovariatesJson(p.covariates)},
          {"biology", BiologyJson(p.biology)},
          {"pre_viable_ml", t.pre_viable_ml},
          {"administered_plan", adm.plan.ToString()},
          {"administered_risk", adm.risk},
          {"administered_post_viable_ml", adm.post_viable_ml},
          {"counterfactual_plans", cf},
          {"event_time_months", t.event_time_months},
          {"event", t.event},
          {"optimal_plan", opt.plan.ToString()},
          {"optimal_risk", opt.risk},
          {"plan_risks", risks}};
}

std::string ClinicalCsv(const std::vector<SyntheticPatient>& patients,
                        const std::vector<PatientTruth>& truths) {
  std::ostringstream out;
  out.precision(10);
  out << "patient_id,age_years,sex,child_pugh,bclc_stage,afp_ng_ml,lesion_count,max_diameter_mm,"
         "vascular_invasion,administered_plan,time_months,event\n";
  for (std::size_t n = 0; n < patients.size(); ++n) {
    const Covariates& c = patients[n].covariates;
    out << patients[n].id << "," << c.age_years << "," << Sex(c) << "," << c.child_pugh << ","
        << c.bclc_stage << "," << c.afp_ng_ml << "," << c.lesion_count << "," << c.max_diameter_mm
        << "," << (c.vascular_invasion ? 1 : 0) << ",\"" << patients[n].administered.ToString()
        << "\"," << truths[n].event_time_months << "," << (truths[n].event ? 1 : 0) << "\n";
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

/// Generates one patient into `final_dir` atomically (temporary sibling folder, then rename).
Expected<PatientTruth> GeneratePatient(const SyntheticWorld& world, const SyntheticPatient& p,
                                       const CohortOptions& options, const std::string& final_dir) {
  const auto cancelled = [&] { return options.cancelled && options.cancelled(); };
  MEWM_TRY(const PatientCase rendered, world.Render(p, false, options.cancelled));
  const auto& mech = world.config().mechanistic;
  MEWM_TRY(const std::vector<dynamics::TumorField> fields,
           dynamics::BuildTumorFields(rendered, mech));
  MEWM_TRY(PatientTruth truth, world.Truth(p, fields, options.cancelled));

  const std::string temp = fs::path(final_dir).parent_path().string() + "/.tmp-" + p.id + "-" +
                           std::to_string(::getpid());
  std::error_code ec;
  fs::remove_all(temp, ec);
  if (!fs::create_directories(temp, ec)) {
    return MakeError(ErrorCode::kIo, "cannot create '" + temp + "': " + ec.message());
  }
  auto write_all = [&]() -> Status {
    VolumeSet pre;
    pre.metadata.patient_id = p.id;
    pre.metadata.provenance_json = json{
        {"generator", "mewm synthetic world"},
        {"world_version", kWorldVersion},
        {"patient_seed",
         std::to_string(p.seed)}}.dump();
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
      const std::string stem = k == 0 ? "post_administered" : "post_cf" + std::to_string(k);
      MEWM_RETURN_IF_ERROR(
          WriteOutcome(temp, stem, outcome, p, rendered.tumor, options.write_nifti && k == 0));
    }
    return WriteFileAtomic(temp + "/truth.json", TruthJson(p, truth).dump(2) + "\n");
  };
  if (Status written = write_all(); !written) {
    fs::remove_all(temp, ec);
    return written.error().WithContext("patient " + p.id);
  }
  fs::remove_all(final_dir, ec);
  fs::rename(temp, final_dir, ec);
  if (ec) {
    fs::remove_all(temp, ec);
    return MakeError(ErrorCode::kIo,
                     "cannot move patient " + p.id + " into place: " + ec.message());
  }
  return truth;
}

}  // namespace

bool IsEmptyOrMewmCohort(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return true;
  if (!fs::is_directory(dir, ec)) return false;
  if (fs::is_empty(dir, ec)) return true;
  // Either index file will do; each is small (the manifest names every patient's files).
  for (const char* name : {kCohortMarker, "manifest.json"}) {
    auto text = ReadRegularFile((fs::path(dir) / name).string(), 64u << 20);
    if (!text) continue;
    try {
      const json j = json::parse(*text);
      if (j.is_object() && j.value("generator", std::string()) == kCohortGenerator) return true;
    } catch (const std::exception&) {
      // Not ours.
    }
  }
  return false;
}

Status GenerateCohort(const CohortOptions& options, const ActionBase& actions) {
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
    // Replace the previous cohort (its patients and index files), nothing else in the folder.
    for (const char* name : {"patients", "manifest.json", "truth.json", "clinical.csv"}) {
      fs::remove_all(fs::path(options.out_dir) / name, ec);
    }
  }
  // The marker comes first: a generation cut short (before manifest.json) stays replaceable.
  fs::create_directories(options.out_dir, ec);
  if (!ec) {
    MEWM_RETURN_IF_ERROR(WriteFileAtomic(
        (fs::path(options.out_dir) / kCohortMarker).string(),
        json{{"generator", kCohortGenerator}, {"world_version", kWorldVersion}}.dump() + "\n"));
  }
  fs::create_directories(fs::path(options.out_dir) / "patients", ec);
  if (ec || access(options.out_dir.c_str(), W_OK) != 0) {
    return MakeError(ErrorCode::kIo,
                     "cannot write to '" + options.out_dir + "'" +
                         (ec ? ": " + ec.message() : std::string(": permission denied")));
  }
  MEWM_TRY(const SyntheticWorld world, SyntheticWorld::Create(options.world, actions));
  std::vector<SyntheticPatient> patients;
  for (int n = 0; n < options.n; ++n) patients.push_back(world.Sample(options.seed, n));
  // Folders left by an interrupted run are incomplete by construction: remove them.
  for (const auto& entry : fs::directory_iterator(fs::path(options.out_dir) / "patients", ec)) {
    if (entry.path().filename().string().rfind(".tmp-", 0) == 0) fs::remove_all(entry.path(), ec);
  }

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
    const std::string dir = (fs::path(options.out_dir) / "patients" / patients[n].id).string();
    auto truth = GeneratePatient(world, patients[n], options, dir);
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

  json truth = {{"world_version", kWorldVersion},
                {"seed", std::to_string(options.seed)},
                {"patients", json::object()}};
  json manifest = {
      {"generator", kCohortGenerator},
      {"world_version", kWorldVersion},
      {"seed", std::to_string(options.seed)},
      {"n", options.n},
      {"plans_per_patient", options.world.counterfactual_plans},
      {"spacing_mm", options.world.spacing_mm},
      {"fov_mm", {options.world.fov_mm[0], options.world.fov_mm[1], options.world.fov_mm[2]}},
      {"follow_up_days", options.world.mechanistic.follow_up_days},
      {"valid_plans", world.plans().size()},
      {"patients", json::array()}};
  for (std::size_t n = 0; n < patients.size(); ++n) {
    const SyntheticPatient& p = patients[n];
    truth["patients"][p.id] = TruthJson(p, truths[n]);
    json entry = {{"id", p.id},
                  {"dir", "patients/" + p.id},
                  {"pre", "patients/" + p.id + "/pre.vdb"},
                  {"note", "patients/" + p.id + "/note.txt"},
                  {"administered_plan", p.administered.ToString()},
                  {"post_administered", "patients/" + p.id + "/post_administered.vdb"}};
    json cf = json::array();
    for (std::size_t k = 0; k < p.counterfactual.size(); ++k) {
      cf.push_back({{"plan", p.counterfactual[k].ToString()},
                    {"post", "patients/" + p.id + "/post_cf" + std::to_string(k + 1) + ".vdb"}});
    }
    entry["counterfactual"] = cf;
    manifest["patients"].push_back(entry);
  }
  const fs::path out(options.out_dir);
  MEWM_RETURN_IF_ERROR(WriteFileAtomic((out / "truth.json").string(), truth.dump(1) + "\n"));
  MEWM_RETURN_IF_ERROR(
      WriteFileAtomic((out / "clinical.csv").string(), ClinicalCsv(patients, truths)));
  MEWM_RETURN_IF_ERROR(WriteFileAtomic((out / "manifest.json").string(), manifest.dump(2) + "\n"));
  return {};
}

Expected<WorldStats> SummarizeTruths(const std::vector<SyntheticPatient>& patients,
                                     const std::vector<PatientTruth>& truths) {
  if (patients.size() != truths.size() || patients.size() < 4) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "world stats need at least 4 patients with truths");
  }
  WorldStats s;
  s.patients = int(patients.size());
  std::map<std::string, int> optimal_counts;
  std::vector<double> oracle;
  std::vector<survival::SurvivalRecord> records;
  double hr_sum = 0.0;
  int events = 0;
  for (std::size_t n = 0; n < patients.size(); ++n) {
    const PatientTruth& t = truths[n];
    std::vector<double> risks;
    for (const PlanTruth& pt : t.plans) risks.push_back(pt.risk);
    std::nth_element(risks.begin(), risks.begin() + long(risks.size() / 2), risks.end());
    hr_sum += risks[risks.size() / 2] / t.plans[t.optimal].risk;
    ++optimal_counts[t.plans[t.optimal].plan.ToString()];
    oracle.push_back(t.plans[t.administered].linear_predictor);
    records.push_back({t.event_time_months, t.event});
    events += t.event ? 1 : 0;
  }
  s.mean_hr_median_vs_optimal = hr_sum / double(patients.size());
  s.distinct_optimal_plans = int(optimal_counts.size());
  for (const auto& [plan, count] : optimal_counts) {
    const double share = double(count) / double(patients.size());
    if (share > s.max_optimal_share) {
      s.max_optimal_share = share;
      s.most_common_optimal = plan;
    }
  }
  s.event_fraction = double(events) / double(patients.size());
  // Survival figures need enough events; a small cohort reports them as not measurable (NaN).
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto oracle_c = survival::HarrellC(oracle, records);
  s.oracle_c_index = oracle_c ? *oracle_c : nan;
  MEWM_TRY(const survival::KaplanMeier km, survival::FitKaplanMeier(records));
  auto median = survival::MedianSurvival(km);
  s.km_median_os_months = median ? *median : nan;

  // A Cox model on what a clinician sees (volumes and covariates), 2-fold cross-validated.
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
  auto cox_c = cox_ok ? survival::HarrellC(predicted, records) : Expected<double>(nan);
  s.visible_cox_c_index = cox_c ? *cox_c : nan;
  s.liver_hu = s.viable_tumor_hu = s.necrosis_hu = s.lipiodol_hu = s.air_hu = nan;
  return s;
}

Expected<WorldStats> SimulateWorldStats(const WorldConfig& config, const ActionBase& actions,
                                        std::uint64_t seed, int n) {
  if (n < 4) return MakeError(ErrorCode::kInvalidArgument, "world stats need at least 4 patients");
  MEWM_TRY(const SyntheticWorld world, SyntheticWorld::Create(config, actions));
  std::vector<SyntheticPatient> patients;
  for (int i = 0; i < n; ++i) patients.push_back(world.Sample(seed, i));
  std::vector<PatientTruth> truths(patients.size());
  std::vector<std::optional<Error>> errors(patients.size());
  tbb::parallel_for(std::size_t(0), patients.size(), [&](std::size_t i) {
    auto rendered = world.Render(patients[i], /*tumor_region_only=*/true);
    if (!rendered) {
      errors[i] = rendered.error();
      return;
    }
    auto truth = world.Truth(patients[i], *rendered);
    if (truth) {
      truths[i] = std::move(*truth);
    } else {
      errors[i] = truth.error();
    }
  });
  for (const auto& e : errors) {
    if (e) return *e;
  }
  return SummarizeTruths(patients, truths);
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
  MEWM_TRY(const std::string truth_text, ReadFile((dir / "truth.json").string()));
  json truth;
  try {
    truth = json::parse(truth_text);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData,
                     "'" + (dir / "truth.json").string() + "': " + e.what());
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
      t.event = entry.at("event").get<bool>();
      t.event_time_months = entry.at("event_time_months").get<double>();
      const std::string optimal = entry.at("optimal_plan").get<std::string>();
      const std::string administered = entry.at("administered_plan").get<std::string>();
      for (const auto& [plan, risk] : entry.at("plan_risks").items()) {
        PlanTruth pt;
        pt.risk = risk.get<double>();
        pt.linear_predictor = std::log(pt.risk);
        pt.plan = Plan({plan});  // only the string form is needed here
        if (plan == optimal) t.optimal = t.plans.size();
        if (plan == administered) t.administered = t.plans.size();
        t.plans.push_back(pt);
      }
      patients.push_back(std::move(p));
      truths.push_back(std::move(t));
    }
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorruptData,
                     "'" + (dir / "truth.json").string() + "': " + e.what());
  }
  MEWM_TRY(WorldStats stats, SummarizeTruths(patients, truths));

  HuAccumulator liver, viable, necrosis, lipiodol, air;
  int measured = 0;
  for (const SyntheticPatient& p : patients) {
    if (measured >= max_hu_patients) break;
    const fs::path pdir = dir / "patients" / p.id;
    MEWM_TRY(const VolumeSet pre, ReadVdb((pdir / "pre.vdb").string()));
    MEWM_TRY(const VolumeSet post, ReadVdb((pdir / "post_administered.vdb").string()));
    MEWM_TRY(const Volume pre_ct, pre.Scalar("ct"));
    MEWM_TRY(const LabelVolume liver_mask, pre.Label("liver"));
    MEWM_TRY(const LabelVolume tumor_mask, pre.Label("tumor"));
    MEWM_TRY(const Volume post_ct, post.Scalar("ct"));
    MEWM_TRY(const LabelVolume viable_mask, post.Label("viable"));
    const DenseFloat a = pre_ct.ToDense(), b = post_ct.ToDense();
    const DenseLabel lv = liver_mask.ToDense(), tm = tumor_mask.ToDense(),
                     vm = viable_mask.ToDense();
    for (std::size_t x = 0; x < a.data.size(); ++x) {
      const bool tumor = tm.data[x] != 0;
      if (lv.data[x] != 0 && !tumor) liver.Add(a.data[x]);
      if (!tumor) continue;
      const double delta = double(b.data[x]) - double(a.data[x]);
      if (delta > 150.0) {
        lipiodol.Add(b.data[x]);
      } else if (vm.data[x] != 0) {
        viable.Add(b.data[x]);
      } else {
        necrosis.Add(b.data[x]);
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
  double value;
  double lo, hi;
  bool Passes() const { return std::isnan(value) ? true : value >= lo && value <= hi; }
};

/// Population figures are only judged on cohorts this large (smaller ones are shown, not judged).
constexpr int kMinPatientsForPopulationChecks = 100;

std::vector<Check> Checks(const WorldStats& s) {
  const double inf = std::numeric_limits<double>::infinity();
  const auto pop = [&](double v) {
    return s.patients >= kMinPatientsForPopulationChecks ? v
                                                         : std::numeric_limits<double>::quiet_NaN();
  };
  return {
      {"mean HR median plan / optimal plan", pop(s.mean_hr_median_vs_optimal), 1.3, inf},
      {"largest share of one optimal plan", pop(s.max_optimal_share), 0.0, 0.35},
      {"oracle C-index (true risk)", pop(s.oracle_c_index), 0.70, 0.85},
      {"visible-feature Cox C-index (2-fold)", pop(s.visible_cox_c_index), 0.0,
       s.oracle_c_index - 0.03},
      {"Kaplan-Meier median OS (months)", pop(s.km_median_os_months), 15.0, 35.0},
      {"liver HU", s.liver_hu, 45.0, 75.0},
      {"viable tumor HU", s.viable_tumor_hu, 60.0, 130.0},
      {"necrosis HU", s.necrosis_hu, 0.0, 40.0},
      {"Lipiodol deposit HU", s.lipiodol_hu, 200.0, inf},
      {"air HU", s.air_hu, -1000.0, -1000.0},
  };
}

}  // namespace

std::vector<std::string> WorldStats::Failures() const {
  std::vector<std::string> failures;
  for (const Check& c : Checks(*this)) {
    if (!c.Passes()) {
      std::ostringstream out;
      out << c.what << " is " << c.value << ", expected in [" << c.lo << ", " << c.hi << "]";
      failures.push_back(out.str());
    }
  }
  return failures;
}

std::string WorldStats::Format() const {
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(3);
  out << "synthetic world: " << patients << " patients, " << distinct_optimal_plans
      << " distinct optimal plans (most common: " << most_common_optimal << "), events "
      << 100.0 * event_fraction << "%, HU measured on " << hu_patients << " patients\n";
  if (patients < kMinPatientsForPopulationChecks) {
    out << "  (population figures are judged from " << kMinPatientsForPopulationChecks
        << " patients; try `mewm cohort stats --simulate 200`)\n";
    out << "  mean HR median/optimal " << mean_hr_median_vs_optimal << ", largest optimal share "
        << max_optimal_share << ", oracle C " << oracle_c_index << ", visible Cox C "
        << visible_cox_c_index << ", KM median OS " << km_median_os_months << " months\n";
  }
  for (const Check& c : Checks(*this)) {
    out << "  " << (std::isnan(c.value) ? "  -  " : c.Passes() ? "[ok] " : "[FAIL]") << " ";
    out.width(40);
    out << std::left << c.what << std::right;
    out.width(10);
    out << c.value << "   target [" << c.lo << ", " << c.hi << "]\n";
  }
  return out.str();
}

}  // namespace mewm::scenarios
