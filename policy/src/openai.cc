// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/policy/openai.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "mewm/core/crop.h"
#include "mewm/core/log.h"
#include "mewm/core/render.h"
#include "mewm/core/text.h"

namespace mewm::policy {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

/// An endpoint URL split for the HTTP client: "http://host:port" and the path prefix "/v1".
struct Endpoint {
  std::string origin;
  std::string base_path;
};

Expected<Endpoint> SplitEndpoint(const std::string& url) {
  const bool https = url.rfind("https://", 0) == 0;
  if (!https && url.rfind("http://", 0) != 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "policy.endpoint '" + url + "' must start with http:// or https://");
  }
  const std::size_t host_start = https ? 8 : 7;
  const std::size_t slash = url.find('/', host_start);
  Endpoint e;
  e.origin = url.substr(0, slash);
  e.base_path = slash == std::string::npos ? "" : url.substr(slash);
  while (!e.base_path.empty() && e.base_path.back() == '/') e.base_path.pop_back();
  if (e.origin.size() <= host_start) {
    return MakeError(ErrorCode::kInvalidArgument, "policy.endpoint '" + url + "' names no host");
  }
  return e;
}

/// The answer's JSON schema: a ranked list of plans, each a list of item names and one line of
/// rationale.
json AnswerSchema(int top_k) {
  return {{"type", "object"},
          {"additionalProperties", false},
          {"required", {"plans"}},
          {"properties",
           {{"plans",
             {{"type", "array"},
              {"minItems", 1},
              {"maxItems", top_k},
              {"items",
               {{"type", "object"},
                {"additionalProperties", false},
                {"required", {"items", "rationale"}},
                {"properties",
                 {{"items", {{"type", "array"}, {"items", {{"type", "string"}}}}},
                  {"rationale", {{"type", "string"}}}}}}}}}}}};
}

std::string DescribeCovariates(const Covariates& c) {
  char text[256];
  std::snprintf(text, sizeof(text),
                "age %.0f, %s, Child-Pugh %c, BCLC %c, AFP %.0f ng/mL, %d lesion(s), largest "
                "%.0f mm, vascular invasion %s",
                c.age_years, c.sex == Covariates::Sex::kMale ? "male" : "female", c.child_pugh,
                c.bclc_stage, c.afp_ng_ml, c.lesion_count, c.max_diameter_mm,
                c.vascular_invasion ? "yes" : "no");
  return text;
}

/// What a planner is allowed to write, in words: items, horizons, mandatory items, rules.
std::string SystemPrompt(const ActionBase& actions, const OpenAiOptions& o,
                         const std::vector<std::string>& mandatory) {
  std::string items;
  for (const ActionItem& item : actions.items()) {
    items += "- " + item.name + " (" + (item.kind == ItemKind::kDrug ? "drug" : "embolic");
    if (!item.drug_class.empty()) items += ", " + item.drug_class;
    if (!item.aliases.empty()) items += "; also written " + Join(item.aliases, ", ");
    items += ")\n";
  }
  std::string rules;
  for (const std::string& rule : actions.RuleSentences()) rules += "- " + rule + "\n";
  return "You are an interventional oncologist planning transarterial chemoembolization (TACE) "
         "for hepatocellular carcinoma. From the patient's pre-treatment CT slices, clinical note "
         "and covariates, propose up to " +
         std::to_string(o.top_k) +
         " distinct treatment plans, best first (the plan you expect to give the longest "
         "survival first).\n\nA plan is a set of items from this action base:\n" +
         items + "\nEvery plan must:\n- contain " + Join(mandatory, ", ") + " (protocol " +
         o.grammar.protocol + ");\n- have at most " + std::to_string(o.grammar.drug_horizon) +
         " drugs and at most " + std::to_string(o.grammar.embolic_horizon) +
         " embolics (the mandatory items count);\n- obey these rules:\n" + rules +
         "- not use Absolute Alcohol for a Child-Pugh B or C liver.\n\nAnswer with one JSON "
         "object and nothing else, of this schema:\n" +
         AnswerSchema(o.top_k).dump() +
         "\nExample: {\"plans\": [{\"items\": [\"Lipiodol\", \"Gelatin Sponge\", "
         "\"Epirubicin\"], \"rationale\": \"one line\"}]}";
}

/// A slice through the tumor's centre at the liver window, as a PNG data URL.
Expected<std::string> SliceDataUrl(const PatientCase& patient, SlicePlane plane) {
  SliceSpec spec;
  spec.plane = plane;
  spec.window = kLiverWindow;
  if (auto box = LabelWorldBox(patient.tumor)) {  // else the middle slice
    const Eigen::Vector3d centre = patient.ct.geometry().WorldToIndex(0.5 * (box->min + box->max));
    const int axis = plane == SlicePlane::kAxial ? 2 : plane == SlicePlane::kCoronal ? 1 : 0;
    spec.index = std::max<std::int64_t>(0, std::llround(centre[axis]));
  }
  MEWM_TRY(const RgbImage image, RenderSlice(patient.ct, spec));
  MEWM_TRY(const std::string png, EncodePng(image));
  return "data:image/png;base64," + Base64Encode(png);
}

std::string Excerpt(const std::string& text, std::size_t n = 300) {
  std::string out = text.substr(0, n);
  for (char& c : out) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return text.size() > n ? out + "..." : out;
}

/// The first JSON object in a model's text: the whole text, or what a ``` fence or the outermost
/// braces enclose.
std::string JsonPart(const std::string& text) {
  const std::size_t open = text.find('{');
  const std::size_t close = text.rfind('}');
  if (open == std::string::npos || close == std::string::npos || close < open) return text;
  return text.substr(open, close - open + 1);
}

class OpenAiPolicy final : public PolicyModel {
 public:
  OpenAiPolicy(OpenAiOptions options, ActionBase actions, PlanGrammar grammar, Endpoint endpoint,
               const std::vector<std::string>& mandatory)
      : options_(std::move(options)),
        actions_(std::move(actions)),
        grammar_(std::move(grammar)),
        endpoint_(std::move(endpoint)),
        system_(SystemPrompt(actions_, options_, mandatory)) {}

  std::string name() const override { return "openai"; }
  void set_cancelled(std::function<bool()> cancelled) override {
    cancelled_ = std::move(cancelled);
  }

  Expected<Proposal> Propose(const PatientCase& patient) override {
    const Clock::time_point deadline =
        Clock::now() + std::chrono::milliseconds(std::int64_t(options_.deadline_s * 1000));
    std::vector<std::string> forbidden;
    if (options_.contraindications) {
      for (const Contraindication& c : Contraindications(patient.covariates, actions_)) {
        forbidden.push_back(c.item);
      }
    }
    MEWM_TRY(json user, UserMessage(patient, forbidden));
    json messages = json::array({{{"role", "system"}, {"content", system_}}, user});
    std::string errors;
    for (int round = 0; round <= options_.max_repairs; ++round) {
      MEWM_TRY(const std::string answer, Chat(messages, deadline));
      std::vector<RankedPlan> plans;
      std::vector<std::string> rationales;
      const std::vector<std::string> problems = CheckAnswer(answer, forbidden, &plans, &rationales);
      if (problems.empty()) return MakeProposal(plans, rationales, answer);
      errors = Join(problems, "; ");
      LogDebug("openai policy: patient " + patient.id + ": answer " + std::to_string(round) +
               " has errors: " + errors);
      messages.push_back({{"role", "assistant"}, {"content", answer}});
      messages.push_back(
          {{"role", "user"},
           {"content", "Your answer has these errors:\n- " + Join(problems, "\n- ") +
                           "\nAnswer again with the whole JSON object, every plan valid."}});
    }
    return MakeError(ErrorCode::kRuleViolation, "the endpoint's answer for patient '" + patient.id +
                                                    "' was still invalid " + "after " +
                                                    std::to_string(options_.max_repairs) +
                                                    " repair request(s): " + errors);
  }

 private:
  Expected<json> UserMessage(const PatientCase& patient,
                             const std::vector<std::string>& forbidden) const {
    std::string text =
        "Patient " + patient.id + ". Covariates: " + DescribeCovariates(patient.covariates) + ".\n";
    text += patient.note.empty() ? "No clinical note.\n" : "Clinical note:\n" + patient.note + "\n";
    if (!forbidden.empty()) text += "Contraindicated here: " + Join(forbidden, ", ") + ".\n";
    if (!options_.images) return json{{"role", "user"}, {"content", text}};
    text +=
        "The images: an axial and a coronal slice through the tumor's centre at the liver "
        "window (W250 L80).";
    json content = json::array({{{"type", "text"}, {"text", text}}});
    for (SlicePlane plane : {SlicePlane::kAxial, SlicePlane::kCoronal}) {
      auto url = SliceDataUrl(patient, plane);
      if (!url) return url.error().WithContext("patient '" + patient.id + "'");
      content.push_back({{"type", "image_url"}, {"image_url", {{"url", *url}}}});
    }
    return json{{"role", "user"}, {"content", content}};
  }

  /// Every problem of an answer; empty when it parses and every plan is valid for the patient.
  std::vector<std::string> CheckAnswer(const std::string& answer,
                                       const std::vector<std::string>& forbidden,
                                       std::vector<RankedPlan>* plans,
                                       std::vector<std::string>* rationales) const {
    const json j = json::parse(JsonPart(answer), nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("plans") || !j["plans"].is_array()) {
      return {"the answer is not a JSON object with a \"plans\" array (got: " +
              Excerpt(answer, 120) + ")"};
    }
    if (j["plans"].empty()) return {"\"plans\" is empty; give at least one plan"};
    std::vector<std::string> problems;
    const std::vector<bool> mask = grammar_.ForbiddenMask(forbidden);
    std::set<Plan> seen;
    int index = 0;
    for (const json& entry : j["plans"]) {
      const std::string where = "plan " + std::to_string(++index);
      if (index > options_.top_k) break;  // more than asked: the first top_k count
      if (!entry.is_object() || !entry.contains("items") || !entry["items"].is_array()) {
        problems.push_back(where + " is not an object with an \"items\" array");
        continue;
      }
      std::vector<std::string> names;
      bool strings = true;
      for (const json& item : entry["items"]) {
        if (item.is_string()) {
          names.push_back(item.get<std::string>());
        } else {
          strings = false;
        }
      }
      if (!strings) {
        problems.push_back(where + ": every item must be a string");
        continue;
      }
      auto plan = actions_.MakePlan(names);
      if (!plan) {
        problems.push_back(where + ": " + plan.error().message);
        continue;
      }
      if (auto problem = PlanProblem(*plan, forbidden, mask); !problem.empty()) {
        problems.push_back(where + " (" + plan->ToString() + "): " + problem);
        continue;
      }
      if (!seen.insert(*plan).second) {
        problems.push_back(where + " repeats an earlier plan (" + plan->ToString() + ")");
        continue;
      }
      plans->push_back({*plan, 0.0});
      rationales->push_back(entry.contains("rationale") && entry["rationale"].is_string()
                                ? entry["rationale"].get<std::string>()
                                : std::string());
    }
    return problems;
  }

  /// Why the grammar refuses a plan of known items ("" when it accepts it).
  std::string PlanProblem(const Plan& plan, const std::vector<std::string>& forbidden,
                          const std::vector<bool>& mask) const {
    if (grammar_.Accepts(plan, mask)) return "";
    if (auto valid = actions_.Validate(plan, options_.grammar.protocol); !valid) {
      std::string message = valid.error().message;
      std::replace(message.begin(), message.end(), '\n', ' ');
      return message;
    }
    int drugs = 0, embolics = 0;
    for (const std::string& name : plan.items()) {
      auto item = actions_.Find(name);
      if (item && item->kind == ItemKind::kDrug) ++drugs;
      if (item && item->kind == ItemKind::kEmbolic) ++embolics;
    }
    if (drugs > options_.grammar.drug_horizon) {
      return std::to_string(drugs) + " drugs; at most " +
             std::to_string(options_.grammar.drug_horizon) + " allowed";
    }
    if (embolics > options_.grammar.embolic_horizon) {
      return std::to_string(embolics) + " embolics; at most " +
             std::to_string(options_.grammar.embolic_horizon) + " allowed";
    }
    for (const std::string& item : forbidden) {
      if (plan.Contains(item)) return item + " is contraindicated for this patient";
    }
    return "not a plan of the action base's plan space";
  }

  Proposal MakeProposal(const std::vector<RankedPlan>& plans,
                        const std::vector<std::string>& rationales,
                        const std::string& answer) const {
    Proposal p;
    std::vector<std::string> lines;
    for (std::size_t k = 0; k < plans.size(); ++k) {
      for (const std::string& name : plans[k].plan.items()) {
        auto item = actions_.Find(name);
        auto& list = item && item->kind == ItemKind::kDrug ? p.drugs : p.embolics;
        if (std::find(list.begin(), list.end(), name) == list.end()) list.push_back(name);
      }
      lines.push_back(std::to_string(k + 1) + ". " + plans[k].plan.ToString() +
                      (rationales[k].empty() ? "" : ": " + rationales[k]));
    }
    p.plans = plans;
    p.rationale = options_.model + " via " + options_.endpoint + ": " + Join(lines, " | ");
    p.raw_output = answer;
    return p;
  }

  /// One chat completion: the message content of the first choice. Retries transient failures
  /// (no answer, 408, 429, 5xx) with a capped exponential backoff or the server's Retry-After,
  /// within `deadline`.
  Expected<std::string> Chat(const json& messages, Clock::time_point deadline) const {
    json request = {
        {"model", options_.model}, {"messages", messages}, {"temperature", options_.temperature}};
    if (options_.response_format == "json_object") {
      request["response_format"] = {{"type", "json_object"}};
    } else if (options_.response_format == "json_schema") {
      request["response_format"] = {
          {"type", "json_schema"},
          {"json_schema",
           {{"name", "tace_plans"}, {"strict", true}, {"schema", AnswerSchema(options_.top_k)}}}};
    }
    const std::string body = request.dump();
    httplib::Headers headers;
    const char* key_env =
        options_.api_key_env.empty() ? nullptr : std::getenv(options_.api_key_env.c_str());
    if (key_env != nullptr && *key_env != '\0') {
      headers.emplace("Authorization", std::string("Bearer ") + key_env);
    }
    std::string last_failure;
    for (int attempt = 0;; ++attempt) {
      if (Cancelled()) return CancelledError();
      const double remaining = std::chrono::duration<double>(deadline - Clock::now()).count();
      if (remaining <= 0.0) {
        return MakeError(ErrorCode::kIo,
                         "the endpoint " + options_.endpoint +
                             " did not answer within deadline_s = " + Number(options_.deadline_s) +
                             " s" + (last_failure.empty() ? "" : " (" + last_failure + ")"));
      }
      const double timeout = std::min(options_.timeout_s, remaining);
      const auto seconds = std::time_t(timeout);
      const auto micros = std::time_t((timeout - double(seconds)) * 1e6);
      httplib::Client client(endpoint_.origin);
      client.set_connection_timeout(seconds, micros);
      client.set_read_timeout(seconds, micros);
      client.set_write_timeout(seconds, micros);
      httplib::Request req;
      req.method = "POST";
      req.path = endpoint_.base_path + "/chat/completions";
      req.headers = headers;
      req.set_header("Content-Type", "application/json");
      req.body = body;
      std::string answer;
      bool oversized = false;
      req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
        if (answer.size() + n > std::size_t(options_.max_answer_bytes)) {
          oversized = true;
          return false;
        }
        answer.append(data, n);
        return !Cancelled();
      };
      // The request runs on its own thread so that a cancellation can end it: stop() shuts the
      // socket down under the request, which then fails at once. It is repeated until the request
      // returns, since a stop() that comes before the connection exists has nothing to shut.
      auto sent = std::async(std::launch::async, [&] { return client.send(req); });
      while (sent.wait_for(kCancelPoll) != std::future_status::ready) {
        if (Cancelled()) client.stop();
      }
      const httplib::Result result = sent.get();
      if (Cancelled()) return CancelledError();
      if (oversized) {
        return MakeError(ErrorCode::kCorruptData,
                         "the endpoint's answer is over max_answer_bytes = " +
                             std::to_string(options_.max_answer_bytes) + " bytes; not read");
      }
      double wait = std::min(options_.max_backoff_s, 0.5 * std::pow(2.0, attempt));
      if (!result) {
        last_failure = "no answer: " + httplib::to_string(result.error());
      } else if (result->status == 200) {
        return Content(answer);
      } else if (result->status == 408 || result->status == 429 || result->status >= 500) {
        last_failure = "HTTP " + std::to_string(result->status) + ": " + Excerpt(answer, 160);
        const std::string retry_after = result->get_header_value("Retry-After");
        char* end = nullptr;
        const double asked = std::strtod(retry_after.c_str(), &end);
        if (!retry_after.empty() && end != retry_after.c_str() && std::isfinite(asked) &&
            asked >= 0.0) {
          wait = std::min(asked, options_.max_backoff_s);
        }
      } else {
        return MakeError(ErrorCode::kIo, "the endpoint " + options_.endpoint + " refused the " +
                                             "request: HTTP " + std::to_string(result->status) +
                                             ": " + Excerpt(answer));
      }
      if (attempt >= options_.max_retries) {
        return MakeError(ErrorCode::kIo,
                         "the endpoint " + options_.endpoint + " failed " +
                             std::to_string(attempt + 1) + " times (max_retries = " +
                             std::to_string(options_.max_retries) + "); last: " + last_failure);
      }
      const double left = std::chrono::duration<double>(deadline - Clock::now()).count();
      LogDebug("openai policy: " + last_failure + "; retrying in " + Number(wait) + " s");
      const Clock::time_point until =
          Clock::now() + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(std::max(0.0, std::min(wait, left))));
      while (Clock::now() < until && !Cancelled()) {
        std::this_thread::sleep_for(std::min<Clock::duration>(kCancelPoll, until - Clock::now()));
      }
    }
  }

  bool Cancelled() const { return cancelled_ && cancelled_(); }
  Error CancelledError() const {
    return Error{ErrorCode::kCancelled,
                 "cancelled while waiting for the endpoint " + options_.endpoint};
  }

  /// choices[0].message.content of a chat-completion answer.
  static Expected<std::string> Content(const std::string& answer) {
    const json j = json::parse(answer, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("choices") || !j["choices"].is_array() ||
        j["choices"].empty() || !j["choices"][0].is_object() ||
        !j["choices"][0].contains("message") || !j["choices"][0]["message"].is_object()) {
      return MakeError(ErrorCode::kCorruptData,
                       "the endpoint's answer is not a chat completion: " + Excerpt(answer));
    }
    const json& content = j["choices"][0]["message"]["content"];
    if (!content.is_string()) {
      return MakeError(ErrorCode::kCorruptData,
                       "the endpoint's chat completion has no text content: " + Excerpt(answer));
    }
    return content.get<std::string>();
  }

  static std::string Number(double v) {
    char text[32];
    std::snprintf(text, sizeof(text), "%g", v);
    return text;
  }

  /// How often a request in flight, or a wait before a retry, looks at cancelled_.
  static constexpr std::chrono::milliseconds kCancelPoll{100};

  OpenAiOptions options_;
  std::function<bool()> cancelled_;
  ActionBase actions_;
  PlanGrammar grammar_;
  Endpoint endpoint_;
  std::string system_;
};

}  // namespace

Status OpenAiOptions::Validate() const {
  MEWM_RETURN_IF_ERROR(SplitEndpoint(endpoint));
  if (model.empty()) return MakeError(ErrorCode::kInvalidArgument, "policy.model is required");
  if (top_k < 1 || top_k > 20) {
    return MakeError(ErrorCode::kInvalidArgument, "policy.top_k must be in [1, 20]");
  }
  if (response_format != "json_object" && response_format != "json_schema" &&
      response_format != "none") {
    return MakeError(ErrorCode::kInvalidArgument,
                     "policy.response_format must be json_object, json_schema or none");
  }
  if (!(timeout_s > 0.0) || !(deadline_s > 0.0) || !(max_backoff_s >= 0.0)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "policy.timeout_s and deadline_s must be > 0, max_backoff_s >= 0");
  }
  if (max_retries < 0 || max_repairs < 0 || max_answer_bytes < 1024) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "policy.max_retries and max_repairs must be >= 0, max_answer_bytes >= 1024");
  }
  return {};
}

Expected<std::unique_ptr<PolicyModel>> CreateOpenAiPolicy(const OpenAiOptions& options,
                                                          const ActionBase& actions) {
  MEWM_RETURN_IF_ERROR(options.Validate());
  MEWM_TRY(const Endpoint endpoint, SplitEndpoint(options.endpoint));
  MEWM_TRY(PlanGrammar grammar, PlanGrammar::Create(actions, options.grammar));
  MEWM_TRY(std::vector<std::string> mandatory, actions.MandatoryItems(options.grammar.protocol));
  return std::unique_ptr<PolicyModel>(
      new OpenAiPolicy(options, actions, std::move(grammar), endpoint, mandatory));
}

}  // namespace mewm::policy
