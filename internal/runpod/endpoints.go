package runpod

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Endpoints maps RunPod endpoint ids to pools (the ENDPOINTS setting): as
// each RunPod endpoint is its own queue, /v2/{id}/… serves the jobs of
// the pool of id alone, and an id it does not hold is 404, as RunPod
// answers an unknown endpoint. Several ids may share a pool. An empty
// map maps every id to the default pool and scopes nothing (the
// behaviour without the setting).
type Endpoints map[string]string

// ParseEndpoints reads ENDPOINTS: comma-separated id=pool pairs, such as
// "sdxl=pool-sdxl,flux=pool-flux". Ids and pools are checked as every id
// of the fleet (proto.ValidID); spaces around an entry, its id and its
// pool are ignored; an empty entry, a pair without "=" and an id given
// twice are refused with the entry named. An empty or blank s is no map
// (nil).
func ParseEndpoints(s string) (Endpoints, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	m := Endpoints{}
	for i, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		where := fmt.Sprintf("entry %d %q", i+1, proto.Shorten(entry))
		if entry == "" {
			return nil, fmt.Errorf("entry %d is empty: want endpoint-id=pool pairs separated by commas", i+1)
		}
		id, pool, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, fmt.Errorf("%s has no '=': want endpoint-id=pool", where)
		}
		id, pool = strings.TrimSpace(id), strings.TrimSpace(pool)
		if err := proto.ValidID(id); err != nil {
			return nil, fmt.Errorf("%s: endpoint %w", where, err)
		}
		if err := proto.ValidID(pool); err != nil {
			return nil, fmt.Errorf("%s: pool %w", where, err)
		}
		if prev, dup := m[id]; dup {
			return nil, fmt.Errorf("%s: endpoint %s is mapped twice (to %s and to %s)", where, id, prev, pool)
		}
		m[id] = pool
	}
	return m, nil
}

// Validate checks a map built in code as ParseEndpoints checks its text.
func (e Endpoints) Validate() error {
	for _, id := range e.IDs() {
		if err := proto.ValidID(id); err != nil {
			return fmt.Errorf("endpoint %w", err)
		}
		if err := proto.ValidID(e[id]); err != nil {
			return fmt.Errorf("pool of endpoint %s: %w", id, err)
		}
	}
	return nil
}

// String is the map in ENDPOINTS's form, ids in order.
func (e Endpoints) String() string {
	parts := make([]string, 0, len(e))
	for _, id := range e.IDs() {
		parts = append(parts, id+"="+e[id])
	}
	return strings.Join(parts, ",")
}

// IDs are the endpoint ids, in order.
func (e Endpoints) IDs() []string {
	ids := make([]string, 0, len(e))
	for id := range e {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Pools are the pools the map names, each once, in order; def alone for
// an empty map.
func (e Endpoints) Pools(def string) []string {
	if len(e) == 0 {
		return []string{def}
	}
	var pools []string
	for _, p := range e {
		if !slices.Contains(pools, p) {
			pools = append(pools, p)
		}
	}
	slices.Sort(pools)
	return pools
}

// Resolve is the pool of endpoint id: with an empty map, def for every id
// (scoped false: the endpoint id names no queue of its own); otherwise
// the mapped pool (scoped true), or ok false for an id the map lacks.
func (e Endpoints) Resolve(id, def string) (pool string, scoped, ok bool) {
	if len(e) == 0 {
		return def, false, true
	}
	pool, ok = e[id]
	return pool, ok, ok
}

// UnknownEndpoint answers 404 for an endpoint id that ENDPOINTS does not
// map. RunPod documents 404 for a bad endpoint but not its body; the
// answer is the fleet's usual {"error": …}, as for an unknown route.
func UnknownEndpoint(w http.ResponseWriter, id string) {
	WriteError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s", proto.Shorten(id)))
}
