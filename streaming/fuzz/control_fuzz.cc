// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// libFuzzer target for everything the server and clients read off a socket: control requests,
// replies and event envelopes. Built with clang when MEWM_FUZZ=ON (`tools/dev.sh fuzz`).
//
// Properties checked beyond "no crash, no sanitizer report": anything that decodes re-encodes,
// and the re-encoding decodes to the same message.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "mewm/streaming/protocol.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace mewm::streaming;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (auto request = DecodeRequest(bytes)) {
    const std::string again = EncodeRequest(*request);
    auto decoded = DecodeRequest(again);
    Check(decoded && decoded->request_id == request->request_id &&
          decoded->body.index() == request->body.index() && EncodeRequest(*decoded) == again);
  }
  auto envelope = DecodeEnvelope(bytes);
  const auto* run = envelope ? std::get_if<RunEvent>(&*envelope) : nullptr;
  if (envelope && !(run && run->unknown_kind)) {  // an unknown kind cannot be re-encoded
    const std::string again = EncodeEnvelope(*envelope);
    auto decoded = DecodeEnvelope(again);
    Check(decoded && EncodeEnvelope(*decoded) == again && TopicOf(*decoded) == TopicOf(*envelope));
  }
  if (auto reply = DecodeReply(bytes)) {
    const std::string again = EncodeReply(*reply);
    auto decoded = DecodeReply(again);
    Check(decoded && EncodeReply(*decoded) == again);
  }
  return 0;
}
