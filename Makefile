# The targets the README names. `make test` is what CI runs.
GO ?= go
FUZZTIME ?= 10s
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: test dev vet lint fuzz build chaos bench console-test realcomfy traces

## test: start a Redis when none answers, install versitygw (S3 tests) and Debian's chromium (the console's browser test) when missing, make the pinned Python venv of test/python when missing or stale, vet and staticcheck, then run every test with the race detector (the Python peers' tests included), the RunPod SDK test and the console's browser test
test: lint
	./scripts/ensure-redis.sh
	GO=$(GO) ./scripts/ensure-versitygw.sh
	./scripts/ensure-pyenv.sh
	./scripts/ensure-chromium.sh
	# -p 1: one package's tests at a time. Many tests run real servers
	# (NATS clusters, Redis restarts, the fleet as processes) against
	# deadlines; on two cores, packages side by side starved each other.
	COMFYFLEET_PYTHON=$(CURDIR)/test/python/.venv/bin/python $(GO) test -race -count=1 -p 1 -timeout 15m ./...
	cd test/node && npm ci --no-audit --no-fund && npm test
	cd test/console && npm ci --no-audit --no-fund && npm test

## console-test: the console's browser test alone (headless Chromium; screenshots in test/console/artifacts)
console-test:
	./scripts/ensure-chromium.sh
	cd test/console && npm ci --no-audit --no-fund && npm test

## chaos: the fault-injection suite alone, verbose, with the jobs counted in and out in its log (make test runs it too)
chaos:
	$(GO) test -race -count=1 -v ./internal/chaos/

## realcomfy: the worker's weight-free end-to-end cases against the ComfyUI at COMFYUI_URL (docs/development.md)
realcomfy:
	@test -n "$(COMFYUI_URL)" || { echo "make realcomfy: set COMFYUI_URL, e.g. make realcomfy COMFYUI_URL=http://127.0.0.1:8188" >&2; exit 2; }
	REALCOMFY_URL=$(COMFYUI_URL) $(GO) test -race -count=1 -p 1 -v -run 'TestEndToEndWeightFree' ./internal/worker/

## traces: record the emulator's golden traces from the ComfyUI at COMFYUI_URL running COMFYUI_COMMIT (docs/development.md)
traces:
	@test -n "$(COMFYUI_URL)" -a -n "$(COMFYUI_COMMIT)" || { echo "make traces: set COMFYUI_URL and COMFYUI_COMMIT" >&2; exit 2; }
	$(GO) run ./internal/comfysim/tracerec -url $(COMFYUI_URL) -commit $(COMFYUI_COMMIT)

## dev: run the whole fleet locally (same as `go run ./cmd/comfyfleet dev`)
dev:
	$(GO) run ./cmd/comfyfleet dev

## bench: measure the fleet (docs/performance.md): every scenario, or the ones and settings in BENCH_ARGS
bench:
	$(GO) run ./cmd/comfyfleet bench $(BENCH_ARGS)

## build: compile every binary into ./bin
build:
	$(GO) build -o bin/ ./cmd/...

## vet: go vet alone
vet:
	$(GO) vet ./...

## lint: go vet and staticcheck (fetched from the Go module proxy at the pinned version)
lint: vet
	$(GO) run $(STATICCHECK) ./...

## fuzz: run each fuzz target for FUZZTIME
fuzz:
	./scripts/fuzz.sh $(FUZZTIME)
