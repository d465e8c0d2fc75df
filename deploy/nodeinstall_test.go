package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakeComfy is a comfy-cli that records its calls and fails for the nodes
// the test names: "exit:<node>" exits 1, "quiet:<node>" says it failed and
// exits 0, as comfy-cli does for some failures, and "pip:<node>" prints
// pip's failure line and exits 0.
const fakeComfy = `#!/bin/sh
echo "$*" >>"$FAKE_COMFY_CALLS"
for a in "$@"; do node=$a; done
case " $FAKE_COMFY_FAIL " in
*" exit:$node "*) echo "Cloning $node..."; echo "git clone failed" >&2; exit 1 ;;
*" quiet:$node "*) echo "Installing $node"; echo "[!] Failed to install requirements of $node"; exit 0 ;;
*" pip:$node "*) echo "Installing $node"; echo "ERROR: Could not find a version that satisfies the requirement torch==0.0"; exit 0 ;;
esac
echo "Installing $node"
echo "Done."
`

func nodeInstall(t *testing.T, fail string, nodes ...string) (code int, out, calls string) {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "comfy"), fakeComfy)
	require.NoError(t, os.Chmod(filepath.Join(dir, "comfy"), 0o755))
	cmd := exec.Command("sh", append([]string{repoPath("deploy", "worker", "comfy-node-install.sh")}, nodes...)...)
	cmd.Env = []string{"PATH=" + dir + ":" + os.Getenv("PATH"), "FAKE_COMFY_CALLS=" + filepath.Join(dir, "calls"),
		"FAKE_COMFY_FAIL=" + fail, "COMFYUI_DIR=/comfy-test"}
	b, err := cmd.CombinedOutput()
	if exit, ok := err.(*exec.ExitError); ok {
		code = exit.ExitCode()
	} else {
		require.NoError(t, err)
	}
	c, _ := os.ReadFile(filepath.Join(dir, "calls"))
	return code, string(b), string(c)
}

// TestComfyNodeInstall: every node is installed with comfy-cli into the
// workspace; the first one that fails, by exit status or by what comfy-cli
// prints, fails the run loudly, naming it, and the rest are not tried.
func TestComfyNodeInstall(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		fail      string
		wantCode  int
		wantOut   string
		wantCalls string
	}{
		{name: "all install", wantOut: "comfy-node-install: comfyui-kjnodes@1.1.0 installed",
			wantCalls: "--workspace /comfy-test --skip-prompt node install --exit-on-fail comfyui-impact-pack@8.8.1\n" +
				"--workspace /comfy-test --skip-prompt node install --exit-on-fail comfyui-kjnodes@1.1.0\n"},
		{name: "comfy exits non-zero", fail: "exit:comfyui-impact-pack@8.8.1", wantCode: 1,
			wantOut:   "comfy-node-install: comfyui-impact-pack@8.8.1 failed to install (comfy exit 1)",
			wantCalls: "--workspace /comfy-test --skip-prompt node install --exit-on-fail comfyui-impact-pack@8.8.1\n"},
		{name: "comfy says it failed and exits 0", fail: "quiet:comfyui-kjnodes@1.1.0", wantCode: 1,
			wantOut: "comfy-node-install: comfyui-kjnodes@1.1.0 failed to install: comfy said: [!] Failed to install requirements of comfyui-kjnodes@1.1.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, out, calls := nodeInstall(t, tt.fail, "comfyui-impact-pack@8.8.1", "comfyui-kjnodes@1.1.0")
			require.Equal(t, tt.wantCode, code, out)
			require.Contains(t, out, tt.wantOut)
			if tt.wantCalls != "" {
				require.Equal(t, tt.wantCalls, calls)
			}
		})
	}
	// A name that holds "error" is no failure.
	code, out, _ := nodeInstall(t, "", "comfyui-error-tools@1.0.0")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "comfy-node-install: comfyui-error-tools@1.0.0 installed")
	// pip's own failure line, with comfy-cli exiting 0.
	code, out, _ = nodeInstall(t, "pip:comfyui-kjnodes@1.1.0", "comfyui-kjnodes@1.1.0")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "comfy said: ERROR: Could not find a version that satisfies the requirement")
	code, out, _ = nodeInstall(t, "")
	require.Equal(t, 2, code)
	require.Contains(t, out, "usage: comfy-node-install")
}

// TestWorkerScriptSettingsAreDocumented: the variables fetch-model and
// comfy-node-install read are in docs/configuration.md with the scripts'
// defaults.
func TestWorkerScriptSettingsAreDocumented(t *testing.T) {
	t.Parallel()
	for table, script := range map[string]string{"fetch-model": "fetch-model.sh", "comfy-node-install": "comfy-node-install.sh"} {
		got := map[string]string{}
		for _, r := range docTable(t, table) {
			got[r.Env] = r.Default
		}
		require.Equal(t, scriptVariables(t, script), got, "docs/configuration.md <!-- settings: %s -->", table)
	}
}
