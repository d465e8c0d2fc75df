package deploy_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/stretchr/testify/require"
)

// root is the repository root, as an absolute path.
var root = func() string {
	abs, err := filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	return abs
}()

func repoPath(parts ...string) string { return filepath.Join(append([]string{root}, parts...)...) }

func readFile(t *testing.T, parts ...string) string {
	t.Helper()
	b, err := os.ReadFile(repoPath(parts...))
	require.NoError(t, err)
	return string(b)
}

// binaries are the comfyfleet binaries the process tests run, built once
// per test binary (with -race when the tests run with it, which reuses the
// tests' build cache and checks the binaries for races too).
var binaries struct {
	once sync.Once
	dir  string
	err  error
	out  []byte
}

// binary names to build, and their packages.
var binaryPackages = map[string]string{
	"dispatcher":     "./cmd/dispatcher",
	"gpuworker":      "./cmd/gpuworker",
	"runpod-adapter": "./cmd/runpod-adapter",
	"comfysim":       "./cmd/comfysim",
	"comfyfleet":     "./cmd/comfyfleet",
	"healthcheck":    "./deploy/healthcheck",
}

// bin returns the path of a built binary.
func bin(t *testing.T, name string) string {
	t.Helper()
	binaries.once.Do(func() {
		binaries.dir, binaries.err = os.MkdirTemp("", "comfyfleet-deploy-bin-")
		if binaries.err != nil {
			return
		}
		args := []string{"build", "-o", binaries.dir + string(filepath.Separator)}
		if raceEnabled {
			args = append(args, "-race")
		}
		for _, pkg := range binaryPackages {
			args = append(args, pkg)
		}
		cmd := exec.Command(goTool(), args...)
		cmd.Dir = root
		binaries.out, binaries.err = cmd.CombinedOutput()
	})
	require.NoError(t, binaries.err, "go build: %s", binaries.out)
	require.Contains(t, binaryPackages, name)
	return filepath.Join(binaries.dir, name)
}

func removeBinaries() {
	if binaries.dir != "" {
		os.RemoveAll(binaries.dir)
	}
}

// goTool is the go command: go test puts GOROOT/bin first on the test's
// PATH.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "go"
}

// dotEnv reads deploy/compose/.env.example as KEY=VALUE lines.
func dotEnv(t *testing.T) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, line := range strings.Split(readFile(t, "deploy", "compose", ".env.example"), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		require.True(t, ok, ".env.example: %q is not KEY=VALUE", line)
		_, dup := env[k]
		require.False(t, dup, ".env.example: %s is set twice", k)
		env[k] = v
	}
	return env
}

// loadCompose loads a compose file as `docker compose` would with the given
// profiles, and .env.example as the .env file (what a user starts from).
func loadCompose(t *testing.T, file string, profiles ...string) *types.Project {
	t.Helper()
	return loadComposeEnv(t, file, nil, profiles...)
}

// loadComposeEnv is loadCompose with some variables of .env changed.
func loadComposeEnv(t *testing.T, file string, set map[string]string, profiles ...string) *types.Project {
	t.Helper()
	vars := dotEnv(t)
	maps.Copy(vars, set)
	var env []string
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	opts, err := cli.NewProjectOptions([]string{file},
		cli.WithWorkingDirectory(filepath.Dir(file)),
		cli.WithEnv(env),
		cli.WithProfiles(profiles),
		cli.WithName("comfyfleet"),
	)
	require.NoError(t, err)
	p, err := opts.LoadProject(context.Background())
	require.NoError(t, err, "load %s", file)
	return p
}

func composeFile() string { return repoPath("deploy", "compose", "compose.yaml") }

// stage is one stage of a Dockerfile.
type stage struct {
	name, from string
	instrs     []*parser.Node
}

// dockerfile is a parsed Dockerfile: the ARGs before the first FROM and
// the stages.
type dockerfile struct {
	metaArgs map[string]string
	stages   []stage
	syntax   string
}

func parseDockerfile(t *testing.T, parts ...string) dockerfile {
	t.Helper()
	src := readFile(t, parts...)
	res, err := parser.Parse(strings.NewReader(src))
	require.NoError(t, err)
	require.Empty(t, res.Warnings, "parser warnings")
	df := dockerfile{metaArgs: map[string]string{}}
	if first, _, ok := strings.Cut(src, "\n"); ok && strings.HasPrefix(first, "# syntax=") {
		df.syntax = strings.TrimPrefix(first, "# syntax=")
	}
	for _, n := range res.AST.Children {
		n.Value = strings.ToLower(n.Value)
		switch {
		case n.Value == "from":
			s := stage{from: n.Next.Value}
			if n.Next.Next != nil && strings.EqualFold(n.Next.Next.Value, "as") {
				s.name = n.Next.Next.Next.Value
			}
			df.stages = append(df.stages, s)
		case len(df.stages) == 0:
			require.Equal(t, "arg", n.Value, "only ARG may come before the first FROM")
			for k, v := range argsOf(n) {
				df.metaArgs[k] = v
			}
		default:
			s := &df.stages[len(df.stages)-1]
			s.instrs = append(s.instrs, n)
		}
	}
	return df
}

// argsOf returns the names and defaults of an ARG instruction.
func argsOf(n *parser.Node) map[string]string {
	out := map[string]string{}
	for a := n.Next; a != nil; a = a.Next {
		k, v, _ := strings.Cut(a.Value, "=")
		out[k] = strings.Trim(v, `"`)
	}
	return out
}

func (d dockerfile) stage(t *testing.T, name string) stage {
	t.Helper()
	for _, s := range d.stages {
		if s.name == name {
			return s
		}
	}
	t.Fatalf("no stage %q", name)
	return stage{}
}

func (d dockerfile) stageNames() []string {
	var out []string
	for _, s := range d.stages {
		out = append(out, s.name)
	}
	return out
}

// args returns the ARGs a stage declares, with their defaults.
func (s stage) args() map[string]string {
	out := map[string]string{}
	for _, n := range s.instrs {
		if n.Value == "arg" {
			for k, v := range argsOf(n) {
				out[k] = v
			}
		}
	}
	return out
}

// find returns the stage's instructions of one kind ("run", "copy", ...).
func (s stage) find(kind string) []*parser.Node {
	var out []*parser.Node
	for _, n := range s.instrs {
		if n.Value == kind {
			out = append(out, n)
		}
	}
	return out
}

// words returns an instruction's arguments.
func words(n *parser.Node) []string {
	var out []string
	for a := n.Next; a != nil; a = a.Next {
		out = append(out, a.Value)
	}
	return out
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, port, err := net.SplitHostPort(ln.Addr().String())
	require.NoError(t, err)
	return port
}

// syncBuffer is a bytes.Buffer safe for a process's output and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	mode := os.FileMode(0o644)
	if strings.HasSuffix(path, ".sh") {
		mode = 0o755
	}
	require.NoError(t, os.WriteFile(path, []byte(content), mode))
}

// startOrder sorts services so that each comes after what it depends on,
// as compose starts them.
func startOrder(p *types.Project) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(string) error
	visit = func(name string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("dependency cycle through %s", name)
		case 2:
			return nil
		}
		state[name] = 1
		for _, dep := range slices.Sorted(maps.Keys(p.Services[name].DependsOn)) {
			if err := visit(dep); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, name)
		return nil
	}
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		if err := visit(name); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// entrypointSetting matches the entrypoint's settings: `: "${NAME:=default}"`.
var entrypointSetting = regexp.MustCompile(`(?m)^: "\$\{([A-Z_][A-Z0-9_]*):=([^}]*)\}"`)

// entrypointVariables returns the worker image entrypoint's settings and
// their defaults.
func entrypointVariables(t *testing.T) map[string]string {
	t.Helper()
	return scriptVariables(t, "entrypoint.sh")
}

// scriptVariables returns the settings of a script in deploy/worker and
// their defaults.
func scriptVariables(t *testing.T, script string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, m := range entrypointSetting.FindAllStringSubmatch(readFile(t, "deploy", "worker", script), -1) {
		out[m[1]] = m[2]
	}
	require.NotEmpty(t, out)
	return out
}
