// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/sha256.h"

#include <openssl/evp.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "mewm/core/file_util.h"

namespace mewm {
namespace {

struct MdContextFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

/// The expected hash in a checksum file: its first 64 characters, which must be hex.
Expected<std::string> ReadExpected(const std::string& checksum_path) {
  // Found beside the model, not named by the user: a regular file only (a FIFO there blocked every
  // load), and a checksum line is short.
  MEWM_TRY(const std::string text, ReadRegularFile(checksum_path, 4096));
  std::string hex = text.substr(0, 64);
  bool ok = hex.size() == 64 && (text.size() == 64 || std::isspace((unsigned char)text[64]));
  for (char& c : hex) {
    ok = ok && std::isxdigit((unsigned char)c);
    c = char(std::tolower((unsigned char)c));
  }
  if (!ok) {
    return MakeError(ErrorCode::kCorruptData,
                     "'" + checksum_path +
                         "' is not a SHA-256 checksum file (expected a line '<64 hex digits>  "
                         "<file name>')");
  }
  return hex;
}

Expected<ModelChecksum> Compare(const std::string& model_path, std::string actual) {
  ModelChecksum out{std::move(actual), false};
  const std::string checksum_path = ChecksumPath(model_path);
  std::error_code ec;
  // A link that leads nowhere is a checksum file gone wrong, not an absent one: ReadExpected
  // refuses it rather than the check being skipped.
  if (!std::filesystem::exists(std::filesystem::symlink_status(checksum_path, ec))) return out;
  MEWM_TRY(const std::string expected, ReadExpected(checksum_path));
  if (expected != out.sha256) {
    return MakeError(ErrorCode::kCorruptData,
                     "model file '" + model_path + "' is damaged or was replaced: its SHA-256 is " +
                         out.sha256 + ", '" + checksum_path + "' expects " + expected +
                         ". Restore the file (git checkout, or copy it again), or retrain it");
  }
  out.recorded = true;
  return out;
}

}  // namespace

std::string Sha256(std::string_view bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &size, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<const char*>(digest), size);
}

std::string ToHex(std::string_view bytes) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

Expected<std::string> Sha256File(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return MakeError(ErrorCode::kNotFound, "file '" + path + "' does not exist");
  }
  if (!std::filesystem::is_regular_file(path, ec)) {
    return MakeError(ErrorCode::kIo, "'" + path + "' is not a regular file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return MakeError(ErrorCode::kIo,
                     "cannot read '" + path + "': " + std::string(std::strerror(errno)));
  }
  std::unique_ptr<EVP_MD_CTX, MdContextFree> ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return MakeError(ErrorCode::kInternal, "OpenSSL cannot start a SHA-256");
  }
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), std::streamsize(buffer.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buffer.data(), std::size_t(in.gcount()));
  }
  if (in.bad()) return MakeError(ErrorCode::kIo, "error while reading '" + path + "'");
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &size);
  return ToHex(std::string_view(reinterpret_cast<const char*>(digest), size));
}

std::string ChecksumPath(const std::string& model_path) { return model_path + ".sha256"; }

Expected<ModelChecksum> VerifyModelChecksum(const std::string& model_path) {
  MEWM_TRY(std::string actual, Sha256File(model_path));
  return Compare(model_path, std::move(actual));
}

Expected<ModelChecksum> VerifyModelChecksum(const std::string& model_path, std::string_view bytes) {
  return Compare(model_path, ToHex(Sha256(bytes)));
}

Status WriteModelChecksum(const std::string& model_path) {
  MEWM_TRY(const std::string hex, Sha256File(model_path));
  const std::string name = std::filesystem::path(model_path).filename().string();
  return WriteFileAtomic(ChecksumPath(model_path), hex + "  " + name + "\n");
}

}  // namespace mewm
