// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// SHA-256 (OpenSSL libcrypto) and the checksum files of model files: "<model>.sha256" beside the
// model, one line "<64 lower-case hex digits>  <file name>" as sha256sum writes it, so
// `sha256sum -c dynamics_diffusion.pt.sha256` checks it from the model's folder too.
#pragma once

#include <string>
#include <string_view>

#include "mewm/core/expected.h"

namespace mewm {

/// SHA-256 of `bytes`: the 32 raw bytes. OpenSSL uses the CPU's SHA extensions where present.
std::string Sha256(std::string_view bytes);
/// Lower-case hex of `bytes` (64 digits for a SHA-256).
std::string ToHex(std::string_view bytes);
/// Lower-case hex SHA-256 of a file's content, read in chunks. kNotFound, kIo.
Expected<std::string> Sha256File(const std::string& path);

/// The checksum file of a model file: `model_path` + ".sha256".
std::string ChecksumPath(const std::string& model_path);

struct ModelChecksum {
  std::string sha256;     ///< the file's SHA-256, lower-case hex
  bool recorded = false;  ///< a checksum file exists (and matched)
};

/// Hashes the model file and, when its checksum file exists, compares. kCorruptData naming the
/// file, the expected and the actual hash on a mismatch, or naming the checksum file when it is
/// not one line of 64 hex digits; kNotFound, kIo. A model without a checksum file loads (a model
/// trained by an older mewm); `recorded` says which.
Expected<ModelChecksum> VerifyModelChecksum(const std::string& model_path);
/// The same for the bytes already read from `model_path` (no second read).
Expected<ModelChecksum> VerifyModelChecksum(const std::string& model_path, std::string_view bytes);

/// Writes the checksum file of the model file now at `model_path` (atomically). Every writer of
/// a model calls it after writing the model, so a freshly trained model loads.
Status WriteModelChecksum(const std::string& model_path);

}  // namespace mewm
