// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/csv.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "test_env.h"

namespace mewm {
namespace {

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(CsvTest, ParsesHeaderAndPlainRows) {
  auto t = CsvTable::Parse("id,age,site\nP1,64,liver\nP2,71,lung\n", "plain.csv");
  ASSERT_TRUE(t) << t.error().ToString();
  EXPECT_EQ(t->columns(), (std::vector<std::string>{"id", "age", "site"}));
  ASSERT_EQ(t->rows(), 2u);
  EXPECT_TRUE(t->HasColumn("age"));
  EXPECT_FALSE(t->HasColumn("Age"));
  EXPECT_EQ(*t->Get(0, "id"), "P1");
  EXPECT_EQ(*t->Get(1, "site"), "lung");
  EXPECT_EQ(*t->GetInt(1, "age"), 71);
}

TEST(CsvTest, QuotedFieldsHoldCommasQuotesAndNewlines) {
  const std::string text =
      "id,note,plan\n"
      "P1,\"big, lobulated\",\"Lipiodol+Epirubicin\"\n"
      "P2,\"said \"\"no\"\"\",\"\"\n"
      "P3,\"line one\nline two\",x\n"
      "P4,after,y\n";
  auto t = CsvTable::Parse(text, "notes.csv");
  ASSERT_TRUE(t) << t.error().ToString();
  ASSERT_EQ(t->rows(), 4u);
  EXPECT_EQ(*t->Get(0, "note"), "big, lobulated");
  EXPECT_EQ(*t->Get(0, "plan"), "Lipiodol+Epirubicin");
  EXPECT_EQ(*t->Get(1, "note"), "said \"no\"");
  EXPECT_EQ(*t->Get(1, "plan"), "");
  EXPECT_EQ(*t->Get(2, "note"), "line one\nline two");
  EXPECT_EQ(*t->Get(2, "plan"), "x");
  // Rows are named by the line they start on; the embedded newline pushes P4 to line 6.
  EXPECT_EQ(t->Where(0), "notes.csv:2");
  EXPECT_EQ(t->Where(2), "notes.csv:4");
  EXPECT_EQ(t->Where(3), "notes.csv:6");
  EXPECT_EQ(t->Where(99), "notes.csv:?");
}

TEST(CsvTest, CrlfLineEndsAndBlankLinesAreHandled) {
  auto t = CsvTable::Parse("a,b\r\n1,2\r\n\r\n\n3,4\r\n\r\n", "crlf.csv");
  ASSERT_TRUE(t) << t.error().ToString();
  EXPECT_EQ(t->columns(), (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(t->rows(), 2u);
  EXPECT_EQ(*t->Get(0, "b"), "2");  // no stray '\r'
  EXPECT_EQ(*t->Get(1, "a"), "3");
  EXPECT_EQ(*t->Get(1, "b"), "4");
  EXPECT_EQ(t->Where(1), "crlf.csv:5");  // lines 3 and 4 were blank
}

TEST(CsvTest, LastRowWithoutNewlineIsKept) {
  auto t = CsvTable::Parse("a,b\n1,2\n3,\"4\"", "tail.csv");
  ASSERT_TRUE(t) << t.error().ToString();
  ASSERT_EQ(t->rows(), 2u);
  EXPECT_EQ(*t->Get(1, "b"), "4");
}

TEST(CsvTest, AQuotedEmptyFieldIsARowNotABlankLine) {
  auto t = CsvTable::Parse("only\nx\n\"\"\ny\n", "one.csv");
  ASSERT_TRUE(t) << t.error().ToString();
  ASSERT_EQ(t->rows(), 3u);
  EXPECT_EQ(*t->Get(1, "only"), "");
  EXPECT_EQ(*t->Get(2, "only"), "y");
}

TEST(CsvTest, UnclosedQuoteNamesOriginAndLine) {
  auto t = CsvTable::Parse("a,b\n1,2\n3,\"open\nstill open\n", "bad.csv");
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, ErrorCode::kParse);
  EXPECT_TRUE(Contains(t.error().message, "bad.csv:3")) << t.error().message;
  EXPECT_TRUE(Contains(t.error().message, "unclosed quote")) << t.error().message;
}

TEST(CsvTest, WrongFieldCountNamesTheLine) {
  auto too_few = CsvTable::Parse("a,b,c\n1,2,3\n4,5\n", "short.csv");
  ASSERT_FALSE(too_few);
  EXPECT_EQ(too_few.error().code, ErrorCode::kParse);
  EXPECT_TRUE(Contains(too_few.error().message, "short.csv:3")) << too_few.error().message;
  EXPECT_TRUE(Contains(too_few.error().message, "2 fields")) << too_few.error().message;

  // A trailing comma is one field too many.
  auto too_many = CsvTable::Parse("a,b\n1,2,\n", "long.csv");
  ASSERT_FALSE(too_many);
  EXPECT_EQ(too_many.error().code, ErrorCode::kParse);
  EXPECT_TRUE(Contains(too_many.error().message, "long.csv:2")) << too_many.error().message;
  EXPECT_TRUE(Contains(too_many.error().message, "3 fields")) << too_many.error().message;
}

TEST(CsvTest, EmptyOrDuplicateColumnNamesAndNoHeaderAreRejected) {
  auto duplicate = CsvTable::Parse("id,age,id\n1,2,3\n", "dup.csv");
  ASSERT_FALSE(duplicate);
  EXPECT_EQ(duplicate.error().code, ErrorCode::kParse);
  EXPECT_TRUE(Contains(duplicate.error().message, "dup.csv:1")) << duplicate.error().message;
  EXPECT_TRUE(Contains(duplicate.error().message, "'id'")) << duplicate.error().message;

  auto empty = CsvTable::Parse("id,,age\n1,2,3\n", "empty.csv");
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code, ErrorCode::kParse);
  EXPECT_TRUE(Contains(empty.error().message, "empty.csv:1")) << empty.error().message;
  EXPECT_TRUE(Contains(empty.error().message, "column 2")) << empty.error().message;

  auto nothing = CsvTable::Parse("\n\r\n", "blank.csv");
  ASSERT_FALSE(nothing);
  EXPECT_EQ(nothing.error().code, ErrorCode::kParse);
  EXPECT_TRUE(Contains(nothing.error().message, "blank.csv")) << nothing.error().message;
}

TEST(CsvTest, HeaderOnlyHasNoRows) {
  auto t = CsvTable::Parse("id,age\n", "header.csv");
  ASSERT_TRUE(t) << t.error().ToString();
  EXPECT_EQ(t->rows(), 0u);
  auto row = t->Get(0, "id");
  ASSERT_FALSE(row);
  EXPECT_EQ(row.error().code, ErrorCode::kInvalidArgument);
}

TEST(CsvTest, MissingColumnListsTheColumnsPresent) {
  auto t = *CsvTable::Parse("id,age\nP1,64\n", "cohort.csv");
  auto missing = t.Get(0, "afp");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(Contains(missing.error().message, "cohort.csv")) << missing.error().message;
  EXPECT_TRUE(Contains(missing.error().message, "'afp'")) << missing.error().message;
  EXPECT_TRUE(Contains(missing.error().message, "id, age")) << missing.error().message;
  auto number = t.GetDouble(0, "afp");
  ASSERT_FALSE(number);
  EXPECT_EQ(number.error().code, ErrorCode::kNotFound);
}

TEST(CsvTest, OptionalIsEmptyForAbsentColumnEmptyFieldOrBadRow) {
  auto t = *CsvTable::Parse("id,afp\nP1,\nP2,12.5\n", "opt.csv");
  EXPECT_FALSE(t.Optional(0, "afp").has_value());
  ASSERT_TRUE(t.Optional(1, "afp").has_value());
  EXPECT_EQ(*t.Optional(1, "afp"), "12.5");
  EXPECT_FALSE(t.Optional(1, "liver").has_value());
  EXPECT_FALSE(t.Optional(7, "id").has_value());
}

TEST(CsvTest, NumbersParseFullyOrNameFileLineAndColumn) {
  auto t = *CsvTable::Parse("id,afp,count\nP1,12.5,3\nP2,12.5 ng,3.0\nP3,,-4\n", "labs.csv");
  EXPECT_DOUBLE_EQ(*t.GetDouble(0, "afp"), 12.5);
  EXPECT_EQ(*t.GetInt(0, "count"), 3);
  EXPECT_EQ(*t.GetInt(2, "count"), -4);
  EXPECT_DOUBLE_EQ(*t.GetDouble(2, "count"), -4.0);

  auto units = t.GetDouble(1, "afp");
  ASSERT_FALSE(units);
  EXPECT_EQ(units.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(Contains(units.error().message, "labs.csv:3")) << units.error().message;
  EXPECT_TRUE(Contains(units.error().message, "afp")) << units.error().message;
  EXPECT_TRUE(Contains(units.error().message, "'12.5 ng'")) << units.error().message;

  auto fraction = t.GetInt(1, "count");
  ASSERT_FALSE(fraction);
  EXPECT_EQ(fraction.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(Contains(fraction.error().message, "labs.csv:3")) << fraction.error().message;
  EXPECT_TRUE(Contains(fraction.error().message, "count")) << fraction.error().message;

  auto empty = t.GetDouble(2, "afp");
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(Contains(empty.error().message, "labs.csv:4")) << empty.error().message;

  auto huge = CsvTable::Parse("n\n99999999999999999999999\n", "big.csv")->GetInt(0, "n");
  ASSERT_FALSE(huge);
  EXPECT_EQ(huge.error().code, ErrorCode::kInvalidArgument);
}

TEST(CsvTest, QuoteLeavesPlainFieldsAndQuotesTheRest) {
  EXPECT_EQ(CsvQuote("plain"), "plain");
  EXPECT_EQ(CsvQuote(""), "");
  EXPECT_EQ(CsvQuote("a,b"), "\"a,b\"");
  EXPECT_EQ(CsvQuote("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(CsvQuote("two\nlines"), "\"two\nlines\"");
  EXPECT_EQ(CsvQuote("cr\r"), "\"cr\r\"");
}

TEST(CsvTest, QuotedFieldsRoundTripThroughParse) {
  const std::vector<std::string> fields = {
      "plain", "a,b", "say \"hi\"", "two\nlines", "crlf\r\nend", "\"", ",", "", " spaced "};
  std::string text;
  for (std::size_t c = 0; c < fields.size(); ++c) {
    text += (c ? "," : "") + std::string("c") + std::to_string(c);
  }
  text += "\n";
  for (std::size_t c = 0; c < fields.size(); ++c) {
    text += (c ? "," : "") + CsvQuote(fields[c]);
  }
  text += "\n";
  auto t = CsvTable::Parse(text, "round.csv");
  ASSERT_TRUE(t) << t.error().ToString();
  ASSERT_EQ(t->rows(), 1u);
  for (std::size_t c = 0; c < fields.size(); ++c) {
    EXPECT_EQ(*t->Get(0, "c" + std::to_string(c)), fields[c]) << "field " << c;
  }
}

TEST(CsvTest, LoadReadsAFileAndNamesItInErrors) {
  testing::TempDir dir;
  const std::string path = dir.File("cohort.csv");
  {
    std::ofstream out(path, std::ios::binary);
    out << "id,age\nP1,64\nP2,x\n";
  }
  auto t = CsvTable::Load(path);
  ASSERT_TRUE(t) << t.error().ToString();
  EXPECT_EQ(t->rows(), 2u);
  EXPECT_EQ(t->Where(0), path + ":2");
  auto bad = t->GetDouble(1, "age");
  ASSERT_FALSE(bad);
  EXPECT_TRUE(Contains(bad.error().message, path + ":3")) << bad.error().message;

  auto missing = CsvTable::Load(dir.File("absent.csv"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);

  {
    std::ofstream out(dir.File("broken.csv"), std::ios::binary);
    out << "a,b\n1\n";
  }
  auto broken = CsvTable::Load(dir.File("broken.csv"));
  ASSERT_FALSE(broken);
  EXPECT_EQ(broken.error().code, ErrorCode::kParse);
  EXPECT_TRUE(Contains(broken.error().message, dir.File("broken.csv") + ":2"))
      << broken.error().message;
}

}  // namespace
}  // namespace mewm
