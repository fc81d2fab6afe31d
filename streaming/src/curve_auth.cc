// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "curve_auth.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>
#include <zmq_addon.hpp>

#include "mewm/core/file_util.h"
#include "mewm/streaming/server.h"
#include "zmq_util.h"

namespace mewm::streaming {
namespace {

/// The z85 keys of a key file or an allowlist: one per line; blank lines and `#` comments are
/// skipped; any other line must be exactly one 40-character z85 key (kCorruptData naming it).
Expected<std::vector<std::string>> ReadKeyLines(const std::string& path) {
  MEWM_TRY(const std::string text, ReadFile(path));
  std::vector<std::string> keys;
  std::size_t start = 0;
  for (int number = 1; start < text.size(); ++number) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    line = line.substr(first, line.find_last_not_of(" \t\r") + 1 - first);
    std::uint8_t binary[32];
    if (line.size() != 40 || zmq_z85_decode(binary, line.c_str()) == nullptr) {
      return MakeError(ErrorCode::kCorruptData,
                       path + ":" + std::to_string(number) + ": not a 40-character z85 key");
    }
    keys.push_back(std::move(line));
  }
  return keys;
}

/// The allowlist's public keys, as the 32 raw bytes the ZAP handler sees.
Expected<std::set<std::string>> ReadAllowlist(const std::string& path) {
  MEWM_TRY(const std::vector<std::string> lines, ReadKeyLines(path));
  std::set<std::string> keys;
  for (const std::string& key : lines) {
    std::uint8_t binary[32];
    zmq_z85_decode(binary, key.c_str());
    keys.insert(std::string(reinterpret_cast<char*>(binary), 32));
  }
  return keys;
}

}  // namespace

Expected<std::unique_ptr<CurveAuth>> CurveAuth::Start(zmq::context_t& context,
                                                      const std::string& secret_file,
                                                      const std::string& allowlist_file) {
  std::unique_ptr<CurveAuth> auth(new CurveAuth());
  if (secret_file.empty() != allowlist_file.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "CURVE needs both a secret key file and an allowlist file");
  }
  if (secret_file.empty()) return auth;
  if (zmq_has("curve") == 0) {
    return MakeError(ErrorCode::kUnsupported, "this libzmq was built without CURVE");
  }
  MEWM_TRY(auth->secret_key_, ReadCurveKey(secret_file));
  MEWM_TRY(auth->allowlist_, ReadAllowlist(allowlist_file));
  char public_z85[41];
  if (zmq_curve_public(public_z85, auth->secret_key_.c_str()) != 0) {
    return MakeError(ErrorCode::kCorruptData, "'" + secret_file + "' is not a CURVE secret key");
  }
  auth->public_key_ = public_z85;
  // The handler is bound before any socket so no connection is ever accepted without it.
  auth->zap_ = zmq::socket_t(context, zmq::socket_type::rep);
  auth->zap_.bind("inproc://zeromq.zap.01");
  CurveAuth* raw = auth.get();
  auth->thread_ = std::thread([raw] {
    ::pthread_setname_np(::pthread_self(), "mewm-zap");
    raw->Loop();
  });
  return auth;
}

CurveAuth::~CurveAuth() { Stop(); }

void CurveAuth::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  zap_.close();
}

void CurveAuth::Secure(zmq::socket_t& socket) const {
  if (!enabled()) return;
  socket.set(zmq::sockopt::curve_server, 1);
  socket.set(zmq::sockopt::curve_secretkey, secret_key_);
  socket.set(zmq::sockopt::zap_domain, "mewm");
}

void CurveAuth::Loop() {
  while (!stop_) {
    std::vector<zmq::message_t> frames;
    if (!WaitReadable(zap_, std::chrono::milliseconds(50)) || !TryReceive(zap_, &frames)) continue;
    // version, request id, domain, address, identity, mechanism, credentials...
    const std::string request_id = frames.size() > 1 ? frames[1].to_string() : "";
    const bool allowed = frames.size() >= 7 && frames[0].to_string() == "1.0" &&
                         frames[5].to_string() == "CURVE" && frames[6].size() == 32 &&
                         allowlist_.count(frames[6].to_string()) > 0;
    if (!allowed) failures_.fetch_add(1, std::memory_order_relaxed);
    std::array<zmq::const_buffer, 6> reply = {
        zmq::str_buffer("1.0"),
        zmq::buffer(request_id),
        allowed ? zmq::str_buffer("200") : zmq::str_buffer("400"),
        allowed ? zmq::str_buffer("OK") : zmq::str_buffer("key not on the allowlist"),
        zmq::str_buffer(""),
        zmq::str_buffer("")};
    (void)zmq::send_multipart(zap_, reply);
  }
}

// --- key files (declared in mewm/streaming/server.h) --------------------------------------------

Expected<CurveKeyPair> GenerateCurveKeyPair() {
  char public_key[41], secret_key[41];
  if (zmq_curve_keypair(public_key, secret_key) != 0) {
    return MakeError(ErrorCode::kUnsupported, "this libzmq cannot make CURVE keys");
  }
  return CurveKeyPair{public_key, secret_key};
}

namespace {

/// Creates `path` with exactly `mode` from the start (O_CREAT | O_EXCL: never another file, never
/// looser permissions for a moment) and writes `text` to it. EEXIST is kInvalidArgument; a file
/// system that cannot keep the mode (fstat disagrees) is kIo and the file is removed.
Status WriteNewFile(const std::string& path, const std::string& text, mode_t mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    if (errno == EEXIST) return MakeError(ErrorCode::kInvalidArgument, "'" + path + "' exists");
    return MakeError(ErrorCode::kIo, "cannot create '" + path + "': " + std::strerror(errno));
  }
  const auto fail = [&](const std::string& what) {
    const std::string reason = std::strerror(errno);
    ::close(fd);
    ::unlink(path.c_str());
    return MakeError(ErrorCode::kIo, "cannot " + what + " '" + path + "': " + reason);
  };
  // The umask can only narrow `mode`; set it exactly, then check the file system kept it.
  struct stat st {};
  if (::fchmod(fd, mode) != 0) return fail("set the mode of");
  if (::fstat(fd, &st) != 0) return fail("check");
  if ((st.st_mode & 07777) != mode) {
    errno = EPERM;
    return fail("keep mode " + std::to_string(mode >> 6) + std::to_string((mode >> 3) & 7) +
                std::to_string(mode & 7) + " on");
  }
  for (std::size_t written = 0; written < text.size();) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail("write");
    written += std::size_t(n);
  }
  if (::fsync(fd) != 0) return fail("sync");
  if (::close(fd) != 0) {
    ::unlink(path.c_str());
    return MakeError(ErrorCode::kIo, "cannot write '" + path + "': " + std::strerror(errno));
  }
  return {};
}

/// WriteNewFile, or with `overwrite` a new temporary file renamed over `path`.
Status WriteKeyFile(const std::string& path, const std::string& text, mode_t mode, bool overwrite) {
  if (!overwrite) return WriteNewFile(path, text, mode);
  const std::string temp = path + ".tmp-" + std::to_string(::getpid());
  ::unlink(temp.c_str());  // one this process left behind
  MEWM_RETURN_IF_ERROR(WriteNewFile(temp, text, mode));
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    ::unlink(temp.c_str());
    return MakeError(ErrorCode::kIo, "cannot replace '" + path + "': " + reason);
  }
  return {};
}

}  // namespace

Status WriteCurveKeyPair(const CurveKeyPair& keys, const std::string& base, bool overwrite) {
  const std::string secret_path = base + ".key", public_path = base + ".pub";
  if (!overwrite) {
    for (const std::string& path : {secret_path, public_path}) {
      struct stat st {};
      if (::lstat(path.c_str(), &st) == 0) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "'" + path +
                             "' already exists: choose another BASE, or replace the key pair "
                             "with --force (then give the new public key to every peer)");
      }
    }
  }
  MEWM_RETURN_IF_ERROR(
      WriteKeyFile(secret_path, "# mewm CURVE secret key: keep private\n" + keys.secret_key + "\n",
                   0600, overwrite));
  if (Status written = WriteKeyFile(
          public_path, "# mewm CURVE public key\n" + keys.public_key + "\n", 0644, overwrite);
      !written) {
    if (!overwrite) ::unlink(secret_path.c_str());  // the half of a pair this call created
    return written;
  }
  return {};
}

Expected<std::string> ReadCurveKey(const std::string& path) {
  MEWM_TRY(const std::vector<std::string> keys, ReadKeyLines(path));
  if (keys.empty()) return MakeError(ErrorCode::kCorruptData, "'" + path + "' holds no CURVE key");
  return keys.front();
}

}  // namespace mewm::streaming
