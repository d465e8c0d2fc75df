// Drives the web console (/console/) in real headless Chromium (Debian's
// /usr/bin/chromium, through playwright-core pinned in package-lock.json)
// against a `comfyfleet dev` stack built from this repository, on free
// ports with a folder of its own. It submits jobs through the endpoint API
// and checks what a user sees: a job appears, runs with progress and
// completes with its image shown; a running job is cancelled from its
// page; a dead letter is replayed; a paused lane keeps its job waiting
// until it is resumed. Screenshots of the fleet view and of a job page go
// to test/console/artifacts/. Every wait is on the page's state; nothing
// sleeps. Any failure exits 1.
//
//   npm ci && npm test        (from test/console; `make test` does this)
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const artifacts = join(here, "artifacts");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const STEP_DELAY_MS = 40; // the emulators' time per sampler step
const WAIT = { timeout: 60_000 };

// ---- the stack ------------------------------------------------------------

async function startStack() {
  const dir = mkdtempSync(join(tmpdir(), "comfyfleet-console-"));
  const bin = join(dir, "comfyfleet");
  console.log("building comfyfleet …");
  execFileSync("go", ["build", "-o", bin, "./cmd/comfyfleet"], { cwd: root, stdio: "inherit" });
  // An isolated stack whatever the environment says: dev reads every
  // variable of every binary it embeds, and its --help names them all.
  const help = execFileSync(bin, ["dev", "--help"], { encoding: "utf8" });
  const vars = [...help.matchAll(/\(env ([A-Z0-9_]+)\)/g)].map((m) => m[1]);
  assert.ok(vars.includes("COMFYSIM_STEP_DELAY") && vars.includes("MAX_ATTEMPTS"), `comfyfleet dev --help names no variables:\n${help}`);
  const env = { ...process.env };
  for (const k of vars) delete env[k];
  // One attempt: a job interrupted in ComfyUI by someone else goes to the
  // dead letters at once.
  env.COMFYSIM_STEP_DELAY = `${STEP_DELAY_MS}ms`;
  env.MAX_ATTEMPTS = "1";
  const stackDir = join(dir, "stack");
  const child = spawn(bin, ["dev", "--listen", "127.0.0.1:0", "--nats-port", "-1", "--dir", stackDir, "--workers", "2", "--log-level", "warn"], {
    cwd: root, env, stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));
  const urls = await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error("comfyfleet dev did not come up within 120 s")), 120_000);
    const got = {};
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      const api = line.match(/API (http:\/\/[^,\s]+)/);
      if (api) got.api = api[1];
      const con = line.match(/Web console: (http:\/\/\S+)/);
      if (con) got.console = con[1];
      if (got.api && got.console) {
        clearTimeout(timer);
        res(got);
      }
    });
    exited.then(({ code, signal }) => rej(new Error(`comfyfleet dev exited early (code ${code}, signal ${signal})`)));
  });
  const info = JSON.parse(readFileSync(join(stackDir, "stack.json"), "utf8"));
  assert.equal(info.console_url, urls.console, "stack.json names the console");
  console.log(`stack up: ${urls.api}, console ${urls.console}`);
  const stop = async () => {
    child.kill("SIGINT");
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    const { code } = await exited;
    clearTimeout(timer);
    rmSync(dir, { recursive: true, force: true });
    return code;
  };
  return { ...urls, comfyui: info.comfyui_urls, stop };
}

// ---- requests ---------------------------------------------------------------

const example = JSON.parse(readFileSync(join(root, "examples/txt2img.json"), "utf8"));

// request is the example workflow at 64x64 with its own seed and number of
// sampler steps (the emulators spend STEP_DELAY_MS on each).
function request(steps, seed) {
  const wf = structuredClone(example.input.workflow);
  wf["3"].inputs.steps = steps;
  wf["3"].inputs.seed = seed;
  wf["5"].inputs.width = 64;
  wf["5"].inputs.height = 64;
  return { input: { workflow: wf, previews: true } };
}

async function submit(api, steps, seed) {
  const r = await fetch(`${api}/run`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request(steps, seed)) });
  const text = await r.text();
  assert.equal(r.status, 200, `POST /run: ${r.status} ${text}`);
  const body = JSON.parse(text);
  assert.ok(body.id, "POST /run gave no id");
  return body.id;
}

async function status(api, id) {
  const r = await fetch(`${api}/status/${id}`);
  return (await r.json()).status;
}

// ---- the page ---------------------------------------------------------------

// jobStatus waits until the job page shows the status.
async function jobStatus(page, want) {
  await page.locator("#job-status").filter({ hasText: new RegExp(`^${want}$`) }).waitFor(WAIT);
}

async function openJob(page, consoleURL, id) {
  await page.goto(`${consoleURL}#/job/${id}`);
  await page.locator("h1", { hasText: id }).waitFor(WAIT);
}

async function main() {
  mkdirSync(artifacts, { recursive: true });
  const stack = await startStack();
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
  let failed = false;
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    const { api } = stack;
    const consoleURL = stack.console;

    // 1. A job appears in the list, runs with progress, completes with its
    // image shown.
    await page.goto(`${consoleURL}#/jobs`);
    await page.locator("#live.on").waitFor(WAIT);
    const first = await submit(api, 60, 1);
    const row = page.locator(`#jobs tr[data-job="${first}"]`);
    await row.waitFor(WAIT);
    console.log(`job ${first} appeared in the list`);
    await row.locator("a").click();
    await page.locator("h1", { hasText: first }).waitFor(WAIT);
    await page.locator("#job-progress [role=progressbar]").waitFor(WAIT);
    console.log(`job ${first} shows progress`);
    await jobStatus(page, "COMPLETED");
    await page.waitForFunction(() => {
      const img = document.querySelector("#outputs figure[data-kind=images] img");
      return img && img.complete && img.naturalWidth > 0;
    }, null, WAIT);
    await page.locator("#timeline").getByText("IN_PROGRESS").waitFor(WAIT);
    await page.locator("#workflow").getByText("KSampler").waitFor(WAIT);
    await page.screenshot({ path: join(artifacts, "job.png"), fullPage: true });
    console.log(`job ${first} completed with its image shown`);

    // The list's search finds it by id, and by status.
    await page.goto(`${consoleURL}#/jobs?q=${first.slice(0, 8)}&status=COMPLETED`);
    await page.locator(`#jobs tr[data-job="${first}"] .job-status`, { hasText: "COMPLETED" }).waitFor(WAIT);
    await page.goto(`${consoleURL}#/jobs?status=FAILED`);
    await page.locator("#jobs", { hasText: "No job matches." }).waitFor(WAIT);

    // 2. A running job is cancelled from its page; the fleet view shows
    // it running meanwhile.
    const long = await submit(api, 5000, 2);
    await page.goto(`${consoleURL}#/`);
    const busy = page.locator(`#workers tr[data-worker] td a`, { hasText: long });
    await busy.waitFor(WAIT);
    await page.locator("#workers .worker-state", { hasText: "running" }).first().waitFor(WAIT);
    await page.screenshot({ path: join(artifacts, "fleet.png"), fullPage: true });
    await openJob(page, consoleURL, long);
    await jobStatus(page, "IN_PROGRESS");
    await page.getByRole("button", { name: "Cancel job" }).click();
    await jobStatus(page, "CANCELLED");
    assert.equal(await status(api, long), "CANCELLED", "the API agrees the job is cancelled");
    console.log(`job ${long} cancelled from its page`);

    // 3. A job interrupted in ComfyUI by someone else, with one attempt
    // allowed, becomes a dead letter; replayed from the console, it runs
    // again and completes.
    const doomed = await submit(api, 75, 3);
    await openJob(page, consoleURL, doomed);
    await page.locator("#job-progress [role=progressbar]").waitFor(WAIT);
    for (const u of stack.comfyui) {
      const r = await fetch(`${u}/interrupt`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
      assert.equal(r.status, 200, `interrupt ${u}`);
    }
    await jobStatus(page, "FAILED");
    await page.goto(`${consoleURL}#/dlq`);
    const letter = page.locator(`#dlq tr[data-job="${doomed}"]`);
    await letter.waitFor(WAIT);
    await letter.getByRole("button", { name: "Replay" }).click();
    await page.locator(`#dlq tr[data-job="${doomed}"]`).waitFor({ state: "detached", timeout: WAIT.timeout });
    await openJob(page, consoleURL, doomed);
    await jobStatus(page, "COMPLETED");
    console.log(`dead letter of ${doomed} replayed; the job completed`);

    // 4. A paused lane keeps its job waiting; resumed, the job runs.
    await page.goto(`${consoleURL}#/`);
    const lane = page.locator(`#lanes tr[data-lane="default/interactive"]`);
    await lane.waitFor(WAIT);
    await lane.getByRole("button", { name: "Pause" }).click();
    // Every worker of the pool says it skips the lane.
    await lane.locator(".lane-state", { hasText: /^paused$/ }).waitFor(WAIT);
    const held = await submit(api, 10, 4);
    await lane.locator(".lane-queued", { hasText: /^1$/ }).waitFor(WAIT);
    assert.equal(await status(api, held), "IN_QUEUE", "the job waits while its lane is paused");
    await openJob(page, consoleURL, held);
    await jobStatus(page, "IN_QUEUE");
    console.log(`job ${held} waits on the paused lane`);
    await page.goto(`${consoleURL}#/`);
    await lane.getByRole("button", { name: "Resume" }).click();
    await lane.locator(".lane-state", { hasText: /^active$/ }).waitFor(WAIT);
    await openJob(page, consoleURL, held);
    await jobStatus(page, "COMPLETED");
    console.log(`lane resumed; job ${held} ran`);

    assert.deepEqual(pageErrors, [], "the page threw no error");
  } catch (e) {
    failed = true;
    console.error(e);
    // What the console's API said of the fleet when the wait gave up: the
    // lanes' counts and the workers' paused lanes explain a lane wait.
    try {
      const r = await fetch(`${stack.console}api/fleet`);
      console.error(`fleet at failure: ${r.status} ${await r.text()}`);
    } catch (_) { /* the failure is reported above */ }
    try {
      const pages = browser.contexts().flatMap((c) => c.pages());
      if (pages.length) await pages[0].screenshot({ path: join(artifacts, "failure.png"), fullPage: true });
    } catch (_) { /* the failure is reported above */ }
  } finally {
    await browser.close();
    const code = await stack.stop();
    if (code !== 0) {
      console.error(`comfyfleet dev exited with code ${code}`);
      failed = true;
    }
  }
  if (failed) process.exit(1);
  console.log(`console test passed; screenshots in ${artifacts}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
