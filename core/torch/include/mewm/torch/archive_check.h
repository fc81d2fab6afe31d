// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The check a libtorch archive (.pt) passes before libtorch reads it. libtorch compiles the
// TorchScript source an archive holds when it loads one, so a hostile file could loop or crash
// the process there; an archive mewm writes (a checkpoint, or a training state's module and
// optimizer) holds tensors, pickles and code that only declares attributes.
//   input:  a path
//   output: ok, or kCorruptData naming the member or the line of code
#pragma once

#include <string>

#include "mewm/core/expected.h"

namespace mewm::torch_bridge {

/// Reads the archive's ZIP directory itself and refuses it unless it holds only what libtorch's
/// OutputArchive writes: the known members (data.pkl, constants.pkl, version, byteorder, data/<n>,
/// the code of the module and of nested modules' classes, and their debug pickles), tensors
/// stored uncompressed, pickles of at most 16 MiB, code members of at most 4 MiB, a directory of
/// at most 64 MiB, and code whose every line is a class line or an attribute declaration of a
/// value type or a nested module. The code is read through libtorch's PyTorchStreamReader, which
/// compiles nothing. kIo when the file cannot be read. LoadCheckpoint and ReadCheckpointInfo call
/// it; the trainer calls it on a training state before resuming from it.
Status CheckArchiveLayout(const std::string& path);

}  // namespace mewm::torch_bridge
