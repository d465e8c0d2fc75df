#!/usr/bin/env python3
"""A RunPod serverless worker written with RunPod's own SDK (runpod, pinned
in requirements.txt), for the tests of this folder.

The SDK is configured only through the environment variables RunPod sets
(RUNPOD_WEBHOOK_GET_JOB, RUNPOD_WEBHOOK_POST_OUTPUT,
RUNPOD_WEBHOOK_POST_STREAM, RUNPOD_WEBHOOK_PING, RUNPOD_AI_API_KEY,
RUNPOD_POD_ID, RUNPOD_PING_INTERVAL); the handler's kind comes from the
command line:

  worker.py [--generator] [--concurrency N]

The handler reads the job input:
  progress: a list of values sent with runpod.serverless.progress_update
  sleep: seconds to wait (asynchronously, so a job-stop cancels it)
  sleep_on: sleep only on the worker whose RUNPOD_POD_ID this is
  block: seconds to block the event loop (a synchronous handler's sleep)
  late_progress: a value sent with progress_update after the result
  output: what the handler returns (the generator yields its items)
"""

import argparse
import asyncio
import os
import threading
import time

import runpod


def _sleep_for(job):
    inp = job["input"]
    only = inp.get("sleep_on")
    if only and only != os.environ.get("RUNPOD_POD_ID"):
        return 0
    return float(inp.get("sleep", 0))


async def handler(job):
    inp = job["input"]
    for value in inp.get("progress", []):
        runpod.serverless.progress_update(job, value)
    if inp.get("block"):
        time.sleep(float(inp["block"]))
    await asyncio.sleep(_sleep_for(job))
    if "late_progress" in inp:
        # The SDK posts a progress update from a thread of its own; this
        # one lands after the result.
        threading.Timer(0.5, runpod.serverless.progress_update, (job, inp["late_progress"])).start()
    return inp.get("output", "done")


async def generator(job):
    inp = job["input"]
    for item in inp.get("output", []):
        await asyncio.sleep(_sleep_for(job))
        yield item


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--generator", action="store_true")
    ap.add_argument("--concurrency", type=int, default=1)
    args, _ = ap.parse_known_args()
    config = {"handler": generator if args.generator else handler}
    if args.generator:
        config["return_aggregate_stream"] = True
    if args.concurrency > 1:
        config["concurrency_modifier"] = lambda _: args.concurrency
    print(f"worker {os.environ.get('RUNPOD_POD_ID')} pid {os.getpid()} starting", flush=True)
    runpod.serverless.start(config)


if __name__ == "__main__":
    main()
