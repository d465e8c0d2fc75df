package deploy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/comfyfleet/comfyfleet/proto"
)

// scaledObject is the part of KEDA's ScaledObject (keda.sh/v1alpha1) that
// the manifests use, field for field as KEDA's CRD names them: decoding
// into it strictly fails on a misspelt or misplaced field.
type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion,omitempty"`
			Kind       string `json:"kind,omitempty"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		PollingInterval *int32 `json:"pollingInterval,omitempty"`
		CooldownPeriod  *int32 `json:"cooldownPeriod,omitempty"`
		MinReplicaCount *int32 `json:"minReplicaCount,omitempty"`
		MaxReplicaCount *int32 `json:"maxReplicaCount,omitempty"`
		Advanced        *struct {
			ScalingModifiers *struct {
				Formula          string `json:"formula"`
				Target           string `json:"target"`
				ActivationTarget string `json:"activationTarget,omitempty"`
				MetricType       string `json:"metricType,omitempty"`
			} `json:"scalingModifiers,omitempty"`
			HorizontalPodAutoscalerConfig *struct {
				Behavior *struct {
					ScaleDown *struct {
						StabilizationWindowSeconds *int32 `json:"stabilizationWindowSeconds,omitempty"`
						Policies                   []struct {
							Type          string `json:"type"`
							Value         int32  `json:"value"`
							PeriodSeconds int32  `json:"periodSeconds"`
						} `json:"policies,omitempty"`
					} `json:"scaleDown,omitempty"`
				} `json:"behavior,omitempty"`
			} `json:"horizontalPodAutoscalerConfig,omitempty"`
		} `json:"advanced,omitempty"`
		Triggers []struct {
			Type     string            `json:"type"`
			Name     string            `json:"name,omitempty"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

// natsJetStreamParams are the trigger metadata KEDA's nats-jetstream
// scaler reads (keda.sh/docs/scalers/nats-jetstream).
var natsJetStreamParams = []string{"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold", "activationLagThreshold", "useHttps"}

// manifests holds every object of deploy/kubernetes/*.yaml by kind.
type manifests struct {
	namespaces   []corev1.Namespace
	configMaps   []corev1.ConfigMap
	services     []corev1.Service
	deployments  []appsv1.Deployment
	statefulSets []appsv1.StatefulSet
	budgets      []policyv1.PodDisruptionBudget
	scaled       []scaledObject
}

// decodeYAMLStrict decodes one YAML document into v, failing on a field v's
// type does not have.
func decodeYAMLStrict(doc []byte, v any) error {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// appendDecoded decodes doc strictly into a new T and appends it to list.
func appendDecoded[T any](list *[]T, doc []byte) error {
	var o T
	err := decodeYAMLStrict(doc, &o)
	*list = append(*list, o)
	return err
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

func loadManifests(t *testing.T) manifests {
	t.Helper()
	files, err := filepath.Glob(repoPath("deploy", "kubernetes", "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	var m manifests
	for _, f := range files {
		raw, err := os.ReadFile(f)
		require.NoError(t, err)
		for i, doc := range docSeparator.Split(string(raw), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			where := fmt.Sprintf("%s, document %d", filepath.Base(f), i+1)
			var tm metav1.TypeMeta
			require.NoError(t, yaml.Unmarshal([]byte(doc), &tm), where)
			var err error
			switch tm.APIVersion + " " + tm.Kind {
			case "v1 Namespace":
				err = appendDecoded(&m.namespaces, []byte(doc))
			case "v1 ConfigMap":
				err = appendDecoded(&m.configMaps, []byte(doc))
			case "v1 Service":
				err = appendDecoded(&m.services, []byte(doc))
			case "apps/v1 Deployment":
				err = appendDecoded(&m.deployments, []byte(doc))
			case "apps/v1 StatefulSet":
				err = appendDecoded(&m.statefulSets, []byte(doc))
			case "policy/v1 PodDisruptionBudget":
				err = appendDecoded(&m.budgets, []byte(doc))
			case "keda.sh/v1alpha1 ScaledObject":
				err = appendDecoded(&m.scaled, []byte(doc))
			default:
				t.Fatalf("%s: no test knows %q %q", where, tm.APIVersion, tm.Kind)
			}
			require.NoError(t, err, where)
		}
	}
	return m
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// podTemplates are the workloads' pod templates by workload name.
func (m manifests) podTemplates() map[string]corev1.PodTemplateSpec {
	out := map[string]corev1.PodTemplateSpec{}
	for _, d := range m.deployments {
		out[d.Name] = d.Spec.Template
	}
	for _, s := range m.statefulSets {
		out[s.Name] = s.Spec.Template
	}
	return out
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return len(selector) > 0
}

// TestKubernetesManifests decodes every manifest of deploy/kubernetes
// strictly into the Kubernetes API types (KEDA's ScaledObject into its
// CRD's fields), then checks that they fit together: namespaces,
// selectors, ports, the settings each container gets, the images, and the
// GPU worker's resources and grace period.
func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	require.Len(t, m.namespaces, 1)
	ns := m.namespaces[0].Name
	require.Len(t, m.configMaps, 1)
	config := m.configMaps[0]
	for _, o := range []metav1.ObjectMeta{config.ObjectMeta} {
		require.Equal(t, ns, o.Namespace, o.Name)
	}
	templates := m.podTemplates()
	for _, d := range m.deployments {
		require.Equal(t, ns, d.Namespace, d.Name)
		require.True(t, matches(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels), "deployment %s: its selector does not select its pods", d.Name)
	}
	for _, s := range m.statefulSets {
		require.Equal(t, ns, s.Namespace, s.Name)
		require.True(t, matches(s.Spec.Selector.MatchLabels, s.Spec.Template.Labels), "statefulset %s: its selector does not select its pods", s.Name)
	}
	for _, b := range m.budgets {
		require.Equal(t, ns, b.Namespace, b.Name)
		var hit bool
		for _, tpl := range templates {
			hit = hit || matches(b.Spec.Selector.MatchLabels, tpl.Labels)
		}
		require.True(t, hit, "budget %s selects no pods", b.Name)
	}

	// Every Service selects pods, and its target port is one they name.
	for _, s := range m.services {
		require.Equal(t, ns, s.Namespace, s.Name)
		var ports []string
		for _, tpl := range templates {
			if matches(s.Spec.Selector, tpl.Labels) {
				for _, c := range tpl.Spec.Containers {
					for _, p := range c.Ports {
						ports = append(ports, p.Name)
					}
				}
			}
		}
		require.NotEmpty(t, ports, "service %s selects no pods with ports", s.Name)
		for _, p := range s.Spec.Ports {
			require.Contains(t, ports, p.TargetPort.String(), "service %s port %s", s.Name, p.Name)
		}
	}

	// Each comfyfleet container gets only settings its binary has
	// (docs/configuration.md), from the shared ConfigMap and the secret.
	tables := map[string][]string{
		"comfyfleet/dispatcher:":     {"dispatcher"},
		"comfyfleet/runpod-adapter:": {"runpod-adapter"},
		"comfyfleet/worker:":         {"gpuworker", "worker-image"},
	}
	var seen []string
	for name, tpl := range templates {
		for _, c := range tpl.Spec.Containers {
			var known []string
			for prefix, tabs := range tables {
				if strings.HasPrefix(c.Image, prefix) {
					for _, tab := range tabs {
						for _, r := range docTable(t, tab) {
							known = append(known, r.Env)
						}
					}
					seen = append(seen, prefix)
				}
			}
			if known == nil {
				require.Equal(t, "redis", name, "container %s/%s runs image %s, which is none of comfyfleet's", name, c.Name, c.Image)
				continue
			}
			var set []string
			for _, e := range c.EnvFrom {
				require.NotNil(t, e.ConfigMapRef, "%s: envFrom is the shared ConfigMap", name)
				require.Equal(t, config.Name, e.ConfigMapRef.Name, name)
				for k := range config.Data {
					set = append(set, k)
				}
			}
			for _, e := range c.Env {
				set = append(set, e.Name)
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					require.Equal(t, "comfyfleet", e.ValueFrom.SecretKeyRef.Name, "%s: %s", name, e.Name)
				}
			}
			for _, k := range set {
				require.Contains(t, known, k, "%s/%s sets %s, which %v does not document", name, c.Name, k, tables)
			}
			// The probes run the images' health probe in a mode it has.
			for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
				if p == nil {
					continue
				}
				require.NotNil(t, p.Exec, "%s: probes run the health probe", name)
				require.Equal(t, "/usr/local/bin/healthcheck", p.Exec.Command[0], name)
				require.Contains(t, []string{"http", "backends", "worker"}, p.Exec.Command[1], name)
			}
		}
	}
	sort.Strings(seen)
	require.Equal(t, []string{"comfyfleet/dispatcher:", "comfyfleet/runpod-adapter:", "comfyfleet/worker:"}, slices.Compact(seen))

	// The GPU worker: one GPU each, and time to drain before it is killed.
	var worker *appsv1.Deployment
	for i, d := range m.deployments {
		if d.Spec.Template.Labels["app.kubernetes.io/name"] == "gpuworker" {
			worker = &m.deployments[i]
		}
	}
	require.NotNil(t, worker, "a GPU worker deployment")
	c := worker.Spec.Template.Spec.Containers[0]
	gpu := c.Resources.Limits["nvidia.com/gpu"]
	require.Equal(t, int64(1), gpu.Value(), "one GPU per worker")
	require.NotNil(t, worker.Spec.Template.Spec.TerminationGracePeriodSeconds)
	require.GreaterOrEqual(t, *worker.Spec.Template.Spec.TerminationGracePeriodSeconds, int64(30+20),
		"the grace period covers SHUTDOWN_GRACE (30 s) and COMFYUI_STOP_TIMEOUT (20 s)")
	require.Equal(t, []string{"worker"}, c.Args, "the image's worker mode: ComfyUI and the gpuworker")
}

// TestKEDAScalesThePoolOnItsLaneConsumers: the ScaledObject scales the GPU
// worker deployment of the ConfigMap's POOL on that pool's two lane
// consumers of CF_JOBS and its held consumer of CF_HOLD, read from the NATS
// monitoring port that the Helm values open, and the formula adds them.
func TestKEDAScalesThePoolOnItsLaneConsumers(t *testing.T) {
	m := loadManifests(t)
	require.Len(t, m.scaled, 1)
	so := m.scaled[0]
	pool := m.configMaps[0].Data["POOL"]
	require.NotEmpty(t, pool)
	var target *appsv1.Deployment
	for i, d := range m.deployments {
		if d.Name == so.Spec.ScaleTargetRef.Name {
			target = &m.deployments[i]
		}
	}
	require.NotNil(t, target, "the ScaledObject scales a deployment of the manifests")
	require.Equal(t, pool, target.Spec.Template.Labels["comfyfleet.io/pool"], "the scaled workers serve POOL")
	require.Nil(t, target.Spec.Replicas, "KEDA owns the replicas: a kubectl apply must not reset them")
	require.NotNil(t, so.Spec.MinReplicaCount)
	require.Zero(t, *so.Spec.MinReplicaCount, "scale to zero")

	var values struct {
		Config struct {
			Cluster struct {
				Enabled  bool `json:"enabled"`
				Replicas int  `json:"replicas"`
			} `json:"cluster"`
			Jetstream map[string]any `json:"jetstream"`
			Monitor   struct {
				Enabled bool `json:"enabled"`
				Port    int  `json:"port"`
			} `json:"monitor"`
		} `json:"config"`
	}
	require.NoError(t, decodeYAMLStrict([]byte(readFile(t, "deploy", "kubernetes", "helm", "nats-values.yaml")), &values))
	require.True(t, values.Config.Monitor.Enabled)
	require.Equal(t, fmt.Sprint(values.Config.Cluster.Replicas), m.configMaps[0].Data["STREAM_REPLICAS"], "one stream replica per NATS node")

	consumers := map[string]string{}
	for _, tr := range so.Spec.Triggers {
		require.Equal(t, "nats-jetstream", tr.Type)
		for k := range tr.Metadata {
			require.Contains(t, natsJetStreamParams, k, "trigger %s", tr.Name)
		}
		wantStream := proto.JobsStream
		if tr.Name == "held" {
			wantStream = proto.HoldStream
		}
		require.Equal(t, wantStream, tr.Metadata["stream"], "trigger %s", tr.Name)
		require.Equal(t, "$G", tr.Metadata["account"], "nats.conf's users are in the global account")
		require.Equal(t, fmt.Sprintf("nats.%s.svc.cluster.local:%d", m.namespaces[0].Name, values.Config.Monitor.Port), tr.Metadata["natsServerMonitoringEndpoint"])
		consumers[tr.Name] = tr.Metadata["consumer"]
	}
	require.Equal(t, map[string]string{
		"interactive": proto.LaneConsumer(pool, proto.LaneInteractive),
		"batch":       proto.LaneConsumer(pool, proto.LaneBatch),
		"held":        proto.HoldConsumer(pool),
	}, consumers)
	require.NotNil(t, so.Spec.Advanced)
	require.NotNil(t, so.Spec.Advanced.ScalingModifiers)
	require.Equal(t, "interactive + batch + held", so.Spec.Advanced.ScalingModifiers.Formula, "one worker per job of the pool, on a lane or held")
}

// TestStrictDecodingCatchesATypo: the decoding the manifests test relies on
// fails on a misspelt field, of the Kubernetes types and of the
// ScaledObject.
func TestStrictDecodingCatchesATypo(t *testing.T) {
	var d appsv1.Deployment
	err := decodeYAMLStrict([]byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 2\n"), &d)
	require.ErrorContains(t, err, `unknown field "replica"`)
	var so scaledObject
	err = decodeYAMLStrict([]byte("apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: x}\nspec:\n  scaleTargetRef: {name: x}\n  cooldownPeriods: 3\n"), &so)
	require.ErrorContains(t, err, `unknown field "cooldownPeriods"`)
}
