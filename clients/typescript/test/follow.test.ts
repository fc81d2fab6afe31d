// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The seq rules of a late join, without sockets: a run's history is an array, the live stream a
// list of events with the duplicates, gaps and tails a subscriber can see.

import assert from "node:assert/strict";
import { test } from "node:test";
import * as capnp from "capnp-es";
import * as wire from "../src/gen/mewm.js";
import { Follower, decodeEnvelope, type HistoryPage, type RunEvent } from "../src/index.js";

function ev(runId: string, seq: number, type: "progress" | "run_finished" = "progress"): RunEvent {
  const data =
    type === "progress"
      ? { stage: "plan", done: seq, total: 10 }
      : { finished: 1, failed: 0, seconds: 1 };
  return { runId, seq: BigInt(seq), timestampNs: 1n, traceId: "", type, data } as RunEvent;
}

/** A history of events 1..n of run "r", served in pages of `page`; counts the calls. */
function history(n: number, page = 3, runId = "r") {
  const all = Array.from({ length: n }, (_, i) =>
    ev(runId, i + 1, i + 1 === n ? "run_finished" : "progress"),
  );
  const calls: bigint[] = [];
  const read = async (id: string, after: bigint): Promise<HistoryPage> => {
    calls.push(after);
    const rest = all.filter((e) => e.runId === id && e.seq > after);
    return { events: rest.slice(0, page), more: rest.length > page };
  };
  return { all, calls, read };
}

const seqs = (events: RunEvent[]) => events.map((e) => Number(e.seq));

test("late join: history first, live duplicates dropped, then live", async () => {
  const h = history(8);
  const f = new Follower(h.read);
  const got = await f.heal("r"); // the snapshot holds 1..8 (pages of 3)
  assert.deepEqual(seqs(got), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(h.calls, [0n, 3n, 6n]);
  // Live events buffered while the history was read: all duplicates.
  for (const s of [6, 7, 8]) assert.deepEqual(await f.live(ev("r", s)), []);
  assert.equal(f.stats.duplicates, 3);
  assert.equal(f.stats.fromHistory, 8);
  assert.ok(f.ended.has("r"));
});

test("a gap in the live stream is healed from the history, once", async () => {
  const h = history(10, 100);
  const f = new Follower(h.read);
  assert.deepEqual(seqs(await f.live(ev("r", 1))), [1]);
  assert.deepEqual(seqs(await f.live(ev("r", 2))), [2]);
  // 3..5 were dropped by the high-water mark; 6 arrives.
  assert.deepEqual(seqs(await f.live(ev("r", 6))), [3, 4, 5, 6, 7, 8, 9, 10]);
  assert.equal(f.stats.gaps, 1);
  // The history already held 6..10, so the live 7 is a duplicate.
  assert.deepEqual(await f.live(ev("r", 7)), []);
  assert.equal(f.last.get("r"), 10n);
});

test("a run first seen mid-stream is read from seq 1 and is not a gap", async () => {
  const h = history(5, 100);
  const f = new Follower(async (id, after) => {
    const page = await h.read(id, after);
    return { events: page.events.filter((e) => e.seq <= 3n), more: false };
  });
  assert.deepEqual(seqs(await f.live(ev("r", 4))), [1, 2, 3, 4]);
  assert.equal(f.stats.gaps, 0);
  assert.equal(f.stats.fromHistory, 3);
});

test("history that ends before the live event is an error naming the range", async () => {
  const f = new Follower(async () => ({ events: [ev("r", 1), ev("r", 2)], more: false }));
  await assert.rejects(f.live(ev("r", 5)), /history ends at seq 2 but seq 5 was published/);
});

test("a jump inside the history is an error", async () => {
  const f = new Follower(async () => ({ events: [ev("r", 1), ev("r", 3)], more: false }));
  await assert.rejects(f.heal("r"), /gap in the server's history of r: after seq 1 comes 3/);
});

test("a foreign event in a snapshot is an error", async () => {
  const f = new Follower(async () => ({ events: [ev("other", 1)], more: false }));
  await assert.rejects(f.heal("r"), /holds a foreign event/);
});

test("a heartbeat's recentRuns reveals a missed tail of a followed run", async () => {
  const h = history(4, 100);
  const f = new Follower(h.read);
  await f.live(ev("r", 1));
  await f.live(ev("r", 2));
  const followed = (id: string) => id === "r";
  assert.deepEqual(await f.missedTails([{ runId: "r", lastSeq: 2n }], followed), []);
  assert.deepEqual(await f.missedTails([{ runId: "x", lastSeq: 9n }], followed), []);
  assert.deepEqual(seqs(await f.missedTails([{ runId: "r", lastSeq: 4n }], followed)), [3, 4]);
  assert.equal(f.stats.gaps, 1);
  // Ended: not healed again.
  assert.deepEqual(await f.missedTails([{ runId: "r", lastSeq: 9n }], followed), []);
});

test("64-bit fields survive as BigInt past 2^53", async () => {
  const message = new capnp.Message();
  const e = message.initRoot(wire.Envelope);
  e.schemaVersion = 1;
  e.runId = "r";
  e.seq = 9007199254740993n; // 2^53 + 1: not representable as a number
  e.timestampNs = 1764523456789012345n;
  e.event._initProgress().stage = "plan";
  const decoded = decodeEnvelope(new Uint8Array(message.toArrayBuffer()));
  assert.equal(decoded.seq, 9007199254740993n);
  assert.equal(decoded.timestampNs, 1764523456789012345n);
  assert.equal(decoded.type, "progress");
});

test("bad envelopes are refused with a clear error", () => {
  assert.throws(() => decodeEnvelope(new Uint8Array(0)), /not a Cap'n Proto message/);
  assert.throws(() => decodeEnvelope(new Uint8Array(12)), /not a Cap'n Proto message/);
  const message = new capnp.Message();
  const e = message.initRoot(wire.Envelope);
  e.schemaVersion = 2;
  assert.throws(() => decodeEnvelope(new Uint8Array(message.toArrayBuffer())), /schema version 2/);
  // A segment table that claims more than the frame holds.
  const lying = new Uint8Array(16);
  new DataView(lying.buffer).setUint32(4, 1000, true);
  assert.throws(() => decodeEnvelope(lying), /envelope does not decode|not a Cap'n Proto/);
});
