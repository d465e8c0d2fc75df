package comfysim

import (
	"math/big"
	"sync"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// queueItem is PromptQueue's tuple (number, prompt_id, prompt, extra_data,
// outputs_to_execute, sensitive).
type queueItem struct {
	number    any // int64 from the server counter, float64 when the client sent "number"
	id        string
	prompt    *pyvalue.Dict
	extra     *pyvalue.Dict
	outputs   []string
	sensitive *pyvalue.Dict
	seq       uint64 // only breaks exact (number, prompt_id) ties, where Python would raise
}

// tuple is the 5-element form shown by /queue and stored in history.
func (q *queueItem) tuple() []any {
	return []any{q.number, q.id, q.prompt, q.extra, q.outputs}
}

func (q *queueItem) less(o *queueItem) bool {
	if pyvalue.Less(q.number, o.number) {
		return true
	}
	if pyvalue.Less(o.number, q.number) {
		return false
	}
	if q.id != o.id {
		return q.id < o.id
	}
	return q.seq < o.seq
}

// promptHeap is a binary heap with exactly the array layout of Python's heapq,
// because GET /queue returns the raw heap array.
type promptHeap []*queueItem

func (h *promptHeap) push(it *queueItem) {
	*h = append(*h, it)
	h.siftDown(0, len(*h)-1)
}

// siftDown is heapq._siftdown: move the item at pos up towards startpos.
func (h promptHeap) siftDown(startpos, pos int) {
	newitem := h[pos]
	for pos > startpos {
		parentpos := (pos - 1) >> 1
		parent := h[parentpos]
		if newitem.less(parent) {
			h[pos] = parent
			pos = parentpos
			continue
		}
		break
	}
	h[pos] = newitem
}

// siftUp is heapq._siftup: bubble the smaller child up to a leaf, then siftDown.
func (h promptHeap) siftUp(pos int) {
	endpos := len(h)
	startpos := pos
	newitem := h[pos]
	childpos := 2*pos + 1
	for childpos < endpos {
		rightpos := childpos + 1
		if rightpos < endpos && !h[childpos].less(h[rightpos]) {
			childpos = rightpos
		}
		h[pos] = h[childpos]
		pos = childpos
		childpos = 2*pos + 1
	}
	h[pos] = newitem
	h.siftDown(startpos, pos)
}

func (h *promptHeap) pop() *queueItem {
	old := *h
	last := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	if len(*h) == 0 {
		return last
	}
	ret := (*h)[0]
	(*h)[0] = last
	h.siftUp(0)
	return ret
}

// heapify is heapq.heapify.
func (h promptHeap) heapify() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.siftUp(i)
	}
}

// historyMax is MAXIMUM_HISTORY_SIZE.
const historyMax = 10000

// historyEntry is one /history value. It is immutable once stored, so its
// encoding is cached.
type historyEntry struct {
	id      string
	value   *pyvalue.Dict
	once    sync.Once
	encoded []byte
}

func (e *historyEntry) json() []byte {
	e.once.Do(func() { e.encoded = pyvalue.Encode(e.value) })
	return e.encoded
}

// historyStore is PromptQueue.history: a dict in insertion order.
type historyStore struct {
	order []string
	m     map[string]*historyEntry
}

func newHistoryStore() *historyStore {
	return &historyStore{m: map[string]*historyEntry{}}
}

// put stores an entry; like task_done it first pops the oldest entry when
// there are more than historyMax, and an existing id keeps its position.
func (h *historyStore) put(e *historyEntry) {
	if len(h.order) > historyMax {
		oldest := h.order[0]
		h.order = h.order[1:]
		delete(h.m, oldest)
	}
	if _, ok := h.m[e.id]; !ok {
		h.order = append(h.order, e.id)
	}
	h.m[e.id] = e
}

func (h *historyStore) get(id string) (*historyEntry, bool) {
	e, ok := h.m[id]
	return e, ok
}

func (h *historyStore) delete(id string) {
	if _, ok := h.m[id]; !ok {
		return
	}
	delete(h.m, id)
	for i, k := range h.order {
		if k == id {
			h.order = append(h.order[:i:i], h.order[i+1:]...)
			break
		}
	}
}

func (h *historyStore) clear() {
	h.order = nil
	h.m = map[string]*historyEntry{}
}

// slice is get_history(max_items, offset) for the whole history: offset < 0
// with max_items means "the last max_items".
func (h *historyStore) slice(maxItems *big.Int, offset *big.Int) []*historyEntry {
	n := int64(len(h.order))
	var off int64 = -1
	if offset != nil {
		if offset.IsInt64() {
			off = offset.Int64()
		} else if offset.Sign() > 0 {
			return nil
		} else {
			off = -1 << 62
		}
	}
	var maxN int64 = -1
	if maxItems != nil {
		switch {
		case maxItems.IsInt64():
			maxN = maxItems.Int64()
		case maxItems.Sign() > 0:
			maxN = 1 << 62
		default:
			maxN = -1 << 62
		}
		if off < 0 {
			off = n - maxN
		}
	}
	var out []*historyEntry
	for idx, k := range h.order {
		if int64(idx) >= off {
			out = append(out, h.m[k])
			// Python checks len(out) >= max_items after appending, so
			// max_items <= 0 still yields one entry.
			if maxItems != nil && int64(len(out)) >= maxN {
				break
			}
		}
	}
	return out
}
