// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Browser end-to-end test of `mewm turing serve` (run by tests/tools/turing_browser_test.sh):
// Debian's chromium driven over the DevTools protocol by puppeteer-core, which downloads no
// browser. Usage: node e2e.mjs URL READER SCREENSHOT.png
// Answers three cases, reloads and checks the page resumes at the fourth, and checks that the key
// is refused. Prints one JSON line with what it saw; exits 1 on a failed check.
import puppeteer from "puppeteer-core";

const [url, reader, screenshot] = process.argv.slice(2);
const browserPath = process.env.MEWM_CHROMIUM || "/usr/bin/chromium";
const fail = (message) => {
  console.error("e2e: FAIL: " + message);
  process.exit(1);
};

const browser = await puppeteer.launch({
  executablePath: browserPath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--use-gl=swiftshader",
         "--enable-unsafe-swiftshader"],
});
const seen = { answered: [], errors: [] };
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => seen.errors.push(String(e)));
  await page.setViewport({ width: 1280, height: 1000 });
  await page.goto(url, { waitUntil: "load" });
  await page.type("#reader", reader);
  await page.click("#start");
  await page.waitForSelector("#study:not(.hidden)", { timeout: 20000 });
  const total = await page.evaluate(() => session.order.length);
  for (let i = 0; i < 3; i++) {
    const id = await page.$eval("#case-id", (e) => e.textContent);
    await page.click(i === 1 ? "#answer-synthetic" : "#answer-real");
    await page.click(`input[name=confidence][value="${i + 2}"]`);
    await page.click("#submit");
    await page.waitForFunction(
        (prev, n) => document.querySelector("#progress-text").textContent.startsWith(n + " of"),
        { timeout: 20000 }, id, i + 1);
    seen.answered.push(id);
  }
  // Give the viewer a moment to draw, then keep a picture of the page for the docs.
  await new Promise((r) => setTimeout(r, 1500));
  await page.screenshot({ path: screenshot });
  const expectedNext = await page.evaluate(() => session.order[3]);
  // A reload resumes: the reader ID is remembered, the server knows the answers.
  await page.reload({ waitUntil: "load" });
  await page.waitForSelector("#study:not(.hidden)", { timeout: 20000 });
  seen.progressAfterReload = await page.$eval("#progress-text", (e) => e.textContent);
  seen.caseAfterReload = await page.$eval("#case-id", (e) => e.textContent);
  if (seen.progressAfterReload !== `3 of ${total} answered`) fail("progress after reload: " + seen.progressAfterReload);
  if (seen.caseAfterReload !== expectedNext) fail(`resumed at ${seen.caseAfterReload}, expected ${expectedNext}`);
  // The key is refused whatever the path.
  seen.keyStatus = await page.evaluate(async () => {
    const out = {};
    for (const p of ["/key.json", "/../key.json", "/cases/../key.json", "/%2e%2e/key.json",
                     "/manifest.json", "/answers/" + session.reader + ".jsonl"]) {
      out[p] = (await fetch(p)).status;
    }
    return out;
  });
  for (const [p, status] of Object.entries(seen.keyStatus)) {
    if (status === 200) fail("served " + p);
  }
  seen.viewer = await page.evaluate(() => typeof window.niivue === "object");
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
