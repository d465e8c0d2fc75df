package backend_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/backend"
)

func TestRedactURLs(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                    "nats://127.0.0.1:4222",
		"nats://worker:s3cret@nats:4222":           "nats://worker:xxxxx@nats:4222",
		"nats://TOKEN123@nats:4222":                "nats://xxxxx@nats:4222",
		"nats://a:p1@n1:4222, nats://a:p1@n2:4222": "nats://a:xxxxx@n1:4222,nats://a:xxxxx@n2:4222",
		"redis://:redispw@redis:6379/0":            "redis://:xxxxx@redis:6379/0",
	} {
		got := backend.RedactURLs(in)
		require.Equal(t, want, got, in)
		require.NotContains(t, got, "s3cret")
	}
}
