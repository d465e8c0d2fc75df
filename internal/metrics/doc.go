// Package metrics is a small Prometheus text-format (version 0.0.4)
// exposition: counters, gauges and histograms with labels, plus gauges read
// at scrape time, served on /metrics by every binary.
//
// It is hand-written rather than github.com/prometheus/client_golang
// because the binaries need a dozen series and nothing of the client's
// process collectors, push gateway or protobuf format; the client would
// add several modules (and their go.sum churn) for what fits in one file.
package metrics
