// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "mewm/core/file_util.h"
#include "mewm/core/sha256.h"
#include "mewm/torch/archive_check.h"
#include "mewm/torch/bridge.h"
#include "test_env.h"

namespace mewm::torch_bridge {
namespace {

struct TinyNetImpl : torch::nn::Module {
  explicit TinyNetImpl(int channels) {
    conv = register_module("conv", torch::nn::Conv3d(torch::nn::Conv3dOptions(1, channels, 3)));
    norm = register_module("norm", torch::nn::BatchNorm3d(channels));
  }
  torch::nn::Conv3d conv{nullptr};
  torch::nn::BatchNorm3d norm{nullptr};
};
TORCH_MODULE(TinyNet);

// One process per test case costs ~0.7 s of libtorch start-up, so cases are grouped.

TEST(TorchBridgeTest, DevicesResolveOrFailClearly) {
  auto cpu = ResolveDevice("cpu");
  ASSERT_TRUE(cpu);
  EXPECT_TRUE(cpu->is_cpu());
  EXPECT_FALSE(ResolveDevice("tpu"));
  auto cuda = ResolveDevice("cuda:0");
  if (torch::cuda::is_available()) {
    ASSERT_TRUE(cuda);
    EXPECT_TRUE(cuda->is_cuda());
    EXPECT_FALSE(ResolveDevice("cuda:64"));
  } else {
    ASSERT_FALSE(cuda);
    EXPECT_EQ(cuda.error().code, ErrorCode::kUnsupported);
    EXPECT_NE(cuda.error().message.find("no usable CUDA"), std::string::npos);
  }
}

TEST(TorchBridgeTest, ThreadsReachLibtorchAndOpenBlas) {
  ConfigureThreads(1);
  EXPECT_EQ(at::get_num_threads(), 1);
  const int blas_one = BlasThreads();
  ConfigureThreads(2);
  EXPECT_EQ(at::get_num_threads(), 2);
  const int blas_two = BlasThreads();
  ConfigureThreads(0);  // every hardware thread
  EXPECT_EQ(at::get_num_threads(), int(std::max(1u, std::thread::hardware_concurrency())));
  if (blas_one == 0) GTEST_SKIP() << "the BLAS loaded is not OpenBLAS: nothing more to set";
  // OpenBLAS's own pool follows, or a one-thread run spins on every core.
  EXPECT_EQ(blas_one, 1);
  EXPECT_EQ(blas_two, 2);
  EXPECT_EQ(BlasThreads(), int(std::max(1u, std::thread::hardware_concurrency())));
}

TEST(TorchBridgeTest, DenseTensorRoundTripKeepsLayoutAndGeometry) {
  Geometry g = Geometry::Isotropic(1.5, {1, 2, 3});
  DenseFloat d({4, 3, 2}, g);
  for (std::size_t n = 0; n < d.data.size(); ++n) d.data[n] = float(n);
  torch::Tensor t = ToTensor(d);
  ASSERT_EQ(t.sizes(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(t[1][2][3].item<float>(), d.at(3, 2, 1));
  auto back = FromTensor(t.unsqueeze(0).unsqueeze(0), g);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->data, d.data);
  EXPECT_EQ(back->dims, d.dims);

  DenseLabel labels({2, 2, 1}, g, 0);
  labels.at(1, 0, 0) = 2;
  labels.at(0, 1, 0) = 1;
  EXPECT_EQ(MaskToTensor(labels).sum().item<float>(), 2.0f);
  EXPECT_EQ(MaskToTensor(labels, 2).sum().item<float>(), 1.0f);

  EXPECT_FALSE(FromTensor(torch::zeros({2, 2}), g));
  auto nan = FromTensor(torch::full({2, 2, 2}, NAN), g);
  ASSERT_FALSE(nan);
  EXPECT_EQ(nan.error().code, ErrorCode::kCorruptData);
}

TEST(TorchBridgeTest, JsonDifferencesNameEveryKeyThatDiffers) {
  EXPECT_EQ(DescribeJsonDifferences(R"({"a": 1, "b": {"c": [1, 2]}})", "x has",
                                    R"({"b": {"c": [1, 2]}, "a": 1})", "y has"),
            "");
  EXPECT_EQ(DescribeJsonDifferences(R"({"a": 1, "b": {"c": 2, "d": "s"}, "e": true})", "x has",
                                    R"({"a": 1.5, "b": {"c": 2, "d": "t"}, "f": null})", "y has"),
            "\n  a: x has 1, y has 1.5"
            "\n  b.d: x has \"s\", y has \"t\""
            "\n  e: x has true, y has (none)"
            "\n  f: x has (none), y has null");
  // Whole values when either side is not an object, or not JSON at all; long ones shortened.
  EXPECT_EQ(DescribeJsonDifferences("[1]", "x has", "{", "y has"),
            "\n  value: x has [1], y has (none)");
  const std::string long_text = "\"" + std::string(100, 'z') + "\"";
  EXPECT_EQ(DescribeJsonDifferences(long_text, "x has", "1", "y has").size(),
            std::string("\n  value: x has , y has 1").size() + 80);
}

TEST(TorchBridgeTest, CheckpointRoundTripAndEveryRefusal) {
  testing::TempDir dir;
  const std::string path = dir.File("tiny.pt");
  const std::string config = R"({"channels": 4, "kind": "tiny"})";
  TinyNet saved(4);
  ASSERT_TRUE(SaveCheckpoint(path, *saved, {config, R"({"seed": 1})"}));

  TinyNet loaded(4);
  auto info = LoadCheckpoint(path, *loaded, R"({"kind": "tiny", "channels": 4})");
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(info->metadata_json, R"({"seed": 1})");
  EXPECT_TRUE(torch::equal(saved->conv->weight, loaded->conv->weight));
  EXPECT_TRUE(torch::equal(saved->norm->running_var, loaded->norm->running_var));

  // Another config: refused, naming the key, and the weights stay as they were.
  TinyNet other(4);
  const torch::Tensor before = other->conv->weight.clone();
  auto mismatch = LoadCheckpoint(path, *other, R"({"channels": 8, "kind": "tiny"})");
  ASSERT_FALSE(mismatch);
  EXPECT_EQ(mismatch.error().code, ErrorCode::kMismatch);
  EXPECT_NE(mismatch.error().message.find("channels: checkpoint has 4, model expects 8"),
            std::string::npos);
  EXPECT_TRUE(torch::equal(before, other->conv->weight));

  // Same config text but a differently shaped model: refused by shape.
  TinyNet wide(8);
  auto shape = LoadCheckpoint(path, *wide, config);
  ASSERT_FALSE(shape);
  EXPECT_NE(shape.error().message.find("shape"), std::string::npos);

  auto missing = LoadCheckpoint(dir.File("none.pt"), *loaded, config);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);

  ASSERT_TRUE(WriteFileAtomic(dir.File("bad.pt"), "garbage"));
  auto corrupt = ReadCheckpointInfo(dir.File("bad.pt"));
  ASSERT_FALSE(corrupt);
  EXPECT_EQ(corrupt.error().code, ErrorCode::kCorruptData);

  std::filesystem::copy_file(path, dir.File("cut.pt"));
  testing::Truncate(dir.File("cut.pt"), std::filesystem::file_size(path) / 2);
  EXPECT_FALSE(LoadCheckpoint(dir.File("cut.pt"), *loaded, config));

  EXPECT_FALSE(SaveCheckpoint(dir.File("x.pt"), *saved, {"{not json", "{}"}));

  // SaveCheckpoint records the file's SHA-256 beside it; one flipped bit is refused before torch
  // reads the file, naming the file and both hashes.
  ASSERT_TRUE(std::filesystem::exists(path + ".sha256"));
  auto bytes = ReadFile(path);
  ASSERT_TRUE(bytes);
  (*bytes)[bytes->size() / 2] = char((*bytes)[bytes->size() / 2] ^ 0x01);
  ASSERT_TRUE(WriteFileAtomic(path, *bytes));
  auto flipped = LoadCheckpoint(path, *loaded, config);
  ASSERT_FALSE(flipped);
  EXPECT_EQ(flipped.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(flipped.error().message.find(path + ".sha256' expects"), std::string::npos)
      << flipped.error().message;
  EXPECT_FALSE(ReadCheckpointInfo(path));
}

// A .pt file is a ZIP archive whose TorchScript source libtorch compiles on load, so a hostile one
// can run code. Archives are checked from their ZIP directory first: only the members and the
// attribute declarations OutputArchive writes pass. Each hostile archive below is written with
// libtorch's own writer from a real checkpoint's records, and its checksum rewritten, as an
// attacker would, so only the layout check stands in the way.
TEST(TorchBridgeTest, HostileArchivesAreRefusedBeforeLibtorchReadsThem) {
  testing::TempDir dir;
  const std::string path = dir.File("tiny.pt");
  const std::string config = R"({"channels": 4, "kind": "tiny"})";
  TinyNet saved(4);
  ASSERT_TRUE(SaveCheckpoint(path, *saved, {config, "{}"}));
  std::map<std::string, std::string> records;
  {
    caffe2::serialize::PyTorchStreamReader reader(path);
    for (const std::string& name : reader.getAllRecords()) {
      const auto [data, size] = reader.getRecord(name);
      records[name].assign(static_cast<const char*>(data.get()), size);
    }
  }
  ASSERT_EQ(records.count("code/__torch__.py"), 1u);
  const std::string code = records["code/__torch__.py"];
  int written = 0;
  // Writes `changed` with libtorch's writer (`deflated` members compressed) and loads it.
  const auto refusal = [&](const std::map<std::string, std::string>& changed,
                           const std::set<std::string>& deflated = {}) {
    const std::string hostile = dir.File("hostile" + std::to_string(++written) + ".pt");
    {
      caffe2::serialize::PyTorchStreamWriter writer(hostile);
      for (const auto& [name, bytes] : changed) {
        if (name == "version") continue;  // the writer adds its own
        writer.writeRecord(name, bytes.data(), bytes.size(), deflated.count(name) > 0);
      }
      writer.writeEndOfFile();
    }
    EXPECT_TRUE(WriteModelChecksum(hostile));
    TinyNet loaded(4);
    auto result = LoadCheckpoint(hostile, *loaded, config);
    EXPECT_FALSE(result);
    if (result) return std::string("loaded");
    EXPECT_EQ(result.error().code, ErrorCode::kCorruptData) << result.error().message;
    return result.error().message;
  };
  const auto with = [&](const std::string& name, const std::string& bytes) {
    auto changed = records;
    changed[name] = bytes;
    return changed;
  };
  // The records rewritten unchanged load, compressed code included: the check passes them.
  {
    caffe2::serialize::PyTorchStreamWriter writer(dir.File("same.pt"));
    for (const auto& [name, bytes] : records) {
      if (name != "version") {
        writer.writeRecord(name, bytes.data(), bytes.size(), name == "code/__torch__.py");
      }
    }
    writer.writeEndOfFile();
  }
  ASSERT_TRUE(WriteModelChecksum(dir.File("same.pt")));
  TinyNet loaded(4);
  auto same = LoadCheckpoint(dir.File("same.pt"), *loaded, config);
  ASSERT_TRUE(same) << same.error().message;

  // A method with a loop that never ends, as an audit's file had: refused at its line.
  const std::string loop = code + "  def __setstate__(self, state: int):\n    while True:\n";
  EXPECT_NE(
      refusal(with("code/__torch__.py", loop), {"code/__torch__.py"}).find("is TorchScript code"),
      std::string::npos);
  // An expression where a type belongs.
  std::string typed = code;
  typed.replace(typed.find("] = int"), 7, "] = int if os.system('x') else int");
  EXPECT_NE(refusal(with("code/__torch__.py", typed)).find("is TorchScript code"),
            std::string::npos);
  // A code member far larger than any checkpoint's, refused by its declared size.
  EXPECT_NE(
      refusal(with("code/__torch__.py", code + std::string(5u << 20, '\n'))).find("over the 4 MiB"),
      std::string::npos);
  // Members libtorch's writer never makes for a checkpoint.
  EXPECT_NE(refusal(with("code/evil.py", "import os\n")).find("unexpected member"),
            std::string::npos);
  // A tensor record compressed (a deflate bomb would need that).
  EXPECT_NE(refusal(records, {"data/0"}).find("is compressed"), std::string::npos);
  // A directory claiming 2 GiB: refused by its size, before anything is allocated for it.
  {
    auto bytes = ReadFile(path);
    ASSERT_TRUE(bytes);
    const std::size_t end = bytes->rfind(std::string("PK\x05\x06", 4));
    ASSERT_NE(end, std::string::npos);
    for (int i = 0; i < 4; ++i) (*bytes)[end + 12 + std::size_t(i)] = i == 3 ? '\x7f' : '\xff';
    ASSERT_TRUE(WriteFileAtomic(dir.File("wide.pt"), *bytes));
    ASSERT_TRUE(WriteModelChecksum(dir.File("wide.pt")));
    auto wide = ReadCheckpointInfo(dir.File("wide.pt"));
    ASSERT_FALSE(wide);
    EXPECT_NE(wide.error().message.find("a ZIP directory of 2147483647 bytes, over the 64 MiB"),
              std::string::npos)
        << wide.error().message;
  }
  // Cut before the ZIP directory's end: not taken for a ZIP at all.
  std::filesystem::copy_file(path, dir.File("cut.pt"));
  testing::Truncate(dir.File("cut.pt"), std::filesystem::file_size(path) - 30);
  ASSERT_TRUE(WriteModelChecksum(dir.File("cut.pt")));
  auto cut = ReadCheckpointInfo(dir.File("cut.pt"));
  ASSERT_FALSE(cut);
  EXPECT_NE(cut.error().message.find("not a ZIP archive"), std::string::npos)
      << cut.error().message;
}

/// A module with a submodule and a buffer, as a training state's network is.
struct NestedNetImpl : torch::nn::Module {
  NestedNetImpl() {
    inner = register_module("inner", torch::nn::Linear(3, 2));
    scale = register_buffer("scale", torch::ones({1}));
  }
  torch::nn::Linear inner{nullptr};
  torch::Tensor scale;
};
TORCH_MODULE(NestedNet);

TEST(TorchBridgeTest, TrainingStateArchivesPassAndTheirNestedCodeIsCheckedToo) {
  // A training state: a module with nested modules and an Adam optimizer after one step, saved
  // by libtorch's own torch::save. Their code members, one per nested class, declare only.
  testing::TempDir dir;
  NestedNet net;
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(1e-3));
  net->inner->forward(torch::ones({4, 3})).sum().backward();
  adam.step();
  torch::save(net, dir.File("net.pt"));
  torch::save(adam, dir.File("optim.pt"));
  for (const char* name : {"net.pt", "optim.pt"}) {
    auto checked = CheckArchiveLayout(dir.File(name));
    EXPECT_TRUE(checked) << name << ": " << checked.error().message;
  }
  // A method hidden in a nested class's code: refused, naming the member and the line.
  std::map<std::string, std::string> records;
  std::string nested;
  {
    caffe2::serialize::PyTorchStreamReader reader(dir.File("optim.pt"));
    for (const std::string& name : reader.getAllRecords()) {
      const auto [data, size] = reader.getRecord(name);
      records[name].assign(static_cast<const char*>(data.get()), size);
      if (nested.empty() && name.rfind("code/__torch__/___torch_mangle_", 0) == 0 &&
          name.size() > 3 && name.compare(name.size() - 3, 3, ".py") == 0) {
        nested = name;
      }
    }
  }
  ASSERT_FALSE(nested.empty()) << "no nested class in the optimizer's archive";
  records[nested] += "  def __setstate__(self, state: int):\n    while True:\n";
  {
    caffe2::serialize::PyTorchStreamWriter writer(dir.File("hostile.pt"));
    for (const auto& [name, bytes] : records) {
      if (name != "version") writer.writeRecord(name, bytes.data(), bytes.size());
    }
    writer.writeEndOfFile();
  }
  auto refused = CheckArchiveLayout(dir.File("hostile.pt"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kCorruptData);
  EXPECT_NE(refused.error().message.find(nested + "' line"), std::string::npos)
      << refused.error().message;
  EXPECT_NE(refused.error().message.find("is TorchScript code"), std::string::npos);
}

}  // namespace
}  // namespace mewm::torch_bridge
