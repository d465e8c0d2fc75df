// Package metrics holds each binary's Prometheus series: a registry with
// the Go and process collectors of github.com/prometheus/client_golang,
// counters, gauges and histograms with labels, families read at scrape time
// (fleet-wide values kept in Redis and JetStream), the instrumentation of
// an HTTP API, and a /metrics server for binaries without an HTTP server of
// their own. The names of the families are part of the project's
// interface (docs/metrics.md, the Grafana dashboard under deploy/observability).
package metrics
