// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/world/clinical_note.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <vector>

#include "mewm/core/seed.h"

namespace mewm::scenarios {
namespace {

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// printf into a string (always called with arguments, so the format is checked by the caller's
/// literal).
template <typename... Args>
std::string Format(const char* format, Args... args) {
  char buffer[256];
  std::snprintf(buffer, sizeof(buffer), format, args...);
  return buffer;
}

std::string Pick(Rng& rng, std::initializer_list<const char*> options) {
  const auto k = rng.UniformInt(0, std::int64_t(options.size()) - 1);
  return *(options.begin() + k);
}

/// Index drawn with the given (unnormalised) weights.
int Choose(Rng& rng, std::initializer_list<double> weights) {
  double total = 0.0;
  for (double w : weights) total += w;
  double u = rng.Uniform() * total;
  int k = 0;
  for (double w : weights) {
    if (u < w) return k;
    u -= w;
    ++k;
  }
  return k - 1;
}

template <typename T>
void Shuffle(Rng& rng, std::vector<T>* items) {
  for (std::size_t i = items->size(); i > 1; --i) {
    std::swap((*items)[i - 1], (*items)[std::size_t(rng.UniformInt(0, std::int64_t(i) - 1))]);
  }
}

std::string Join(const std::vector<std::string>& parts, const std::string& separator,
                 const std::string& last_separator) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) out += i + 1 == parts.size() ? last_separator : separator;
    out += parts[i];
  }
  return out;
}

std::string Capitalize(std::string s) {
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = char(s[0] - 'a' + 'A');
  return s;
}

/// "1,250" for 1250.
std::string WithCommas(long long value) {
  std::string digits = std::to_string(value), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

/// A uniform draw in [lo, hi] rounded to one decimal (lo and hi have one decimal, so the rounded
/// value stays inside and reads as the same category).
double Uniform1(Rng& rng, double lo, double hi) {
  return std::clamp(std::round(rng.Uniform(lo, hi) * 10.0) / 10.0, lo, hi);
}

// ---------------------------------------------------------------------------------------------
// The facts: the covariates as a referral states them, plus what a referral knows that the
// covariates do not hold, drawn from the note's own seed.

enum class Etiology {
  kHbv,
  kHcv,
  kAlcohol,
  kMasld,
  kHcvAlcohol,
  kCryptogenic,
  kHemochromatosis,
  kAutoimmune
};

struct Facts {
  // Visible covariates.
  int age = 0;
  bool male = true;
  char child_pugh = 'A';
  char bclc = 'B';
  double afp = 0.0;
  int lesions = 1;
  double diameter_mm = 0.0;
  bool vascular_invasion = false;
  // Drawn from the note's seed, consistent with the covariates.
  Etiology etiology = Etiology::kHbv;
  std::string etiology_detail;  ///< "" or e.g. "on entecavir"
  int cp_score = 5;
  int bilirubin_points = 1, albumin_points = 1, inr_points = 1, ascites_points = 1,
      encephalopathy_points = 1;
  double bilirubin_mg_dl = 1.0, albumin_g_dl = 4.0, inr = 1.1;
  int ecog = 0;
  std::string prior;                 ///< "" = treatment-naive
  std::vector<std::string> history;  ///< comorbidities, may be empty
};

/// Etiology: HBV and HCV dominate; alcohol is commoner in men and MASLD in women.
void DrawEtiology(Rng& rng, Facts& f) {
  const int e = f.male ? Choose(rng, {0.30, 0.22, 0.22, 0.14, 0.05, 0.04, 0.03, 0.0})
                       : Choose(rng, {0.28, 0.27, 0.10, 0.22, 0.02, 0.06, 0.0, 0.05});
  f.etiology = Etiology(e);
  switch (f.etiology) {
    case Etiology::kHbv:
      f.etiology_detail = Pick(rng, {"on entecavir", "on tenofovir, HBV DNA undetectable",
                                     "HBeAg-negative, on tenofovir", ""});
      break;
    case Etiology::kHcv:
    case Etiology::kHcvAlcohol:
      f.etiology_detail = Pick(rng, {"SVR after direct-acting antivirals",
                                     "treated with sofosbuvir/velpatasvir, SVR12 achieved",
                                     "viremic, not yet treated", ""});
      break;
    case Etiology::kAlcohol:
      f.etiology_detail = rng.Bernoulli(0.75)
                              ? Format("abstinent for %d years", int(rng.UniformInt(2, 9)))
                              : std::string("still drinking, counselled");
      break;
    case Etiology::kMasld:
      f.etiology_detail = rng.Bernoulli(0.5) ? Format("BMI %d", int(rng.UniformInt(29, 41))) : "";
      break;
    default:
      break;
  }
}

/// Child-Pugh score within the class (A 5-6, B 7-9, C 10-15), spread over its five components,
/// and the laboratory values those points imply.
void DrawChildPughComponents(Rng& rng, Facts& f) {
  if (f.child_pugh == 'A') {
    f.cp_score = 5 + Choose(rng, {0.6, 0.4});
  } else if (f.child_pugh == 'B') {
    f.cp_score = 7 + Choose(rng, {0.5, 0.3, 0.2});
  } else {
    f.cp_score = 10 + Choose(rng, {0.35, 0.3, 0.2, 0.1, 0.04, 0.01});
  }
  int* points[] = {&f.bilirubin_points, &f.albumin_points, &f.inr_points, &f.ascites_points,
                   &f.encephalopathy_points};
  for (int extra = f.cp_score - 5; extra > 0; --extra) {
    const double w[] = {1.0, 1.2, 0.8, 1.0, 0.5};
    const int k = Choose(
        rng, {*points[0] < 3 ? w[0] : 0.0, *points[1] < 3 ? w[1] : 0.0, *points[2] < 3 ? w[2] : 0.0,
              *points[3] < 3 ? w[3] : 0.0, *points[4] < 3 ? w[4] : 0.0});
    ++*points[k];
  }
  f.bilirubin_mg_dl = f.bilirubin_points == 1   ? Uniform1(rng, 0.4, 1.9)
                      : f.bilirubin_points == 2 ? Uniform1(rng, 2.0, 2.9)
                                                : Uniform1(rng, 3.1, 5.8);
  f.albumin_g_dl = f.albumin_points == 1   ? Uniform1(rng, 3.6, 4.6)
                   : f.albumin_points == 2 ? Uniform1(rng, 2.8, 3.5)
                                           : Uniform1(rng, 2.0, 2.7);
  f.inr = f.inr_points == 1   ? Uniform1(rng, 1.0, 1.6)
          : f.inr_points == 2 ? Uniform1(rng, 1.7, 2.2)
                              : Uniform1(rng, 2.4, 3.0);
}

/// Prior HCC-directed treatment (most referrals for TACE are treatment-naive).
void DrawPriorTreatment(Rng& rng, Facts& f) {
  const int months = int(rng.UniformInt(6, 40));
  switch (Choose(rng, {0.62, 0.09, 0.12, 0.07, f.bclc == 'C' ? 0.10 : 0.0})) {
    case 1:
      f.prior = Pick(rng, {"segmentectomy", "right posterior sectionectomy", "wedge resection"}) +
                Format(" for HCC %d months ago, now recurrent", months);
      break;
    case 2:
      f.prior = Pick(rng, {"radiofrequency ablation", "microwave ablation"}) +
                Format(" of an earlier nodule %d months ago", months);
      break;
    case 3:
      f.prior = Format("one previous chemoembolization session %d months ago", months);
      break;
    case 4:
      f.prior = Pick(rng, {"sorafenib, stopped for hand-foot skin reaction",
                           "atezolizumab-bevacizumab, 4 cycles, stopped after variceal bleeding",
                           "lenvatinib, stopped for fatigue"});
      break;
    default:
      break;
  }
}

/// Relevant history: diabetes, hypertension, obesity, varices and other comorbidities.
void DrawHistory(Rng& rng, Facts& f) {
  const bool masld = f.etiology == Etiology::kMasld;
  if (rng.Bernoulli(masld ? 0.6 : 0.2)) {
    f.history.push_back(Pick(rng, {"type 2 diabetes", "type 2 diabetes on metformin",
                                   "insulin-treated type 2 diabetes"}));
  }
  if (rng.Bernoulli(0.35))
    f.history.push_back(Pick(rng, {"hypertension", "arterial hypertension"}));
  if (rng.Bernoulli(masld ? 0.4 : 0.08)) {
    f.history.push_back(Format("obesity (BMI %d)", int(rng.UniformInt(30, 40))));
  }
  const double varices = f.child_pugh == 'A' ? 0.25 : f.child_pugh == 'B' ? 0.5 : 0.6;
  if (rng.Bernoulli(varices)) {
    f.history.push_back(
        Pick(rng, {"small esophageal varices on carvedilol", "grade II esophageal varices, banded",
                   "esophageal varices under surveillance"}));
    if (f.child_pugh != 'A' && rng.Bernoulli(0.3)) {
      f.history.push_back(Format("variceal bleed %d months ago", int(rng.UniformInt(3, 30))));
    }
  }
  if (rng.Bernoulli(0.10)) {
    f.history.push_back(
        Format("coronary artery disease (stent %d years ago)", int(rng.UniformInt(2, 12))));
  }
  if (rng.Bernoulli(0.08)) f.history.emplace_back("chronic kidney disease stage 3");
  if (rng.Bernoulli(0.06)) f.history.emplace_back("COPD");
  if (rng.Bernoulli(0.05)) f.history.emplace_back("hypothyroidism");
  if (rng.Bernoulli(0.2)) f.history.push_back(Pick(rng, {"former tobacco use", "past smoking"}));
}

Facts DrawFacts(const SyntheticPatient& patient, std::uint64_t seed) {
  const Covariates& c = patient.covariates;
  Facts f;
  f.age = int(std::floor(c.age_years));
  f.male = c.sex == Covariates::Sex::kMale;
  f.child_pugh = c.child_pugh;
  f.bclc = c.bclc_stage;
  f.afp = c.afp_ng_ml;
  f.lesions = c.lesion_count;
  f.diameter_mm = c.max_diameter_mm;
  f.vascular_invasion = c.vascular_invasion;

  Rng rng(seed);
  DrawEtiology(rng, f);
  DrawChildPughComponents(rng, f);
  // ECOG: BCLC 0-B requires performance status 0; BCLC C allows 1-2.
  f.ecog = f.bclc == 'C' ? Choose(rng, {0.4, 0.45, 0.15}) : 0;

  DrawPriorTreatment(rng, f);
  DrawHistory(rng, f);
  return f;
}

// ---------------------------------------------------------------------------------------------
// Phrasing: every function below draws only from the phrasing generator.

std::string CancerName(Rng& rng) {
  return Pick(rng, {"HCC", "HCC", "hepatocellular carcinoma", "hepatocellular carcinoma",
                    "liver cancer", "hepatoma"});
}

std::string LesionNoun(Rng& rng, bool plural) {
  return plural ? Pick(rng, {"lesions", "nodules", "tumors", "foci"})
                : Pick(rng, {"lesion", "nodule", "tumor", "mass"});
}

std::string EtiologyNoun(Rng& rng, Etiology e) {
  switch (e) {
    case Etiology::kHbv:
      return Pick(rng, {"chronic hepatitis B", "HBV infection", "hepatitis B"});
    case Etiology::kHcv:
      return Pick(rng, {"chronic hepatitis C", "HCV infection", "hepatitis C"});
    case Etiology::kAlcohol:
      return Pick(rng, {"alcohol-related liver disease", "alcohol use disorder", "ALD"});
    case Etiology::kMasld:
      return Pick(rng, {"MASLD", "metabolic dysfunction-associated steatotic liver disease", "NASH",
                        "MASH"});
    case Etiology::kHcvAlcohol:
      return Pick(rng, {"hepatitis C and alcohol", "HCV and alcohol"});
    case Etiology::kCryptogenic:
      return "an undetermined cause";
    case Etiology::kHemochromatosis:
      return Pick(rng, {"hereditary hemochromatosis", "HFE hemochromatosis"});
    case Etiology::kAutoimmune:
      return "autoimmune hepatitis";
  }
  return "";
}

std::string EtiologyShort(Rng& rng, Etiology e) {
  switch (e) {
    case Etiology::kHbv:
      return Pick(rng, {"HBV", "hepatitis B"});
    case Etiology::kHcv:
      return Pick(rng, {"HCV", "hepatitis C"});
    case Etiology::kAlcohol:
      return Pick(rng, {"alcohol", "ALD", "alcohol-related"});
    case Etiology::kMasld:
      return Pick(rng, {"MASLD", "NASH", "MASH"});
    case Etiology::kHcvAlcohol:
      return Pick(rng, {"HCV + alcohol", "HCV/alcohol"});
    case Etiology::kCryptogenic:
      return "cryptogenic";
    case Etiology::kHemochromatosis:
      return "hemochromatosis";
    case Etiology::kAutoimmune:
      return Pick(rng, {"AIH", "autoimmune hepatitis"});
  }
  return "";
}

/// "cirrhosis due to chronic hepatitis B (on entecavir)" or "HBV cirrhosis".
std::string CirrhosisPhrase(Rng& rng, const Facts& f, bool with_detail) {
  std::string s;
  if (f.etiology == Etiology::kCryptogenic) {
    s = Pick(rng, {"cryptogenic cirrhosis", "cirrhosis of undetermined cause"});
  } else if (rng.Bernoulli(0.5)) {
    s = Pick(rng, {"cirrhosis due to ", "cirrhosis secondary to ", "cirrhosis from "}) +
        EtiologyNoun(rng, f.etiology);
  } else {
    s = EtiologyShort(rng, f.etiology) + Pick(rng, {" cirrhosis", "-related cirrhosis"});
  }
  if (with_detail && !f.etiology_detail.empty()) s += " (" + f.etiology_detail + ")";
  return s;
}

/// "1,250 ng/mL", "1250", "1.25 x 10^3 ng/ml", "4.3 µg/L".
std::string AfpValue(Rng& rng, double afp, bool unit_optional) {
  std::string number;
  if (afp < 10.0) {
    number = Format("%.1f", afp);
  } else if (afp < 1000.0) {
    number = Format("%.0f", afp);
  } else {
    const long long rounded = std::llround(afp);
    switch (Choose(rng, {0.35, 0.4, 0.25})) {
      case 0:
        number = std::to_string(rounded);
        break;
      case 1:
        number = WithCommas(rounded);
        break;
      default: {
        int exponent = int(std::floor(std::log10(afp)));
        double mantissa = std::round(afp / std::pow(10.0, exponent) * 100.0) / 100.0;
        if (mantissa >= 10.0) {
          mantissa /= 10.0;
          ++exponent;
        }
        number = Format("%.2f x 10^%d", mantissa, exponent);
      }
    }
  }
  if (unit_optional && rng.Bernoulli(0.5)) return number;
  std::string s = number + " " + Pick(rng, {"ng/mL", "ng/mL", "ng/ml", "µg/L"});
  if (afp < 10.0 && rng.Bernoulli(0.4)) s += " (normal)";
  if (afp > 400.0 && rng.Bernoulli(0.4)) s += " (markedly elevated)";
  return s;
}

std::string AfpLabel(Rng& rng) {
  return Pick(rng, {"AFP", "AFP", "AFP", "alpha-fetoprotein", "serum AFP"});
}

/// "4.5 cm" or "45 mm".
std::string Diameter(Rng& rng, double mm) {
  return rng.Bernoulli(0.55) ? Format("%.1f cm", mm / 10.0) : Format("%.0f mm", mm);
}

std::string CountWord(int n) {
  static const char* kWords[] = {"no", "one", "two", "three", "four", "five", "six"};
  return n >= 0 && n <= 6 ? kWords[n] : std::to_string(n);
}

/// The lesions as imaging describes them: "a solitary 4.5 cm lesion", "three nodules, the largest
/// 45 mm", "multifocal disease (2 lesions, up to 3.1 cm)". Count or size may be left out.
std::string LesionPhrase(Rng& rng, const Facts& f, bool say_count, bool say_size) {
  const std::string size = say_size ? Diameter(rng, f.diameter_mm) : "";
  if (f.lesions == 1) {
    const std::string noun = LesionNoun(rng, false);
    const std::string adjective = say_count ? Pick(rng, {"solitary ", "single "}) : "";
    if (!say_size) return "a " + adjective + noun;
    return rng.Bernoulli(0.5) ? "a " + adjective + size + " " + noun
                              : "a " + adjective + noun + " measuring " + size;
  }
  const std::string noun = LesionNoun(rng, true);
  if (!say_count) {
    return "multifocal disease" + (say_size ? ", the largest " + size : std::string());
  }
  const std::string count = rng.Bernoulli(0.5) ? CountWord(f.lesions) : std::to_string(f.lesions);
  switch (rng.UniformInt(0, 2)) {
    case 0:
      return count + " " + noun + (say_size ? ", the largest " + size : std::string());
    case 1:
      return count + " " + noun + (say_size ? " (largest " + size + ")" : std::string());
    default:
      return "multifocal disease (" + std::to_string(f.lesions) + " " + noun +
             (say_size ? ", up to " + size : std::string()) + ")";
  }
}

/// Vascular invasion as stated, or "" when it is left out (only when absent).
std::string VascularPhrase(Rng& rng, const Facts& f) {
  if (f.vascular_invasion) {
    return Pick(rng, {"portal vein tumor thrombus in a segmental branch",
                      "macrovascular invasion of a portal vein branch", "branch PVTT",
                      "segmental portal vein invasion (Vp2)"});
  }
  if (rng.Bernoulli(0.4)) return "";
  return Pick(
      rng, {"no macrovascular invasion", "no PVTT", "portal vein patent", "no vascular invasion"});
}

/// "Child-Pugh A (score 6)", "CP-A6", "Child-Pugh class B", "Child-Turcotte-Pugh B (8 points)".
std::string ChildPugh(Rng& rng, const Facts& f, bool with_score) {
  const std::string cls(1, f.child_pugh);
  if (!with_score) return Pick(rng, {"Child-Pugh ", "Child-Pugh class ", "Child "}) + cls;
  switch (rng.UniformInt(0, 4)) {
    case 0:
      return "Child-Pugh " + cls + " (score " + std::to_string(f.cp_score) + ")";
    case 1:
      return "Child-Pugh " + cls + std::to_string(f.cp_score);
    case 2:
      return "CP-" + cls + std::to_string(f.cp_score);
    case 3:
      return "Child-Turcotte-Pugh " + cls + " (" + std::to_string(f.cp_score) + " points)";
    default:
      return "Child-Pugh score " + std::to_string(f.cp_score) + " (class " + cls + ")";
  }
}

std::string Ecog(Rng& rng, int ecog) {
  return Pick(rng, {"ECOG ", "ECOG PS ", "ECOG performance status "}) + std::to_string(ecog);
}

std::string Bclc(Rng& rng, char stage) {
  static const char* kNames[] = {"very early", "early", "intermediate", "advanced", "terminal"};
  const std::string s(1, stage);
  const std::string label =
      Pick(rng, {"BCLC ", "BCLC stage ", "BCLC-", "Barcelona Clinic Liver Cancer (BCLC) stage "});
  const int k = stage == '0' ? 0 : stage >= 'A' && stage <= 'D' ? stage - 'A' + 1 : -1;
  if (k >= 0 && rng.Bernoulli(0.35)) return label + s + " (" + kNames[k] + " stage)";
  return label + s;
}

/// Liver function laboratory values for the Child-Pugh components, in varied units.
std::string Labs(Rng& rng, const Facts& f) {
  std::vector<std::string> parts;
  parts.push_back(rng.Bernoulli(0.6) ? Format("bilirubin %.1f mg/dL", f.bilirubin_mg_dl)
                                     : Format("bilirubin %.0f µmol/L", f.bilirubin_mg_dl * 17.1));
  parts.push_back(rng.Bernoulli(0.6) ? Format("albumin %.1f g/dL", f.albumin_g_dl)
                                     : Format("albumin %.0f g/L", f.albumin_g_dl * 10.0));
  parts.push_back(Format("INR %.1f", f.inr));
  Shuffle(rng, &parts);
  return Join(parts, ", ", ", ");
}

/// Ascites and encephalopathy as the Child-Pugh components state them; "" when both are absent
/// and the note does not say so.
std::string Decompensation(Rng& rng, const Facts& f) {
  std::vector<std::string> parts;
  if (f.ascites_points == 2) {
    parts.push_back(Pick(rng, {"mild ascites controlled with diuretics", "mild ascites"}));
  } else if (f.ascites_points == 3) {
    parts.push_back(Pick(rng, {"moderate ascites needing paracentesis", "tense ascites"}));
  }
  if (f.encephalopathy_points == 2) {
    parts.push_back(Pick(rng, {"grade 1-2 encephalopathy on lactulose",
                               "mild hepatic encephalopathy on lactulose and rifaximin"}));
  } else if (f.encephalopathy_points == 3) {
    parts.emplace_back("grade 3 hepatic encephalopathy");
  }
  if (parts.empty()) {
    return rng.Bernoulli(0.5) ? Pick(rng, {"no ascites or encephalopathy",
                                           "no history of ascites or encephalopathy"})
                              : "";
  }
  return Join(parts, ", ", " and ");
}

std::string PriorPhrase(Rng& rng, const Facts& f) {
  if (!f.prior.empty()) return f.prior;
  return Pick(rng, {"treatment-naive", "no prior HCC-directed therapy",
                    "no previous treatment for the liver cancer"});
}

std::string Modality(Rng& rng) {
  return Pick(rng, {"multiphase CT", "triple-phase CT", "contrast-enhanced CT", "CT"});
}

std::string Request(Rng& rng) {
  return Pick(rng, {"consideration of TACE", "suitability for transarterial chemoembolization",
                    "locoregional therapy (TACE)", "your opinion on chemoembolization",
                    "assessment for TACE"});
}

/// Which optional fields a note states.
struct Shown {
  bool etiology, cp, cp_score, ecog, afp, bclc, prior, history, labs, count, size, extrahepatic;
};

Shown DrawShown(Rng& rng) {
  Shown s;
  s.etiology = !rng.Bernoulli(0.06);
  s.cp = !rng.Bernoulli(0.05);
  s.cp_score = !rng.Bernoulli(0.3);
  s.ecog = !rng.Bernoulli(0.2);
  s.afp = !rng.Bernoulli(0.1);
  s.bclc = !rng.Bernoulli(0.2);
  s.prior = !rng.Bernoulli(0.25);
  s.history = !rng.Bernoulli(0.25);
  s.labs = rng.Bernoulli(0.45);
  s.count = !rng.Bernoulli(0.06);
  s.size = !rng.Bernoulli(0.06);
  s.extrahepatic = rng.Bernoulli(0.4);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Templates.

std::string Person(Rng& rng, const Facts& f) {
  return f.male ? Pick(rng, {"man", "man", "male", "gentleman"})
                : Pick(rng, {"woman", "woman", "female", "lady"});
}

/// A letter to the interventional team.
std::string Letter(Rng& rng, const Facts& f, const Shown& show) {
  const std::string he = f.male ? "He" : "She", his = f.male ? "His" : "Her";
  std::string out = Pick(rng, {"Dear colleague,", "Dear colleagues,", "Dear IR team,"});
  out += "\n\n";
  out += Pick(rng, {"Thank you for seeing this ", "I would be grateful if you could see this ",
                    "I am referring this "}) +
         Format("%d-year-old ", f.age) + Person(rng, f);
  if (show.etiology) out += " with " + CirrhosisPhrase(rng, f, true);
  out += ". " + he + Pick(rng, {" was found to have ", " has ", " was diagnosed with "});
  out += CancerName(rng) + " on " + Modality(rng) + ": ";
  out += LesionPhrase(rng, f, show.count, show.size);
  const std::string vascular = VascularPhrase(rng, f);
  if (!vascular.empty()) out += ", " + vascular;
  if (show.extrahepatic)
    out += Pick(rng, {", no extrahepatic spread", ", no extrahepatic disease"});
  out += ".";

  std::vector<std::string> sentences;
  if (show.cp) {
    std::string s = his + " liver function is " + ChildPugh(rng, f, show.cp_score);
    if (show.labs) s += " (" + Labs(rng, f) + ")";
    const std::string decompensation = Decompensation(rng, f);
    if (!decompensation.empty()) s += ", with " + decompensation;
    sentences.push_back(s + ".");
  }
  if (show.ecog) {
    sentences.push_back(f.ecog == 0 && rng.Bernoulli(0.4)
                            ? he + " is fully active (" + Ecog(rng, f.ecog) + ")."
                            : Pick(rng, {"Performance status: ", ""}) + Ecog(rng, f.ecog) + ".");
  }
  if (show.afp) {
    sentences.push_back(Capitalize(AfpLabel(rng)) + Pick(rng, {" is ", " was ", " measured "}) +
                        AfpValue(rng, f.afp, false) + ".");
  }
  if (show.bclc) sentences.push_back("This corresponds to " + Bclc(rng, f.bclc) + ".");
  Shuffle(rng, &sentences);
  if (show.prior) sentences.push_back(Capitalize(PriorPhrase(rng, f)) + ".");
  if (show.history && !f.history.empty()) {
    sentences.push_back(his + Pick(rng, {" history includes ", " comorbidities are "}) +
                        Join(f.history, ", ", " and ") + ".");
  }
  for (const std::string& s : sentences) out += " " + s;
  out +=
      "\n\n" +
      Pick(rng, {"I would value your opinion regarding ", "Referred for ", "Please assess for "}) +
      Request(rng) + ".\n\n";
  out += Pick(rng, {"Kind regards,", "Best wishes,", "Yours sincerely,"});
  out += "\n" + Pick(rng, {"Hepatology clinic", "Referring hepatologist", "Liver unit"}) + "\n";
  return out;
}

/// A structured referral form: "Key: value" lines in varied order.
std::string Form(Rng& rng, const Facts& f, const Shown& show) {
  std::string out =
      Pick(rng, {"REFERRAL FOR LOCOREGIONAL THERAPY", "Referral: interventional oncology",
                 "HCC referral form", "Tumor board referral"}) +
      "\n";
  out +=
      (rng.Bernoulli(0.5) ? Format("Age/sex: %d/%s", f.age, f.male ? "M" : "F")
                          : Format("Patient: %d-year-old %s", f.age, f.male ? "male" : "female")) +
      "\n";
  std::vector<std::string> lines;
  {
    std::string diagnosis = Pick(rng, {"Diagnosis: ", "Dx: "}) + CancerName(rng);
    if (show.bclc) diagnosis += ", " + Bclc(rng, f.bclc);
    lines.push_back(diagnosis);
  }
  if (show.etiology) {
    std::string s = Pick(rng, {"Etiology: ", "Underlying liver disease: ", "Cause: "}) +
                    EtiologyShort(rng, f.etiology) + " cirrhosis";
    if (!f.etiology_detail.empty()) s += " (" + f.etiology_detail + ")";
    lines.push_back(s);
  }
  if (show.cp) {
    std::string s =
        Pick(rng, {"Liver function: ", "Child-Pugh: "}) + ChildPugh(rng, f, show.cp_score);
    if (show.labs) s += "; " + Labs(rng, f);
    const std::string decompensation = Decompensation(rng, f);
    if (!decompensation.empty()) s += "; " + decompensation;
    lines.push_back(s);
  }
  if (show.ecog) {
    lines.push_back(Pick(rng, {"Performance status: ECOG ", "PS: ECOG ", "ECOG PS: "}) +
                    std::to_string(f.ecog));
  }
  if (show.afp) lines.push_back(Capitalize(AfpLabel(rng)) + ": " + AfpValue(rng, f.afp, false));
  {
    std::string s = Pick(rng, {"Imaging", "Imaging (", "CT"});
    if (s == "Imaging (") s += Modality(rng) + ")";
    s += ": " + LesionPhrase(rng, f, show.count, show.size);
    const std::string vascular = VascularPhrase(rng, f);
    if (!vascular.empty()) s += "; " + vascular;
    if (show.extrahepatic) s += "; no extrahepatic spread";
    lines.push_back(s);
  }
  if (show.prior) {
    lines.push_back(Pick(rng, {"Prior therapy: ", "Previous treatment: "}) +
                    (f.prior.empty() ? Pick(rng, {"none", "none (treatment-naive)"}) : f.prior));
  }
  if (show.history) {
    lines.push_back(
        Pick(rng, {"Comorbidities: ", "PMH: ", "Past history: "}) +
        (f.history.empty() ? std::string("nil relevant") : Join(f.history, ", ", ", ")));
  }
  Shuffle(rng, &lines);
  for (const std::string& line : lines) out += line + "\n";
  out += Pick(rng, {"Question: ", "Request: "}) + Request(rng) + "\n";
  return out;
}

/// Clinic shorthand: "64M, HBV cirrhosis, CP-A6, ECOG 0. ...".
std::string Shorthand(Rng& rng, const Facts& f, const Shown& show) {
  std::string out = Format("%d%s", f.age, f.male ? "M" : "F");
  if (show.etiology) {
    out += ", " + EtiologyShort(rng, f.etiology) + " cirrhosis";
    if (!f.etiology_detail.empty() && rng.Bernoulli(0.5)) out += " (" + f.etiology_detail + ")";
  }
  if (show.cp) out += ", " + ChildPugh(rng, f, show.cp_score);
  if (show.ecog) out += ", " + Pick(rng, {"ECOG ", "PS "}) + std::to_string(f.ecog);
  out += ".";
  std::vector<std::string> sentences;
  {
    std::string s = Pick(rng, {"HCC", "Hepatocellular carcinoma", "Liver cancer"});
    if (show.bclc) s += " " + Bclc(rng, f.bclc);
    s += ": " + LesionPhrase(rng, f, show.count, show.size);
    const std::string vascular = VascularPhrase(rng, f);
    if (!vascular.empty()) s += ", " + vascular;
    sentences.push_back(s + ".");
  }
  if (show.afp) sentences.push_back("AFP " + AfpValue(rng, f.afp, true) + ".");
  if (show.labs && show.cp) sentences.push_back(Capitalize(Labs(rng, f)) + ".");
  if (show.cp) {
    const std::string decompensation = Decompensation(rng, f);
    if (!decompensation.empty()) sentences.push_back(Capitalize(decompensation) + ".");
  }
  if (show.prior) {
    sentences.push_back(f.prior.empty() ? Pick(rng, {"No prior tx.", "Tx-naive."})
                                        : "Prior: " + f.prior + ".");
  }
  if (show.history && !f.history.empty()) {
    sentences.push_back("PMH: " + Join(f.history, ", ", ", ") + ".");
  }
  Shuffle(rng, &sentences);
  for (const std::string& s : sentences) out += " " + s;
  out += " " + Pick(rng, {"Ref for ", "Referred for ", "For "}) + Request(rng) + ".\n";
  return out;
}

/// A tumor board summary with headed sections.
std::string BoardSummary(Rng& rng, const Facts& f, const Shown& show) {
  std::string out = Pick(rng, {"Multidisciplinary tumor board summary", "Liver tumor board",
                               "Hepatology summary for MDT"}) +
                    "\n\n";
  out += "History: " + Format("%d-year-old ", f.age) + Person(rng, f);
  if (show.etiology) out += " with " + CirrhosisPhrase(rng, f, true);
  out += ".";
  if (show.prior) out += " " + Capitalize(PriorPhrase(rng, f)) + ".";
  if (show.history && !f.history.empty()) {
    out +=
        " " + Pick(rng, {"Comorbidities: ", "Background: "}) + Join(f.history, ", ", " and ") + ".";
  }
  out += "\n";
  out += "Imaging: " + Modality(rng) + Pick(rng, {" shows ", " demonstrates "}) +
         LesionPhrase(rng, f, show.count, show.size);
  const std::string vascular = VascularPhrase(rng, f);
  if (!vascular.empty()) out += ", " + vascular;
  if (show.extrahepatic) out += "; no extrahepatic disease";
  out += ".\n";
  std::vector<std::string> labs;
  if (show.afp) labs.push_back(AfpLabel(rng) + " " + AfpValue(rng, f.afp, false));
  if (show.labs && show.cp) labs.push_back(Labs(rng, f));
  if (!labs.empty()) {
    Shuffle(rng, &labs);
    out += "Laboratory: " + Join(labs, "; ", "; ") + ".\n";
  }
  std::vector<std::string> assessment = {CancerName(rng)};
  if (show.bclc) assessment.push_back(Bclc(rng, f.bclc));
  if (show.cp) {
    std::string s = ChildPugh(rng, f, show.cp_score);
    const std::string decompensation = Decompensation(rng, f);
    if (!decompensation.empty()) s += " (" + decompensation + ")";
    assessment.push_back(s);
  }
  if (show.ecog) assessment.push_back(Ecog(rng, f.ecog));
  out += "Assessment: " + Capitalize(Join(assessment, ", ", ", ")) + ".\n";
  out += Pick(rng, {"Question for the board: ", "Discussion: "}) + Request(rng) + ".\n";
  return out;
}

}  // namespace

std::string ClinicalNote(const SyntheticPatient& patient) {
  const std::uint64_t seed = DeriveSeed(patient.seed, "clinical-note");
  // Facts and wording draw from separate generators, so a change of wording never changes a fact.
  const Facts facts = DrawFacts(patient, DeriveSeed(seed, "facts"));
  Rng rng(DeriveSeed(seed, "wording"));
  const Shown shown = DrawShown(rng);
  switch (Choose(rng, {0.3, 0.25, 0.2, 0.25})) {
    case 0:
      return Letter(rng, facts, shown);
    case 1:
      return Form(rng, facts, shown);
    case 2:
      return Shorthand(rng, facts, shown);
    default:
      return BoardSummary(rng, facts, shown);
  }
}

}  // namespace mewm::scenarios
