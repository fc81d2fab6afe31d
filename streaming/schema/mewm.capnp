# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
#
# The mewm wire protocol (docs/PROTOCOL.md documents every message).
#
# Evolution rules: changes are additive only. New fields and union members take new ordinals at
# the end; no field is removed, renamed in meaning, retyped or renumbered. A change that cannot be
# additive bumps `schemaVersion`, and a server rejects versions it does not know.

@0xda037fa10a7615a1;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("mewm::streaming::wire");

const schemaVersion :UInt16 = 1;

# --- Events (PUB socket, and inside snapshot replies) ---------------------------------------------

struct PlanScore {
  plan @0 :List(Text);    # canonical plan items, e.g. ["Lipiodol", "Epirubicin"]; empty = no treatment
                          # (named `items` before; same ordinal, so the wire is unchanged)
  riskMean @1 :Float64;
  riskStd @2 :Float64;
}

# A serialized .vdb that follows the envelope as the next frame of the same multipart message.
struct VolumeRef {
  sizeBytes @0 :UInt64;
  sha256 @1 :Data;        # 32 bytes, of the frame
  path @2 :Text;          # where the server wrote it, under its results root
}

struct RunAccepted { scenario @0 :Text; outputDir @1 :Text; queuePosition @2 :UInt32; }
struct RunStarted {
  scenario @0 :Text; outputDir @1 :Text; seed @2 :UInt64; patients @3 :UInt32; skipped @4 :UInt32;
}
struct RunFinished { finished @0 :UInt32; failed @1 :UInt32; seconds @2 :Float64; }
struct RunFailed { error @0 :Text; }
struct RunCancelled { finished @0 :UInt32; }
struct PatientStarted { patientId @0 :Text; index @1 :UInt32; total @2 :UInt32; }
struct PatientFinished {
  patientId @0 :Text; simulations @1 :Int64; memoHits @2 :Int64; modelEvaluations @3 :Int64;
  seconds @4 :Float64;
}
struct PatientFailed { patientId @0 :Text; error @1 :Text; }
struct Proposal {
  patientId @0 :Text; drugs @1 :List(Text); embolics @2 :List(Text); rationale @3 :Text;
}
struct CandidateEvaluated {
  patientId @0 :Text; stage @1 :Text; step @2 :UInt32; score @3 :PlanScore; memoHit @4 :Bool;
}
struct BeamUpdated { patientId @0 :Text; stage @1 :Text; step @2 :UInt32; beams @3 :List(PlanScore); }
struct PlanDecided {
  patientId @0 :Text; best @1 :PlanScore;
  medianMonths @2 :Float64;   # -1 when the survival curve never reaches 0.5
  volumePath @3 :Text;
}
struct Progress { stage @0 :Text; done @1 :UInt32; total @2 :UInt32; }
# The last seq of every run that published in the last minute: a client that missed the tail
# of a run (nothing after it would reveal the gap) sees it here and heals from a snapshot.
struct RunSeq { runId @0 :Text; lastSeq @1 :UInt64; }
struct Heartbeat { activeRun @0 :Text; queueDepth @1 :UInt32; recentRuns @2 :List(RunSeq); }
struct ServerClosing { reason @0 :Text; cancelledRuns @1 :UInt32; }

struct Envelope {
  schemaVersion @0 :UInt16;
  runId @1 :Text;           # empty on server/ events
  seq @2 :UInt64;           # per run (or per server for server/ events): 1, 2, 3, ... no gaps
  timestampNs @3 :Int64;    # when the event was made, ns since the Unix epoch
  traceId @4 :Text;         # the submit's trace id, carried by every event of the run
  volume @5 :VolumeRef;     # set when a volume frame follows
  event :union {
    runAccepted @6 :RunAccepted;
    runStarted @7 :RunStarted;
    runFinished @8 :RunFinished;
    runFailed @9 :RunFailed;
    runCancelled @10 :RunCancelled;
    patientStarted @11 :PatientStarted;
    patientFinished @12 :PatientFinished;
    patientFailed @13 :PatientFailed;
    proposal @14 :Proposal;
    candidateEvaluated @15 :CandidateEvaluated;
    beamUpdated @16 :BeamUpdated;
    planDecided @17 :PlanDecided;
    progress @18 :Progress;
    heartbeat @19 :Heartbeat;
    serverClosing @20 :ServerClosing;
  }
}

# --- Control (ROUTER socket; clients use DEALER and send [empty, Request]) ------------------------

struct Submit {
  scenarioToml @0 :Text;
  clientRequestId @1 :Text;   # idempotency: the same id gets the same run, never a second one
  scenarioPath @2 :Text;      # the file's path relative to the server's scenario base: its
                              # relative model paths resolve against its folder there
}
struct RunRef { runId @0 :Text; }
struct SnapshotRequest {
  runId @0 :Text;
  afterSeq @1 :UInt64;        # send events with seq > afterSeq
  maxEvents @2 :UInt32;       # 0 = the server's page size
}

struct Request {
  schemaVersion @0 :UInt16;
  requestId @1 :Text;         # echoed in the reply
  traceId @2 :Text;
  body :union {
    submit @3 :Submit;
    cancel @4 :RunRef;
    status @5 :RunRef;
    snapshot @6 :SnapshotRequest;
    listRuns @7 :Void;
    health @8 :Void;
  }
}

enum ErrorCode {
  malformed @0;        # not a Request, or a Request that breaks traversal or nesting limits
  tooLarge @1;         # over the server's request size cap
  wrongVersion @2;     # schemaVersion the server does not speak
  invalidScenario @3;  # the TOML does not parse or validate; message lists every problem
  queueFull @4;
  unknownRun @5;
  shuttingDown @6;
  forbiddenPath @7;    # an output or cohort path outside the results root
  internal @8;
  notCancellable @9;   # the run already ended
  overLimit @10;       # a submit over one of the server's admission limits; the message names it
}

enum RunState { queued @0; running @1; finished @2; failed @3; cancelled @4; }

struct RunStatus {
  runId @0 :Text;
  scenario @1 :Text;
  state @2 :RunState;
  lastSeq @3 :UInt64;
  patientsTotal @4 :UInt32;
  patientsDone @5 :UInt32;
  patientsFailed @6 :UInt32;
  outputDir @7 :Text;
  error @8 :Text;
  traceId @9 :Text;
}

struct Submitted {
  runId @0 :Text;
  queuePosition @1 :UInt32;
  duplicate @2 :Bool;         # true when clientRequestId was seen before
}

struct SnapshotReply {
  run @0 :RunStatus;
  events @1 :List(Data);      # serialized Envelopes, seq ascending, without volume frames
  more @2 :Bool;              # true when more events are stored after the last one sent
}

struct Histogram {
  stage @0 :Text;             # policy, dynamics, survival, publish
  count @1 :UInt64;
  sumSeconds @2 :Float64;
}

# The server's admission limits for submitted scenarios (0 = no limit). Estimates follow
# docs/PROTOCOL.md "Admission limits".
struct AdmissionLimits {
  maxPatients @0 :UInt32;     # synthetic cohort size (cohort.n)
  maxVoxels @1 :UInt64;       # CT voxels per synthetic patient: field of view / spacing, cubed
  maxBeamSamples @2 :UInt32;  # planner beams x samples
  maxDiskBytes @3 :UInt64;    # estimated disk of the cohort and the run's results
  maxSeconds @4 :Float64;     # estimated wall time of the run
}

struct Health {
  uptimeSeconds @0 :Float64;
  queueDepth @1 :UInt32;
  queueCapacity @2 :UInt32;
  activeRun @3 :Text;
  modelsLoaded @4 :List(Text);
  eventsPublished @5 :UInt64;
  eventsDropped @6 :UInt64;   # not sent because a subscriber was at its high-water mark
  badRequests @7 :UInt64;     # malformed, oversized or wrong-version requests
  rejectedSubmits @8 :UInt64;
  authFailures @9 :UInt64;    # CURVE clients refused by the allowlist
  stages @10 :List(Histogram);
  limits @11 :AdmissionLimits;
}

struct ErrorReply { code @0 :ErrorCode; message @1 :Text; }

struct Reply {
  schemaVersion @0 :UInt16;
  requestId @1 :Text;
  body :union {
    error @2 :ErrorReply;
    submitted @3 :Submitted;
    cancelled @4 :RunStatus;
    status @5 :RunStatus;
    snapshot @6 :SnapshotReply;
    runs @7 :List(RunStatus);
    health @8 :Health;
  }
}
