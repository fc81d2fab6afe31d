// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The `openai` policy backend: asks an OpenAI-compatible chat-completions endpoint (OpenAI, vLLM,
// the llama.cpp server, Ollama) for a ranked list of whole treatment plans.
//   input:  PatientCase (axial and coronal slices through the tumor at the liver window, as PNG
//           data URLs; the clinical note; the visible covariates), the action base and its rules
//   output: Proposal whose `plans` are the answer's plans, best first, each checked against the
//           action base, the horizons and the patient's contraindications
// An answer that does not parse or names an invalid plan gets up to `max_repairs` follow-up
// requests that name its errors; then the patient fails with a message saying why. Timeouts,
// refused connections, 429 (honouring Retry-After) and 5xx are retried with a capped exponential
// backoff, all within `deadline_s` per patient, so no endpoint can stall a run.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "mewm/core/expected.h"
#include "mewm/policy/plan_grammar.h"
#include "mewm/policy/policy_model.h"
#include "mewm/tace/action_base.h"

namespace mewm::policy {

struct OpenAiOptions {
  /// Base URL up to the API version: "https://api.openai.com/v1", "http://127.0.0.1:8000/v1"
  /// (vLLM), "http://127.0.0.1:8080/v1" (llama.cpp), "http://127.0.0.1:11434/v1" (Ollama). The
  /// request goes to <endpoint>/chat/completions.
  std::string endpoint;
  std::string model;  ///< the request's "model", e.g. "gpt-4o", "qwen2.5-vl-7b"
  /// The environment variable that holds the bearer key. Unset or empty: no Authorization header
  /// (local servers). The key itself is never written to a scenario, a log or an event.
  std::string api_key_env = "OPENAI_API_KEY";
  int top_k = 5;       ///< plans asked for (1..20); the planner searches these
  bool images = true;  ///< send the two slices (false for text-only models)
  /// How the answer's JSON is requested: "json_object" (OpenAI, vLLM, llama.cpp, Ollama),
  /// "json_schema" (strict schema: OpenAI, vLLM, llama.cpp) or "none" (the prompt alone).
  std::string response_format = "json_object";
  double temperature = 0.0;
  double timeout_s = 60.0;      ///< per request: connect, send and read
  int max_retries = 4;          ///< per request, after a timeout, a refused connection, 429 or 5xx
  int max_repairs = 2;          ///< follow-up requests naming an invalid answer's errors
  double deadline_s = 300.0;    ///< everything for one patient; past it the patient fails
  double max_backoff_s = 20.0;  ///< the longest single wait before a retry
  std::int64_t max_answer_bytes = 1 << 20;  ///< a longer HTTP answer is refused, not read
  bool contraindications = true;            ///< refuse plans with items the covariates rule out
  GrammarOptions grammar;  ///< horizons and protocol (the scenario's planner and actions)

  /// kInvalidArgument naming the first bad field (an endpoint that is not http:// or https://,
  /// an empty model, a value out of range).
  Status Validate() const;
};

/// Creates the policy. Errors of Validate, and of PlanGrammar::Create for the horizons.
Expected<std::unique_ptr<PolicyModel>> CreateOpenAiPolicy(const OpenAiOptions& options,
                                                          const ActionBase& actions);

}  // namespace mewm::policy
