package comfysim

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"
)

func newTestServer(t *testing.T) (*Server, string) {
	t.Helper()
	s, err := New(Config{Dir: t.TempDir(), StepDelay: -1})
	require.NoError(t, err)
	api := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		require.NoError(t, s.Close())
		api.Close()
	})
	return s, api.URL
}

// A stale handler exiting late removes the newer socket registered under the
// same clientId, as ComfyUI's sockets.pop(sid) does (§11.5).
func TestStaleSocketUnregistersNewerOne(t *testing.T) {
	t.Parallel()
	s, url := newTestServer(t)
	u := "ws" + strings.TrimPrefix(url, "http") + "/ws?clientId=same"
	old, _, err := websocket.DefaultDialer.Dial(u, nil)
	require.NoError(t, err)
	defer old.Close()
	fresh, _, err := websocket.DefaultDialer.Dial(u, nil)
	require.NoError(t, err)
	defer fresh.Close()
	require.Eventually(t, func() bool { return s.Stats().SocketsOpen == 2 }, 5*time.Second, time.Millisecond)
	s.hub.mu.Lock()
	require.NotNil(t, s.hub.sockets["same"])
	s.hub.mu.Unlock()

	require.NoError(t, old.Close())
	require.Eventually(t, func() bool { return s.Stats().SocketsOpen == 1 }, 5*time.Second, time.Millisecond)
	s.hub.mu.Lock()
	_, registered := s.hub.sockets["same"]
	s.hub.mu.Unlock()
	require.False(t, registered, "the fresh socket is open but no longer registered")
}
