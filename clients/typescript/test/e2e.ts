// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// End-to-end test of the TypeScript client against a real `mewm serve` on loopback:
//   - a live subscription opened before the submit sees the whole run;
//   - a watch that joins late (after the run published events) delivers exactly the run's
//     events.jsonl: the same seqs, types, timestamps and fields, no gap, no duplicate;
//   - submit (with an idempotency key), status, cancel and the server's error replies.
// Usage: node dist/test/e2e.js MEWM SOURCE_DIR. Exits 0 on success, 1 on failure; 90 s at most.

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { Client, MewmError, newStats, readCurveKey, type RunEvent } from "../src/index.js";

const LIMIT_MS = 85_000;
const here = path.dirname(fileURLToPath(import.meta.url));
const started = Date.now();
const log = (msg: string) =>
  console.log(`[${((Date.now() - started) / 1000).toFixed(2)} s] ${msg}`);

/** Two loopback ports free now, bound at once so they differ. */
async function freePorts(): Promise<[number, number]> {
  const servers = [net.createServer(), net.createServer()];
  const ports = await Promise.all(
    servers.map(
      (s) =>
        new Promise<number>((resolve, reject) => {
          s.once("error", reject);
          s.listen(0, "127.0.0.1", () => resolve((s.address() as net.AddressInfo).port));
        }),
    ),
  );
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return [ports[0], ports[1]];
}

/** scenarios/tace_demo/scenario.toml, made small: 2 patients at 3 mm, 2 beams, 1 sample. */
function scenario(src: string): string {
  let toml = fs.readFileSync(path.join(src, "scenarios/tace_demo/scenario.toml"), "utf8");
  const edits: [RegExp, string][] = [
    [/^output = .*$/m, 'output = "runs"'],
    [/^n = 4$/m, "n = 2"],
    [/^spacing_mm = 1\.0$/m, "spacing_mm = 3.0"],
    [/^calibration = .*$/m, 'calibration = "mech.json"'],
    [/^model = .*$/m, 'model = "cox.json"'],
    [/^beams = 5$/m, "beams = 2"],
    [/^samples = 4$/m, "samples = 1"],
  ];
  for (const [from, to] of edits) {
    assert.match(toml, from, `scenarios/tace_demo/scenario.toml no longer has ${from}`);
    toml = toml.replace(from, to);
  }
  return toml;
}

/** The events.jsonl line's shape for an event: snake_case keys (one vocabulary: the same words). */
function toJsonShape(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(toJsonShape);
  if (typeof value === "bigint") return Number(value);
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      const key = k.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());
      out[key] = toJsonShape(v);
    }
    return out;
  }
  return value;
}

interface LogLine {
  seq: bigint;
  timestampNs: bigint;
  json: Record<string, unknown>;
}

/** events.jsonl, with seq and timestamp_ns read as BigInt from the text (JSON numbers lose them). */
function readLog(file: string): LogLine[] {
  return fs
    .readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l.length > 0)
    .map((line) => {
      const seq = /"seq":(\d+)/.exec(line);
      const ts = /"timestamp_ns":(-?\d+)/.exec(line);
      assert.ok(seq && ts, `no seq or timestamp_ns in ${line}`);
      return { seq: BigInt(seq[1]), timestampNs: BigInt(ts[1]), json: JSON.parse(line) };
    });
}

/** The events equal the log line for line: seq, type, run id, timestamp and every field. */
function assertSameAsLog(events: RunEvent[], lines: LogLine[], what: string): void {
  assert.deepEqual(
    events.map((e) => e.seq),
    lines.map((l) => l.seq),
    `${what}: seqs differ from events.jsonl`,
  );
  for (let i = 0; i < lines.length; i++) {
    const e = events[i];
    const { json } = lines[i];
    assert.equal(e.type, json.type, `${what}: seq ${e.seq} type`);
    assert.equal(e.runId, json.run_id, `${what}: seq ${e.seq} run_id`);
    assert.equal(e.timestampNs, lines[i].timestampNs, `${what}: seq ${e.seq} timestamp_ns`);
    const fields = { ...json };
    for (const k of ["type", "run_id", "seq", "timestamp_ns"]) delete fields[k];
    assert.deepEqual(toJsonShape(e.data), fields, `${what}: seq ${e.seq} (${e.type}) fields`);
  }
}

async function waitFor<T>(what: string, f: () => Promise<T | undefined>, ms: number): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const got = await f().catch(() => undefined);
    if (got !== undefined) return got;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A CURVE server: a listed key gets replies and events, an unlisted one nothing. */
async function curve(mewm: string, dir: string): Promise<void> {
  for (const base of ["server", "alice", "mallory"]) {
    assert.equal(
      spawnSync(mewm, ["keygen", path.join(dir, base)]).status,
      0,
      `mewm keygen ${base}`,
    );
  }
  fs.copyFileSync(path.join(dir, "alice.pub"), path.join(dir, "allowed.txt"));
  const [controlPort, eventsPort] = await freePorts();
  const control = `tcp://127.0.0.1:${controlPort}`;
  const events = `tcp://127.0.0.1:${eventsPort}`;
  const server = spawn(
    mewm,
    [
      "serve",
      "--control",
      control,
      "--events",
      events,
      "--results-root",
      path.join(dir, "curve_results"),
      "--scenario-base",
      dir,
      "--heartbeat-ms",
      "100",
      "--curve-key",
      path.join(dir, "server.key"),
      "--curve-allow",
      path.join(dir, "allowed.txt"),
    ],
    { stdio: "ignore" },
  );
  const exited = new Promise<number | null>((r) => server.once("exit", (code) => r(code)));
  const keys = (base: string) => ({
    serverPublicKey: readCurveKey(path.join(dir, "server.pub")),
    publicKey: readCurveKey(path.join(dir, `${base}.pub`)),
    secretKey: readCurveKey(path.join(dir, `${base}.key`)),
  });
  const alice = new Client({ control, events, requestTimeoutMs: 300, curve: keys("alice") });
  const mallory = new Client({ control, events, requestTimeoutMs: 300, curve: keys("mallory") });
  const plain = new Client({ control, events, requestTimeoutMs: 300 });
  try {
    await waitFor("the CURVE server", async () => (await alice.listRuns()) && true, 20_000);
    for await (const e of alice.subscribe()) {
      assert.equal(e.type, "heartbeat");
      break;
    }
    await assert.rejects(mallory.listRuns(), (e: MewmError) => e.code === "io");
    await assert.rejects(plain.listRuns(), (e: MewmError) => e.code === "io");
    assert.throws(
      () => new Client({ curve: { ...keys("alice"), secretKey: "short" } }),
      /40 characters/,
    );
    assert.throws(() => readCurveKey(path.join(dir, "allowed.txt.missing")));
    log(
      "CURVE: the listed key gets replies and heartbeats; an unlisted key and no key get no reply",
    );
  } finally {
    for (const c of [alice, mallory, plain]) c.close();
    server.kill("SIGTERM");
    assert.equal(await exited, 0);
  }
}

async function main(): Promise<void> {
  const [mewm, src] = process.argv.slice(2);
  assert.ok(mewm && src, "usage: e2e.js MEWM SOURCE_DIR");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mewm-ts-client."));
  fs.copyFileSync(
    path.join(src, "models/mechanistic_calibration.json"),
    path.join(dir, "mech.json"),
  );
  fs.copyFileSync(path.join(src, "models/cox_survival.json"), path.join(dir, "cox.json"));
  const toml = scenario(src);
  fs.writeFileSync(path.join(dir, "s.toml"), toml);

  const [controlPort, eventsPort] = await freePorts();
  const control = `tcp://127.0.0.1:${controlPort}`;
  const events = `tcp://127.0.0.1:${eventsPort}`;
  const serveLog = fs.openSync(path.join(dir, "serve.log"), "w");
  const server = spawn(
    mewm,
    [
      "serve",
      "--control",
      control,
      "--events",
      events,
      "--results-root",
      path.join(dir, "results"),
      "--scenario-base",
      dir,
      "--heartbeat-ms",
      "100",
    ],
    { stdio: ["ignore", serveLog, serveLog] },
  );
  const exited = new Promise<number | null>((r) => server.once("exit", (code) => r(code)));
  const client = new Client({ control, events, requestTimeoutMs: 5000 });
  const fail = setTimeout(() => {
    console.error(`FAIL: over ${LIMIT_MS / 1000} s`);
    server.kill("SIGKILL");
    process.exit(1);
  }, LIMIT_MS);
  try {
    const quick = new Client({ control, events, requestTimeoutMs: 200 });
    await waitFor("the server", async () => (await quick.listRuns()) && true, 20_000);
    quick.close();
    log(`mewm serve answers on ${control}, events on ${events}`);

    // Error replies.
    await assert.rejects(
      client.status("nope-00000000"),
      (e: MewmError) => e.code === "unknown_run",
    );
    await assert.rejects(
      async () => {
        for await (const e of client.watch({ runId: "nope-00000000" }))
          assert.fail(`an event: ${e.type}`);
      },
      (e: MewmError) => e.code === "unknown_run",
    );
    await assert.rejects(
      client.submit("[run\nname = ", { scenarioPath: "bad.toml" }),
      (e: MewmError) => e.code === "invalid_scenario" && /server: invalid_scenario/.test(e.message),
    );

    // A live subscriber, live before the submit (its first heartbeat says so).
    const liveCtl = new AbortController();
    const live: RunEvent[] = [];
    let runId = "";
    let subscribed!: () => void;
    const subscriberLive = new Promise<void>((r) => (subscribed = r));
    const subscription = (async () => {
      for await (const e of client.subscribe({ signal: liveCtl.signal })) {
        subscribed();
        // Every run event is kept: run_accepted is published before the submit's reply names
        // the run, so the filter by run id comes after.
        if (e.kind !== "run") continue;
        live.push(e);
        if (e.runId === runId && (e.type === "run_finished" || e.type === "run_failed")) break;
      }
    })();
    await subscriberLive;
    // A watch of every run, started before the submit: it ends at the server's closing.
    const everyRun = (async () => {
      const got: RunEvent[] = [];
      for await (const e of client.watch()) got.push(e);
      return got;
    })();

    const submitted = await client.submit(toml, {
      scenarioPath: "s.toml",
      clientRequestId: "ts-e2e-1",
    });
    runId = submitted.runId;
    assert.match(runId, /^tace_demo-[0-9a-f]{8}$/);
    const again = await client.submit(toml, {
      scenarioPath: "s.toml",
      clientRequestId: "ts-e2e-1",
    });
    assert.equal(again.runId, runId);
    assert.equal(again.duplicate, true);
    log(`submitted ${runId} (queue position ${submitted.queuePosition})`);

    // Join late: after the run published its first patient's events.
    const before = await waitFor(
      "the run to publish",
      async () => {
        const s = await client.status(runId);
        return s.lastSeq >= 5n || (s.state !== "queued" && s.state !== "running") ? s : undefined;
      },
      60_000,
    );
    log(`joining late: the run is ${before.state} at seq ${before.lastSeq}`);
    const stats = newStats();
    const watched: RunEvent[] = [];
    for await (const e of client.watch({ runId, stats })) watched.push(e);
    log(
      `watch: ${stats.delivered} events, ${stats.fromHistory} from the history, ` +
        `${stats.delivered - stats.fromHistory} live, ${stats.duplicates} live duplicates dropped, ` +
        `${stats.gaps} gaps healed, ${stats.heartbeats} server events`,
    );
    assert.ok(stats.fromHistory >= Number(before.lastSeq), "the late join read the history");
    assert.equal(stats.delivered, watched.length);

    await subscription;
    liveCtl.abort();
    const status = await client.status(runId);
    assert.equal(status.state, "finished", `run ended ${status.state}: ${status.error}`);
    assert.equal(status.patientsDone, 2);
    const jsonl = path.resolve(dir, "results", status.outputDir, "events.jsonl");
    const lines = readLog(
      fs.existsSync(jsonl) ? jsonl : path.join(status.outputDir, "events.jsonl"),
    );
    assert.equal(status.lastSeq, lines[lines.length - 1].seq);
    assertSameAsLog(watched, lines, "late join");
    assertSameAsLog(
      live.filter((e) => e.runId === runId),
      lines,
      "live subscription",
    );
    const types = new Set(watched.map((e) => e.type));
    for (const t of [
      "run_accepted",
      "run_started",
      "candidate_evaluated",
      "plan_decided",
      "run_finished",
    ]) {
      assert.ok(types.has(t as RunEvent["type"]), `no ${t} event`);
    }
    log(
      `late join == events.jsonl: ${lines.length} events, seq 1..${status.lastSeq}, ` +
        `${types.size} types; live subscription == events.jsonl`,
    );

    await assert.rejects(client.cancel(runId), (e: MewmError) => e.code === "not_cancellable");

    // The example program, in its own process, after the run ended: the whole history.
    const follow = spawnSync(
      process.execPath,
      [path.join(here, "../examples/follow.js"), runId, control, events],
      { encoding: "utf8", timeout: 20_000 },
    );
    assert.equal(follow.status, 0, follow.stderr);
    const printed = follow.stdout.trim().split("\n");
    assert.deepEqual(
      printed.map((l) => l.split(" ").slice(0, 2).join(" ")),
      lines.map((l) => `${l.seq} ${l.json.type}`),
    );
    assert.equal(printed.filter((l) => / plan_decided P\d+: /.test(l)).length, 2);
    log(`examples/follow.js: ${printed.length} lines, exit 0`);

    // Cancel: a second run, cancelled at once; its watch ends with run_cancelled.
    const second = await client.submit(toml, { scenarioPath: "s.toml" });
    const cancelled = await client.cancel(second.runId);
    assert.ok(["queued", "running", "cancelled"].includes(cancelled.state), cancelled.state);
    const tail: RunEvent[] = [];
    for await (const e of client.watch({ runId: second.runId })) tail.push(e);
    assert.equal(
      tail[tail.length - 1].type,
      "run_cancelled",
      `events: ${tail.map((e) => `${e.seq} ${e.type}`).join(", ")}`,
    );
    const secondStatus = await client.status(second.runId);
    assert.equal(secondStatus.state, "cancelled");
    assertSameAsLog(
      tail,
      readLog(path.resolve(dir, "results", secondStatus.outputDir, "events.jsonl")),
      "cancelled run",
    );
    log(`cancelled ${second.runId}: ${tail.length} events, the last run_cancelled`);

    server.kill("SIGTERM");
    assert.equal(await exited, 0, fs.readFileSync(path.join(dir, "serve.log"), "utf8"));
    const all = await everyRun;
    assertSameAsLog(
      all.filter((e) => e.runId === runId),
      lines,
      "every-run watch, first run",
    );
    assertSameAsLog(
      all.filter((e) => e.runId === second.runId),
      readLog(path.resolve(dir, "results", secondStatus.outputDir, "events.jsonl")),
      "every-run watch, second run",
    );
    log(`every-run watch: ${all.length} events of 2 runs, ended at server/closing`);
    const gone = new Client({ control, events, requestTimeoutMs: 300 });
    await assert.rejects(
      gone.status(runId),
      (e: MewmError) => e.code === "io" && /no reply|cannot send/.test(e.message),
    );
    gone.close();
    await curve(mewm, dir);
    log("PASS");
  } catch (err) {
    console.error(fs.readFileSync(path.join(dir, "serve.log"), "utf8").slice(-4000));
    throw err;
  } finally {
    clearTimeout(fail);
    client.close();
    if (server.exitCode === null) server.kill("SIGKILL");
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`FAIL: ${err instanceof Error ? err.stack : err}`);
    process.exit(1);
  },
);
