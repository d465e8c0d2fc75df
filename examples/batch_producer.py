#!/usr/bin/env python3
"""Submit a seed sweep of a ComfyUI workflow to a comfyfleet fleet over NATS.

This is the batch contract of docs/batch.md used from Python, with nothing
but the standard library and nats-py (pip install nats-py):

  1. one job per seed, with an id derived from the batch id and the seed, so
     that running the script again re-sends the same ids and nothing runs twice;
  2. each job is a JSON message on cf.submit.batch (cf.submit.batch.<tenant>
     with --tenant) with the header Nats-Msg-Id = job id, published through
     JetStream: the PubAck is the receipt;
  3. completion comes from the final events on
     cf.events.<id>.final.<tenant> (this script subscribes to its tenant's,
     cf.events.*.final.<tenant>);
  4. results are read from the RunPod-compatible API's GET /status/{id}
     (files inline as base64; with --api-key, that tenant's key) and written
     to --out.

On a fleet with NATS users per tenant (docs/security.md), give the user's
credentials in the URL, its tenant with --tenant, and its API key with
--api-key: the user may publish on its tenant's subject and read its
tenant's events alone, and replies come to its own inbox prefix.

With `comfyfleet dev` running, run it from the same folder (or one below):
it reads the stack's NATS and API addresses from .comfyfleet/stack.json, as
the comfyfleet CLI does, so a NATS port dev had to change (4222 taken) is
followed. --nats and --api (or NATS_URL) name another fleet:

  python3 examples/batch_producer.py examples/txt2img.json --seeds 1-8 --out results

Ctrl-C stops waiting; the jobs keep running, and running the same command
again picks up their results.
"""

import argparse
import asyncio
import base64
import copy
import hashlib
import json
import os
import sys
import urllib.error
import urllib.request

DEFAULT_TENANT = "default"  # proto.DefaultTenant: the tenant of cf.submit.batch


def subjects(tenant):
    """The subjects of a tenant's producer: where it publishes, where its
    jobs' terminal events come (proto.TenantEventSubjects(tenant, "final")),
    and where its rejected submissions come (proto.RejectSubject)."""
    submit = f"cf.submit.batch.{tenant}" if tenant else "cf.submit.batch"
    tenant = tenant or DEFAULT_TENANT
    return submit, f"cf.events.*.final.{tenant}", f"cf.rejects.{tenant}"

def dev_stack(start="."):
    """The addresses of the running `comfyfleet dev` whose
    .comfyfleet/stack.json is in start or a folder above it, as
    (nats_url, api_url); (None, None) when there is none."""
    d = os.path.abspath(start)
    while True:
        path = os.path.join(d, ".comfyfleet", "stack.json")
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    info = json.load(f)
                return info.get("nats_url") or None, info.get("api_url") or None
            except (OSError, ValueError):
                return None, None
        parent = os.path.dirname(d)
        if parent == d:
            return None, None
        d = parent


TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
MAX_MESSAGE = 1024 * 1024  # NATS's default max payload


def load_workflow(path):
    """Returns the API-format workflow of a file that holds a workflow, a
    RunPod input ({"workflow": ...}) or a RunPod request ({"input": ...}).

    Python's json keeps integers exact (a seed of 2**64-1 survives), so the
    workflow can be changed and sent again as JSON safely.
    """
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if "input" in doc:
        doc = doc["input"]
    if "workflow" in doc:
        doc = doc["workflow"]
    if "nodes" in doc and "links" in doc:
        sys.exit(f"{path}: UI-format workflow; export it in API format")
    return doc


def parse_seeds(spec):
    lo, _, hi = spec.partition("-")
    lo, hi = int(lo), int(hi or lo)
    if hi < lo:
        sys.exit(f"--seeds {spec}: runs backwards")
    return range(lo, hi + 1)


def seed_node(workflow, node):
    if node:
        return node
    for nid, n in workflow.items():
        if isinstance(n, dict) and "seed" in n.get("inputs", {}):
            return nid
    sys.exit("no node has a seed input; name one with --seed-node")


def make_jobs(workflow, batch_id, seeds, node, lane):
    jobs = []
    for index, seed in enumerate(seeds):
        wf = copy.deepcopy(workflow)
        wf[node]["inputs"]["seed"] = seed
        job = {
            "v": 1,
            # Deterministic: the same batch and seed give the same id.
            "id": f"{batch_id}-{seed}",
            "batch_id": batch_id,
            "index": index,
            "lane": lane,
            "input": {"workflow": wf},
        }
        jobs.append(job)
    return jobs


def get_status(api, job_id, api_key=""):
    """GET /status/{id} of the RunPod-compatible API; None when unknown yet
    (or another tenant's)."""
    req = urllib.request.Request(f"{api}/status/{job_id}")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        if e.code == 404:  # not admitted yet, or expired
            return None
        raise


def save_outputs(out, job_id, view):
    """Writes the images (and other files) of a COMPLETED /status answer."""
    folder = os.path.join(out, job_id)
    os.makedirs(folder, exist_ok=True)
    written = []
    output = view.get("output") or {}
    for kind in ("images", "videos", "audio", "files"):
        for item in output.get(kind) or []:
            name = os.path.basename(item.get("filename") or f"{kind}.bin")
            path = os.path.join(folder, name)
            if item.get("type") == "base64":
                with open(path, "wb") as f:
                    f.write(base64.b64decode(item["data"]))
            elif item.get("type") == "s3_url":
                urllib.request.urlretrieve(item["data"], path)
            else:
                continue
            written.append(path)
    for item in output.get("text") or []:
        path = os.path.join(folder, f"text-{item.get('node_id', 'x')}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(item.get("data", ""))
        written.append(path)
    return written


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workflow")
    ap.add_argument("--seeds", default="1-4", help="inclusive range, e.g. 1-100")
    ap.add_argument("--seed-node", default="", help="node id of the sampler (default: the first with a seed)")
    ap.add_argument("--batch", default="", help="batch id (default: from the workflow file and the seeds)")
    ap.add_argument("--lane", default="batch", choices=["batch", "interactive"])
    stack_nats, stack_api = dev_stack()
    ap.add_argument("--nats", default=os.environ.get("NATS_URL") or stack_nats or "nats://127.0.0.1:4222",
                    help="NATS server (default: NATS_URL, else the running comfyfleet dev's, else nats://127.0.0.1:4222)")
    ap.add_argument("--api", default=stack_api or "http://127.0.0.1:8000",
                    help="RunPod-compatible API, for the results (default: the running comfyfleet dev's, else http://127.0.0.1:8000)")
    ap.add_argument("--tenant", default=os.environ.get("CF_TENANT", ""),
                    help="tenant to submit as (its NATS user must be allowed cf.submit.batch.<tenant>); default: none")
    ap.add_argument("--api-key", default=os.environ.get("RUNPOD_API_KEY", ""), help="the tenant's API key, for GET /status")
    ap.add_argument("--out", default="results")
    ap.add_argument("--poll", type=float, default=5.0, help="seconds between status reads of unfinished jobs")
    args = ap.parse_args()
    import nats  # nats-py; here, so that --help and the helpers above work without it

    workflow = load_workflow(args.workflow)
    seeds = parse_seeds(args.seeds)
    node = seed_node(workflow, args.seed_node)
    batch_id = args.batch or "py-" + hashlib.sha256(
        f"{os.path.abspath(args.workflow)}\0{args.seeds}".encode()).hexdigest()[:10]
    jobs = make_jobs(workflow, batch_id, seeds, node, args.lane)
    pending = {j["id"] for j in jobs}
    submit_subject, events_subject, rejects_subject = subjects(args.tenant)
    print(f"batch {batch_id}: {len(jobs)} job(s) on {submit_subject}")

    # A tenant's NATS user gets its replies (the PubAcks) on an inbox
    # prefix of its own, the only one it may subscribe to.
    inbox = f"_INBOX_{args.tenant}" if args.tenant else "_INBOX"
    nc = await nats.connect(args.nats, inbox_prefix=inbox.encode())
    js = nc.jetstream()
    finished = asyncio.Queue()

    # Subscribe before publishing, so that no status event is missed.
    async def on_event(msg):
        ev = json.loads(msg.data)
        if ev.get("type") == "status" and ev.get("job_id") in pending:
            if ev.get("status") in TERMINAL:
                await finished.put(ev["job_id"])

    async def on_reject(msg):
        reason = msg.headers.get("Cf-Reject-Reason", "") if msg.headers else ""
        print(f"rejected: {reason}: {msg.data[:200]!r}", file=sys.stderr)

    await nc.subscribe(events_subject, cb=on_event)
    await nc.subscribe(rejects_subject, cb=on_reject)
    await nc.flush()

    for job in jobs:
        data = json.dumps(job).encode()
        if len(data) > MAX_MESSAGE:
            sys.exit(f"{job['id']}: {len(data)} bytes is over NATS's 1 MB; put input images in the blob store")
        ack = await js.publish(submit_subject, data, headers={"Nats-Msg-Id": job["id"]})
        # The PubAck is the receipt: the job will reach a terminal state.
        note = " (sent before: duplicate dropped)" if ack.duplicate else ""
        print(f"submitted {job['id']}: stream {ack.stream} seq {ack.seq}{note}")

    async def poll():
        # Jobs that finished before we subscribed (a re-run), or whose event
        # was missed, are found by reading their status now and then.
        while pending:
            for job_id in list(pending):
                try:
                    view = await asyncio.to_thread(get_status, args.api, job_id, args.api_key)
                except (OSError, ValueError) as e:  # URLError is an OSError
                    print(f"status of {job_id}: {e}", file=sys.stderr)
                    break
                if view and view.get("status") in TERMINAL:
                    await finished.put(job_id)
            await asyncio.sleep(args.poll)

    poller = asyncio.create_task(poll())
    failed = 0
    try:
        while pending:
            job_id = await finished.get()
            if job_id not in pending:
                continue
            pending.discard(job_id)
            view = await asyncio.to_thread(get_status, args.api, job_id, args.api_key)
            if view is None:
                print(f"{job_id}: finished, but its result expired", file=sys.stderr)
                failed += 1
                continue
            done = len(jobs) - len(pending)
            if view["status"] == "COMPLETED":
                files = await asyncio.to_thread(save_outputs, args.out, job_id, view)
                print(f"[{done}/{len(jobs)}] {job_id} COMPLETED: {', '.join(files)}")
            else:
                failed += 1
                print(f"[{done}/{len(jobs)}] {job_id} {view['status']}: {view.get('error', '')}")
    finally:
        poller.cancel()
        await nc.drain()
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        print("stopped waiting; the jobs keep running on the fleet", file=sys.stderr)
        sys.exit(130)
