// Drives the real npm runpod-sdk@1.1.2 (RunPod's JavaScript client, pinned
// in package-lock.json) against a running comfyfleet dev stack: the
// `comfyfleet dev` binary, built from this repository, with the ComfyUI
// emulator behind two workers, on a free port. Only the base URL differs
// from talking to api.runpod.ai. Any deviation fails the process (exit 1).
//
//   npm ci && npm test        (from test/node; `make test` does this)
import runpodSdk from "runpod-sdk";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const TERMINAL = ["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"];
const PNG_BASE64 = "iVBORw0KGgo"; // the PNG signature, base64

// ---- the stack ------------------------------------------------------------

async function startStack() {
  const dir = mkdtempSync(join(tmpdir(), "comfyfleet-node-"));
  const bin = join(dir, "comfyfleet");
  console.log("building comfyfleet …");
  execFileSync("go", ["build", "-o", bin, "./cmd/comfyfleet"], { cwd: root, stdio: "inherit" });
  // An isolated stack: embedded NATS and Redis, whatever the environment
  // says. dev reads every variable of every binary it embeds (API_KEYS,
  // POOL, BUCKET_*, …); its --help names them all.
  const help = execFileSync(bin, ["dev", "--help"], { encoding: "utf8" });
  const vars = [...help.matchAll(/\(env ([A-Z0-9_]+)\)/g)].map((m) => m[1]);
  assert.ok(vars.includes("NATS_URL") && vars.includes("API_KEYS"), `comfyfleet dev --help names no variables:\n${help}`);
  const env = { ...process.env };
  for (const k of vars) {
    delete env[k];
  }
  const child = spawn(bin, ["dev", "--listen", "127.0.0.1:0", "--dir", join(dir, "stack"), "--workers", "2", "--log-level", "warn"], {
    cwd: root, env, stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));
  const api = await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error("comfyfleet dev did not come up within 120 s")), 120_000);
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      const m = line.match(/API (http:\/\/[^,\s]+)/);
      if (m) {
        clearTimeout(timer);
        res(m[1]);
      }
    });
    exited.then(({ code, signal }) => rej(new Error(`comfyfleet dev exited early (code ${code}, signal ${signal})`)));
  });
  console.log(`stack up: ${api}`);
  const stop = async () => {
    child.kill("SIGINT");
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    await exited;
    clearTimeout(timer);
    rmSync(dir, { recursive: true, force: true });
  };
  return { api, stop };
}

// ---- requests ---------------------------------------------------------------

const example = JSON.parse(readFileSync(join(root, "examples/txt2img.json"), "utf8"));

// request is the example workflow at 64x64 with its own seed and a number
// of sampler steps (the emulator spends 5 ms on each), optionally with a
// checkpoint the fleet does not have (validation fails the job).
function request(steps, seed, ckpt) {
  const wf = structuredClone(example.input.workflow);
  wf["3"].inputs.steps = steps;
  wf["3"].inputs.seed = seed; // a JS number: keep it small (JSON.parse rounds 2^64-1)
  wf["5"].inputs.width = 64;
  wf["5"].inputs.height = 64;
  if (ckpt) wf["4"].inputs.ckpt_name = ckpt;
  return { input: { workflow: wf } };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitStatus(ep, id, want, ms = 60_000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await ep.status(id);
    if ((Array.isArray(want) ? want : [want]).includes(last.status)) return last;
    await sleep(50);
  }
  throw new Error(`job ${id} never reached ${want}; last ${JSON.stringify(last)}`);
}

// ---- the test ---------------------------------------------------------------

async function main() {
  const { api, stop } = await startStack();
  let failed = false;
  try {
    const runpod = runpodSdk("any-key", { baseUrl: `${api}/v2` });
    const ep = runpod.endpoint("comfyfleet");
    let step = "";
    const check = async (name, fn) => {
      step = name;
      const t = Date.now();
      await fn();
      console.log(`ok  ${name} (${Date.now() - t} ms)`);
    };

    let firstId;
    await check("run", async () => {
      const r = await ep.run(request(20, 1));
      assert.equal(r.status, "IN_QUEUE");
      assert.equal(typeof r.id, "string");
      firstId = r.id;
    });

    await check("status", async () => {
      const s = await ep.status(firstId);
      assert.equal(s.id, firstId);
      assert.equal(s.started, true);
      assert.ok(["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].includes(s.status), s.status);
      const done = await waitStatus(ep, firstId, "COMPLETED");
      assert.equal(done.completed, true);
      assert.equal(done.succeeded, true);
      assert.ok(done.output.images[0].data.startsWith(PNG_BASE64));
      assert.ok(typeof done.delayTime === "number" && typeof done.executionTime === "number");
      assert.ok(done.workerId.startsWith("dev-worker-"), done.workerId);
    });

    await check("runSync that completes", async () => {
      const r = await ep.runSync(request(20, 2), 60_000);
      assert.equal(r.status, "COMPLETED", JSON.stringify(r));
      assert.equal(r.completed, true);
      assert.equal(r.succeeded, true);
      assert.ok(r.id.startsWith("sync-"));
      const img = r.output.images[0];
      assert.equal(img.type, "base64");
      // Either worker may run it: its emulator's counter decides the number.
      assert.match(img.filename, /^ComfyUI_\d{5}_\.png$/);
      assert.ok(img.data.startsWith(PNG_BASE64));
    });

    let slowId;
    await check("runSync that outlives its wait", async () => {
      const t = Date.now();
      const r = await ep.runSync(request(4000, 3), 1500); // ~20 s of sampling
      assert.equal(r.completed, false, JSON.stringify(r));
      assert.ok(["IN_QUEUE", "IN_PROGRESS"].includes(r.status), r.status);
      assert.ok(Date.now() - t >= 1500, "the server held the requests for their wait");
      slowId = r.id;
    });

    await check("stream: progress chunks, then the terminal state", async () => {
      const { id } = await ep.run(request(400, 4));
      const chunks = [];
      for await (const el of ep.stream(id)) chunks.push(el.output);
      assert.ok(chunks.length >= 2, `progress chunks: ${JSON.stringify(chunks)}`);
      let last = 0;
      for (const c of chunks) {
        assert.equal(c.type, "progress");
        assert.equal(c.node, "3");
        assert.equal(c.max, 400);
        assert.ok(c.value > last, "each chunk once, in order");
        last = c.value;
      }
      const s = await ep.status(id);
      assert.equal(s.status, "COMPLETED");
      let again;
      for await (const el of ep.stream(id)) again = el; // drained: nothing more
      assert.equal(again, undefined);
    });

    await check("cancel", async () => {
      const c = await ep.cancel(slowId);
      assert.deepEqual(c, { id: slowId, status: "CANCELLED" });
      const s = await ep.status(slowId);
      assert.equal(s.status, "CANCELLED");
      assert.equal(s.completed, true);
      assert.equal(s.succeeded, false);
    });

    await check("retry (FAILED → same id, same input)", async () => {
      const r = await ep.runSync(request(5, 5, "no-such-model.safetensors"), 60_000);
      assert.equal(r.status, "FAILED", JSON.stringify(r));
      assert.equal(typeof r.error, "string");
      assert.match(r.error, /no-such-model\.safetensors|value_not_in_list|not in list|Prompt outputs failed validation/i);
      // runpod-sdk has no retry method; RunPod's documented call is
      // POST /retry/{id} with the same key.
      const resp = await fetch(`${api}/v2/comfyfleet/retry/${r.id}`, { method: "POST", headers: { Authorization: "Bearer any-key" } });
      assert.equal(resp.status, 200);
      assert.equal(resp.headers.get("content-type"), "application/json");
      assert.deepEqual(await resp.json(), { id: r.id, status: "IN_QUEUE" });
      const again = await ep.statusSync(r.id, 30_000);
      assert.equal(again.status, "FAILED");
      assert.equal(again.retries, 1);
    });

    await check("health", async () => {
      const h = await ep.health();
      for (const k of ["completed", "failed", "inProgress", "inQueue", "retried"]) assert.equal(typeof h.jobs[k], "number", k);
      for (const k of ["idle", "running"]) assert.equal(typeof h.workers[k], "number", k);
      assert.equal(h.workers.idle + h.workers.running, 2, JSON.stringify(h));
      assert.ok(h.jobs.completed >= 3);
      assert.ok(h.jobs.retried >= 1);
    });

    await check("purgeQueue", async () => {
      const busy = [];
      for (let i = 0; i < 2; i++) busy.push((await ep.run(request(4000, 10 + i))).id);
      for (const id of busy) await waitStatus(ep, id, "IN_PROGRESS");
      const queued = [];
      for (let i = 0; i < 3; i++) queued.push((await ep.run(request(20, 20 + i))).id);
      const p = await ep.purgeQueue();
      assert.equal(p.status, "completed");
      assert.equal(p.removed, 3, JSON.stringify(p));
      for (const id of queued) assert.equal((await ep.status(id)).status, "CANCELLED");
      for (const id of busy) {
        assert.equal((await ep.status(id)).status, "IN_PROGRESS", "running jobs continue");
        await ep.cancel(id);
      }
    });

    await check("errors: unknown job", async () => {
      await assert.rejects(ep.status("no-such-job"), (err) => {
        assert.equal(err.response?.status, 404);
        return true;
      });
    });
    step = "";
  } catch (err) {
    failed = true;
    console.error(`FAIL: ${err.stack ?? err}`);
  } finally {
    await stop();
  }
  if (failed) process.exit(1);
  console.log("PASS runpod-sdk@1.1.2 against comfyfleet");
}

const watchdog = setTimeout(() => {
  console.error("FAIL: the test took longer than 10 minutes");
  process.exit(1);
}, 600_000);
watchdog.unref();
await main();
