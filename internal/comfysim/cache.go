package comfysim

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"math/big"
	"sort"
	"strconv"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// cacheEntry is execution.CacheEntry: a node's outputs and its UI record
// ({"meta": ..., "output": ...}), or nil UI for nodes without UI.
type cacheEntry struct {
	outputs []any
	ui      *pyvalue.Dict
}

// outputCache is the output cache keyed by input signature (§12.4). v0.27's
// default RAM-pressure cache keeps entries across prompts until memory runs
// short; the emulator's values are tiny descriptors, so it keeps the newest
// cacheMaxEntries and evicts the least recently used beyond that.
type outputCache struct {
	m   map[string]*list.Element
	lru *list.List
}

type lruItem struct {
	key   string
	entry *cacheEntry
}

const cacheMaxEntries = 100000

func newOutputCache() *outputCache {
	return &outputCache{m: map[string]*list.Element{}, lru: list.New()}
}

func (c *outputCache) get(key string) *cacheEntry {
	if key == "" {
		return nil
	}
	el, ok := c.m[key]
	if !ok {
		return nil
	}
	c.lru.MoveToFront(el)
	return el.Value.(*lruItem).entry
}

func (c *outputCache) set(key string, e *cacheEntry) {
	if key == "" {
		return
	}
	if el, ok := c.m[key]; ok {
		el.Value.(*lruItem).entry = e
		c.lru.MoveToFront(el)
		return
	}
	c.m[key] = c.lru.PushFront(&lruItem{key: key, entry: e})
	for c.lru.Len() > cacheMaxEntries {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.m, old.Value.(*lruItem).key)
	}
}

func (c *outputCache) len() int { return c.lru.Len() }

// signer computes the cache keys of a prompt's nodes, like
// CacheKeySetInputSignature: the node's class, IS_CHANGED value and inputs
// sorted by name, followed by the same for every ancestor, links written as
// (ancestor position, socket). Node ids are not part of the key.
type signer struct {
	s       *Server
	prompt  *pyvalue.Dict
	keys    map[string]string
	changed map[string]string // IS_CHANGED result per node, computed once
}

func newSigner(s *Server, prompt *pyvalue.Dict) *signer {
	return &signer{s: s, prompt: prompt, keys: map[string]string{}, changed: map[string]string{}}
}

// key returns the signature of a node, "" when it cannot be cached (a NaN
// IS_CHANGED, as ComfyUI's never-equal NaN).
func (g *signer) key(id string) string {
	if k, ok := g.keys[id]; ok {
		return k
	}
	ancestors := []string{}
	order := map[string]int{}
	g.ancestry(id, &ancestors, order)
	var b []byte
	ok := g.immediate(&b, id, order)
	for _, a := range ancestors {
		ok = g.immediate(&b, a, order) && ok
	}
	k := ""
	if ok {
		sum := sha256.Sum256(b)
		k = string(sum[:])
	}
	g.keys[id] = k
	return k
}

func (g *signer) node(id string) (*pyvalue.Dict, *pyvalue.Dict, bool) {
	v, ok := g.prompt.Get(id)
	if !ok {
		return nil, nil, false
	}
	n, ok := v.(*pyvalue.Dict)
	if !ok {
		return nil, nil, false
	}
	in, _ := n.Get("inputs")
	inputs, _ := in.(*pyvalue.Dict)
	return n, inputs, true
}

func sortedKeys(d *pyvalue.Dict) []string {
	ks := append([]string(nil), d.Keys()...)
	sort.Strings(ks)
	return ks
}

func (g *signer) ancestry(id string, ancestors *[]string, order map[string]int) {
	_, inputs, ok := g.node(id)
	if !ok {
		return
	}
	for _, k := range sortedKeys(inputs) {
		v, _ := inputs.Get(k)
		if src, _, isL := isLink(v); isL {
			if _, seen := order[src]; !seen {
				*ancestors = append(*ancestors, src)
				order[src] = len(*ancestors) - 1
				g.ancestry(src, ancestors, order)
			}
		}
	}
}

func (g *signer) immediate(b *[]byte, id string, order map[string]int) bool {
	n, inputs, ok := g.node(id)
	if !ok {
		return false // [NaN]: never equal
	}
	ct, _ := n.Get("class_type")
	ctName, _ := ct.(string)
	writeSigString(b, "node")
	writeSigString(b, ctName)
	def := g.s.nodes.Class(ctName)
	if def != nil && def.IsChanged != nil {
		ch, done := g.changed[id]
		if !done {
			v := def.IsChanged(g.s.host, inputs)
			if v == nil {
				ch = "\x00nan"
			} else {
				ch = pyvalue.Str(v)
			}
			g.changed[id] = ch
		}
		if ch == "\x00nan" {
			return false
		}
		writeSigString(b, ch)
	}
	for _, k := range sortedKeys(inputs) {
		v, _ := inputs.Get(k)
		writeSigString(b, k)
		if src, slot, isL := isLink(v); isL {
			writeSigString(b, "ANCESTOR")
			writeSigString(b, strconv.Itoa(order[src]))
			writeSigValue(b, slot)
		} else {
			writeSigValue(b, v)
		}
	}
	return true
}

func writeSigString(b *[]byte, s string) {
	*b = binary.AppendUvarint(*b, uint64(len(s)))
	*b = append(*b, s...)
}

// writeSigValue writes a canonical form of a constant in which values Python
// considers equal as dict keys (1, 1.0, True) coincide and dict order is
// irrelevant (to_hashable makes a frozenset of items).
func writeSigValue(b *[]byte, v any) {
	switch t := v.(type) {
	case nil:
		*b = append(*b, 'n')
	case bool:
		if t {
			writeSigValue(b, big.NewInt(1))
		} else {
			writeSigValue(b, big.NewInt(0))
		}
	case *big.Int:
		*b = append(*b, 'i')
		writeSigString(b, t.String())
	case float64:
		if !math.IsInf(t, 0) && !math.IsNaN(t) && t == math.Trunc(t) {
			n, _ := big.NewFloat(t).Int(nil)
			writeSigValue(b, n)
			return
		}
		*b = append(*b, 'f')
		writeSigString(b, strconv.FormatFloat(t, 'g', -1, 64))
	case string:
		*b = append(*b, 's')
		writeSigString(b, t)
	case []any:
		*b = append(*b, 'l')
		*b = binary.AppendUvarint(*b, uint64(len(t)))
		for _, e := range t {
			writeSigValue(b, e)
		}
	case *pyvalue.Dict:
		*b = append(*b, 'd')
		ks := sortedKeys(t)
		*b = binary.AppendUvarint(*b, uint64(len(ks)))
		for _, k := range ks {
			writeSigString(b, k)
			v, _ := t.Get(k)
			writeSigValue(b, v)
		}
	}
}
