#!/bin/sh
# Stands in for runpod-adapter's serverless mode in the entrypoint tests: it
# says what it was started with, then waits, or exits with FAKE_ADAPTER_EXIT
# (as the adapter does after a job with REFRESH_WORKER).
echo "fake-adapter: RUNPOD_WEBHOOK_GET_JOB=$RUNPOD_WEBHOOK_GET_JOB WORKER_ID=$WORKER_ID"
if [ -n "${FAKE_ADAPTER_EXIT:-}" ]; then
	exit "$FAKE_ADAPTER_EXIT"
fi
exec sleep 300
