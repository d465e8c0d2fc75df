package console

import (
	"net/url"
	"strings"
	"testing"

	"github.com/comfyfleet/comfyfleet/proto"
)

// FuzzDecodePause: any body is either refused with a message naming the
// body, or gives a valid pool and lane.
func FuzzDecodePause(f *testing.F) {
	for _, s := range []string{`{"pool":"default"}`, `{"pool":"p","lane":"batch"}`, `{"pool":"p","lane":"x"}`, `{}`, `[]`, `{"pool":1}`,
		`{"pool":"p"} 1`, `{"pool":"p","extra":true}`, ``, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := decodePause(body)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "body") {
				t.Fatalf("error does not name the body: %v", err)
			}
			return
		}
		if proto.ValidID(p.Pool) != nil || (p.Lane != "" && !p.Lane.Valid()) {
			t.Fatalf("accepted %q as %+v", body, p)
		}
		if len(p.lanes()) == 0 {
			t.Fatal("no lane")
		}
	})
}

// FuzzDecodeJobQuery: any query string is either refused naming a query
// parameter, or gives a search with valid fields.
func FuzzDecodeJobQuery(f *testing.F) {
	for _, s := range []string{"", "q=abc", "status=COMPLETED&limit=5", "batch=b1&tenant=acme", "limit=0", "x=1", "q=a&q=b", "status=nope", "%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := decodeJobQuery(v)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "query parameter ") {
				t.Fatalf("error does not name the parameter: %v", err)
			}
			return
		}
		if q.Limit < 1 || q.Limit > maxList || len(q.Q) > maxQuery {
			t.Fatalf("bad search %+v", q)
		}
		if q.Status != "" && !q.Status.Valid() {
			t.Fatalf("bad status %q", q.Status)
		}
		for _, id := range []string{q.Batch, q.Tenant} {
			if id != "" && proto.ValidID(id) != nil {
				t.Fatalf("bad id %q", id)
			}
		}
	})
}
