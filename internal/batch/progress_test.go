package batch

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestProgressBarOnATerminal(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	t0 := time.Unix(1000, 0)
	p := newProgress(&b, true, t0)
	c := Counts{Total: 10, Done: 4, Failed: 1, Running: 2, Queued: 3}
	p.tick(c, t0.Add(5*time.Second))
	require.Equal(t, "\r\x1b[K[############............] 5/10  done 4  failed 1  running 2  queued 3  1.0/s  ETA 5s", b.String())
	b.Reset()
	p.item(5, 10, &Result{Item: "003", Status: "FAILED", Error: "boom"})
	require.Equal(t, "\r\x1b[K[5/10] FAILED 003: boom\n", b.String(), "a failure goes above the bar")
	b.Reset()
	p.item(5, 10, &Result{Item: "007", Status: "CANCELLED"})
	require.Equal(t, "[5/10] CANCELLED 007\n", b.String(), "no message, no colon")
	b.Reset()
	p.item(6, 10, &Result{Item: "004", Status: "COMPLETED"})
	require.Empty(t, b.String(), "completions only move the bar")
	p.tick(c, t0.Add(6*time.Second))
	p.done()
	require.True(t, bytes.HasSuffix(b.Bytes(), []byte("\r\x1b[K")), "the bar is cleared at the end")
}

func TestPlainProgress(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	t0 := time.Unix(1000, 0)
	p := newProgress(&b, false, t0)
	p.item(1, 2, &Result{Item: "001", Status: "COMPLETED", Files: []File{{}}, DelayMS: 12, ExecutionMS: 340})
	require.Equal(t, "[1/2] COMPLETED 001: 1 file(s), queued 12ms, ran 340ms\n", b.String())
	b.Reset()
	c := Counts{Total: 2, Done: 1, Queued: 1}
	p.tick(c, t0.Add(time.Second))
	require.Empty(t, b.String(), "no summary before plainEvery")
	p.tick(c, t0.Add(plainEvery))
	require.Equal(t, "progress: 1/2  done 1  failed 0  running 0  queued 1  0.1/s  ETA 10s\n", b.String())
	b.Reset()
	p.tick(c, t0.Add(3*plainEvery))
	require.Empty(t, b.String(), "nothing changed, nothing said")
}
