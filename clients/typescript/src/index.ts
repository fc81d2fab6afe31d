// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// @mewm/client: a TypeScript client for `mewm serve` (docs/PROTOCOL.md). See README.md.

export {
  Client,
  readCurveKey,
  runTopicPrefix,
  type ClientOptions,
  type RunState,
  type RunStatus,
  type SubmitOptions,
  type Submitted,
  type WatchOptions,
} from "./client.js";
export {
  MewmError,
  SCHEMA_VERSION,
  TERMINAL_TYPES,
  decodeEnvelope,
  isTerminal,
  type Event,
  type PlanScore,
  type RunEvent,
  type RunEventData,
  type RunEventType,
  type RunSeq,
  type ServerEvent,
  type VolumeRef,
} from "./events.js";
export {
  Follower,
  newStats,
  type HistoryPage,
  type ReadHistory,
  type WatchStats,
} from "./follow.js";
