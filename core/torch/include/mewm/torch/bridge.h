// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The libtorch bridge: devices, dense crops <-> tensors, and checkpoints that carry their config.
// This header includes torch: include it only from the .cc files of model backends (it is the
// adapter layer that STYLE.md asks for), never from a public header.
#pragma once

#include <torch/torch.h>

#include <string>

#include "mewm/core/dense.h"
#include "mewm/core/device.h"
#include "mewm/core/expected.h"

namespace mewm::torch_bridge {

/// The torch device for a spec. kUnsupported when CUDA is asked for and this libtorch has none
/// (Debian's build), kInvalidArgument when the CUDA ordinal does not exist.
Expected<torch::Device> ResolveDevice(const DeviceSpec& spec);
Expected<torch::Device> ResolveDevice(const std::string& text);

/// Sets libtorch's intra-op threads (libtorch starts with 1), and OpenBLAS's when it is the BLAS
/// loaded; 0 means all hardware threads.
void ConfigureThreads(int threads);

/// OpenBLAS's thread count, or 0 when the BLAS loaded is not OpenBLAS.
int BlasThreads();

/// Keeps freed tensor buffers of up to 32 MiB in the heap for reuse. glibc otherwise returns each
/// large buffer to the OS and the next one page-faults afresh: measured as 85% system time when
/// encoding 64^3 crops. Idempotent; called by the model backends and trainers.
void KeepLargeBuffersInHeap();

/// A dense volume as a float32 tensor shaped [D, H, W] = [k, j, i] on `device`.
torch::Tensor ToTensor(const DenseFloat& dense, const torch::Device& device = torch::kCPU);
/// Labels as a float32 mask (1 where the label matches, any non-zero when `label` is 0).
torch::Tensor MaskToTensor(const DenseLabel& labels, std::int32_t label = 0,
                           const torch::Device& device = torch::kCPU);
/// A [D, H, W] tensor (leading singleton dims allowed) back to a dense volume with `geometry`.
/// kInvalidArgument for another rank, kCorruptData for NaN/Inf values.
Expected<DenseFloat> FromTensor(const torch::Tensor& tensor, const Geometry& geometry);

/// What a checkpoint carries besides its weights.
struct CheckpointInfo {
  std::string config_json = "{}";    ///< the architecture config the weights belong to
  std::string metadata_json = "{}";  ///< training command, seed, data, evaluation numbers
};

/// Saves every parameter and buffer of `module` (flattened dotted names) with the info, atomically,
/// then its checksum file `path`.sha256 (mewm/core/sha256.h).
Status SaveCheckpoint(const std::string& path, const torch::nn::Module& module,
                      const CheckpointInfo& info);

/// Loads weights into `module` after checking that the checkpoint's config equals
/// `expected_config_json` (as JSON values). kMismatch names each differing key; also kMismatch
/// for a missing or differently shaped tensor. kNotFound / kCorruptData for bad files, and
/// kCorruptData when the file's SHA-256 differs from its checksum file `path`.sha256 (checked
/// before torch reads the file). On error the module's weights are unchanged.
Expected<CheckpointInfo> LoadCheckpoint(const std::string& path, torch::nn::Module& module,
                                        const std::string& expected_config_json);

/// What differs between two JSON texts, for kMismatch messages: one line per differing key,
/// "\n  KEY: A_SAYS V, B_SAYS W", nested objects key by key ("config.lesion_size"), "(none)" for
/// a key or text one side lacks; "" when they are equal as JSON values.
std::string DescribeJsonDifferences(const std::string& a_json, const std::string& a_says,
                                    const std::string& b_json, const std::string& b_says);

/// Reads only the info of a checkpoint (for `mewm inspect`), after the same checksum check.
Expected<CheckpointInfo> ReadCheckpointInfo(const std::string& path);

}  // namespace mewm::torch_bridge
