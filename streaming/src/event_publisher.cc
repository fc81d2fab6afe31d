// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "event_publisher.h"

#include <utility>

#include "run_record.h"

namespace mewm::streaming {

EventPublisher::EventPublisher(zmq::socket_t socket)
    : socket_(Socket{std::move(socket), 0}), last_publish_ns_(SteadyNs()) {}

void EventPublisher::Batch::Send(const std::string& topic, const std::string& envelope,
                                 std::string* volume) {
  publisher_.SendLocked(*socket_, topic, envelope, volume);
}

void EventPublisher::Send(const std::string& topic, const std::string& envelope,
                          std::string* volume) {
  SendLocked(*socket_.Lock(), topic, envelope, volume);
}

void EventPublisher::SendServerEvent(std::variant<Heartbeat, ServerClosing> body) {
  auto socket = socket_.Lock();
  ServerEvent event;
  event.seq = ++socket->server_seq;
  event.timestamp_ns = scenarios::NowNs();
  event.body = std::move(body);
  const Envelope envelope(std::move(event));
  SendLocked(*socket, TopicOf(envelope), EncodeEnvelope(envelope), nullptr);
}

void EventPublisher::Close() { socket_.Lock()->socket.close(); }

void EventPublisher::SendLocked(Socket& socket, const std::string& topic,
                                const std::string& envelope, std::string* volume) {
  zmq::socket_t& events = socket.socket;
  const std::size_t volume_bytes = volume ? volume->size() : 0;
  const auto more = zmq::send_flags::sndmore | zmq::send_flags::dontwait;
  if (!events.send(zmq::buffer(topic), more)) {
    // A subscriber is at its high-water mark (XPUB_NODROP refuses the send to tell us). Count
    // it, then send in lossy mode: the full subscriber misses this event (and heals the gap
    // from a snapshot later); everyone else gets it now.
    dropped_.fetch_add(1, std::memory_order_relaxed);
    events.set(zmq::sockopt::xpub_nodrop, 0);
    const bool sent = bool(events.send(zmq::buffer(topic), more));
    events.set(zmq::sockopt::xpub_nodrop, 1);
    if (!sent) return;
  }
  // Only the first frame can meet the high-water mark; the rest of the message follows it.
  if (volume == nullptr) {
    (void)events.send(zmq::buffer(envelope), zmq::send_flags::dontwait);
  } else {
    (void)events.send(zmq::buffer(envelope), more);
    auto* owned = new std::string(std::move(*volume));  // zero-copy: zmq frees it when sent
    zmq::message_t frame(
        owned->data(), owned->size(),
        [](void*, void* hint) { delete static_cast<std::string*>(hint); }, owned);
    (void)events.send(frame, zmq::send_flags::dontwait);
  }
  published_.fetch_add(1, std::memory_order_relaxed);
  bytes_.fetch_add(topic.size() + envelope.size() + volume_bytes, std::memory_order_relaxed);
  last_publish_ns_.store(SteadyNs(), std::memory_order_relaxed);
}

}  // namespace mewm::streaming
