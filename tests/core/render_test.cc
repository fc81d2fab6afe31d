// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/render.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "mewm/core/file_util.h"
#include "mewm/core/text.h"
#include "test_env.h"

namespace mewm {
namespace {

class RenderTest : public testing::VdbTest {
 protected:
  void SetUp() override {
    Geometry g;
    g.spacing = Eigen::Vector3d(1.0, 1.0, 2.0);
    DenseFloat ct({8, 6, 4}, g, -1000.0f);
    DenseLabel tumor({8, 6, 4}, g, 0);
    for (int k = 0; k < 4; ++k)
      for (int j = 0; j < 6; ++j)
        for (int i = 0; i < 8; ++i) ct.at(i, j, k) = i < 4 ? -175.0f : 600.0f;
    tumor.at(6, 1, 2) = 1;
    ct_ = *Volume::FromDense(ct, "ct");
    tumor_ = *LabelVolume::FromDense(tumor, "tumor");
  }
  std::optional<Volume> ct_;
  std::optional<LabelVolume> tumor_;
  testing::TempDir dir_;
};

TEST(TextTest, Base64MatchesTheRfc4648Vectors) {
  EXPECT_EQ(Base64Encode(""), "");
  EXPECT_EQ(Base64Encode("f"), "Zg==");
  EXPECT_EQ(Base64Encode("fo"), "Zm8=");
  EXPECT_EQ(Base64Encode("foo"), "Zm9v");
  EXPECT_EQ(Base64Encode("foob"), "Zm9vYg==");
  EXPECT_EQ(Base64Encode("fooba"), "Zm9vYmE=");
  EXPECT_EQ(Base64Encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(Base64Encode(std::string("\xff\xfe\x00", 3)), "//4A");
}

TEST(TextTest, ControlCharactersAreFoundAndEscapedButNewlinesTabsAndUtf8Kept) {
  EXPECT_FALSE(HasControlCharacter(""));
  EXPECT_FALSE(HasControlCharacter("plain text, \xc3\xa9t\xc3\xa9 \xc2\xa0 \xe2\x82\xac"));
  for (const std::string& bad :
       {std::string("a\0b", 3), std::string("\x1b[2J"), std::string("\r"), std::string("\n"),
        std::string("\t"), std::string("\x7f"), std::string("\xc2\x9b"), std::string("\xc2\x80")}) {
    EXPECT_TRUE(HasControlCharacter(bad)) << EscapeControl(bad);
  }
  EXPECT_EQ(EscapeControl(std::string("/etc/shadow\0/x", 14)), "/etc/shadow\\x00/x");
  EXPECT_EQ(EscapeControl("\x1b]0;PWNED\x07 ok\r"), "\\x1b]0;PWNED\\x07 ok\\x0d");
  EXPECT_EQ(EscapeControl("line one\nline\ttwo"), "line one\nline\ttwo");
  EXPECT_EQ(EscapeControl("\xc2\x9b"
                          "2J \xc2\xa0 \xc3\xa9 \x7f"),
            "\\xc2\\x9b2J \xc2\xa0 \xc3\xa9 \\x7f");
  // A byte that is not part of well-formed UTF-8 is escaped too: a lone 0x9b is CSI to a terminal
  // in an 8-bit mode. Well-formed characters of 3 and 4 bytes are kept.
  EXPECT_EQ(EscapeControl("a\x9b"
                          "2J"),
            "a\\x9b2J");
  EXPECT_EQ(EscapeControl("\xc2"), "\\xc2");                    // cut short
  EXPECT_EQ(EscapeControl("\xed\xa0\x80"), "\\xed\\xa0\\x80");  // a surrogate
  EXPECT_EQ(EscapeControl("\xe2\x82\xac \xf0\x9f\x98\x80"), "\xe2\x82\xac \xf0\x9f\x98\x80");
}

TEST_F(RenderTest, EncodePngGivesTheBytesWritePngWrites) {
  const RgbImage image{2, 1, {255, 0, 0, 0, 0, 255}};
  auto bytes = EncodePng(image);
  ASSERT_TRUE(bytes) << bytes.error().message;
  EXPECT_EQ(bytes->substr(1, 3), "PNG");
  const std::string path = dir_.File("a.png");
  ASSERT_TRUE(WritePng(path, image));
  EXPECT_EQ(*ReadFile(path), *bytes);
  EXPECT_FALSE(EncodePng(RgbImage{2, 2, {1, 2, 3}}));  // too few pixels
}

TEST_F(RenderTest, AxialSliceIsWindowedWithRightOnTheLeft) {
  SliceSpec spec;
  spec.index = 2;
  auto image = RenderSlice(*ct_, spec);
  ASSERT_TRUE(image);
  EXPECT_EQ(image->width, 8);
  EXPECT_EQ(image->height, 6);
  EXPECT_EQ(image->pixels[0], 0);          // low i (patient right) at the image left: -175 HU
  EXPECT_EQ(image->pixels[(7) * 3], 255);  // high i: 600 HU
}

TEST_F(RenderTest, CoronalSliceIsStretchedToSquareMillimetres) {
  SliceSpec spec;
  spec.plane = SlicePlane::kCoronal;
  auto image = RenderSlice(*ct_, spec);
  ASSERT_TRUE(image);
  EXPECT_EQ(image->width, 8);
  EXPECT_EQ(image->height, 8);  // 4 slices of 2 mm shown as 8 pixels of 1 mm
}

TEST_F(RenderTest, OverlayTintsLabelledPixels) {
  SliceSpec spec;
  spec.index = 2;
  auto image = RenderSlice(*ct_, spec, &*tumor_);
  ASSERT_TRUE(image);
  const std::uint8_t* px = &image->pixels[(1 * 8 + 6) * 3];
  EXPECT_GT(px[0], px[1]);  // red tint over white
  const std::uint8_t* plain = &image->pixels[(1 * 8 + 5) * 3];
  EXPECT_EQ(plain[0], plain[1]);
}

TEST_F(RenderTest, PngRoundTrips) {
  auto image = RenderSlice(*ct_, SliceSpec{});
  ASSERT_TRUE(image);
  const std::string path = dir_.File("s.png");
  ASSERT_TRUE(WritePng(path, *image));
  auto back = ReadPng(path);
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(back->width, image->width);
  EXPECT_EQ(back->pixels, image->pixels);
}

TEST_F(RenderTest, ErrorsForBadIndexPlaneOverlayAndFiles) {
  SliceSpec spec;
  spec.index = 4;
  auto r = RenderSlice(*ct_, spec);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("outside [0, 3]"), std::string::npos);
  EXPECT_FALSE(ParseSlicePlane("oblique"));
  LabelVolume other(Geometry::Isotropic(3.0), {8, 6, 4}, "x");
  EXPECT_FALSE(RenderSlice(*ct_, SliceSpec{}, &other));
  spec = SliceSpec{};
  spec.window = HuWindow{10, 10};
  EXPECT_FALSE(RenderSlice(*ct_, spec));
  // Pixels are square at the finer spacing: 0.001 x 1000 mm voxels would make a 4 x 4,000,000
  // image (it ran out of memory).
  Geometry needle;
  needle.spacing = Eigen::Vector3d(0.001, 1000.0, 1.0);
  auto thin = Volume::FromDense(DenseFloat({4, 4, 4}, needle, 0.0f), "thin");
  ASSERT_TRUE(thin);
  auto tall = RenderSlice(*thin, SliceSpec{});
  ASSERT_FALSE(tall);
  EXPECT_NE(tall.error().message.find("4 x 4000000 pixels"), std::string::npos)
      << tall.error().message;
  ASSERT_TRUE(WriteFileAtomic(dir_.File("bad.png"), "not a png"));
  auto bad = ReadPng(dir_.File("bad.png"));
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ErrorCode::kCorruptData);
  EXPECT_FALSE(WritePng(dir_.File("missing/x.png"), *RenderSlice(*ct_, SliceSpec{})));
  // Only -1 means "the middle"; other negative indices are refused, not silently re-centred.
  spec = SliceSpec{};
  spec.index = -5;
  auto negative = RenderSlice(*ct_, spec);
  ASSERT_FALSE(negative);
  EXPECT_EQ(negative.error().code, ErrorCode::kInvalidArgument);
  // A name that promises another format is refused rather than written as PNG bytes.
  auto jpeg = WritePng(dir_.File("x.jpg"), *RenderSlice(*ct_, SliceSpec{}));
  ASSERT_FALSE(jpeg);
  EXPECT_NE(jpeg.error().message.find("*.png"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("x.jpg")));
  EXPECT_TRUE(WritePng(dir_.File("upper.PNG"), *RenderSlice(*ct_, SliceSpec{})));
}

}  // namespace
}  // namespace mewm
