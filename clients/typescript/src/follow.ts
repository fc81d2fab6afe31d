// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The seq rules of a late join (docs/PROTOCOL.md "Joining late"), apart from the sockets so they
// can be tested alone. They mirror Client::Watch of streaming/src/client.cc: per run, the last
// delivered seq; history pages after it; live events with seq <= last dropped as duplicates,
// last + 1 delivered, and a jump healed from the history or reported as an error.

import { MewmError, isTerminal, type RunEvent, type RunSeq } from "./events.js";

/** One page of a run's history: events with seq > afterSeq, ascending, and whether more follow. */
export interface HistoryPage {
  events: RunEvent[];
  more: boolean;
}

export type ReadHistory = (runId: string, afterSeq: bigint) => Promise<HistoryPage>;

export interface WatchStats {
  delivered: number; // events handed to the caller
  fromHistory: number; // of those, read from snapshots
  duplicates: number; // live events dropped because the history had them
  gaps: number; // jumps in the live stream (or missed tails) healed from the history
  unknown: number; // events of a kind newer than this client: their seq kept, not delivered
  heartbeats: number; // server events received
  reconnects: number; // subscriptions reopened after silence
}

export function newStats(): WatchStats {
  return {
    delivered: 0,
    fromHistory: 0,
    duplicates: 0,
    gaps: 0,
    unknown: 0,
    heartbeats: 0,
    reconnects: 0,
  };
}

/** Per-run seq bookkeeping of one watch. Every method returns the events to deliver, in order. */
export class Follower {
  /** Per run: the last seq delivered (0 before the first). */
  readonly last = new Map<string, bigint>();
  readonly ended = new Set<string>();
  readonly stats = newStats();

  constructor(private readonly readHistory: ReadHistory) {}

  private accept(e: RunEvent, history: boolean, out: RunEvent[]): void {
    this.last.set(e.runId, e.seq);
    if (e.type === undefined) {
      this.stats.unknown++;
      return;
    }
    if (isTerminal(e)) this.ended.add(e.runId);
    this.stats.delivered++;
    if (history) this.stats.fromHistory++;
    out.push(e);
  }

  /** Reads a run's history after its last delivered seq, page by page. */
  async heal(runId: string): Promise<RunEvent[]> {
    const out: RunEvent[] = [];
    for (;;) {
      const have = this.last.get(runId) ?? 0n;
      this.last.set(runId, have);
      const page = await this.readHistory(runId, have);
      for (const e of page.events) {
        if (e.runId !== runId) {
          throw new MewmError(`snapshot of ${runId} holds a foreign event`, "corrupt");
        }
        const last = this.last.get(runId)!;
        if (e.seq <= last) continue;
        if (e.seq !== last + 1n) {
          throw new MewmError(
            `gap in the server's history of ${runId}: after seq ${last} comes ${e.seq}`,
            "corrupt",
          );
        }
        this.accept(e, true, out);
      }
      if (!page.more || page.events.length === 0) return out;
    }
  }

  /** A live event: a duplicate is dropped, the next one delivered, a jump healed first. */
  async live(e: RunEvent): Promise<RunEvent[]> {
    const runId = e.runId;
    const known = this.last.has(runId);
    const have = this.last.get(runId) ?? 0n;
    if (e.seq <= have) {
      this.stats.duplicates++;
      return [];
    }
    const out: RunEvent[] = [];
    if (e.seq > have + 1n) {
      if (known) this.stats.gaps++; // a run seen for the first time is a late join
      this.last.set(runId, have);
      try {
        out.push(...(await this.heal(runId)));
      } catch (err) {
        throw new MewmError(
          `gap in ${runId}: after seq ${have} came ${e.seq}, and the server could not supply ` +
            `the missing events (${(err as Error).message})`,
          "corrupt",
        );
      }
      const last = this.last.get(runId)!;
      if (e.seq <= last) return out; // the history already had it
      if (e.seq !== last + 1n) {
        throw new MewmError(
          `gap in ${runId}: the server's history ends at seq ${last} but seq ${e.seq} was published`,
          "corrupt",
        );
      }
    }
    this.accept(e, false, out);
    return out;
  }

  /**
   * A heartbeat's recentRuns: a followed run further along than what was delivered, with nothing
   * on the way, lost its tail; it is read from the history. `followed` says which runs count.
   */
  async missedTails(recent: RunSeq[], followed: (runId: string) => boolean): Promise<RunEvent[]> {
    const out: RunEvent[] = [];
    for (const run of recent) {
      if (!followed(run.runId) || this.ended.has(run.runId)) continue;
      if (run.lastSeq <= (this.last.get(run.runId) ?? 0n)) continue;
      this.stats.gaps++;
      out.push(...(await this.heal(run.runId)));
    }
    return out;
  }
}
