package deploy_test

import (
	"bytes"
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
	"go.yaml.in/yaml/v3"

	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// promConfig is the part of Prometheus's configuration schema that
// deploy/observability/prometheus.yml uses; decoding it strictly makes a
// misspelt key fail here rather than in Prometheus.
type promConfig struct {
	Global struct {
		ScrapeInterval     string `yaml:"scrape_interval"`
		EvaluationInterval string `yaml:"evaluation_interval"`
	} `yaml:"global"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		Authorization struct {
			CredentialsFile string `yaml:"credentials_file"`
		} `yaml:"authorization"`
		DNSSDConfigs []struct {
			Names []string `yaml:"names"`
			Type  string   `yaml:"type"`
			Port  int      `yaml:"port"`
		} `yaml:"dns_sd_configs"`
	} `yaml:"scrape_configs"`
}

// TestPrometheusScrapesEveryProcess: the observability profile's Prometheus
// finds the dispatchers, the adapter and every gpuworker by their compose
// names, on the ports .env.example tells to set, with the admin key the
// profile gives it as a secret.
func TestPrometheusScrapesEveryProcess(t *testing.T) {
	t.Parallel()
	dec := yaml.NewDecoder(strings.NewReader(readFile(t, "deploy", "observability", "prometheus.yml")))
	dec.KnownFields(true)
	var cfg promConfig
	require.NoError(t, dec.Decode(&cfg))
	p := allProfiles(t)
	prom := p.Services["prometheus"]
	require.Len(t, prom.Secrets, 1)
	secret := "/run/secrets/" + prom.Secrets[0].Source
	var mounted bool
	for _, v := range prom.Volumes {
		mounted = mounted || (v.Target == "/etc/prometheus/prometheus.yml" && v.Source == repoPath("deploy", "observability", "prometheus.yml"))
	}
	require.True(t, mounted, "compose mounts deploy/observability/prometheus.yml")

	env := readFile(t, "deploy", "compose", ".env.example")
	ports := map[string]int{}
	for _, sc := range cfg.ScrapeConfigs {
		require.Equal(t, secret, sc.Authorization.CredentialsFile, "%s: /metrics wants an admin key", sc.JobName)
		require.Len(t, sc.DNSSDConfigs, 1, sc.JobName)
		d := sc.DNSSDConfigs[0]
		require.Equal(t, "A", d.Type)
		ports[sc.JobName] = d.Port
		for _, name := range d.Names {
			// A service name, or the alias every gpuworker carries.
			var found bool
			for svc, s := range p.Services {
				found = found || svc == name
				if strings.HasPrefix(svc, "gpuworker-") {
					net, ok := s.Networks["default"]
					require.True(t, ok && net != nil && slices.Contains(net.Aliases, "gpuworker"), "%s answers to gpuworker", svc)
					found = found || name == "gpuworker"
				}
			}
			require.True(t, found, "%s: %s names no compose service", sc.JobName, name)
		}
	}
	require.Equal(t, map[string]int{"dispatcher": 8080, "runpod-adapter": 9101, "gpuworker": 9100}, ports)
	for variable, port := range map[string]int{"DISPATCHER_LISTEN_ADDR": 8080, "ADAPTER_METRICS_ADDR": 9101, "WORKER_METRICS_ADDR": 9100} {
		require.Regexp(t, regexp.MustCompile(`(?m)^# .*:`+strconv.Itoa(port)+` for Prometheus\.\n`+variable+`=$`), env, ".env.example tells which %s Prometheus scrapes", variable)
	}
}

// dashboard is the part of Grafana's dashboard model the JSON uses, decoded
// strictly.
type dashboard struct {
	UID, Title, Timezone, Refresh string
	Tags                          []string
	SchemaVersion                 int             `json:"schemaVersion"`
	Version                       int             `json:"version"`
	Editable                      bool            `json:"editable"`
	Time                          json.RawMessage `json:"time"`
	Templating, Annotations       json.RawMessage
	Panels                        []struct {
		ID          int    `json:"id"`
		Type        string `json:"type"`
		Title       string `json:"title"`
		Description string `json:"description"`
		Datasource  struct {
			Type, UID string
		} `json:"datasource"`
		GridPos     struct{ H, W, X, Y int } `json:"gridPos"`
		FieldConfig json.RawMessage          `json:"fieldConfig"`
		Options     json.RawMessage          `json:"options"`
		Targets     []struct {
			RefID      string `json:"refId"`
			Datasource struct {
				Type, UID string
			} `json:"datasource"`
			Expr         string `json:"expr"`
			LegendFormat string `json:"legendFormat"`
		} `json:"targets"`
	} `json:"panels"`
}

// metricName finds the series names in a PromQL expression (every
// identifier of the project's and the collectors' families; functions,
// labels and keywords do not match these prefixes).
var metricName = regexp.MustCompile(`\b(?:comfyfleet|go|process)_[a-z0-9_]+\b`)

// TestGrafanaDashboardNamesOnlyServedMetrics: the dashboard is valid JSON
// of Grafana's model, reads the provisioned datasource, shows what an
// operator needs (queue depth and age per lane, jobs by status, execution
// time percentiles, worker states, GPU idle time, webhook failures), and
// every series it names is one a comfyfleet process registers: the dev
// stack, which runs every role on one registry, is asked.
func TestGrafanaDashboardNamesOnlyServedMetrics(t *testing.T) {
	t.Parallel()
	dec := json.NewDecoder(bytes.NewReader([]byte(readFile(t, "deploy", "observability", "grafana", "dashboards", "comfyfleet.json"))))
	dec.DisallowUnknownFields()
	var d dashboard
	require.NoError(t, dec.Decode(&d))
	require.NotEmpty(t, d.UID)
	require.NotEmpty(t, d.Panels)
	require.Contains(t, readFile(t, "deploy", "observability", "grafana", "provisioning", "datasources", "prometheus.yaml"), "uid: prometheus")

	names := servedFamilies(t)
	histograms := map[string]bool{"comfyfleet_worker_execution_seconds": true, "comfyfleet_worker_queue_wait_seconds": true, "comfyfleet_api_request_seconds": true}
	var exprs []string
	ids := map[int]bool{}
	for _, p := range d.Panels {
		require.False(t, ids[p.ID], "panel ids are unique")
		ids[p.ID] = true
		require.NotEmpty(t, p.Title)
		require.Equal(t, "prometheus", p.Datasource.UID, p.Title)
		require.NotEmpty(t, p.Targets, p.Title)
		require.LessOrEqual(t, p.GridPos.X+p.GridPos.W, 24, "%s fits the 24-column grid", p.Title)
		for _, tg := range p.Targets {
			require.Equal(t, "prometheus", tg.Datasource.UID, p.Title)
			found := metricName.FindAllString(tg.Expr, -1)
			require.NotEmpty(t, found, "%s: %s names no series", p.Title, tg.Expr)
			for _, n := range found {
				base := n
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if b, ok := strings.CutSuffix(n, suffix); ok && histograms[b] {
						base = b
					}
				}
				require.Contains(t, names, base, "%s: %s is not a family any comfyfleet process serves", p.Title, n)
				if strings.HasSuffix(n, "_bucket") {
					require.True(t, histograms[base], "%s is a histogram", base)
				}
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	all := strings.Join(exprs, "\n")
	for _, want := range []string{"comfyfleet_queue_depth", "comfyfleet_queue_oldest_age_seconds", "comfyfleet_jobs_total",
		"histogram_quantile(0.99, sum by (le) (rate(comfyfleet_worker_execution_seconds_bucket", "comfyfleet_workers",
		"comfyfleet_worker_gpu_idle_seconds_total", `comfyfleet_webhook_deliveries_total{result=~"failed`} {
		require.Contains(t, all, want)
	}
	for name := range histograms {
		require.Contains(t, names, name)
	}
}

// servedFamilies are the families of every role (the dev stack registers
// them all on one registry) and of the Go and process collectors.
func servedFamilies(t *testing.T) []string {
	t.Helper()
	_, prefix := testenv.Redis(t)
	var cfg devstack.Config
	fs := flagenv.New("comfyfleet dev", "")
	cfg.Bind(fs)
	env := map[string]string{"COMFYFLEET_DIR": t.TempDir(), "LISTEN_ADDR": "127.0.0.1:0", "COMFYFLEET_NATS_PORT": "-1",
		"COMFYFLEET_WORKERS": "1", "REDIS_URL": testenv.RedisURL()}
	require.NoError(t, fs.Parse(nil, func(k string) string { return env[k] }))
	_, err := cfg.Finish()
	require.NoError(t, err)
	cfg.Common.KeyPrefix = prefix
	cfg.Logger = zaptest.NewLogger(t)
	stack, err := devstack.Start(testenv.Context(t, time.Minute), cfg)
	require.NoError(t, err)
	t.Cleanup(stack.Stop)
	names := stack.Metrics.Names()
	fams, err := metrics.NewRegistry().Gatherer().Gather()
	require.NoError(t, err)
	for _, f := range fams {
		names = append(names, f.GetName())
	}
	require.Contains(t, names, "comfyfleet_api_requests_total", "the adapter's")
	require.Contains(t, names, "comfyfleet_worker_jobs_total", "the worker's")
	require.Contains(t, names, "comfyfleet_queue_depth", "the dispatcher's")
	return names
}

// TestMetricsDocListsEveryFamily: docs/metrics.md has a row for each family
// a comfyfleet process registers.
func TestMetricsDocListsEveryFamily(t *testing.T) {
	t.Parallel()
	doc := readFile(t, "docs", "metrics.md")
	for _, name := range servedFamilies(t) {
		if strings.HasPrefix(name, "comfyfleet_") {
			require.Contains(t, doc, "| `"+name+"` |", "docs/metrics.md lists %s", name)
		}
	}
}
