// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/run/events.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace mewm::scenarios {
namespace {

Event WithRationale(const std::string& text) {
  return Event{"r-1", 7, 1234, ProposalMade{"P1", {"Epirubicin"}, {"Lipiodol"}, text}};
}

TEST(EventsTest, JsonLinesMatchNlohmannForValidTextAndRoundTrip) {
  for (const std::string& text :
       {std::string("plain"), std::string("quote \" backslash \\ slash /"),
        std::string("tab\tnewline\nreturn\rbell\x07 del\x7f"),
        std::string("\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x92\x89"), std::string(5000, 'x'),
        std::string()}) {
    const Event event = WithRationale(text);
    // The reference: nlohmann's own dump of the same object, in the same key order.
    const auto j = nlohmann::ordered_json::parse(EventToJson(event));
    EXPECT_EQ(EventToJson(event), j.dump()) << text;
    auto back = EventFromJson(EventToJson(event));
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(std::get<ProposalMade>(back->body).rationale, text);
  }
}

TEST(EventsTest, EveryEventIsOneFlatObjectWithItsEnvelopeKeysFirst) {
  const Event decided{
      "r-1", 9, 1234,
      PlanDecided{"P1", PlanScoreView{{"Lipiodol", "Epirubicin"}, 0.25, 0.5}, -1.0, "/x.vdb"}};
  EXPECT_EQ(
      EventToJson(decided),
      "{\"run_id\":\"r-1\",\"seq\":9,\"timestamp_ns\":1234,\"type\":\"plan_decided\","
      "\"patient_id\":\"P1\",\"best\":{\"plan\":[\"Lipiodol\",\"Epirubicin\"],"
      "\"risk_mean\":0.25,\"risk_std\":0.5},\"median_months\":-1.0,\"volume_path\":\"/x.vdb\"}");
  const Event empty{"r-1", 10, 5, BeamUpdated{"P1", "drug", 2, {PlanScoreView{}}}};
  EXPECT_EQ(EventToJson(empty),
            "{\"run_id\":\"r-1\",\"seq\":10,\"timestamp_ns\":5,\"type\":\"beam_updated\","
            "\"patient_id\":\"P1\",\"stage\":\"drug\",\"step\":2,"
            "\"beams\":[{\"plan\":[],\"risk_mean\":0.0,\"risk_std\":0.0}]}");
}

TEST(EventsTest, MalformedLinesAreErrorsNamingWhatIsWrong) {
  const std::string good = EventToJson(Event{"r-1", 3, 4, PatientStarted{"P1", 0, 2}});
  ASSERT_TRUE(EventFromJson(good));
  struct Case {
    std::string line, expect;
  };
  for (const Case& c : std::vector<Case>{
           {"not json", "not JSON"},
           {"{\"run_id\":\"r\",\"seq\":1,\"timestamp_ns\":1,\"type\":\"teleported\"}",
            "unknown event type 'teleported'"},
           {"{\"run_id\":\"r\",\"seq\":1,\"timestamp_ns\":1,\"type\":\"patient_started\","
            "\"patient_id\":\"P1\",\"index\":0}",
            "total"},
           {"{\"run_id\":\"r\",\"seq\":1,\"timestamp_ns\":1,\"type\":\"plan_decided\","
            "\"patient_id\":\"P1\",\"best\":[1],\"median_months\":1,\"volume_path\":\"\"}",
            "expected an object"},
           {"{\"run_id\":\"r\",\"seq\":1,\"timestamp_ns\":1,\"type\":\"proposal\","
            "\"patient_id\":\"P1\",\"drugs\":\"Epirubicin\",\"embolics\":[],\"rationale\":\"\"}",
            "expected an array"},
           {"{\"run_id\":\"r\",\"seq\":1,\"timestamp_ns\":1,\"type\":\"run_failed\","
            "\"error\":7}",
            "malformed event"}}) {
    auto event = EventFromJson(c.line);
    ASSERT_FALSE(event) << c.line;
    EXPECT_NE(event.error().message.find(c.expect), std::string::npos) << event.error().message;
  }
}

TEST(EventsTest, InvalidUtf8BecomesReplacementCharactersNotAnException) {
  const std::string bad = std::string("ok \xff\xfe end \xc3") + "(" + "\xed\xa0\x80";
  const std::string line = EventToJson(WithRationale(bad));
  auto back = EventFromJson(line);
  ASSERT_TRUE(back) << line;
  EXPECT_EQ(std::get<ProposalMade>(back->body).rationale,
            "ok \xef\xbf\xbd\xef\xbf\xbd end \xef\xbf\xbd(\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
}

}  // namespace
}  // namespace mewm::scenarios
