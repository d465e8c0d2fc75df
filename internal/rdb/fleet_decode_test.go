package rdb

import "testing"

// FuzzDecodeWorker feeds heartbeat hashes as any writer could leave them
// in Redis: decoding never panics.
func FuzzDecodeWorker(f *testing.F) {
	f.Add("w1", "0.5", `{"ckpt_name":["a"]}`, `["a"]`, `[{"url":"https://h/a.safetensors","folder":"loras","file":"a-1234.safetensors"}]`, "1700000000000")
	f.Add("", "nan", `{"x":1}`, `{`, `[1]`, "x")
	f.Fuzz(func(t *testing.T, id, progress, models, warm, cached, updated string) {
		w := decodeWorker(map[string]string{"id": id, "progress": progress, "models": models, "warm": warm, "cached": cached, "updated_at": updated})
		if w.ID != id {
			t.Fatalf("id %q became %q", id, w.ID)
		}
	})
}
