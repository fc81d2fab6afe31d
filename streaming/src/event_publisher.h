// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The event PUB socket and the server's own event sequence, behind one lock: one sender at a time
// (the log thread sends each batch under one lock; the control loop sends heartbeats and
// `server closing`). A send never blocks: a subscriber at its high-water mark misses the event
// and the drop is counted.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <variant>
#include <zmq.hpp>

#include "mewm/core/mutex_guarded.h"
#include "mewm/streaming/protocol.h"

namespace mewm::streaming {

class EventPublisher {
 private:
  struct Socket {
    zmq::socket_t socket;
    std::uint64_t server_seq = 0;
  };

 public:
  /// Takes a bound PUB socket with ZMQ_XPUB_NODROP set (a full subscriber refuses the send, so
  /// the drop can be counted).
  explicit EventPublisher(zmq::socket_t socket);
  EventPublisher(const EventPublisher&) = delete;
  EventPublisher& operator=(const EventPublisher&) = delete;

  /// The socket held for a batch of sends.
  class Batch {
   public:
    /// Sends [topic, envelope, (volume)]; a volume is moved into the frame (zero-copy).
    void Send(const std::string& topic, const std::string& envelope, std::string* volume);

   private:
    friend class EventPublisher;
    Batch(EventPublisher& publisher, MutexGuarded<Socket>::Locked<Socket> socket)
        : publisher_(publisher), socket_(std::move(socket)) {}
    EventPublisher& publisher_;
    MutexGuarded<Socket>::Locked<Socket> socket_;
  };
  Batch Lock() { return Batch(*this, socket_.Lock()); }

  /// One message, under the lock.
  void Send(const std::string& topic, const std::string& envelope, std::string* volume);
  /// A server event with the next server seq.
  void SendServerEvent(std::variant<Heartbeat, ServerClosing> body);
  /// Closes the socket (linger as set on it). Nothing may be sent after.
  void Close();

  std::uint64_t published() const { return published_.load(std::memory_order_relaxed); }
  std::uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  std::uint64_t bytes_published() const { return bytes_.load(std::memory_order_relaxed); }
  /// SteadyNs() of the last send (heartbeats are due after a quiet interval).
  std::int64_t last_publish_ns() const { return last_publish_ns_.load(std::memory_order_relaxed); }

 private:
  void SendLocked(Socket& socket, const std::string& topic, const std::string& envelope,
                  std::string* volume);

  MutexGuarded<Socket> socket_;
  std::atomic<std::uint64_t> published_{0}, dropped_{0}, bytes_{0};
  std::atomic<std::int64_t> last_publish_ns_;
};

}  // namespace mewm::streaming
