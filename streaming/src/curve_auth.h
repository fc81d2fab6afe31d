// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// CURVE authentication: the server's key pair and a ZAP handler (RFC 27) on its own thread
// (mewm-zap) that allows the clients whose public key is on the allowlist and refuses everything
// else. Without key files it is off: sockets stay plain and nothing is refused.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <zmq.hpp>

#include "mewm/core/expected.h"

namespace mewm::streaming {

class CurveAuth {
 public:
  /// Reads the secret key and the allowlist (both files or neither; an unreadable or malformed
  /// file is an error, so the server fails closed) and binds the context's ZAP handler before
  /// any socket of the context binds. kInvalidArgument for one file without the other,
  /// kUnsupported for a libzmq without CURVE, kCorruptData / kIo for bad or unreadable files.
  static Expected<std::unique_ptr<CurveAuth>> Start(zmq::context_t& context,
                                                    const std::string& secret_file,
                                                    const std::string& allowlist_file);
  ~CurveAuth();
  CurveAuth(const CurveAuth&) = delete;
  CurveAuth& operator=(const CurveAuth&) = delete;

  /// Makes `socket` a CURVE server checked by the handler (no-op when off). Before it binds.
  void Secure(zmq::socket_t& socket) const;
  /// Stops the handler thread and closes its socket (idempotent).
  void Stop();

  bool enabled() const { return !secret_key_.empty(); }
  /// The public key clients must trust, z85 ("" when off).
  const std::string& public_key() const { return public_key_; }
  /// Connections refused.
  std::uint64_t failures() const { return failures_.load(std::memory_order_relaxed); }

 private:
  CurveAuth() = default;
  void Loop();

  std::string secret_key_, public_key_;
  std::set<std::string> allowlist_;  ///< raw 32-byte public keys; fixed before the thread starts
  zmq::socket_t zap_;                ///< used only by the handler thread once it runs
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> failures_{0};
};

}  // namespace mewm::streaming
