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
    // The reference: nlohmann's own dump of the same object.
    nlohmann::json j = nlohmann::json::parse(EventToJson(event));
    EXPECT_EQ(EventToJson(event), j.dump()) << text;
    auto back = EventFromJson(EventToJson(event));
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(std::get<ProposalMade>(back->body).rationale, text);
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
