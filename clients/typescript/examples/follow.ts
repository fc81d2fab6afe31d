// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Follows one run from its first event to its end (history, then live) and prints one line per
// event: seq, type, and the patient and plan where there is one.
// Usage: node dist/examples/follow.js RUN_ID [CONTROL_ENDPOINT EVENTS_ENDPOINT]
// Exits 0 when the run finished, 3 when it finished with failed patients, 1 when it failed (or
// on an error), 4 when it was cancelled: the exit codes of `mewm watch --run`.

import { Client, MewmError } from "../src/index.js";

async function main(): Promise<number> {
  const [runId, control, events] = process.argv.slice(2);
  if (!runId) {
    console.error("usage: follow.js RUN_ID [CONTROL_ENDPOINT EVENTS_ENDPOINT]");
    return 2;
  }
  const client = new Client({ control, events });
  let code = 1;
  try {
    for await (const e of client.watch({ runId })) {
      let detail = "";
      if (e.type === "plan_decided") {
        const plan = e.data.best.plan.join(" + ") || "no treatment";
        detail = ` ${e.data.patientId}: ${plan} (risk ${e.data.best.riskMean.toFixed(3)})`;
      } else if (e.data && "patientId" in e.data) {
        detail = ` ${e.data.patientId}`;
      }
      console.log(`${e.seq} ${e.type ?? "(unknown kind)"}${detail}`);
      if (e.type === "run_finished") code = e.data.failed > 0 ? 3 : 0;
      if (e.type === "run_cancelled") code = 4;
    }
  } catch (err) {
    console.error(`follow: ${err instanceof MewmError ? err.message : err}`);
  } finally {
    client.close();
  }
  return code;
}

main().then((code) => process.exit(code));
