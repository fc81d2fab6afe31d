// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The mewm client: requests on the control socket (DEALER, Lazy Pirate) and events on the PUB
// socket (SUB), with the late join of docs/PROTOCOL.md "Joining late".

import { readFileSync } from "node:fs";
import * as capnp from "capnp-es";
import { Dealer, Subscriber } from "zeromq";
import * as wire from "./gen/mewm.js";
import {
  MewmError,
  SCHEMA_VERSION,
  attachVolume,
  decodeEnvelope,
  readMessage,
  type Event,
  type RunEvent,
  type ServerEvent,
} from "./events.js";
import { Follower, type HistoryPage, type WatchStats } from "./follow.js";

export interface ClientOptions {
  /** The server's ROUTER socket (default tcp://127.0.0.1:5555). */
  control?: string;
  /** The server's PUB socket (default tcp://127.0.0.1:5556). */
  events?: string;
  /** Milliseconds to wait for a reply before the request fails (default 5000). */
  requestTimeoutMs?: number;
  /** Milliseconds of silence on the event socket before it is reopened (default 5000). */
  livenessMs?: number;
  /** Subscriber high-water mark, in messages (default 100000). */
  receiveHwm?: number;
  /** CURVE: the server's public key and this client's key pair, Z85 (40 characters each). */
  curve?: { serverPublicKey: string; publicKey: string; secretKey: string };
}

export type RunState = "queued" | "running" | "finished" | "failed" | "cancelled";

export interface RunStatus {
  runId: string;
  scenario: string;
  state: RunState;
  lastSeq: bigint;
  patientsTotal: number;
  patientsDone: number;
  patientsFailed: number;
  outputDir: string;
  error: string;
  traceId: string;
}

export interface Submitted {
  runId: string;
  queuePosition: number;
  duplicate: boolean;
}

export interface SubmitOptions {
  /** Idempotency key: the same id gets the same run, never a second one. */
  clientRequestId?: string;
  /** The file's path relative to the server's scenario base ("" = the base itself). */
  scenarioPath?: string;
  traceId?: string;
}

export interface WatchOptions {
  /** One run, from its first event; empty or absent: every run not ended, and new ones. */
  runId?: string;
  /** With runId: end after the run's terminal event (default true). */
  untilEnd?: boolean;
  /** Ends the watch (the generator returns) at the next event or within about 100 ms. */
  signal?: AbortSignal;
  /** Called with every server event (heartbeats, closing). */
  onServer?: (e: ServerEvent) => void;
  /** Filled with the watch's counters as it goes. */
  stats?: WatchStats;
}

const STATES: RunState[] = ["queued", "running", "finished", "failed", "cancelled"];
const ERROR_CODES = [
  "malformed",
  "too_large",
  "wrong_version",
  "invalid_scenario",
  "queue_full",
  "unknown_run",
  "shutting_down",
  "forbidden_path",
  "internal",
  "not_cancellable",
  "over_limit",
];
const POLL_MS = 100;

function isTimeout(err: unknown): boolean {
  return (err as { code?: string })?.code === "EAGAIN";
}

function runStatus(s: wire.RunStatus): RunStatus {
  return {
    runId: s.runId,
    scenario: s.scenario,
    state: STATES[s.state] ?? ("unknown" as RunState),
    lastSeq: s.lastSeq,
    patientsTotal: s.patientsTotal,
    patientsDone: s.patientsDone,
    patientsFailed: s.patientsFailed,
    outputDir: s.outputDir,
    error: s.error,
    traceId: s.traceId,
  };
}

/**
 * Reads a key file of `mewm keygen` (BASE.pub or BASE.key): its one line that is not a comment,
 * a Z85 key of 40 characters.
 */
export function readCurveKey(file: string): string {
  const lines = readFileSync(file, "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l.length > 0 && !l.startsWith("#"));
  if (lines.length !== 1 || lines[0].length !== 40) {
    throw new MewmError(
      `${file} is not a mewm key file (one Z85 key of 40 characters)`,
      "invalid_argument",
    );
  }
  return lines[0];
}

/** The run topic prefix; the trailing "/" keeps run/abc/ from matching run/abcd/. */
export function runTopicPrefix(runId: string): string {
  return `run/${runId}/`;
}

export class Client {
  private readonly control: string;
  private readonly eventsEndpoint: string;
  private readonly requestTimeoutMs: number;
  private readonly livenessMs: number;
  private readonly receiveHwm: number;
  private readonly curve?: ClientOptions["curve"];
  private dealer: Dealer;
  private requests = 0;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(options: ClientOptions = {}) {
    this.control = options.control ?? "tcp://127.0.0.1:5555";
    this.eventsEndpoint = options.events ?? "tcp://127.0.0.1:5556";
    this.requestTimeoutMs = options.requestTimeoutMs ?? 5000;
    this.livenessMs = options.livenessMs ?? 5000;
    this.receiveHwm = options.receiveHwm ?? 100000;
    this.curve = options.curve;
    if (this.curve && (this.curve.publicKey.length !== 40 || this.curve.secretKey.length !== 40)) {
      throw new MewmError(
        "CURVE needs this client's public and secret keys (z85, 40 characters)",
        "invalid_argument",
      );
    }
    this.dealer = this.openDealer();
  }

  /** Closes the control socket. Watches and subscriptions close their own sockets. */
  close(): void {
    this.closed = true;
    this.dealer.close();
  }

  private secure(): Record<string, string> {
    if (!this.curve) return {};
    return {
      curveServerKey: this.curve.serverPublicKey,
      curvePublicKey: this.curve.publicKey,
      curveSecretKey: this.curve.secretKey,
    };
  }

  private openDealer(): Dealer {
    // A send waits at most the request timeout for a connection: a DEALER whose peer is gone (a
    // CURVE handshake the server refused, a server not up) would otherwise block it forever.
    const dealer = new Dealer({
      linger: 0,
      sendTimeout: this.requestTimeoutMs,
      receiveTimeout: this.requestTimeoutMs,
      ...this.secure(),
    });
    dealer.connect(this.control);
    return dealer;
  }

  /** Sends one request and waits for its reply; requests run one at a time. */
  private call(fill: (body: wire.Request_Body) => void): Promise<wire.Reply_Body> {
    const run = this.queue.then(() => this.exchange(fill));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async exchange(fill: (body: wire.Request_Body) => void): Promise<wire.Reply_Body> {
    if (this.closed) throw new MewmError("the client is closed", "closed");
    const requestId = `ts${process.pid}-${++this.requests}`;
    const message = new capnp.Message();
    const request = message.initRoot(wire.Request);
    request.schemaVersion = SCHEMA_VERSION;
    request.requestId = requestId;
    fill(request.body);
    const bytes = Buffer.from(message.toArrayBuffer());
    const deadline = Date.now() + this.requestTimeoutMs;
    try {
      await this.dealer.send([Buffer.alloc(0), bytes]);
    } catch (err) {
      this.dealer.close();
      this.dealer = this.openDealer();
      if (!isTimeout(err)) throw new MewmError(`control socket: ${(err as Error).message}`, "io");
      throw new MewmError(
        `cannot send to ${this.control} within ${this.requestTimeoutMs} ms (is the server ` +
          `running? with CURVE: is this client's key on its allowlist?)`,
        "io",
      );
    }
    for (;;) {
      const left = deadline - Date.now();
      let frames: Buffer[];
      try {
        if (left <= 0) throw Object.assign(new Error("timeout"), { code: "EAGAIN" });
        this.dealer.receiveTimeout = left;
        frames = await this.dealer.receive();
      } catch (err) {
        if (!isTimeout(err)) throw new MewmError(`control socket: ${(err as Error).message}`, "io");
        // Lazy Pirate: a late reply must not answer the next request.
        this.dealer.close();
        this.dealer = this.openDealer();
        throw new MewmError(
          `no reply from ${this.control} within ${this.requestTimeoutMs} ms (is the server ` +
            `running? with CURVE: is this client's key on its allowlist?)`,
          "io",
        );
      }
      if (frames.length !== 2 || frames[0].byteLength !== 0) continue; // not a reply to us
      let reply: wire.Reply;
      try {
        reply = readMessage(frames[1]).getRoot(wire.Reply);
        // A reply to an earlier request that timed out is skipped; "" answers undecodable input.
        if (reply.requestId !== "" && reply.requestId !== requestId) continue;
      } catch (err) {
        throw new MewmError(`reply from ${this.control}: ${(err as Error).message}`, "corrupt");
      }
      if (reply.schemaVersion === 0 || reply.schemaVersion > SCHEMA_VERSION) {
        throw new MewmError(`reply of schema version ${reply.schemaVersion}`, "wrong_version");
      }
      const body = reply.body;
      if (body.which() === wire.Reply_Body_Which.ERROR) {
        const code = ERROR_CODES[body.error.code] ?? "malformed";
        throw new MewmError(`server: ${code}: ${body.error.message}`, code);
      }
      return body;
    }
  }

  private static expect(body: wire.Reply_Body, which: number, what: string): void {
    if (body.which() !== which) {
      throw new MewmError(
        `the server answered a ${what} request with the wrong kind of reply`,
        "corrupt",
      );
    }
  }

  /** Submits a scenario's TOML text; resolves to the new run's id, queue position and duplicate flag. */
  async submit(scenarioToml: string, options: SubmitOptions = {}): Promise<Submitted> {
    const body = await this.call((b) => {
      const s = b._initSubmit();
      s.scenarioToml = scenarioToml;
      s.clientRequestId = options.clientRequestId ?? "";
      s.scenarioPath = options.scenarioPath ?? "";
    });
    Client.expect(body, wire.Reply_Body_Which.SUBMITTED, "submit");
    const s = body.submitted;
    return { runId: s.runId, queuePosition: s.queuePosition, duplicate: s.duplicate };
  }

  /** Cancels a run; resolves to its status (a running run's state before it stops). */
  async cancel(runId: string): Promise<RunStatus> {
    const body = await this.call((b) => {
      b._initCancel().runId = runId;
    });
    Client.expect(body, wire.Reply_Body_Which.CANCELLED, "cancel");
    return runStatus(body.cancelled);
  }

  /** One run's status. */
  async status(runId: string): Promise<RunStatus> {
    const body = await this.call((b) => {
      b._initStatus().runId = runId;
    });
    Client.expect(body, wire.Reply_Body_Which.STATUS, "status");
    return runStatus(body.status);
  }

  /** Every run the server knows, in submission order. */
  async listRuns(): Promise<RunStatus[]> {
    const body = await this.call((b) => {
      b.listRuns = true;
    });
    Client.expect(body, wire.Reply_Body_Which.RUNS, "list");
    const out: RunStatus[] = [];
    for (let i = 0; i < body.runs.length; i++)
      out.push(runStatus(body.runs.at(i) as wire.RunStatus));
    return out;
  }

  /** One page of a run's stored events with seq > afterSeq (maxEvents 0 = the server's page). */
  async snapshot(
    runId: string,
    afterSeq: bigint,
    maxEvents = 0,
  ): Promise<HistoryPage & { run: RunStatus }> {
    const body = await this.call((b) => {
      const s = b._initSnapshot();
      s.runId = runId;
      s.afterSeq = afterSeq;
      s.maxEvents = maxEvents;
    });
    Client.expect(body, wire.Reply_Body_Which.SNAPSHOT, "snapshot");
    const page = body.snapshot;
    const events: RunEvent[] = [];
    for (let i = 0; i < page.events.length; i++) {
      const e = decodeEnvelope((page.events.at(i) as capnp.Data).toUint8Array());
      if (e.kind !== "run")
        throw new MewmError(`snapshot of ${runId} holds a server event`, "corrupt");
      events.push(e);
    }
    return { run: runStatus(page.run), events, more: page.more };
  }

  private openSubscriber(prefix: string): Subscriber {
    const sub = new Subscriber({
      linger: 0,
      receiveHighWaterMark: this.receiveHwm,
      receiveTimeout: POLL_MS,
      ...this.secure(),
    });
    sub.subscribe(prefix, "server/");
    sub.connect(this.eventsEndpoint);
    return sub;
  }

  private static async receive(sub: Subscriber): Promise<Buffer[] | undefined> {
    try {
      return await sub.receive();
    } catch (err) {
      if (isTimeout(err)) return undefined;
      throw new MewmError(`event socket: ${(err as Error).message}`, "io");
    }
  }

  /**
   * Live events only, as they are published: run events of one run (or every run) and server
   * events. No history and no gap detection; use watch() for that. Ends when the caller breaks
   * out of the loop or the signal aborts.
   */
  async *subscribe(options: { runId?: string; signal?: AbortSignal } = {}): AsyncGenerator<Event> {
    const sub = this.openSubscriber(options.runId ? runTopicPrefix(options.runId) : "run/");
    try {
      while (!options.signal?.aborted) {
        const frames = await Client.receive(sub);
        if (!frames) continue;
        if (frames.length < 2)
          throw new MewmError("event message without an envelope frame", "corrupt");
        const e = decodeEnvelope(frames[1]);
        if (e.kind === "run") attachVolume(e, frames);
        yield e;
      }
    } finally {
      sub.close();
    }
  }

  /**
   * Follows a run (or every run) with the Clone pattern: subscribe, wait until the subscription
   * is live, read the history from snapshots, then the live events with the seq rules of
   * docs/PROTOCOL.md "Joining late". Every event is delivered once, in seq order, with no gap.
   */
  async *watch(options: WatchOptions = {}): AsyncGenerator<RunEvent> {
    const runId = options.runId ?? "";
    const untilEnd = options.untilEnd ?? true;
    const follower = new Follower(async (id, after) => this.snapshot(id, after));
    if (options.stats) Object.assign(follower.stats, options.stats);
    const stats = follower.stats;
    let serverClosed = false;
    const sync = () => {
      if (options.stats) Object.assign(options.stats, stats);
    };
    const done = () =>
      serverClosed ||
      options.signal?.aborted === true ||
      (runId !== "" && untilEnd && follower.ended.has(runId));
    const prefix = runId ? runTopicPrefix(runId) : "run/";

    // Subscribe, then wait for the first message (a heartbeat will do) so the subscription is
    // known to be live before the history is read; what arrives meanwhile is kept for after it.
    const early: Buffer[][] = [];
    const subscribe = async (): Promise<Subscriber> => {
      const s = this.openSubscriber(prefix);
      const until = Date.now() + this.livenessMs;
      while (Date.now() < until && !options.signal?.aborted) {
        const frames = await Client.receive(s);
        if (frames) {
          early.push(frames);
          break;
        }
      }
      return s;
    };
    const healAll = async (): Promise<RunEvent[]> => {
      if (runId) return follower.heal(runId);
      const out: RunEvent[] = [];
      for (const id of [...follower.last.keys()]) {
        if (!follower.ended.has(id)) out.push(...(await follower.heal(id)));
      }
      return out;
    };
    const ioTolerant = async (f: () => Promise<RunEvent[]>): Promise<RunEvent[]> => {
      try {
        return await f();
      } catch (err) {
        if (err instanceof MewmError && err.code === "io") return []; // server away: try later
        throw err;
      }
    };
    const handle = async (frames: Buffer[]): Promise<RunEvent[]> => {
      if (frames.length < 2)
        throw new MewmError("event message without an envelope frame", "corrupt");
      const e = decodeEnvelope(frames[1]);
      if (e.kind === "server") {
        stats.heartbeats++;
        options.onServer?.(e);
        if (e.type === "heartbeat") {
          const beat = e.data;
          const followed = (id: string) =>
            runId ? id === runId : follower.last.has(id) || id === beat.activeRun;
          return ioTolerant(() => follower.missedTails(beat.recentRuns, followed));
        }
        if (runId) {
          throw new MewmError(
            `the server closed (${e.data.reason}) before the watch ended`,
            "cancelled",
          );
        }
        serverClosed = true; // following every run: the server's end is the watch's
        return [];
      }
      if (runId && e.runId !== runId) return [];
      attachVolume(e, frames);
      return follower.live(e);
    };

    let sub = await subscribe();
    try {
      if (!runId) {
        // A server that is not up yet has no runs to catch up on: its runs will arrive live.
        let runs: RunStatus[] = [];
        try {
          runs = await this.listRuns();
        } catch (err) {
          if (!(err instanceof MewmError && err.code === "io")) throw err;
        }
        for (const r of runs) {
          if (r.state === "queued" || r.state === "running") follower.last.set(r.runId, 0n);
        }
      }
      // A batch is yielded whole: the follower marks a run ended when it reads the terminal
      // event, before the events ahead of it in the batch were handed over.
      for (const e of await healAll()) {
        sync();
        yield e;
      }
      let lastTraffic = Date.now();
      while (!done()) {
        while (early.length > 0 && !done()) {
          for (const e of await handle(early.shift()!)) {
            sync();
            yield e;
          }
        }
        if (done()) break;
        const frames = await Client.receive(sub);
        if (frames) {
          lastTraffic = Date.now();
          for (const e of await handle(frames)) {
            sync();
            yield e;
          }
          continue;
        }
        if (Date.now() - lastTraffic > this.livenessMs) {
          // Silence: reopen the subscription, then catch up from the history.
          sub.close();
          sub = await subscribe();
          stats.reconnects++;
          lastTraffic = Date.now();
          for (const e of await ioTolerant(healAll)) {
            sync();
            yield e;
          }
        }
      }
    } finally {
      sync();
      sub.close();
    }
  }
}
