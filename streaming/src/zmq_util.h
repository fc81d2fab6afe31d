// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Socket waits that survive signals: cppzmq throws on EINTR, which Ctrl-C and SIGTERM cause in
// any blocking call. Here an interrupted wait is "nothing yet", so the caller's loop gets to check
// its stop flag and shut down in order.
#pragma once

#include <cerrno>
#include <chrono>
#include <vector>
#include <zmq.hpp>
#include <zmq_addon.hpp>

namespace mewm::streaming {

/// Waits up to `timeout` for `socket` to have a message; false on timeout or a signal.
inline bool WaitReadable(zmq::socket_t& socket, std::chrono::milliseconds timeout) {
  zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
  try {
    return zmq::poll(&item, 1, timeout) > 0;
  } catch (const zmq::error_t& e) {
    if (e.num() == EINTR) return false;
    throw;
  }
}

/// Receives one whole multipart message if one is waiting; false otherwise (or on a signal).
inline bool TryReceive(zmq::socket_t& socket, std::vector<zmq::message_t>* frames) {
  frames->clear();
  try {
    return bool(
        zmq::recv_multipart(socket, std::back_inserter(*frames), zmq::recv_flags::dontwait));
  } catch (const zmq::error_t& e) {
    if (e.num() == EINTR) return false;
    throw;
  }
}

}  // namespace mewm::streaming
