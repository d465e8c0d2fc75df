package pyvalue

// Dict is an insertion-ordered JSON object, the stand-in for a Python dict.
type Dict struct {
	keys []string
	vals map[string]any
}

// NewDict builds a dict from alternating keys and values.
func NewDict(kv ...any) *Dict {
	d := &Dict{vals: make(map[string]any, len(kv)/2)}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Set(kv[i].(string), kv[i+1])
	}
	return d
}

// Len is len(d); a nil Dict is empty.
func (d *Dict) Len() int {
	if d == nil {
		return 0
	}
	return len(d.keys)
}

// Keys returns the keys in insertion order; the slice is the dict's own.
func (d *Dict) Keys() []string {
	if d == nil {
		return nil
	}
	return d.keys
}

// Get returns the value stored under k.
func (d *Dict) Get(k string) (any, bool) {
	if d == nil {
		return nil, false
	}
	v, ok := d.vals[k]
	return v, ok
}

// Has is `k in d`.
func (d *Dict) Has(k string) bool {
	_, ok := d.Get(k)
	return ok
}

// Set stores v under k; an existing key keeps its position, as in Python.
func (d *Dict) Set(k string, v any) {
	if d.vals == nil {
		d.vals = make(map[string]any)
	}
	if _, ok := d.vals[k]; !ok {
		d.keys = append(d.keys, k)
	}
	d.vals[k] = v
}

// Delete removes k and reports whether it was present.
func (d *Dict) Delete(k string) bool {
	if d == nil {
		return false
	}
	if _, ok := d.vals[k]; !ok {
		return false
	}
	delete(d.vals, k)
	for i, key := range d.keys {
		if key == k {
			d.keys = append(d.keys[:i:i], d.keys[i+1:]...)
			break
		}
	}
	return true
}

// Copy returns a shallow copy.
func (d *Dict) Copy() *Dict {
	c := &Dict{keys: make([]string, len(d.Keys())), vals: make(map[string]any, d.Len())}
	if d == nil {
		return c
	}
	copy(c.keys, d.keys)
	for k, v := range d.vals {
		c.vals[k] = v
	}
	return c
}
