// Package pythontest drives the fleet's real Python peers from Go tests:
// RunPod's own serverless SDK (runpod) as a worker of the runpod-adapter's
// job-take host, and examples/batch_producer.py (nats-py) against a fresh
// `comfyfleet dev`. The Python packages are pinned with their hashes in
// requirements.txt; scripts/ensure-pyenv.sh makes test/python/.venv from
// it, and the tests run the interpreter named by COMFYFLEET_PYTHON (make
// test sets both). Without COMFYFLEET_PYTHON the tests skip, saying how to
// set it; with it, a broken interpreter fails them.
package pythontest
