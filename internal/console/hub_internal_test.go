package console

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/proto"
)

// A browser that falls behind by more than its buffer is dropped; the
// others keep getting every frame.
func TestSlowBrowserIsDropped(t *testing.T) {
	t.Parallel()
	h := newHub(2, zaptest.NewLogger(t))
	slow, ok := h.add("")
	require.True(t, ok)
	fast, ok := h.add("")
	require.True(t, ok)
	for i := range 5 {
		h.event(&proto.Event{JobID: "j", Type: proto.EventProgress, Progress: &proto.Progress{Value: int64(i), Max: 5}})
		<-fast.frames // the fast one reads each
	}
	select {
	case <-slow.gone:
	default:
		t.Fatal("the slow browser was not dropped")
	}
	select {
	case <-fast.gone:
		t.Fatal("the fast browser was dropped")
	default:
	}
	require.Equal(t, 1, h.watchers())
	h.close()
	<-fast.gone
	_, ok = h.add("")
	require.False(t, ok, "a closed hub takes no browser")
}
