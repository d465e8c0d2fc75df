package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestHelpGoesToStdout: every command's --help is on standard output
// (`comfyfleet submit --help | less` pages it) with exit 0, each default
// said once; a bad flag is one line on standard error, without the help.
func TestHelpGoesToStdout(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"dev", "standalone", "submit", "watch", "status", "cancel", "fleet", "dlq", "bench"} {
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), []string{cmd, "--help"}, &stdout, &stderr)
		require.Equal(t, exitOK, code, cmd)
		require.Empty(t, stderr.String(), cmd)
		require.Contains(t, stdout.String(), "Settings (flag beats environment beats default):", cmd)
		require.NotContains(t, stdout.String(), `(default "")`, cmd)
		for _, line := range strings.Split(stdout.String(), "\n") {
			require.LessOrEqual(t, strings.Count(line, "(default"), 1, "%s: %s", cmd, line)
		}

		stdout.Reset()
		stderr.Reset()
		code = run(t.Context(), []string{cmd, "--no-such-flag"}, &stdout, &stderr)
		require.Equal(t, exitUsage, code, cmd)
		require.Empty(t, stdout.String(), cmd)
		require.Equal(t, "comfyfleet "+cmd+": flag provided but not defined: -no-such-flag (see --help)\n", stderr.String(), cmd)
	}
	var stdout, stderr bytes.Buffer
	require.Equal(t, exitOK, run(t.Context(), []string{"submit", "--help"}, &stdout, &stderr))
	require.Contains(t, stdout.String(), "(default: ./<batch id>)\n", "said once, by the text")
}
