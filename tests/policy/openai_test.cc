// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/policy/openai.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <stdlib.h>

#include <chrono>
#include <cmath>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "../core/test_env.h"

namespace mewm::policy {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

/// An OpenAI-compatible endpoint on 127.0.0.1 that replays queued answers and records each
/// request. With nothing queued it answers 503.
class FakeEndpoint {
 public:
  struct Reply {
    int status = 200;
    std::string body;
    std::string retry_after;
    double delay_s = 0.0;
  };

  FakeEndpoint() {
    server_.Post("/v1/chat/completions",
                 [this](const httplib::Request& req, httplib::Response& res) {
                   Reply reply{503, "{\"error\": \"nothing queued\"}", "", 0.0};
                   {
                     std::lock_guard<std::mutex> lock(mutex_);
                     requests_.push_back(json::parse(req.body, nullptr, false));
                     authorization_.push_back(req.get_header_value("Authorization"));
                     if (!replies_.empty()) {
                       reply = replies_.front();
                       replies_.pop_front();
                     }
                   }
                   if (reply.delay_s > 0.0) {
                     std::this_thread::sleep_for(std::chrono::duration<double>(reply.delay_s));
                   }
                   res.status = reply.status;
                   if (!reply.retry_after.empty()) res.set_header("Retry-After", reply.retry_after);
                   res.set_content(reply.body, "application/json");
                 });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    for (int i = 0; i < 500 && !server_.is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  ~FakeEndpoint() {
    server_.stop();
    thread_.join();
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1"; }
  void Queue(Reply reply) {
    std::lock_guard<std::mutex> lock(mutex_);
    replies_.push_back(std::move(reply));
  }
  /// A 200 chat completion whose message content is `content`.
  void QueueContent(const std::string& content, double delay_s = 0.0) {
    const json completion = {{"id", "chatcmpl-test"},
                             {"object", "chat.completion"},
                             {"choices",
                              {{{"index", 0},
                                {"message", {{"role", "assistant"}, {"content", content}}},
                                {"finish_reason", "stop"}}}}};
    Queue({200, completion.dump(), "", delay_s});
  }
  std::vector<json> requests() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_;
  }
  std::vector<std::string> authorization() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return authorization_;
  }

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  mutable std::mutex mutex_;
  std::deque<Reply> replies_;
  std::vector<json> requests_;
  std::vector<std::string> authorization_;
};

std::string Plans(const std::vector<std::vector<std::string>>& plans) {
  json out = {{"plans", json::array()}};
  for (const auto& items : plans) {
    out["plans"].push_back({{"items", items}, {"rationale", "because"}});
  }
  return out.dump();
}

class OpenAiPolicyTest : public testing::VdbTest {
 protected:
  /// A 32 mm cube of liver holding a 8 mm tumor sphere, with a note.
  static PatientCase Patient(char child_pugh = 'A') {
    const Geometry g = Geometry::Isotropic(1.0);
    PatientCase c{"P7", Volume(g, Index3{32, 32, 32}, "ct"), LabelVolume(g, {32, 32, 32}, "tumor"),
                  std::nullopt, Covariates{}};
    for (int k = 0; k < 32; ++k)
      for (int j = 0; j < 32; ++j)
        for (int i = 0; i < 32; ++i) {
          const double r = std::sqrt((i - 12.0) * (i - 12.0) + (j - 18.0) * (j - 18.0) +
                                     (k - 20.0) * (k - 20.0));
          c.ct.SetValue(i, j, k, r < 8.0 ? 130.0f : 55.0f);
          if (r < 8.0) c.tumor.SetValue(i, j, k, 1);
        }
    c.covariates.age_years = 64;
    c.covariates.child_pugh = child_pugh;
    c.note = "64-year-old man with HCC on HBV cirrhosis, referred for TACE.";
    return c;
  }

  OpenAiOptions Options() const {
    OpenAiOptions o;
    o.endpoint = endpoint_.url();
    o.model = "test-model";
    o.api_key_env = "MEWM_OPENAI_TEST_KEY";
    o.max_backoff_s = 0.05;
    o.timeout_s = 5.0;
    o.deadline_s = 20.0;
    return o;
  }

  std::unique_ptr<PolicyModel> Policy(const OpenAiOptions& options) {
    auto policy = CreateOpenAiPolicy(options, ActionBase::Default());
    EXPECT_TRUE(policy) << policy.error().message;
    return policy ? std::move(*policy) : nullptr;
  }

  FakeEndpoint endpoint_;
};

TEST_F(OpenAiPolicyTest, AValidAnswerBecomesRankedCanonicalPlansAndTheRequestCarriesThePatient) {
  ::setenv("MEWM_OPENAI_TEST_KEY", "sk-test-123", 1);
  endpoint_.QueueContent(
      "```json\n" + Plans({{"lipiodol", "THP", "Gelatin Sponge"}, {"Lipiodol", "Epirubicin"}}) +
      "\n```");
  auto policy = Policy(Options());
  ASSERT_TRUE(policy);
  auto proposal = policy->Propose(Patient());
  ::unsetenv("MEWM_OPENAI_TEST_KEY");
  ASSERT_TRUE(proposal) << proposal.error().message;
  ASSERT_EQ(proposal->plans.size(), 2u);
  EXPECT_EQ(proposal->plans[0].plan.ToString(),
            Plan({"Lipiodol", "Pirarubicin", "Gelatin Sponge"}).ToString());
  EXPECT_EQ(proposal->plans[1].plan.ToString(), Plan({"Lipiodol", "Epirubicin"}).ToString());
  EXPECT_NE(proposal->rationale.find("because"), std::string::npos);
  EXPECT_EQ(proposal->drugs, (std::vector<std::string>{"Pirarubicin", "Epirubicin"}));

  const auto requests = endpoint_.requests();
  ASSERT_EQ(requests.size(), 1u);
  const json& r = requests[0];
  EXPECT_EQ(r["model"], "test-model");
  EXPECT_EQ(r["response_format"]["type"], "json_object");
  const std::string system = r["messages"][0]["content"];
  EXPECT_NE(system.find("Lipiodol"), std::string::npos);
  EXPECT_NE(system.find("one_platinum"), std::string::npos);  // the action base's rules
  EXPECT_NE(system.find("\"plans\""), std::string::npos);     // the answer schema
  const json& user = r["messages"][1]["content"];
  ASSERT_TRUE(user.is_array());
  EXPECT_NE(user[0]["text"].get<std::string>().find("HBV cirrhosis"), std::string::npos);
  ASSERT_EQ(user.size(), 3u);  // text, axial, coronal
  for (int k = 1; k <= 2; ++k) {
    EXPECT_EQ(
        user[k]["image_url"]["url"].get<std::string>().rfind("data:image/png;base64,iVBOR", 0), 0u);
  }
  EXPECT_EQ(endpoint_.authorization()[0], "Bearer sk-test-123");
}

TEST_F(OpenAiPolicyTest, InvalidPlansGetARepairRequestThatNamesTheirErrors) {
  endpoint_.QueueContent(Plans({{"Lipiodol", "Cisplatn"}, {"Epirubicin", "Gelatin Sponge"}}));
  endpoint_.QueueContent(Plans({{"Lipiodol", "Cisplatin"}}));
  OpenAiOptions o = Options();
  o.images = false;
  o.response_format = "json_schema";
  auto proposal = Policy(o)->Propose(Patient());
  ASSERT_TRUE(proposal) << proposal.error().message;
  ASSERT_EQ(proposal->plans.size(), 1u);
  const auto requests = endpoint_.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_TRUE(requests[0]["messages"][1]["content"].is_string());  // text only
  EXPECT_EQ(
      requests[0]["response_format"]["json_schema"]["schema"]["properties"]["plans"]["maxItems"],
      5);
  const json& messages = requests[1]["messages"];
  ASSERT_EQ(messages.size(), 4u);
  EXPECT_EQ(messages[2]["role"], "assistant");
  const std::string repair = messages[3]["content"];
  EXPECT_NE(repair.find("plan 1: unknown plan item 'Cisplatn' (did you mean 'Cisplatin'?)"),
            std::string::npos)
      << repair;
  EXPECT_NE(repair.find("plan 2"), std::string::npos);
  EXPECT_NE(repair.find("Lipiodol"), std::string::npos);  // the mandatory item it lacks
}

TEST_F(OpenAiPolicyTest, AnAnswerStillInvalidAfterTheRepairsFailsThePatientClearly) {
  for (int i = 0; i < 3; ++i) endpoint_.QueueContent("I would suggest TACE with lipiodol.");
  OpenAiOptions o = Options();
  o.max_repairs = 2;
  auto proposal = Policy(o)->Propose(Patient());
  ASSERT_FALSE(proposal);
  EXPECT_EQ(proposal.error().code, ErrorCode::kRuleViolation);
  EXPECT_NE(proposal.error().message.find("still invalid after 2 repair"), std::string::npos)
      << proposal.error().message;
  EXPECT_NE(proposal.error().message.find("not a JSON object"), std::string::npos);
  EXPECT_EQ(endpoint_.requests().size(), 3u);
}

TEST_F(OpenAiPolicyTest, AContraindicatedItemIsRefusedAndRepaired) {
  endpoint_.QueueContent(Plans({{"Lipiodol", "Absolute Alcohol"}}));
  endpoint_.QueueContent(Plans({{"Lipiodol", "PVA"}}));
  auto proposal = Policy(Options())->Propose(Patient('B'));
  ASSERT_TRUE(proposal) << proposal.error().message;
  const auto requests = endpoint_.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_NE(requests[0]["messages"][1]["content"][0]["text"].get<std::string>().find(
                "Contraindicated here: Absolute Alcohol"),
            std::string::npos);
  EXPECT_NE(requests[1]["messages"][3]["content"].get<std::string>().find(
                "Absolute Alcohol is contraindicated"),
            std::string::npos);
}

TEST_F(OpenAiPolicyTest, TimeoutsAndServerErrorsAreRetriedAndA429WaitsForRetryAfter) {
  OpenAiOptions o = Options();
  o.timeout_s = 0.3;
  o.max_backoff_s = 5.0;
  o.max_retries = 4;
  endpoint_.QueueContent(Plans({{"Lipiodol", "Epirubicin"}}), 1.5);  // times out
  endpoint_.Queue({500, "{\"error\": \"overloaded\"}", "", 0.0});
  endpoint_.Queue({429, "{\"error\": \"rate limited\"}", "1", 0.0});
  endpoint_.QueueContent(Plans({{"Lipiodol", "Epirubicin"}}));
  const auto t0 = Clock::now();
  auto proposal = Policy(o)->Propose(Patient());
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  ASSERT_TRUE(proposal) << proposal.error().message;
  EXPECT_EQ(endpoint_.requests().size(), 4u);
  // 0.3 s timeout, 0.5 s and 1 s backoffs, then the 1 s Retry-After.
  EXPECT_GE(seconds, 2.5);
  EXPECT_LT(seconds, 10.0);
}

TEST_F(OpenAiPolicyTest, RetriesAreBoundedAndTheDeadlineStopsASlowEndpoint) {
  OpenAiOptions o = Options();
  o.max_retries = 2;
  for (int i = 0; i < 3; ++i) endpoint_.Queue({500, "{\"error\": \"down\"}", "", 0.0});
  auto failed = Policy(o)->Propose(Patient());
  ASSERT_FALSE(failed);
  EXPECT_NE(failed.error().message.find("failed 3 times"), std::string::npos)
      << failed.error().message;
  EXPECT_NE(failed.error().message.find("HTTP 500"), std::string::npos);

  o.timeout_s = 5.0;
  o.deadline_s = 0.5;
  endpoint_.QueueContent(Plans({{"Lipiodol", "Epirubicin"}}), 2.0);
  const auto t0 = Clock::now();
  auto late = Policy(o)->Propose(Patient());
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  ASSERT_FALSE(late);
  EXPECT_NE(late.error().message.find("did not answer within deadline_s = 0.5 s"),
            std::string::npos)
      << late.error().message;
  EXPECT_LT(seconds, 1.5);
}

TEST_F(OpenAiPolicyTest, ACancellationEndsARequestInFlightAndAWaitBeforeARetry) {
  OpenAiOptions o = Options();
  o.timeout_s = 30.0;
  o.deadline_s = 60.0;
  o.max_backoff_s = 30.0;
  auto policy = Policy(o);
  const Clock::time_point cancel_at = Clock::now() + std::chrono::milliseconds(300);
  policy->set_cancelled([&] { return Clock::now() >= cancel_at; });
  // The endpoint holds its answer for 3 s; the request is cut at the cancellation.
  endpoint_.QueueContent(Plans({{"Lipiodol", "Epirubicin"}}), 3.0);
  auto t0 = Clock::now();
  auto in_flight = policy->Propose(Patient());
  double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  ASSERT_FALSE(in_flight);
  EXPECT_EQ(in_flight.error().code, ErrorCode::kCancelled) << in_flight.error().message;
  EXPECT_NE(in_flight.error().message.find(endpoint_.url()), std::string::npos);
  EXPECT_LT(seconds, 1.5);

  // A 429 that asks for 20 s: the wait before the retry ends at the cancellation too.
  endpoint_.Queue({429, "{\"error\": \"slow down\"}", "20", 0.0});
  const Clock::time_point later = Clock::now() + std::chrono::milliseconds(300);
  policy->set_cancelled([&] { return Clock::now() >= later; });
  t0 = Clock::now();
  auto waiting = policy->Propose(Patient());
  seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  ASSERT_FALSE(waiting);
  EXPECT_EQ(waiting.error().code, ErrorCode::kCancelled) << waiting.error().message;
  EXPECT_LT(seconds, 1.5);

  // Cancelled before it starts: no request is sent.
  const std::size_t sent = endpoint_.requests().size();
  policy->set_cancelled([] { return true; });
  auto before = policy->Propose(Patient());
  ASSERT_FALSE(before);
  EXPECT_EQ(before.error().code, ErrorCode::kCancelled);
  EXPECT_EQ(endpoint_.requests().size(), sent);
}

TEST_F(OpenAiPolicyTest, ClientErrorsAreNotRetriedAndOversizedAnswersAreNotRead) {
  endpoint_.Queue({401, "{\"error\": \"invalid api key\"}", "", 0.0});
  auto refused = Policy(Options())->Propose(Patient());
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("HTTP 401: {\"error\": \"invalid api key\"}"),
            std::string::npos)
      << refused.error().message;
  EXPECT_EQ(endpoint_.requests().size(), 1u);

  OpenAiOptions o = Options();
  o.max_answer_bytes = 64 << 10;
  endpoint_.QueueContent(std::string(200 << 10, 'x'));
  auto oversized = Policy(o)->Propose(Patient());
  ASSERT_FALSE(oversized);
  EXPECT_EQ(oversized.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(oversized.error().message.find("over max_answer_bytes = 65536"), std::string::npos);

  endpoint_.Queue({200, "<html>not json</html>", "", 0.0});
  auto garbage = Policy(Options())->Propose(Patient());
  ASSERT_FALSE(garbage);
  EXPECT_NE(garbage.error().message.find("not a chat completion"), std::string::npos);
}

TEST_F(OpenAiPolicyTest, AnUnreachableEndpointFailsAfterItsRetries) {
  OpenAiOptions o = Options();
  httplib::Server closed;
  const int port = closed.bind_to_any_port("127.0.0.1");
  closed.stop();  // bound, never listening: nothing accepts on it
  o.endpoint = "http://127.0.0.1:" + std::to_string(port) + "/v1";
  o.max_retries = 1;
  o.timeout_s = 0.5;
  auto failed = Policy(o)->Propose(Patient());
  ASSERT_FALSE(failed);
  EXPECT_NE(failed.error().message.find("no answer"), std::string::npos) << failed.error().message;
}

TEST_F(OpenAiPolicyTest, OptionsAreValidated) {
  OpenAiOptions o = Options();
  o.endpoint = "ftp://example.org/v1";
  EXPECT_FALSE(CreateOpenAiPolicy(o, ActionBase::Default()));
  o = Options();
  o.model = "";
  EXPECT_FALSE(CreateOpenAiPolicy(o, ActionBase::Default()));
  o = Options();
  o.top_k = 0;
  EXPECT_FALSE(CreateOpenAiPolicy(o, ActionBase::Default()));
  o = Options();
  o.response_format = "xml";
  EXPECT_FALSE(CreateOpenAiPolicy(o, ActionBase::Default()));
  o = Options();
  o.grammar.protocol = "no-such-protocol";
  EXPECT_FALSE(CreateOpenAiPolicy(o, ActionBase::Default()));
}

}  // namespace
}  // namespace mewm::policy
