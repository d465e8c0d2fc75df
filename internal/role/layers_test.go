package role_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/comfyfleet/comfyfleet/"

// layers are the layers of the house, bottom first (docs/architecture.md).
// A package may import packages of lower layers; within a layer only the
// pairs of sameLayer.
var layers = []struct {
	name string
	pkgs []string
}{
	{"contract", []string{"proto"}},
	{"base", []string{"internal/blob", "internal/backoff", "internal/ssrf", "internal/metrics", "internal/flagenv",
		"internal/logging", "internal/auth", "internal/dirlock", "internal/natsserver", "internal/redisserver", "internal/startstop"}},
	{"adapters", []string{"internal/queue", "internal/rdb", "internal/blob/s3", "internal/comfy", "internal/modelcache"}},
	{"core", []string{"internal/lifecycle"}},
	{"read models", []string{"internal/fleet", "internal/jobview"}},
	{"roles", []string{"internal/dispatch", "internal/worker", "internal/runpod", "internal/runpod/serverless",
		"internal/runpod/jobtake", "internal/batch", "internal/console"}},
	{"wiring", []string{"internal/backend", "internal/role"}},
	{"dev", []string{"internal/devstack"}},
	{"standalone", []string{"internal/standalone"}},
	{"tools", []string{"internal/bench"}},
	{"main", []string{"cmd/comfyfleet", "cmd/dispatcher", "cmd/gpuworker", "cmd/runpod-adapter", "cmd/comfysim"}},
}

// sameLayer are the imports allowed inside a layer: a role's own shared
// package, and the wiring's connections.
var sameLayer = map[string]bool{
	"internal/runpod/serverless -> internal/runpod": true,
	"internal/runpod/jobtake -> internal/runpod":    true,
	"internal/role -> internal/backend":             true,
}

// apart are packages outside the layers (the emulator, test support,
// deployment tools), with the highest layer each may import; only tests,
// the dev stack and the mains import them.
var apart = map[string]string{
	"internal/comfysim":             "base",
	"internal/testenv":              "base",
	"internal/blob/blobtest":        "base",
	"internal/metrics/metricstest":  "base",
	"internal/blob/s3/s3test":       "adapters",
	"internal/modelcache/modeltest": "base",
	"internal/runpod/runpodtest":    "roles", // fakes around the RunPod role, and the role's adapter assembled for tests
	"test/python":                   "dev",   // the real Python peers, driven from Go tests
	"internal/chaos":                "contract",
	"deploy":                        "base",
}

// TestLayers: no import runs back up the house, and no role imports
// another role.
func TestLayers(t *testing.T) {
	t.Parallel()
	rank := map[string]int{}
	for i, l := range layers {
		for _, p := range l.pkgs {
			rank[p] = i
		}
	}
	layerOf := map[string]int{}
	for i, l := range layers {
		layerOf[l.name] = i
	}
	// apartMax is the highest layer a package apart may import; -1 for a
	// package in a layer.
	apartMax := func(p string) int {
		for a, top := range apart {
			if p == a || strings.HasPrefix(p, a+"/") {
				return layerOf[top]
			}
		}
		return -1
	}
	isApart := func(p string) bool { return apartMax(p) >= 0 }
	imports := packageImports(t, "../..")
	var problems []string
	for pkg, deps := range imports {
		pr, known := rank[pkg]
		if !known && !isApart(pkg) {
			problems = append(problems, pkg+": in no layer; add it to layers_test.go and docs/architecture.md")
			continue
		}
		for _, dep := range deps {
			dr, depKnown := rank[dep]
			switch {
			case isApart(pkg) && !isApart(dep) && (!depKnown || dr > apartMax(pkg)):
				problems = append(problems, pkg+" -> "+dep+": imports above what a package apart may")
			case isApart(dep) && !isApart(pkg) && pr < layerOf["dev"]:
				problems = append(problems, pkg+" -> "+dep+": only the dev stack and the mains import the emulator and test support")
			case isApart(pkg) || isApart(dep):
			case dr > pr:
				problems = append(problems, pkg+" -> "+dep+": imports up, from "+layers[pr].name+" to "+layers[dr].name)
			case dr == pr && !sameLayer[pkg+" -> "+dep]:
				problems = append(problems, pkg+" -> "+dep+": imports sideways within "+layers[pr].name)
			}
		}
	}
	sort.Strings(problems)
	require.Empty(t, problems)
}

// packageImports maps every package of the module under root (by its
// path inside the module) to the module packages its non-test files
// import.
func packageImports(t *testing.T, root string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		pkg := filepath.ToSlash(rel)
		seen := map[string]bool{}
		for _, dep := range out[pkg] {
			seen[dep] = true
		}
		if _, ok := out[pkg]; !ok {
			out[pkg] = nil
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if dep, ok := strings.CutPrefix(p, module); ok && !seen[dep] {
				seen[dep] = true
				out[pkg] = append(out[pkg], dep)
			}
		}
		return nil
	})
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(root, "go.mod"))
	require.NoError(t, err, "root is the module's")
	return out
}
