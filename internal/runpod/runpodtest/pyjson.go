package runpodtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// pyDumps encodes v as Python's json.dumps(v, ensure_ascii=False) does:
// ", " and ": " separators, keys in the order given. v is built from
// ordered pairs (pyObj), slices, json.RawMessage and scalars, so key order
// survives.
func pyDumps(v any) []byte {
	var b bytes.Buffer
	writePy(&b, v)
	return b.Bytes()
}

// pyObj is a JSON object whose keys keep their order.
type pyObj []pyKV

type pyKV struct {
	K string
	V any
}

func writePy(b *bytes.Buffer, v any) {
	switch x := v.(type) {
	case pyObj:
		b.WriteByte('{')
		for i, kv := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			writeStr(b, kv.K)
			b.WriteString(": ")
			writePy(b, kv.V)
		}
		b.WriteByte('}')
	case []any:
		b.WriteByte('[')
		for i, el := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			writePy(b, el)
		}
		b.WriteByte(']')
	case json.RawMessage:
		b.Write(pyFormat(x))
	case string:
		writeStr(b, x)
	case nil:
		b.WriteString("null")
	case bool:
		fmt.Fprint(b, x)
	default:
		data, _ := json.Marshal(x)
		b.Write(data)
	}
}

func writeStr(b *bytes.Buffer, s string) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	b.Write(bytes.TrimRight(buf.Bytes(), "\n"))
}

// pyFormat re-spaces compact JSON text the way json.dumps spaces it,
// keeping key order and number text.
func pyFormat(raw []byte) []byte {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var b bytes.Buffer
	type frame struct {
		obj   bool
		count int
	}
	var stack []frame
	sep := func() {
		if len(stack) == 0 {
			return
		}
		top := &stack[len(stack)-1]
		if top.obj {
			if top.count%2 == 1 {
				b.WriteString(": ")
			} else if top.count > 0 {
				b.WriteString(", ")
			}
		} else if top.count > 0 {
			b.WriteString(", ")
		}
		top.count++
	}
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				sep()
				b.WriteRune(rune(t))
				stack = append(stack, frame{obj: t == '{'})
			default:
				stack = stack[:len(stack)-1]
				b.WriteRune(rune(t))
			}
		case string:
			sep()
			writeStr(&b, t)
		case json.Number:
			sep()
			b.WriteString(t.String())
		case bool:
			sep()
			fmt.Fprint(&b, t)
		case nil:
			sep()
			b.WriteString("null")
		}
	}
	return b.Bytes()
}

// truthy is Python's truth of a JSON value.
func truthy(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	switch s {
	case "", "null", "false", "0", "0.0", `""`, "[]", "{}":
		return false
	}
	return true
}
