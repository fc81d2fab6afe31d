// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/config.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace mewm {
namespace {

class ConfigTest : public ::testing::Test {
 protected:
  /// Parses `text` as "scenario.toml"; fails the test on a parse error.
  static ConfigDocument Doc(const std::string& text) {
    auto doc = ConfigDocument::Parse(text, "scenario.toml");
    EXPECT_TRUE(doc.has_value()) << doc.error().ToString();
    return std::move(doc).value();
  }

  /// 1-based line of the first line containing `needle`, so tests do not hard-code line numbers.
  static int LineOf(const std::string& text, const std::string& needle) {
    const auto pos = text.find(needle);
    EXPECT_NE(pos, std::string::npos) << needle;
    return 1 + static_cast<int>(std::count(text.begin(), text.begin() + pos, '\n'));
  }

  static std::string At(const std::string& text, const std::string& needle) {
    return "scenario.toml:" + std::to_string(LineOf(text, needle));
  }
};

const char* const kScenario = R"(# a scenario
[run]
seed = 42
name = "cohort-a"
deterministic = true

[planner]
beams = 4
temperature = 0.5
weight = 2
search = "beam"
protocols = ["cTACE", "DEB-TACE"]
)";

TEST_F(ConfigTest, ReadsTypedValues) {
  const ConfigDocument doc = Doc(kScenario);
  const ConfigTable root = doc.Root();
  auto run = root.GetTable("run");
  ASSERT_TRUE(run.has_value()) << run.error().ToString();
  auto planner = root.GetTable("planner");
  ASSERT_TRUE(planner.has_value());

  EXPECT_EQ(*run->GetInt("seed"), 42);
  EXPECT_EQ(*run->GetString("name"), "cohort-a");
  EXPECT_TRUE(*run->GetBool("deterministic"));
  EXPECT_EQ(*planner->GetInt("beams", std::nullopt, 1, 64), 4);
  EXPECT_DOUBLE_EQ(*planner->GetDouble("temperature", std::nullopt, 0.0, 1.0), 0.5);
  EXPECT_EQ(*planner->GetEnum("search", {"beam", "greedy"}), "beam");
  EXPECT_EQ(*planner->GetStringList("protocols"), (std::vector<std::string>{"cTACE", "DEB-TACE"}));
  EXPECT_EQ(doc.origin(), "scenario.toml");
  EXPECT_EQ(run->path(), "run");
  EXPECT_EQ(root.path(), "");
}

TEST_F(ConfigTest, IntegersAreAcceptedAsDoubles) {
  const ConfigDocument doc = Doc(kScenario);
  auto planner = doc.Root().GetTable("planner");
  ASSERT_TRUE(planner.has_value());
  EXPECT_DOUBLE_EQ(*planner->GetDouble("weight"), 2.0);
}

TEST_F(ConfigTest, FloatsAreNotAcceptedAsIntegers) {
  const std::string text = "[planner]\nbeams = 3.0\n";
  const ConfigDocument doc = Doc(text);
  auto planner = doc.Root().GetTable("planner");
  auto beams = planner->GetInt("beams");
  ASSERT_FALSE(beams.has_value());
  EXPECT_EQ(beams.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(beams.error().message,
            "scenario.toml:2: planner.beams must be an integer (got float 3.0)");
}

TEST_F(ConfigTest, MissingKeysGiveTheFallback) {
  const ConfigDocument doc = Doc(kScenario);
  auto run = doc.Root().GetTable("run");
  EXPECT_EQ(*run->GetInt("workers", 8), 8);
  EXPECT_EQ(*run->GetString("out", std::string("runs/")), "runs/");
  EXPECT_DOUBLE_EQ(*run->GetDouble("eta", 0.25), 0.25);
  EXPECT_FALSE(*run->GetBool("verbose", false));
  EXPECT_TRUE(run->GetStringList("tags", std::vector<std::string>{})->empty());
  EXPECT_EQ(*run->GetEnum("mode", {"fast", "slow"}, std::string("fast")), "fast");
}

TEST_F(ConfigTest, MissingRequiredKeyIsNotFoundAndNamesTheTable) {
  const ConfigDocument doc = Doc(kScenario);
  auto run = doc.Root().GetTable("run");
  auto workers = run->GetInt("workers");
  ASSERT_FALSE(workers.has_value());
  EXPECT_EQ(workers.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(workers.error().message,
            At(kScenario, "[run]") + ": missing required key run.workers (an integer)");

  auto at_root = doc.Root().GetString("title");
  ASSERT_FALSE(at_root.has_value());
  EXPECT_EQ(at_root.error().message, "scenario.toml: missing required key title (a string)");
}

TEST_F(ConfigTest, WrongTypeNamesFileLineAndExpectedForm) {
  const std::string text = "[run]\n\nseed = \"abc\"\nfast = 1\nratio = true\ntags = \"x\"\n";
  const ConfigDocument doc = Doc(text);
  auto run = doc.Root().GetTable("run");
  ASSERT_TRUE(run.has_value());

  auto seed = run->GetInt("seed");
  ASSERT_FALSE(seed.has_value());
  EXPECT_EQ(seed.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(seed.error().message,
            "scenario.toml:3: run.seed must be an integer (got string \"abc\")");

  EXPECT_EQ(run->GetBool("fast").error().message,
            "scenario.toml:4: run.fast must be a boolean, true or false (got integer 1)");
  EXPECT_EQ(run->GetDouble("ratio").error().message,
            "scenario.toml:5: run.ratio must be a number (got boolean true)");
  EXPECT_EQ(run->GetStringList("tags").error().message,
            "scenario.toml:6: run.tags must be an array of strings (got string \"x\")");
  // A present key ignores the fallback.
  EXPECT_EQ(*run->GetString("seed", std::string("fallback")), "abc");
  EXPECT_EQ(doc.Root().GetString("run").error().message,
            "scenario.toml:1: run must be a string (got table)");
}

TEST_F(ConfigTest, StringListElementsMustBeStrings) {
  const std::string text = "names = [\n  \"a\",\n  5,\n]\n";
  const ConfigDocument doc = Doc(text);
  auto names = doc.Root().GetStringList("names");
  ASSERT_FALSE(names.has_value());
  EXPECT_EQ(names.error().message, "scenario.toml:3: names[1] must be a string (got integer 5)");
}

TEST_F(ConfigTest, EnforcesIntegerRange) {
  const std::string text = "[planner]\nbeams = 0\nsamples = 500\ndepth = -3\n";
  const ConfigDocument doc = Doc(text);
  auto planner = doc.Root().GetTable("planner");

  auto beams = planner->GetInt("beams", std::nullopt, 1);
  ASSERT_FALSE(beams.has_value());
  EXPECT_EQ(beams.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(beams.error().message, "scenario.toml:2: planner.beams must be >= 1 (got 0)");
  EXPECT_EQ(planner->GetInt("samples", std::nullopt, std::nullopt, 100).error().message,
            "scenario.toml:3: planner.samples must be <= 100 (got 500)");
  EXPECT_EQ(planner->GetInt("depth", std::nullopt, 0, 10).error().message,
            "scenario.toml:4: planner.depth must be between 0 and 10 (got -3)");
  EXPECT_EQ(*planner->GetInt("samples", std::nullopt, 500, 500), 500);  // bounds are inclusive
}

TEST_F(ConfigTest, EnforcesDoubleRange) {
  const std::string text = "lo = -0.5\nhi = 1.5\nbad = nan\nok = 1\n";
  const ConfigDocument doc = Doc(text);
  const ConfigTable root = doc.Root();
  EXPECT_EQ(root.GetDouble("lo", std::nullopt, 0.0).error().message,
            "scenario.toml:1: lo must be >= 0 (got -0.5)");
  EXPECT_EQ(root.GetDouble("hi", std::nullopt, 0.0, 1.0).error().message,
            "scenario.toml:2: hi must be between 0 and 1 (got 1.5)");
  EXPECT_FALSE(root.GetDouble("bad", std::nullopt, 0.0).has_value());  // NaN fails every bound
  EXPECT_TRUE(std::isnan(*root.GetDouble("bad")));
  EXPECT_DOUBLE_EQ(*root.GetDouble("ok", std::nullopt, 0.0, 1.0), 1.0);
}

TEST_F(ConfigTest, EnumAcceptsOnlyItsChoices) {
  const std::string text = "[planner]\nsearch = \"bem\"\nmode = 3\n";
  const ConfigDocument doc = Doc(text);
  auto planner = doc.Root().GetTable("planner");
  auto search = planner->GetEnum("search", {"beam", "greedy", "exhaustive"});
  ASSERT_FALSE(search.has_value());
  EXPECT_EQ(search.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(search.error().message,
            "scenario.toml:2: planner.search must be one of: beam, greedy, exhaustive "
            "(got \"bem\")");
  EXPECT_EQ(planner->GetEnum("mode", {"a", "b"}).error().message,
            "scenario.toml:3: planner.mode must be a string, one of: a, b (got integer 3)");
  // Choices are case-sensitive.
  EXPECT_FALSE(planner->GetEnum("search", {"BEM"}).has_value());
}

TEST_F(ConfigTest, RejectUnknownKeysListsEveryUnknownKeyWithItsLine) {
  const std::string text =
      "[planner]\nbeams = 4\nbeamz = 5\nsamples = 2\nsearch = \"beam\"\ntemprature = 0.1\n";
  const ConfigDocument doc = Doc(text);
  auto planner = doc.Root().GetTable("planner");
  ASSERT_TRUE(planner->GetInt("beams").has_value());
  ASSERT_TRUE(planner->GetInt("samples").has_value());
  ASSERT_TRUE(planner->GetEnum("search", {"beam"}).has_value());
  const Status status = planner->RejectUnknownKeys();
  ASSERT_FALSE(status.has_value());
  EXPECT_EQ(status.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(status.error().message,
            "scenario.toml:3: unknown key planner.beamz (allowed: beams, samples, search)\n"
            "scenario.toml:6: unknown key planner.temprature (allowed: beams, samples, search)");
}

TEST_F(ConfigTest, KeysAskedForButAbsentCountAsAllowed) {
  const std::string text = "[planner]\nbeamz = 5\n";
  const ConfigDocument doc = Doc(text);
  auto planner = doc.Root().GetTable("planner");
  EXPECT_EQ(*planner->GetInt("beams", 1), 1);
  EXPECT_EQ(planner->RejectUnknownKeys().error().message,
            "scenario.toml:2: unknown key planner.beamz (allowed: beams)");
}

TEST_F(ConfigTest, RejectUnknownKeysPassesOnceEveryKeyIsRead) {
  const ConfigDocument doc = Doc(kScenario);
  const ConfigTable root = doc.Root();
  EXPECT_FALSE(root.RejectUnknownKeys().has_value());  // nothing read yet
  auto run = root.GetTable("run");
  auto planner = root.GetTable("planner");
  EXPECT_TRUE(root.RejectUnknownKeys().has_value());
  // Has() does not count as reading.
  EXPECT_TRUE(run->Has("seed"));
  EXPECT_FALSE(run->Has("workers"));
  EXPECT_FALSE(run->RejectUnknownKeys().has_value());
  (void)run->GetInt("seed");
  (void)run->GetString("name");
  (void)run->GetBool("deterministic");
  EXPECT_TRUE(run->RejectUnknownKeys().has_value());
}

TEST_F(ConfigTest, EmptyTableTakesNoKeys) {
  const std::string text = "[extra]\nx = 1\n";
  const ConfigDocument doc = Doc(text);
  auto extra = doc.Root().GetTable("extra");
  EXPECT_EQ(extra->RejectUnknownKeys().error().message,
            "scenario.toml:2: unknown key extra.x (allowed: none)");
}

TEST_F(ConfigTest, ReadsAreSharedBetweenCopiesAndViews) {
  const std::string text = "[planner]\nbeams = 4\nsamples = 2\n";
  const ConfigDocument doc = Doc(text);
  auto planner = doc.Root().GetTable("planner");
  ASSERT_TRUE(planner.has_value());
  const ConfigTable copy = *planner;
  (void)copy.GetInt("beams");
  // A second view of the same table, obtained later, also shares the record.
  auto again = doc.Root().GetTable("planner");
  (void)again->GetInt("samples");
  EXPECT_TRUE(planner->RejectUnknownKeys().has_value());
  EXPECT_TRUE(copy.RejectUnknownKeys().has_value());
}

TEST_F(ConfigTest, NavigatesNestedTables) {
  const std::string text =
      "title = \"t\"\n"
      "[model.dynamics]\n"
      "steps = 50\n"
      "[model.dynamics.noise]\n"
      "schedule = \"cosine\"\n"
      "[model]\n"
      "name = \"mewm\"\n"
      "inline = { a = 1 }\n";
  const ConfigDocument doc = Doc(text);
  auto model = doc.Root().GetTable("model");
  ASSERT_TRUE(model.has_value());
  auto dynamics = model->GetTable("dynamics");
  ASSERT_TRUE(dynamics.has_value());
  auto noise = dynamics->GetTable("noise");
  ASSERT_TRUE(noise.has_value());
  EXPECT_EQ(noise->path(), "model.dynamics.noise");
  EXPECT_EQ(noise->Where(), At(text, "[model.dynamics.noise]"));
  EXPECT_EQ(*noise->GetString("schedule"), "cosine");
  EXPECT_EQ(*dynamics->GetInt("steps"), 50);
  EXPECT_EQ(dynamics->WhereKey("steps"), At(text, "steps"));
  EXPECT_EQ(model->Where(), At(text, "[model]\n"));
  EXPECT_EQ(*model->GetString("name"), "mewm");
  auto inline_table = model->GetTable("inline");
  ASSERT_TRUE(inline_table.has_value());
  EXPECT_EQ(*inline_table->GetInt("a"), 1);
  EXPECT_EQ(doc.Root().Where(), "scenario.toml");

  // Wrong type and absence.
  EXPECT_EQ(dynamics->GetTable("steps").error().message,
            At(text, "steps") + ": model.dynamics.steps must be a table (got integer 50)");
  auto missing = model->GetTable("survival");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  EXPECT_NE(missing.error().message.find("missing required key model.survival"), std::string::npos);
}

TEST_F(ConfigTest, OptionalMissingTableIsEmpty) {
  const ConfigDocument doc = Doc(kScenario);
  auto streaming = doc.Root().GetTable("streaming", /*optional=*/true);
  ASSERT_TRUE(streaming.has_value());
  EXPECT_EQ(streaming->path(), "streaming");
  EXPECT_TRUE(streaming->Keys().empty());
  EXPECT_FALSE(streaming->Has("port"));
  EXPECT_EQ(*streaming->GetInt("port", 5555), 5555);
  EXPECT_TRUE(streaming->RejectUnknownKeys().has_value());
  EXPECT_EQ(streaming->Where(), "scenario.toml");
  // A present key of the wrong type is still an error.
  EXPECT_FALSE(doc.Root().GetTable("run", true)->GetTable("seed", true).has_value());
}

TEST_F(ConfigTest, ReadsArraysOfTables) {
  const std::string text =
      "[[drug]]\nname = \"A\"\n\n[[drug]]\nname = \"B\"\n\n[[drug]]\nname = \"C\"\nx = 1\n";
  const ConfigDocument doc = Doc(text);
  auto drugs = doc.Root().GetTableArray("drug");
  ASSERT_TRUE(drugs.has_value()) << drugs.error().ToString();
  ASSERT_EQ(drugs->size(), 3u);
  EXPECT_EQ((*drugs)[1].path(), "drug[1]");
  EXPECT_EQ((*drugs)[1].Where(), "scenario.toml:4");
  EXPECT_EQ(*(*drugs)[2].GetString("name"), "C");
  EXPECT_EQ((*drugs)[2].RejectUnknownKeys().error().message,
            "scenario.toml:9: unknown key drug[2].x (allowed: name)");
  EXPECT_EQ((*drugs)[2].GetInt("name").error().message,
            "scenario.toml:8: drug[2].name must be an integer (got string \"C\")");

  auto none = doc.Root().GetTableArray("embolic");
  ASSERT_TRUE(none.has_value());
  EXPECT_TRUE(none->empty());
}

TEST_F(ConfigTest, TableArrayOfWrongShapeIsAnError) {
  const std::string text = "drug = 5\nembolic = [{ name = \"x\" }, 3]\nrule = []\n";
  const ConfigDocument doc = Doc(text);
  EXPECT_EQ(doc.Root().GetTableArray("drug").error().message,
            "scenario.toml:1: drug must be an array of tables, [[drug]] (got integer 5)");
  EXPECT_EQ(doc.Root().GetTableArray("embolic").error().message,
            "scenario.toml:2: embolic[1] must be a table (got integer 3)");
  auto empty = doc.Root().GetTableArray("rule");
  ASSERT_TRUE(empty.has_value());
  EXPECT_TRUE(empty->empty());
}

TEST_F(ConfigTest, KeysComeInFileOrder) {
  const std::string text = "zeta = 1\nalpha = 2\nmid = 3\n";
  const ConfigDocument doc = Doc(text);
  EXPECT_EQ(doc.Root().Keys(), (std::vector<std::string>{"zeta", "alpha", "mid"}));
}

TEST_F(ConfigTest, ParseErrorsGiveLineAndColumn) {
  auto doc = ConfigDocument::Parse("a = 1\nb = \n", "bad.toml");
  ASSERT_FALSE(doc.has_value());
  EXPECT_EQ(doc.error().code, ErrorCode::kParse);
  EXPECT_EQ(doc.error().message.rfind("bad.toml:2:", 0), 0u) << doc.error().message;
  // file:line:column: description
  const std::string& m = doc.error().message;
  const auto second_colon = m.find(':', std::string("bad.toml:2:").size());
  ASSERT_NE(second_colon, std::string::npos);
  const std::string column = m.substr(11, second_colon - 11);
  EXPECT_FALSE(column.empty());
  EXPECT_TRUE(std::all_of(column.begin(), column.end(), ::isdigit)) << m;
  EXPECT_GT(m.size(), second_colon + 2);
}

TEST_F(ConfigTest, ControlCharactersInKeysAndStringsAreRefusedWithTheirLine) {
  // TOML's escapes can write any control character. A NUL cut a server's path short where the
  // file was opened, after the check had read the whole path; an ESC reached the terminal of
  // whoever read the error.
  struct Case {
    std::string text;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{
           {"[run]\nseed = 1\noutput = \"/etc/shadow\\u0000/../x\"\n",
            "bad.toml:3: run.output = \"/etc/shadow\\x00/../x\" holds a control character"},
           {"[run]\nname = \"a\\u001b[2Jb\"\n",
            "bad.toml:2: run.name = \"a\\x1b[2Jb\" holds a control character"},
           {"[run]\nlist = [\"ok\", \"cr\\r\"]\n",
            "bad.toml:2: run.list[1] = \"cr\\x0d\" holds a control character"},
           {"[run]\n\"k\\u0007\" = 1\n",
            "bad.toml:2: the key \"run.k\\x07\" holds a control character"},
           {"[run]\ncsi = \"\\u009b2J\"\n",
            "bad.toml:2: run.csi = \"\\xc2\\x9b2J\" holds a control character"},
       }) {
    auto doc = ConfigDocument::Parse(c.text, "bad.toml");
    ASSERT_FALSE(doc.has_value()) << c.text;
    EXPECT_EQ(doc.error().code, ErrorCode::kParse);
    EXPECT_EQ(doc.error().message, c.says);
  }
  // A string may hold newlines and tabs (a multi-line string does); a key may not.
  const ConfigDocument lines = Doc("[run]\nt = \"a\\tb\\nc\"\n");
  EXPECT_EQ(*lines.Root().GetTable("run")->GetString("t"), "a\tb\nc");
  EXPECT_FALSE(ConfigDocument::Parse("[run]\n\"a\\tb\" = 1\n", "bad.toml"));
  // Raw control bytes are the parser's errors, whose text is escaped too.
  auto raw = ConfigDocument::Parse("a = \"\x1b[2J\"\n", "raw.toml");
  ASSERT_FALSE(raw.has_value());
  EXPECT_EQ(raw.error().message.find('\x1b'), std::string::npos) << raw.error().message;
  // Other UTF-8 text (an accent, a no-break space, sharp s) is not a control character.
  const ConfigDocument doc = Doc("[run]\nname = \"\xc3\xa9tude \xc2\xa0 \xc3\x9f\"\n");
  EXPECT_EQ(*doc.Root().GetTable("run")->GetString("name"), "\xc3\xa9tude \xc2\xa0 \xc3\x9f");
}

TEST_F(ConfigTest, UnknownKeysPastTwentyAreCountedNotListed) {
  std::string text = "[planner]\nbeams = 4\n";
  for (int i = 0; i < 90000; ++i) text += "k" + std::to_string(i) + " = 1\n";
  const ConfigDocument doc = Doc(text);
  auto planner = doc.Root().GetTable("planner");
  (void)planner->GetInt("beams");
  const std::string message = planner->RejectUnknownKeys().error().message;
  EXPECT_EQ(std::count(message.begin(), message.end(), '\n'), 20);
  EXPECT_EQ(message.rfind("scenario.toml:3: unknown key planner.k0 (allowed: beams)\n", 0), 0u);
  EXPECT_NE(message.find("scenario.toml:22: unknown key planner.k19 (allowed: beams)\n"
                         "scenario.toml:1: and 89980 more unknown keys in planner"),
            std::string::npos)
      << message.substr(0, 2000);
}

TEST_F(ConfigTest, DuplicateKeysAreParseErrors) {
  auto doc = ConfigDocument::Parse("[run]\nseed = 1\nseed = 2\n", "dup.toml");
  ASSERT_FALSE(doc.has_value());
  EXPECT_EQ(doc.error().code, ErrorCode::kParse);
  EXPECT_EQ(doc.error().message.rfind("dup.toml:3:", 0), 0u) << doc.error().message;
}

TEST_F(ConfigTest, LoadsAFile) {
  const std::string path = ::testing::TempDir() + "/config_test_load.toml";
  {
    std::ofstream out(path);
    out << "[run]\nseed = 7\n";
  }
  auto doc = ConfigDocument::Load(path);
  ASSERT_TRUE(doc.has_value()) << doc.error().ToString();
  EXPECT_EQ(doc->origin(), path);
  auto run = doc->Root().GetTable("run");
  EXPECT_EQ(*run->GetInt("seed"), 7);
  EXPECT_EQ(run->GetString("seed").error().message,
            path + ":2: run.seed must be a string (got integer 7)");
  std::remove(path.c_str());
}

TEST_F(ConfigTest, LoadingAMissingFileIsNotFound) {
  auto doc = ConfigDocument::Load(::testing::TempDir() + "/no_such_config.toml");
  ASSERT_FALSE(doc.has_value());
  EXPECT_EQ(doc.error().code, ErrorCode::kNotFound);
  EXPECT_NE(doc.error().message.find("no_such_config.toml"), std::string::npos);
}

/// `parts` dotted parts: "a.a.a...".
std::string DottedKey(int parts) {
  std::string key = "a";
  for (int i = 1; i < parts; ++i) key += ".a";
  return key;
}

/// `levels` arrays nested as the value of `key`: key = [[[...1...]]].
std::string NestedArrays(const std::string& key, int levels) {
  return key + " = " + std::string(std::size_t(levels), '[') + "1" +
         std::string(std::size_t(levels), ']') + "\n";
}

TEST_F(ConfigTest, HugeNestingIsRefusedQuicklyBeforeTheParserRecurses) {
  // Each of these overflowed the stack inside toml++ (100,000 dotted parts is about 200 KB).
  const std::string key = DottedKey(100000);
  std::string inline_tables = "x = ";
  for (int i = 0; i < 50000; ++i) inline_tables += "{a=";
  inline_tables += "1" + std::string(50000, '}') + "\n";
  const std::pair<std::string, std::string> cases[] = {
      {"[run]\nseed = 1\n" + key + " = 1\n", "a dotted key goes deeper than"},
      {"# header\n[" + key + "]\n", "a table header goes deeper than"},
      {"[[" + key + "]]\n", "a table header goes deeper than"},
      {NestedArrays("x", 100000), "arrays and inline tables go deeper than"},
      {inline_tables, "arrays and inline tables go deeper than"},
      {"y = { " + key + " = 1 }\n", "a dotted key goes deeper than"}};
  for (const auto& [text, what] : cases) {
    const auto t0 = std::chrono::steady_clock::now();
    auto doc = ConfigDocument::Parse(text, "deep.toml");
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_FALSE(doc.has_value()) << what;
    EXPECT_EQ(doc.error().code, ErrorCode::kParse);
    const std::string& m = doc.error().message;
    EXPECT_EQ(m.rfind("deep.toml:", 0), 0u) << m;
    EXPECT_NE(m.find(what), std::string::npos) << m;
    EXPECT_NE(m.find("64 levels"), std::string::npos) << m;
    EXPECT_LT(seconds, 1.0) << what;
  }
  // The line named is the one that goes too deep.
  auto doc = ConfigDocument::Parse("a = 1\n\nb = 2\n" + key + " = 3\n", "deep.toml");
  ASSERT_FALSE(doc.has_value());
  EXPECT_EQ(doc.error().message.rfind("deep.toml:4: ", 0), 0u) << doc.error().message;
}

TEST_F(ConfigTest, NestingUpToTheLimitParsesAndOneMoreLevelDoesNot) {
  EXPECT_TRUE(ConfigDocument::Parse(DottedKey(kMaxConfigDepth) + " = 1\n", "t.toml"));
  EXPECT_FALSE(ConfigDocument::Parse(DottedKey(kMaxConfigDepth + 1) + " = 1\n", "t.toml"));
  EXPECT_TRUE(ConfigDocument::Parse("[" + DottedKey(kMaxConfigDepth) + "]\n", "t.toml"));
  EXPECT_FALSE(ConfigDocument::Parse("[" + DottedKey(kMaxConfigDepth + 1) + "]\n", "t.toml"));
  // Header parts and key parts add up: 32 + 32 fit, 32 + 33 do not.
  EXPECT_TRUE(ConfigDocument::Parse("[" + DottedKey(32) + "]\n" + DottedKey(32) + " = 1\n", "t"));
  EXPECT_FALSE(ConfigDocument::Parse("[" + DottedKey(32) + "]\n" + DottedKey(33) + " = 1\n", "t"));
  // The key `x` is one level, each array one more.
  EXPECT_TRUE(ConfigDocument::Parse(NestedArrays("x", kMaxConfigDepth - 1), "t.toml"));
  EXPECT_FALSE(ConfigDocument::Parse(NestedArrays("x", kMaxConfigDepth), "t.toml"));
  // Levels are counted along one path: many shallow values side by side are fine.
  std::string wide;
  for (int i = 0; i < 2000; ++i) wide += NestedArrays("k" + std::to_string(i), 40);
  EXPECT_TRUE(ConfigDocument::Parse(wide, "t.toml"));
}

TEST_F(ConfigTest, DotsAndBracketsInStringsCommentsAndValuesCountForNothing) {
  const std::string dots(5000, '.');
  const std::string brackets = std::string(5000, '[') + std::string(5000, '{');
  const std::string text =
      "# comment " + dots + brackets + "\n" +      //
      "[\"" + dots + "\".'" + brackets + "']\n" +  // a header of two quoted parts
      "basic = \"" + dots + brackets + "\\\"" + dots + "\"\n" + "literal = '" + dots + brackets +
      "'\n" + "multi = \"\"\"\n" + dots + "\n\"\" " + brackets + "\\\n  " + dots + "\"\"\"\n" +
      "multi_literal = '''\n" + brackets + "\n" + dots + "'''\n" +
      "floats = [1.5, 2.5e3, -0.25, 1979-05-27T07:32:00.999999]  # " + dots + "\n" +
      "tables = [ { a.b = 1.5 }, { c = \"" + brackets + "\" } ]\n" + "spaced . key . parts = 2\n";
  auto doc = ConfigDocument::Parse(text, "strings.toml");
  ASSERT_TRUE(doc.has_value()) << doc.error().message;
  EXPECT_EQ(doc->Root().Keys().size(), 1u);
}

TEST_F(ConfigTest, DocumentSurvivesAMove) {
  ConfigDocument doc = Doc(kScenario);
  ConfigDocument moved = std::move(doc);
  auto run = moved.Root().GetTable("run");
  ASSERT_TRUE(run.has_value());
  EXPECT_EQ(*run->GetInt("seed"), 42);
}

}  // namespace
}  // namespace mewm
