// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/torch/bridge.h"

#include <caffe2/serialize/inline_container.h>
#include <dlfcn.h>
#include <malloc.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "mewm/core/file_util.h"
#include "mewm/core/log.h"
#include "mewm/core/sha256.h"
#include "mewm/torch/archive_check.h"

namespace mewm::torch_bridge {
namespace {

constexpr const char* kConfigKey = "mewm.config";
constexpr const char* kMetadataKey = "mewm.metadata";
constexpr const char* kFormatKey = "mewm.format";
constexpr std::int64_t kFormatVersion = 1;
constexpr const char* kTensorPrefix = "t.";

std::string ShortJson(const nlohmann::json& j) {
  std::string s = j.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

Expected<nlohmann::json> ParseJson(const std::string& text, const std::string& what) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return MakeError(ErrorCode::kParse, what + " is not valid JSON: " + e.what());
  }
}

/// DescribeJsonDifferences on parsed values; `path` prefixes the keys of nested objects.
void Differences(const nlohmann::json& a, const std::string& a_says, const nlohmann::json& b,
                 const std::string& b_says, const std::string& path, std::string& out) {
  if (a == b) return;
  if (!a.is_object() || !b.is_object()) {
    out += "\n  " + (path.empty() ? std::string("value") : path) + ": " + a_says + " " +
           (a.is_discarded() ? "(none)" : ShortJson(a)) + ", " + b_says + " " +
           (b.is_discarded() ? "(none)" : ShortJson(b));
    return;
  }
  const nlohmann::json none(nlohmann::json::value_t::discarded);
  for (const auto& [key, value] : a.items()) {
    Differences(value, a_says, b.contains(key) ? b[key] : none, b_says,
                path.empty() ? key : path + "." + key, out);
  }
  for (const auto& [key, value] : b.items()) {
    if (!a.contains(key)) {
      Differences(none, a_says, value, b_says, path.empty() ? key : path + "." + key, out);
    }
  }
}

// ---- The archive's layout, checked before libtorch reads it ----
//
// A .pt archive is a ZIP file, and libtorch compiles the TorchScript source it holds (code/) when
// it loads one: a hostile file can loop forever or crash the process there. A mewm checkpoint's
// code only declares the module's attributes, so the members and the code are checked first, from
// the ZIP's own directory, without libtorch.

constexpr std::uint64_t kMaxCodeBytes = 4u << 20;     // code/__torch__.py (2,000 tensors: ~150 KiB)
constexpr std::uint64_t kMaxPickleBytes = 16u << 20;  // data.pkl, constants.pkl, debug_pkl
constexpr std::size_t kMaxMembers = 100000;

std::uint32_t Le(const std::string& b, std::size_t at, int bytes) {
  std::uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | std::uint8_t(b[at + std::size_t(i)]);
  return v;
}

bool AllDigits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

/// The code member of a nested module's class, "code/__torch__/___torch_mangle_<n>.py" (a
/// training state's module and optimizer have one per submodule), with `suffix` after ".py".
bool NestedCodeMember(const std::string& name, const std::string& suffix = "") {
  const std::string prefix = "code/__torch__/___torch_mangle_", tail = ".py" + suffix;
  return name.size() > prefix.size() + tail.size() && name.rfind(prefix, 0) == 0 &&
         name.compare(name.size() - tail.size(), tail.size(), tail) == 0 &&
         AllDigits(name.substr(prefix.size(), name.size() - prefix.size() - tail.size()));
}

/// A member holding TorchScript source, which libtorch compiles on load.
bool CodeMember(const std::string& name) {
  return name == "code/__torch__.py" || NestedCodeMember(name);
}

/// The members an archive written by libtorch's OutputArchive holds.
bool KnownMember(const std::string& name) {
  static const std::set<std::string> fixed = {"data.pkl",          "constants.pkl",
                                              "version",           "byteorder",
                                              ".data/version",     ".data/serialization_id",
                                              "code/__torch__.py", "code/__torch__.py.debug_pkl"};
  return fixed.count(name) > 0 || (name.rfind("data/", 0) == 0 && AllDigits(name.substr(5))) ||
         NestedCodeMember(name) || NestedCodeMember(name, ".debug_pkl");
}

/// A type an attribute declaration may name: a value type, or a nested module's class.
bool DeclaredType(const std::string& type) {
  static const std::set<std::string> values = {"Tensor", "int", "float",
                                               "bool",   "str", "Tuple[float, float]"};
  const std::string prefix = "__torch__.___torch_mangle_", suffix = ".Module";
  const bool nested =
      type.size() > prefix.size() + suffix.size() && type.rfind(prefix, 0) == 0 &&
      type.compare(type.size() - suffix.size(), suffix.size(), suffix) == 0 &&
      AllDigits(type.substr(prefix.size(), type.size() - prefix.size() - suffix.size()));
  return values.count(type) > 0 || nested;
}

/// A line of a code member as OutputArchive writes it: the class, and declarations of its
/// attributes by name and type ("__annotations__["w"] = Tensor", or "  w : Tensor" in a training
/// state). Anything else (a def, an import, an expression) is code.
bool DeclarationLine(const std::string& line) {
  // Parsed by hand: std::regex recurses per character and overflows the stack on a long line.
  const auto quoted = [&](std::size_t& at) {  // "name", no quote or backslash inside
    if (at >= line.size() || line[at] != '"') return false;
    const std::size_t close = line.find_first_of("\"\\", at + 1);
    if (close == std::string::npos || line[close] != '"') return false;
    at = close + 1;
    return true;
  };
  const auto starts = [&](const std::string& prefix) { return line.rfind(prefix, 0) == 0; };
  if (line.empty() || line == "class Module(Module):" || line == "  __annotations__ = []") {
    return true;
  }
  for (const std::string prefix : {"  __parameters__ = [", "  __buffers__ = ["}) {
    if (!starts(prefix)) continue;
    std::size_t at = prefix.size();
    while (at < line.size() && line[at] == '"') {
      if (!quoted(at) || line.compare(at, 2, ", ") != 0) return false;
      at += 2;
    }
    return at + 1 == line.size() && line[at] == ']';
  }
  std::size_t at = std::string("  __annotations__[").size();
  if (starts("  __annotations__[")) {
    return quoted(at) && line.compare(at, 4, "] = ") == 0 && DeclaredType(line.substr(at + 4));
  }
  // "  name : Type": an identifier, then the type.
  at = 2;
  if (!starts("  ") || at >= line.size() ||
      !(std::isalpha(static_cast<unsigned char>(line[at])) || line[at] == '_')) {
    return false;
  }
  while (at < line.size() &&
         (std::isalnum(static_cast<unsigned char>(line[at])) || line[at] == '_')) {
    ++at;
  }
  return line.compare(at, 3, " : ") == 0 && DeclaredType(line.substr(at + 3));
}

}  // namespace

Status CheckArchiveLayout(const std::string& path) {
  const auto corrupt = [&](const std::string& what) {
    return MakeError(ErrorCode::kCorruptData, "checkpoint '" + path + "': " + what +
                                                  " (a mewm checkpoint holds tensors and the "
                                                  "declarations libtorch writes, nothing else)");
  };
  std::error_code ec;
  // Before opening it: a FIFO in its place would block the open for ever.
  if (!std::filesystem::is_regular_file(path, ec)) {
    return MakeError(ErrorCode::kInvalidArgument, "'" + path + "' is not a regular file");
  }
  std::ifstream in(path, std::ios::binary);
  const std::uint64_t file_size = std::filesystem::file_size(path, ec);
  if (!in || ec) return MakeError(ErrorCode::kIo, "cannot read checkpoint '" + path + "'");
  const auto read = [&](std::uint64_t at, std::uint64_t n, std::string& out) {
    if (at > file_size || n > file_size - at) return false;
    out.assign(std::size_t(n), '\0');
    in.seekg(std::streamoff(at));
    return bool(in.read(out.data(), std::streamsize(n)));
  };
  // The end-of-directory record: the last 22 bytes, or earlier behind a comment.
  std::string tail;
  const std::uint64_t tail_size = std::min<std::uint64_t>(file_size, 22 + 65535);
  if (file_size < 22 || !read(file_size - tail_size, tail_size, tail)) {
    return corrupt("not a ZIP archive (too short)");
  }
  std::size_t eocd = std::string::npos;
  for (std::size_t at = tail.size() - 22 + 1; at-- > 0;) {
    if (Le(tail, at, 4) == 0x06054b50u) {
      eocd = at;
      break;
    }
  }
  if (eocd == std::string::npos) return corrupt("not a ZIP archive (no central directory)");
  const std::uint32_t count = Le(tail, eocd + 10, 2), dir_size = Le(tail, eocd + 12, 4),
                      dir_offset = Le(tail, eocd + 16, 4);
  if (count == 0xffffu || dir_offset == 0xffffffffu || dir_size == 0xffffffffu) {
    return corrupt("a ZIP64 archive (over 4 GiB or 65,535 members), which mewm does not write");
  }
  // 100,000 members with names of a few dozen bytes: a few MiB. Bounded before it is read, so a
  // file that claims a directory of gigabytes is refused without allocating it.
  constexpr std::uint32_t kMaxDirectoryBytes = 64u << 20;
  if (dir_size > kMaxDirectoryBytes) {
    return corrupt("a ZIP directory of " + std::to_string(dir_size) + " bytes, over the 64 MiB " +
                   "a checkpoint needs");
  }
  std::string dir;
  if (!read(dir_offset, dir_size, dir)) return corrupt("its ZIP directory lies outside the file");
  std::set<std::string> seen;  // member names, relative to the archive's top folder
  std::string top;
  if (count > kMaxMembers) return corrupt("more than 100,000 members");
  for (std::size_t at = 0, n = 0; n < count; ++n) {
    if (at + 46 > dir.size() || Le(dir, at, 4) != 0x02014b50u) {
      return corrupt("its ZIP directory is damaged");
    }
    const std::size_t name_len = Le(dir, at + 28, 2), extra = Le(dir, at + 30, 2),
                      comment = Le(dir, at + 32, 2);
    if (at + 46 + name_len > dir.size()) return corrupt("its ZIP directory is damaged");
    const std::string full = dir.substr(at + 46, name_len);
    const std::size_t slash = full.find('/');
    if (slash == std::string::npos || slash == 0)
      return corrupt("member '" + full + "' has no folder");
    if (top.empty()) top = full.substr(0, slash + 1);
    if (full.compare(0, top.size(), top) != 0) {
      return corrupt("members in two folders ('" + top + "', '" + full + "')");
    }
    const std::string name = full.substr(top.size());
    const std::uint32_t method = Le(dir, at + 10, 2), size = Le(dir, at + 24, 4);
    if (!KnownMember(name)) return corrupt("unexpected member '" + full + "'");
    if (!seen.insert(name).second) return corrupt("member '" + full + "' appears twice");
    const bool code = CodeMember(name);
    const bool pickle = name.size() > 4 && name.substr(name.size() - 3) == "pkl";
    // libtorch stores tensors as they are, and may deflate the small members.
    const bool stored = method == 0 && size == Le(dir, at + 20, 4);
    if (!stored && !((code || pickle) && method == 8)) {
      return corrupt("member '" + full + "' is compressed where libtorch stores it as it is");
    }
    if ((code && size > kMaxCodeBytes) || (pickle && size > kMaxPickleBytes)) {
      return corrupt("member '" + full + "' has " + std::to_string(size) + " bytes, over the " +
                     std::to_string((code ? kMaxCodeBytes : kMaxPickleBytes) >> 20) +
                     " MiB a checkpoint needs");
    }
    at += 46 + name_len + extra + comment;
  }
  if (!seen.count("data.pkl")) return corrupt("no data.pkl");
  // Every code member, each bounded above, so the reader (which extracts into a buffer of the
  // declared size, and reads nothing but the directory and the version on opening) cannot be made
  // to inflate more.
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  for (const std::string& name : seen) {
    if (!CodeMember(name)) continue;
    std::string source;
    try {
      if (!reader) reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
      const auto [data, size] = reader->getRecord(name);
      source.assign(static_cast<const char*>(data.get()), size);
    } catch (const std::exception& e) {
      return corrupt("'" + top + name + "' cannot be read: " + ExceptionCause(e));
    }
    std::size_t line_no = 0;
    for (std::size_t at = 0; at <= source.size();) {
      const std::size_t end = std::min(source.find('\n', at), source.size());
      ++line_no;
      if (!DeclarationLine(source.substr(at, end - at))) {
        return corrupt("'" + top + name + "' line " + std::to_string(line_no) +
                       " is TorchScript code, not a declaration");
      }
      at = end + 1;
    }
  }
  return {};
}

namespace {

Expected<torch::serialize::InputArchive> OpenArchive(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return MakeError(ErrorCode::kNotFound, "checkpoint '" + path + "' does not exist");
  }
  MEWM_RETURN_IF_ERROR(CheckArchiveLayout(path));
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path, torch::Device(torch::kCPU));
  } catch (const std::exception& e) {
    return MakeError(
        ErrorCode::kCorruptData,
        "checkpoint '" + path + "' is not a readable torch archive: " + ExceptionCause(e));
  }
  return archive;
}

Expected<CheckpointInfo> ReadInfo(torch::serialize::InputArchive& archive,
                                  const std::string& path) {
  c10::IValue format, config, metadata;
  if (!archive.try_read(kFormatKey, format) || !format.isInt() ||
      !archive.try_read(kConfigKey, config) || !config.isString() ||
      !archive.try_read(kMetadataKey, metadata) || !metadata.isString()) {
    return MakeError(
        ErrorCode::kCorruptData,
        "'" + path + "' is a torch archive but not a mewm checkpoint (no mewm.config)");
  }
  if (format.toInt() != kFormatVersion) {
    return MakeError(ErrorCode::kUnsupported, "checkpoint '" + path + "' has format version " +
                                                  std::to_string(format.toInt()) + ", expected " +
                                                  std::to_string(kFormatVersion));
  }
  return CheckpointInfo{config.toStringRef(), metadata.toStringRef()};
}

/// Every parameter and buffer, by dotted name.
std::map<std::string, torch::Tensor> NamedState(const torch::nn::Module& module) {
  std::map<std::string, torch::Tensor> state;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    state[item.key()] = item.value();
  for (const auto& item : module.named_buffers(/*recurse=*/true)) state[item.key()] = item.value();
  return state;
}

std::string ShapeString(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? "," : "") + std::to_string(t.size(d));
  return s + "]";
}

}  // namespace

Expected<torch::Device> ResolveDevice(const DeviceSpec& spec) {
  if (spec.kind == DeviceSpec::Kind::kCpu) return torch::Device(torch::kCPU);
  if (!torch::cuda::is_available()) {
    return MakeError(
        ErrorCode::kUnsupported,
        "device '" + spec.ToString() +
            "' requested, but this libtorch build has no usable CUDA (rebuild with "
            "MEWM_WITH_CUDA=ON and a CUDA libtorch; see docs/BUILDING.md), or use cpu");
  }
  const auto count = static_cast<int>(torch::cuda::device_count());
  if (spec.index >= count) {
    return MakeError(ErrorCode::kInvalidArgument, "device '" + spec.ToString() +
                                                      "' does not exist (" + std::to_string(count) +
                                                      " CUDA devices)");
  }
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(spec.index));
}

Expected<torch::Device> ResolveDevice(const std::string& text) {
  MEWM_TRY(const DeviceSpec spec, ParseDevice(text));
  return ResolveDevice(spec);
}

void ConfigureThreads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  // libtorch's setting does not reach OpenBLAS (the libblas.so.3 that the setup installs), whose
  // own pool is sized to every core when it loads and whose idle threads spin: a run told to use
  // one thread busy-waited on the other core (a 2-step training: 112 s of CPU instead of 78).
  // Looked up at run time, so another BLAS, or none, is left as it is.
  using SetBlasThreads = void (*)(int);
  if (void* set = dlsym(RTLD_DEFAULT, "openblas_set_num_threads")) {
    reinterpret_cast<SetBlasThreads>(set)(threads);
  }
}

int BlasThreads() {
  using GetBlasThreads = int (*)();
  void* get = dlsym(RTLD_DEFAULT, "openblas_get_num_threads");
  return get != nullptr ? reinterpret_cast<GetBlasThreads>(get)() : 0;
}

void KeepLargeBuffersInHeap() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum on 64-bit
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
}

torch::Tensor ToTensor(const DenseFloat& dense, const torch::Device& device) {
  auto cpu = torch::from_blob(const_cast<float*>(dense.data.data()),
                              {dense.dims[2], dense.dims[1], dense.dims[0]}, torch::kFloat32);
  return cpu.to(device, /*non_blocking=*/false, /*copy=*/true);
}

torch::Tensor MaskToTensor(const DenseLabel& labels, std::int32_t label,
                           const torch::Device& device) {
  torch::Tensor mask =
      torch::empty({labels.dims[2], labels.dims[1], labels.dims[0]}, torch::kFloat32);
  float* out = mask.data_ptr<float>();
  for (std::size_t n = 0; n < labels.data.size(); ++n) {
    const std::int32_t v = labels.data[n];
    out[n] = (label == 0 ? v != 0 : v == label) ? 1.0f : 0.0f;
  }
  return mask.to(device);
}

Expected<DenseFloat> FromTensor(const torch::Tensor& tensor, const Geometry& geometry) {
  torch::Tensor t = tensor.detach();
  while (t.dim() > 3 && t.size(0) == 1) t = t.squeeze(0);
  if (t.dim() != 3) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "expected a [D, H, W] tensor, got shape " + ShapeString(tensor));
  }
  t = t.to(torch::kCPU, torch::kFloat32).contiguous();
  if (!torch::isfinite(t).all().item<bool>()) {
    return MakeError(ErrorCode::kCorruptData, "tensor has NaN or Inf values");
  }
  DenseFloat dense({t.size(2), t.size(1), t.size(0)}, geometry);
  std::memcpy(dense.data.data(), t.data_ptr<float>(), dense.data.size() * sizeof(float));
  return dense;
}

Status SaveCheckpoint(const std::string& path, const torch::nn::Module& module,
                      const CheckpointInfo& info) {
  MEWM_RETURN_IF_ERROR(ParseJson(info.config_json, "checkpoint config"));
  MEWM_RETURN_IF_ERROR(ParseJson(info.metadata_json, "checkpoint metadata"));
  MEWM_RETURN_IF_ERROR(WriteAtomically(path, [&](const std::string& temp) -> Status {
    try {
      torch::serialize::OutputArchive archive;
      archive.write(kFormatKey, c10::IValue(kFormatVersion));
      archive.write(kConfigKey, c10::IValue(info.config_json));
      archive.write(kMetadataKey, c10::IValue(info.metadata_json));
      for (const auto& [name, tensor] : NamedState(module)) {
        archive.write(kTensorPrefix + name, tensor.detach().to(torch::kCPU));
      }
      archive.save_to(temp);
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kIo,
                       "cannot write checkpoint '" + path + "': " + ExceptionCause(e));
    }
    return {};
  }));
  return WriteModelChecksum(path);
}

Expected<CheckpointInfo> ReadCheckpointInfo(const std::string& path) {
  // The checksum is checked before torch sees the file: a damaged checkpoint may still parse.
  MEWM_RETURN_IF_ERROR(VerifyModelChecksum(path));
  MEWM_TRY(auto archive, OpenArchive(path));
  return ReadInfo(archive, path);
}

std::string DescribeJsonDifferences(const std::string& a_json, const std::string& a_says,
                                    const std::string& b_json, const std::string& b_says) {
  std::string out;
  Differences(nlohmann::json::parse(a_json, nullptr, false), a_says,
              nlohmann::json::parse(b_json, nullptr, false), b_says, "", out);
  return out;
}

Expected<CheckpointInfo> LoadCheckpoint(const std::string& path, torch::nn::Module& module,
                                        const std::string& expected_config_json) {
  MEWM_RETURN_IF_ERROR(VerifyModelChecksum(path));
  MEWM_TRY(auto archive, OpenArchive(path));
  MEWM_TRY(CheckpointInfo info, ReadInfo(archive, path));
  MEWM_TRY(const nlohmann::json stored, ParseJson(info.config_json, "config in '" + path + "'"));
  MEWM_TRY(const nlohmann::json expected, ParseJson(expected_config_json, "expected config"));
  if (stored != expected) {
    std::string diff;
    Differences(stored, "checkpoint has", expected, "model expects", "", diff);
    return MakeError(ErrorCode::kMismatch,
                     "checkpoint '" + path + "' was saved for another model config:" + diff);
  }
  // Read and check every tensor before touching the module, so a failure changes nothing.
  auto state = NamedState(module);
  std::map<std::string, torch::Tensor> loaded;
  for (const auto& [name, tensor] : state) {
    torch::Tensor value;
    if (!archive.try_read(kTensorPrefix + name, value)) {
      return MakeError(ErrorCode::kMismatch,
                       "checkpoint '" + path + "' has no tensor '" + name + "'");
    }
    if (value.sizes() != tensor.sizes()) {
      return MakeError(ErrorCode::kMismatch, "checkpoint '" + path + "': tensor '" + name +
                                                 "' has shape " + ShapeString(value) +
                                                 ", the model expects " + ShapeString(tensor));
    }
    loaded[name] = value;
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : state) tensor.copy_(loaded[name]);
  return info;
}

}  // namespace mewm::torch_bridge
