// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// The reader-study page of `mewm turing serve`: one self-contained HTML file. The viewer is
// NiiVue (served from /vendor/niivue.umd.js when `tools/dev.sh turing-web` installed it); the PNG
// montage of each case is always shown, so the page works without it.
#include "turing_page.h"

namespace mewm::cli {

const char* TuringPageHtml() {
  return R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mewm reader study</title>
<style>
  body { font-family: sans-serif; margin: 1.5em; background: #f4f4f4; color: #111; }
  #progress-outer { width: 100%; height: 14px; background: #ddd; border-radius: 7px; }
  #progress { height: 14px; width: 0; background: #2a6; border-radius: 7px; }
  .viewer { display: inline-block; vertical-align: top; margin: 0.5em; text-align: center; }
  canvas { width: 420px; height: 420px; background: #000; }
  img.montage { max-width: 780px; display: block; margin-top: 0.3em; }
  button { font-size: 1em; padding: 0.4em 0.9em; margin: 0.2em; }
  button.chosen { background: #246; color: #fff; }
  #status { color: #a22; min-height: 1.2em; }
  .hidden { display: none; }
</style>
</head>
<body>
<h1>Reader study: post-treatment CT</h1>
<div id="login">
  <label>Reader ID (letters, digits, _ and -):
    <input id="reader" pattern="[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}" maxlength="64"></label>
  <button id="start">Start / resume</button>
</div>
<div id="study" class="hidden">
  <p id="question"></p>
  <div id="progress-outer"><div id="progress"></div></div>
  <p><span id="progress-text"></span> &middot; case <b id="case-id"></b></p>
  <div>
    Window: <button id="w-liver">Liver</button><button id="w-soft">Soft tissue</button>
    Plane: <button id="p-axial">Axial</button><button id="p-coronal">Coronal</button>
    <button id="p-sagittal">Sagittal</button><button id="p-multi">All three</button>
    (scroll slices with the mouse wheel or arrow keys)
  </div>
  <div id="viewers"></div>
  <div id="answers"></div>
  <div>Confidence:
    <label><input type="radio" name="confidence" value="1">1 (guess)</label>
    <label><input type="radio" name="confidence" value="2">2</label>
    <label><input type="radio" name="confidence" value="3">3</label>
    <label><input type="radio" name="confidence" value="4">4</label>
    <label><input type="radio" name="confidence" value="5">5 (certain)</label>
  </div>
  <button id="submit">Submit and next</button>
</div>
<div id="done" class="hidden"><h2>All cases answered. Thank you.</h2></div>
<p id="status"></p>
<script src="/vendor/niivue.umd.js"></script>
<script>
"use strict";
const WINDOWS = { liver: [-45, 205], soft: [-160, 240] };
let session = null, cursor = 0, chosen = null, shownAt = 0, viewers = [], windowName = "liver";
const $ = (id) => document.getElementById(id);
function status(text) { $("status").textContent = text || ""; }

async function start() {
  const reader = $("reader").value.trim();
  if (!/^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$/.test(reader)) { status("Invalid reader ID"); return; }
  const r = await fetch("/api/session?reader=" + encodeURIComponent(reader));
  if (!r.ok) { status(await r.text()); return; }
  session = await r.json();
  localStorage.setItem("mewm-reader", reader);
  $("login").classList.add("hidden");
  $("question").textContent = session.question;
  show();
}

function next() {
  const answered = new Set(session.answered);
  while (cursor < session.order.length && answered.has(session.order[cursor])) cursor++;
  return cursor < session.order.length ? session.order[cursor] : null;
}

function progress() {
  const n = session.answered.length, total = session.order.length;
  $("progress").style.width = (100 * n / Math.max(1, total)) + "%";
  $("progress-text").textContent = n + " of " + total + " answered";
}

function show() {
  progress();
  const id = next();
  if (id === null) {
    $("study").classList.add("hidden");
    $("done").classList.remove("hidden");
    return;
  }
  $("study").classList.remove("hidden");
  $("case-id").textContent = id;
  chosen = null;
  document.querySelectorAll("input[name=confidence]").forEach((e) => { e.checked = false; });
  const volumes = session.cases[id];
  const holder = $("viewers");
  holder.innerHTML = "";
  viewers = [];
  volumes.forEach((v) => {
    const div = document.createElement("div");
    div.className = "viewer";
    const title = document.createElement("div");
    title.textContent = v.label ? "Volume " + v.label : "";
    div.appendChild(title);
    if (window.niivue) {
      const canvas = document.createElement("canvas");
      div.appendChild(canvas);
      holder.appendChild(div);
      try {
        const nv = new niivue.Niivue({ show3Dcrosshair: false, isColorbar: false, crosshairWidth: 0.5 });
        nv.attachToCanvas(canvas);
        const w = WINDOWS[windowName];
        nv.loadVolumes([{ url: "/" + v.nifti, cal_min: w[0], cal_max: w[1] }]);
        viewers.push(nv);
      } catch (e) { status("viewer: " + e); }
    } else {
      holder.appendChild(div);
    }
    const img = document.createElement("img");
    img.className = "montage";
    img.alt = "axial | coronal | sagittal";
    img.src = "/" + v.png;
    div.appendChild(img);
  });
  const answers = $("answers");
  answers.innerHTML = "";
  const options = session.design === "pair"
      ? [["A", "A is synthetic"], ["B", "B is synthetic"]]
      : [["real", "Real"], ["synthetic", "Synthetic"]];
  options.forEach(([value, text]) => {
    const b = document.createElement("button");
    b.id = "answer-" + value;
    b.textContent = text;
    b.onclick = () => {
      chosen = value;
      answers.querySelectorAll("button").forEach((x) => x.classList.remove("chosen"));
      b.classList.add("chosen");
    };
    answers.appendChild(b);
  });
  shownAt = performance.now();
}

function setWindow(name) {
  windowName = name;
  const w = WINDOWS[name];
  viewers.forEach((nv) => {
    if (nv.volumes.length) { nv.volumes[0].cal_min = w[0]; nv.volumes[0].cal_max = w[1]; nv.updateGLVolume(); }
  });
}
function setPlane(kind) {
  const map = { axial: 0, coronal: 1, sagittal: 2, multi: 3 };  // NiiVue's slice types
  viewers.forEach((nv) => nv.setSliceType(map[kind]));
}

async function submit() {
  const c = document.querySelector("input[name=confidence]:checked");
  if (chosen === null || !c) { status("Choose an answer and a confidence"); return; }
  const id = session.order[cursor];
  const body = { reader: session.reader, case: id, answer: chosen, confidence: Number(c.value),
                 seconds: Math.round((performance.now() - shownAt) / 100) / 10 };
  $("submit").disabled = true;
  try {
    const r = await fetch("/api/answer", { method: "POST", headers: { "Content-Type": "application/json" },
                                           body: JSON.stringify(body) });
    if (!r.ok) { status("not saved: " + await r.text()); return; }
    const saved = await r.json();
    session.answered = saved.answered;
    status("");
    show();
  } catch (e) {
    status("not saved (server unreachable): " + e);
  } finally {
    $("submit").disabled = false;
  }
}

$("start").onclick = start;
$("submit").onclick = submit;
$("w-liver").onclick = () => setWindow("liver");
$("w-soft").onclick = () => setWindow("soft");
["axial", "coronal", "sagittal", "multi"].forEach((p) => { $("p-" + p).onclick = () => setPlane(p); });
const remembered = localStorage.getItem("mewm-reader");
if (remembered) { $("reader").value = remembered; start(); }
</script>
</body>
</html>
)HTML";
}

}  // namespace mewm::cli
