// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Events as plain objects, decoded from the Cap'n Proto Envelope of streaming/schema/mewm.capnp.
// 64-bit integers (seq, timestampNs, seed, simulations, sizeBytes, ...) are BigInt: a nanosecond
// timestamp does not fit in a JavaScript number (2^53) without losing its last digits.

import { createHash } from "node:crypto";
import * as capnp from "capnp-es";
import * as wire from "./gen/mewm.js";

/** The schema version this client speaks (streaming/schema/mewm.capnp `schemaVersion`). */
export const SCHEMA_VERSION = 1;

export interface PlanScore {
  plan: string[];
  riskMean: number;
  riskStd: number;
}

export interface VolumeRef {
  sizeBytes: bigint;
  sha256: Uint8Array;
  path: string;
}

/** The body of each run event, by its type (the topic's last part and `events.jsonl`'s `type`). */
export interface RunEventData {
  run_accepted: { scenario: string; outputDir: string; queuePosition: number };
  run_started: {
    scenario: string;
    outputDir: string;
    seed: bigint;
    patients: number;
    skipped: number;
  };
  run_finished: { finished: number; failed: number; seconds: number };
  run_failed: { error: string };
  run_cancelled: { finished: number };
  patient_started: { patientId: string; index: number; total: number };
  patient_finished: {
    patientId: string;
    simulations: bigint;
    memoHits: bigint;
    modelEvaluations: bigint;
    seconds: number;
  };
  patient_failed: { patientId: string; error: string };
  proposal: { patientId: string; drugs: string[]; embolics: string[]; rationale: string };
  candidate_evaluated: {
    patientId: string;
    stage: string;
    step: number;
    score: PlanScore;
    memoHit: boolean;
  };
  beam_updated: { patientId: string; stage: string; step: number; beams: PlanScore[] };
  plan_decided: {
    patientId: string;
    best: PlanScore;
    medianMonths: number; // -1 when the survival curve never reaches 0.5
    volumePath: string;
  };
  progress: { stage: string; done: number; total: number };
}

export type RunEventType = keyof RunEventData;

interface EventBase {
  runId: string;
  seq: bigint;
  timestampNs: bigint;
  traceId: string;
}

/** One event of a run. `type` is undefined for a kind newer than this client (kept for its seq). */
export type RunEvent = EventBase &
  (
    | { [K in RunEventType]: { type: K; data: RunEventData[K] } }[RunEventType]
    | { type: undefined; data: undefined }
  ) & {
    /** Set when a volume frame (the chosen plan's .vdb) follows the envelope. */
    volume?: VolumeRef & { data?: Buffer };
  };

export interface RunSeq {
  runId: string;
  lastSeq: bigint;
}

export type ServerEvent = EventBase &
  (
    | { type: "heartbeat"; data: { activeRun: string; queueDepth: number; recentRuns: RunSeq[] } }
    | { type: "server_closing"; data: { reason: string; cancelledRuns: number } }
  );

export type Event = ({ kind: "run" } & RunEvent) | ({ kind: "server" } & ServerEvent);

export const TERMINAL_TYPES: ReadonlySet<string> = new Set([
  "run_finished",
  "run_failed",
  "run_cancelled",
]);

export function isTerminal(e: RunEvent): boolean {
  return e.type !== undefined && TERMINAL_TYPES.has(e.type);
}

/** An error of this client, or a server's error reply (`code` is then the schema's name). */
export class MewmError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = "MewmError";
  }
}

function strings(list: capnp.List<string>): string[] {
  const out: string[] = [];
  for (let i = 0; i < list.length; i++) out.push(list.at(i) as string);
  return out;
}

function score(s: wire.PlanScore): PlanScore {
  return { plan: strings(s.plan), riskMean: s.riskMean, riskStd: s.riskStd };
}

function runBody(ev: wire.Envelope_Event): { type: RunEventType; data: unknown } | undefined {
  const W = wire.Envelope_Event_Which;
  switch (ev.which()) {
    case W.RUN_ACCEPTED: {
      const b = ev.runAccepted;
      const data = { scenario: b.scenario, outputDir: b.outputDir, queuePosition: b.queuePosition };
      return { type: "run_accepted", data };
    }
    case W.RUN_STARTED: {
      const b = ev.runStarted;
      const data = {
        scenario: b.scenario,
        outputDir: b.outputDir,
        seed: b.seed,
        patients: b.patients,
        skipped: b.skipped,
      };
      return { type: "run_started", data };
    }
    case W.RUN_FINISHED: {
      const b = ev.runFinished;
      return {
        type: "run_finished",
        data: { finished: b.finished, failed: b.failed, seconds: b.seconds },
      };
    }
    case W.RUN_FAILED:
      return { type: "run_failed", data: { error: ev.runFailed.error } };
    case W.RUN_CANCELLED:
      return { type: "run_cancelled", data: { finished: ev.runCancelled.finished } };
    case W.PATIENT_STARTED: {
      const b = ev.patientStarted;
      return {
        type: "patient_started",
        data: { patientId: b.patientId, index: b.index, total: b.total },
      };
    }
    case W.PATIENT_FINISHED: {
      const b = ev.patientFinished;
      const data = {
        patientId: b.patientId,
        simulations: b.simulations,
        memoHits: b.memoHits,
        modelEvaluations: b.modelEvaluations,
        seconds: b.seconds,
      };
      return { type: "patient_finished", data };
    }
    case W.PATIENT_FAILED: {
      const b = ev.patientFailed;
      return { type: "patient_failed", data: { patientId: b.patientId, error: b.error } };
    }
    case W.PROPOSAL: {
      const b = ev.proposal;
      const data = {
        patientId: b.patientId,
        drugs: strings(b.drugs),
        embolics: strings(b.embolics),
        rationale: b.rationale,
      };
      return { type: "proposal", data };
    }
    case W.CANDIDATE_EVALUATED: {
      const b = ev.candidateEvaluated;
      const data = {
        patientId: b.patientId,
        stage: b.stage,
        step: b.step,
        score: score(b.score),
        memoHit: b.memoHit,
      };
      return { type: "candidate_evaluated", data };
    }
    case W.BEAM_UPDATED: {
      const b = ev.beamUpdated;
      const beams: PlanScore[] = [];
      for (let i = 0; i < b.beams.length; i++) beams.push(score(b.beams.at(i) as wire.PlanScore));
      return {
        type: "beam_updated",
        data: { patientId: b.patientId, stage: b.stage, step: b.step, beams },
      };
    }
    case W.PLAN_DECIDED: {
      const b = ev.planDecided;
      const data = {
        patientId: b.patientId,
        best: score(b.best),
        medianMonths: b.medianMonths,
        volumePath: b.volumePath,
      };
      return { type: "plan_decided", data };
    }
    case W.PROGRESS: {
      const b = ev.progress;
      return { type: "progress", data: { stage: b.stage, done: b.done, total: b.total } };
    }
    default:
      return undefined;
  }
}

/** Reads a Cap'n Proto message (flat array with segment table, not packed) of any alignment. */
export function readMessage(bytes: Uint8Array): capnp.Message {
  if (bytes.byteLength === 0 || bytes.byteLength % 8 !== 0) {
    throw new MewmError(`not a Cap'n Proto message (${bytes.byteLength} bytes)`, "corrupt");
  }
  // A Uint8Array is copied into an aligned buffer of the message's own.
  return new capnp.Message(bytes, false);
}

/** Decodes one serialized Envelope (a PUB frame or an entry of a snapshot). */
export function decodeEnvelope(bytes: Uint8Array): Event {
  let e: wire.Envelope;
  let base: EventBase;
  try {
    e = readMessage(bytes).getRoot(wire.Envelope);
    base = { runId: e.runId, seq: e.seq, timestampNs: e.timestampNs, traceId: e.traceId };
  } catch (err) {
    if (err instanceof MewmError) throw err;
    throw new MewmError(`envelope does not decode: ${(err as Error).message}`, "corrupt");
  }
  if (e.schemaVersion === 0 || e.schemaVersion > SCHEMA_VERSION) {
    throw new MewmError(
      `envelope of schema version ${e.schemaVersion}; this client speaks ${SCHEMA_VERSION}`,
      "wrong_version",
    );
  }
  const ev = e.event;
  const W = wire.Envelope_Event_Which;
  if (ev.which() === W.HEARTBEAT) {
    const b = ev.heartbeat;
    const recentRuns: RunSeq[] = [];
    for (let i = 0; i < b.recentRuns.length; i++) {
      const r = b.recentRuns.at(i) as wire.RunSeq;
      recentRuns.push({ runId: r.runId, lastSeq: r.lastSeq });
    }
    const data = { activeRun: b.activeRun, queueDepth: b.queueDepth, recentRuns };
    return { kind: "server", ...base, type: "heartbeat", data };
  }
  if (ev.which() === W.SERVER_CLOSING) {
    const b = ev.serverClosing;
    const data = { reason: b.reason, cancelledRuns: b.cancelledRuns };
    return { kind: "server", ...base, type: "server_closing", data };
  }
  const body = runBody(ev);
  const run = { kind: "run", ...base, ...(body ?? { type: undefined, data: undefined }) } as Event;
  if (e._hasVolume()) {
    const v = e.volume;
    (run as RunEvent).volume = {
      sizeBytes: v.sizeBytes,
      sha256: new Uint8Array(v.sha256.toUint8Array()),
      path: v.path,
    };
  }
  return run;
}

/** Attaches a PUB message's volume frame after checking its size and SHA-256. */
export function attachVolume(e: RunEvent, frames: Buffer[]): void {
  if (e.volume) {
    const frame = frames[2];
    const ok =
      frames.length === 3 &&
      BigInt(frame.byteLength) === e.volume.sizeBytes &&
      createHash("sha256").update(frame).digest().equals(Buffer.from(e.volume.sha256));
    if (!ok) {
      throw new MewmError(
        `volume frame of ${e.runId} seq ${e.seq} does not match its size and SHA-256`,
        "corrupt",
      );
    }
    e.volume.data = frame;
  } else if (frames.length !== 2) {
    throw new MewmError(
      `unexpected frames after the envelope of ${e.runId} seq ${e.seq}`,
      "corrupt",
    );
  }
}
