// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The `vlm` policy backend (mewm::policy_vlm): a compact 3D vision-language model that reads the
// tumor crop and the clinical note and writes whole plans, item by item, under the plan grammar.
// This header is torch-free; the networks are private to policy/vlm/src.
//   vision:   3 strided 3D convolutions over the 2-channel 32^3 crop -> 64 visual tokens (d = 64)
//   language: byte-level tokens (TokenizeNote), a stride-4 1D convolution -> 128 text tokens,
//             2 transformer encoder layers
//   decoder:  2 transformer decoder layers with causal self-attention and cross-attention to
//             the 192 visual + text tokens; logits over the grammar's tokens, masked to the
//             allowed ones at every step (plan_grammar.h), beam decoding for the top K plans
//   findings: a small head on the pooled tokens: lesion count, largest diameter, arterial
//             enhancement, necrotic fraction, Child-Pugh class
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/policy/policy_model.h"
#include "mewm/policy/vlm.h"
#include "mewm/tace/action_base.h"

namespace mewm::policy {

/// Loads the checkpoint and builds the grammar. kNotFound / kCorruptData for a bad checkpoint,
/// kMismatch when it was trained on another action base's items, errors of VlmOptions::Validate
/// and PlanGrammar::Create, kUnsupported for a device this libtorch lacks.
Expected<std::unique_ptr<PolicyModel>> CreateVlmPolicy(const VlmOptions& options,
                                                       const ActionBase& actions);

/// The factory the backend registry takes (scenarios::BackendRegistry::Builtin).
VlmFactory VlmFactoryFunction();

struct VlmTrainOptions {
  std::uint64_t seed = 1;
  int epochs = 40;
  int batch = 16;
  double lr = 1e-3;
  int list_size = 8;          ///< plans per patient in the listwise loss (lowest true hazard)
  double temperature = 0.03;  ///< target weight of plan p: softmax(-(ln HR_p - ln HR_best) / T)
  double findings_weight = 0.5;
  double modality_dropout = 0.15;  ///< per example, blank the image (or else the note) this often
  double validation_fraction = 0.1;
  int threads = 0;  ///< libtorch intra-op threads (0 = all); results depend on it only by rounding
  GrammarOptions grammar;
  std::string out;  ///< checkpoint; its state for --resume is kept in `out`.state/
  /// Continue from `out`.state/ when it holds the same run: the same options but the epoch count
  /// (more epochs extend it) and the same examples. Another run's state is refused with
  /// kMismatch naming what differs, and one past the epochs asked with kInvalidArgument; neither
  /// touches it.
  bool resume = false;
  std::string metadata_json = "{}";  ///< provenance stored in the checkpoint (command, data)
};

struct VlmEpoch {
  int epoch = 0;
  double train_loss = 0.0;
  double val_loss = 0.0;
  double val_top1 = 0.0;  ///< share of validation patients whose first plan is their best
};

struct VlmTrainReport {
  std::vector<VlmEpoch> epochs;  ///< this run's epochs (not those resumed from)
  int resumed_from_epoch = 0;
  int best_epoch = 0;  ///< the epoch whose weights were written (lowest validation loss)
  int train_patients = 0, validation_patients = 0;
  std::int64_t parameters = 0;
  double seconds = 0.0;
};

/// Trains on the examples and writes options.out (checkpoint + .sha256) with the weights of the
/// epoch of lowest validation loss (the last epoch's without validation patients); the crop is
/// mirrored at random along each axis (augmentation). Deterministic given the
/// seed, the data and the thread count; after every epoch the state is saved to `out`.state/ so
/// that `resume` continues exactly where an interrupted run stopped. kInvalidArgument for fewer
/// than 4 examples, bad options, or an example without a plan the grammar accepts.
Expected<VlmTrainReport> TrainVlm(const std::vector<VlmTrainingExample>& examples,
                                  const ActionBase& actions, const VlmTrainOptions& options,
                                  const std::function<void(const VlmEpoch&)>& progress = {});

}  // namespace mewm::policy
