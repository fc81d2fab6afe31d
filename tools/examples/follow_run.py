#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
"""Follow a mewm run over HTTP (Server-Sent Events) and print the plans it decides.

Standard library only (urllib): no Cap'n Proto, no ZeroMQ. The server is `mewm serve` with its
HTTP port open (`--http-port`); see docs/PROTOCOL.md, "HTTP".

    python3 tools/examples/follow_run.py --url http://127.0.0.1:9464            # the newest run
    python3 tools/examples/follow_run.py --url http://127.0.0.1:9464 --run ID --jsonl events.jsonl

Each event arrives as one JSON object with the fields of the run's events.jsonl line, its `id:`
being the event's seq. When the connection drops, the script reconnects with Last-Event-ID and the
server resumes after that seq from its durable log: no gap, no duplicate. The stream ends when the
run ends. Exit status: 0 when the run finished, 1 when it failed or was cancelled, 2 on errors.
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

TERMINAL = {"run_finished", "run_failed", "run_cancelled"}


def request(url, token, headers=None):
    req = urllib.request.Request(url, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", "Bearer " + token)
    return req


def get_json(base, path, token):
    with urllib.request.urlopen(request(base + path, token), timeout=10) as response:
        return json.load(response)


def sse_messages(response):
    """Yields (id, data) for each message of an event stream, until the server closes it."""
    seq, data = None, []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:  # a blank line ends a message
            if data:
                yield seq, "\n".join(data)
            seq, data = None, []
        elif line.startswith(":"):  # a comment: the server's keepalive
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                seq = int(value)
            elif field == "data":
                data.append(value)


def describe(event):
    best = event["best"]
    plan = " + ".join(best["plan"]) or "no treatment"
    median = event.get("median_months")
    median_text = "not reached" if median is None or median < 0 else "%.1f months" % median
    return "%s: %s (risk %.3f +- %.3f, median survival %s)" % (
        event["patient_id"], plan, best["risk_mean"], best["risk_std"], median_text)


def follow(base, run_id, token, last_id, out, retries):
    """Streams the run's events from after `last_id`; returns the terminal event's type."""
    failures = 0
    while True:
        headers = {"Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = str(last_id)
        url = "%s/v1/runs/%s/events" % (base, urllib.request.quote(run_id))
        try:
            with urllib.request.urlopen(request(url, token, headers), timeout=60) as response:
                if response.status == 204:  # the run ended and everything was seen
                    return None
                for seq, data in sse_messages(response):
                    event = json.loads(data)
                    if seq != last_id + 1:
                        raise RuntimeError("event %d after %d: a gap or a duplicate" % (seq, last_id))
                    last_id = seq
                    failures = 0
                    if out:
                        out.write(data + "\n")
                        out.flush()
                    if event["type"] == "plan_decided":
                        print(describe(event), flush=True)
                    if event["type"] in TERMINAL:
                        return event["type"]
        except urllib.error.HTTPError as error:
            body = error.read().decode("utf-8", "replace").strip()
            raise RuntimeError("HTTP %d: %s" % (error.code, body)) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            failures += 1
            if failures > retries:
                raise RuntimeError("cannot reach %s: %s" % (base, error)) from None
            print("connection lost (%s); resuming after event %d" % (error, last_id),
                  file=sys.stderr)
            time.sleep(min(0.2 * 2 ** failures, 5.0))
        # A stream that closed before the terminal event (a dropped slow reader, a proxy timeout):
        # resume after the last event seen.


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9464",
                        help="the server's HTTP port (mewm serve --http-port)")
    parser.add_argument("--run", help="run id (default: the newest run the server knows)")
    parser.add_argument("--token-file", help="file holding the bearer token (--http-token-file)")
    parser.add_argument("--last-event-id", type=int, default=0,
                        help="resume after this seq (default: from the first event)")
    parser.add_argument("--jsonl", help="also write every event's JSON line to this file")
    parser.add_argument("--retries", type=int, default=5, help="reconnects in a row, at most")
    args = parser.parse_args()
    base = args.url.rstrip("/")
    token = None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            lines = [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]
        token = lines[0] if lines else None
    try:
        run_id = args.run
        if not run_id:
            runs = get_json(base, "/v1/runs", token)["runs"]
            if not runs:
                print("the server knows no runs yet", file=sys.stderr)
                return 2
            run_id = runs[-1]["run_id"]
        print("following run %s" % run_id, file=sys.stderr)
        out = open(args.jsonl, "w", encoding="utf-8") if args.jsonl else None
        try:
            end = follow(base, run_id, token, args.last_event_id, out, args.retries)
        finally:
            if out:
                out.close()
        status = get_json(base, "/v1/runs/" + urllib.request.quote(run_id), token)
        print("run %s %s: %d of %d patients planned" % (
            run_id, status["state"], status["patients_done"], status["patients_total"]),
            file=sys.stderr)
        return 0 if (end or "run_" + status["state"]) == "run_finished" else 1
    except (RuntimeError, urllib.error.URLError, ValueError, KeyError) as error:
        print("follow_run: %s" % error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
