package comfysim

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// This file models the JSON values ComfyUI sees after Python's json.loads and
// writes with json.dumps. Go's encoding/json is not used for prompts because it
// loses three things ComfyUI keeps: key order (Python dicts are ordered, and the
// scheduler and execution_cached depend on it), integers wider than 64 bits
// (seeds go to 2^64-1 and Python ints are unbounded), and the bare NaN and
// Infinity tokens Python accepts and echoes.
//
// A value is one of: nil (None), bool, *big.Int (int), float64 (float),
// string (str), []any (list) or *pyDict (dict). Messages built in Go may also
// hold int, int64, []string and rawJSON; the encoder accepts those too.

// pyDict is an insertion-ordered JSON object, the stand-in for a Python dict.
type pyDict struct {
	keys []string
	vals map[string]any
}

// rawJSON is pre-encoded JSON inserted verbatim by the encoder.
type rawJSON []byte

// newDict builds a dict from alternating keys and values.
func newDict(kv ...any) *pyDict {
	d := &pyDict{vals: make(map[string]any, len(kv)/2)}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Set(kv[i].(string), kv[i+1])
	}
	return d
}

func (d *pyDict) Len() int {
	if d == nil {
		return 0
	}
	return len(d.keys)
}

func (d *pyDict) Keys() []string {
	if d == nil {
		return nil
	}
	return d.keys
}

func (d *pyDict) Get(k string) (any, bool) {
	if d == nil {
		return nil, false
	}
	v, ok := d.vals[k]
	return v, ok
}

func (d *pyDict) Has(k string) bool {
	_, ok := d.Get(k)
	return ok
}

// Set stores v under k; an existing key keeps its position, as in Python.
func (d *pyDict) Set(k string, v any) {
	if d.vals == nil {
		d.vals = make(map[string]any)
	}
	if _, ok := d.vals[k]; !ok {
		d.keys = append(d.keys, k)
	}
	d.vals[k] = v
}

// Delete removes k and reports whether it was present.
func (d *pyDict) Delete(k string) bool {
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
func (d *pyDict) Copy() *pyDict {
	c := &pyDict{keys: make([]string, len(d.Keys())), vals: make(map[string]any, d.Len())}
	if d == nil {
		return c
	}
	copy(c.keys, d.keys)
	for k, v := range d.vals {
		c.vals[k] = v
	}
	return c
}

// errInvalidJSON is what Python's json.loads raises; aiohttp turns it into a 500.
var errInvalidJSON = errors.New("invalid JSON")

// pyMaxIntDigits is Python's default int_max_str_digits.
const pyMaxIntDigits = 4300

// pyMaxDepth approximates Python's recursion limit while decoding.
const pyMaxDepth = 900

// parsePyJSON decodes data the way aiohttp's request.json() does: strict UTF-8,
// Python's json module grammar (NaN, Infinity, -Infinity accepted, duplicate
// keys keep the first position and the last value).
func parsePyJSON(data []byte) (any, error) {
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%w: body is not UTF-8", errInvalidJSON)
	}
	p := &pyParser{s: data}
	p.skipWS()
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.skipWS()
	if p.i != len(p.s) {
		return nil, p.fail("extra data")
	}
	return v, nil
}

type pyParser struct {
	s []byte
	i int
}

func (p *pyParser) fail(what string) error {
	return fmt.Errorf("%w: %s at char %d", errInvalidJSON, what, p.i)
}

func (p *pyParser) skipWS() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *pyParser) lit(word string) bool {
	if bytes.HasPrefix(p.s[p.i:], []byte(word)) {
		p.i += len(word)
		return true
	}
	return false
}

func (p *pyParser) value(depth int) (any, error) {
	if depth > pyMaxDepth {
		return nil, p.fail("maximum recursion depth exceeded")
	}
	if p.i >= len(p.s) {
		return nil, p.fail("expecting value")
	}
	switch c := p.s[p.i]; {
	case c == '{':
		return p.object(depth)
	case c == '[':
		return p.array(depth)
	case c == '"':
		return p.str()
	case c == 'n' && p.lit("null"):
		return nil, nil
	case c == 't' && p.lit("true"):
		return true, nil
	case c == 'f' && p.lit("false"):
		return false, nil
	case c == 'N' && p.lit("NaN"):
		return math.NaN(), nil
	case c == 'I' && p.lit("Infinity"):
		return math.Inf(1), nil
	case c == '-' && p.lit("-Infinity"):
		return math.Inf(-1), nil
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	}
	return nil, p.fail("expecting value")
}

func (p *pyParser) object(depth int) (any, error) {
	p.i++ // {
	d := &pyDict{vals: map[string]any{}}
	p.skipWS()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		return d, nil
	}
	for {
		p.skipWS()
		if p.i >= len(p.s) || p.s[p.i] != '"' {
			return nil, p.fail("expecting property name enclosed in double quotes")
		}
		k, err := p.str()
		if err != nil {
			return nil, err
		}
		p.skipWS()
		if p.i >= len(p.s) || p.s[p.i] != ':' {
			return nil, p.fail("expecting ':' delimiter")
		}
		p.i++
		p.skipWS()
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		d.Set(k, v)
		p.skipWS()
		if p.i >= len(p.s) {
			return nil, p.fail("expecting ',' delimiter")
		}
		switch p.s[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return d, nil
		default:
			return nil, p.fail("expecting ',' delimiter")
		}
	}
}

func (p *pyParser) array(depth int) (any, error) {
	p.i++ // [
	out := []any{}
	p.skipWS()
	if p.i < len(p.s) && p.s[p.i] == ']' {
		p.i++
		return out, nil
	}
	for {
		p.skipWS()
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
		p.skipWS()
		if p.i >= len(p.s) {
			return nil, p.fail("expecting ',' delimiter")
		}
		switch p.s[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			return out, nil
		default:
			return nil, p.fail("expecting ',' delimiter")
		}
	}
}

func (p *pyParser) hex4() (rune, bool) {
	if p.i+4 > len(p.s) {
		return 0, false
	}
	n, err := strconv.ParseUint(string(p.s[p.i:p.i+4]), 16, 32)
	if err != nil {
		return 0, false
	}
	p.i += 4
	return rune(n), true
}

func (p *pyParser) str() (string, error) {
	p.i++ // "
	start := p.i
	// Fast path: no escapes.
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c == '"' {
			s := string(p.s[start:p.i])
			p.i++
			return s, nil
		}
		if c == '\\' {
			break
		}
		if c < 0x20 {
			return "", p.fail("invalid control character")
		}
		p.i++
	}
	var b strings.Builder
	b.Write(p.s[start:p.i])
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return b.String(), nil
		case c < 0x20:
			return "", p.fail("invalid control character")
		case c != '\\':
			b.WriteByte(c)
			p.i++
			continue
		}
		p.i++ // backslash
		if p.i >= len(p.s) {
			return "", p.fail("unterminated string")
		}
		e := p.s[p.i]
		p.i++
		switch e {
		case '"', '\\', '/':
			b.WriteByte(e)
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'u':
			r, ok := p.hex4()
			if !ok {
				return "", p.fail("invalid \\uXXXX escape")
			}
			if utf16.IsSurrogate(r) && r < 0xdc00 && bytes.HasPrefix(p.s[p.i:], []byte(`\u`)) {
				save := p.i
				p.i += 2
				r2, ok := p.hex4()
				if ok && r2 >= 0xdc00 && r2 <= 0xdfff {
					r = utf16.DecodeRune(r, r2)
				} else {
					p.i = save
				}
			}
			appendWTF8(&b, r)
		default:
			return "", p.fail("invalid \\escape")
		}
	}
	return "", p.fail("unterminated string")
}

// appendWTF8 writes r as UTF-8, keeping lone surrogates (which Python strings
// may hold) as their 3-byte generalized encoding so they round-trip.
func appendWTF8(b *strings.Builder, r rune) {
	if r >= 0xd800 && r <= 0xdfff {
		b.WriteByte(byte(0xe0 | r>>12))
		b.WriteByte(byte(0x80 | (r>>6)&0x3f))
		b.WriteByte(byte(0x80 | r&0x3f))
		return
	}
	b.WriteRune(r)
}

// decodeWTF8 is utf8.DecodeRuneInString that also decodes lone surrogates.
func decodeWTF8(s string) (rune, int) {
	r, n := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError && n == 1 && len(s) >= 3 && s[0] == 0xed && s[1] >= 0xa0 && s[1] <= 0xbf && s[2]&0xc0 == 0x80 {
		return rune(s[0]&0x0f)<<12 | rune(s[1]&0x3f)<<6 | rune(s[2]&0x3f), 3
	}
	return r, n
}

func (p *pyParser) number() (any, error) {
	start := p.i
	if p.s[p.i] == '-' {
		p.i++
	}
	if p.i >= len(p.s) {
		return nil, p.fail("expecting value")
	}
	switch c := p.s[p.i]; {
	case c == '0':
		p.i++
	case c >= '1' && c <= '9':
		for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
			p.i++
		}
	default:
		return nil, p.fail("expecting value")
	}
	isFloat := false
	if p.i+1 < len(p.s) && p.s[p.i] == '.' && p.s[p.i+1] >= '0' && p.s[p.i+1] <= '9' {
		isFloat = true
		p.i++
		for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
			p.i++
		}
	}
	if p.i < len(p.s) && (p.s[p.i] == 'e' || p.s[p.i] == 'E') {
		j := p.i + 1
		if j < len(p.s) && (p.s[j] == '+' || p.s[j] == '-') {
			j++
		}
		if j < len(p.s) && p.s[j] >= '0' && p.s[j] <= '9' {
			isFloat = true
			for j < len(p.s) && p.s[j] >= '0' && p.s[j] <= '9' {
				j++
			}
			p.i = j
		}
	}
	lit := string(p.s[start:p.i])
	if isFloat {
		f, err := strconv.ParseFloat(lit, 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return nil, p.fail("bad number")
		}
		return f, nil
	}
	digits := len(lit)
	if lit[0] == '-' {
		digits--
	}
	if digits > pyMaxIntDigits {
		return nil, p.fail("integer string conversion exceeds the limit")
	}
	n, ok := new(big.Int).SetString(lit, 10)
	if !ok {
		return nil, p.fail("bad number")
	}
	return n, nil
}

// encodePy encodes v as Python's json.dumps does with its defaults
// (ensure_ascii, ", " and ": " separators, bare NaN/Infinity).
func encodePy(v any) []byte {
	return appendPy(make([]byte, 0, 256), v)
}

func appendPy(b []byte, v any) []byte {
	switch t := v.(type) {
	case nil:
		return append(b, "null"...)
	case bool:
		if t {
			return append(b, "true"...)
		}
		return append(b, "false"...)
	case *big.Int:
		if t == nil {
			return append(b, "null"...)
		}
		return t.Append(b, 10)
	case int:
		return strconv.AppendInt(b, int64(t), 10)
	case int64:
		return strconv.AppendInt(b, t, 10)
	case uint64:
		return strconv.AppendUint(b, t, 10)
	case float64:
		switch {
		case math.IsNaN(t):
			return append(b, "NaN"...)
		case math.IsInf(t, 1):
			return append(b, "Infinity"...)
		case math.IsInf(t, -1):
			return append(b, "-Infinity"...)
		}
		return append(b, pyFloatRepr(t)...)
	case string:
		return appendPyString(b, t)
	case []any:
		b = append(b, '[')
		for i, e := range t {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = appendPy(b, e)
		}
		return append(b, ']')
	case []string:
		b = append(b, '[')
		for i, e := range t {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = appendPyString(b, e)
		}
		return append(b, ']')
	case *pyDict:
		if t == nil {
			return append(b, "null"...)
		}
		b = append(b, '{')
		for i, k := range t.keys {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = appendPyString(b, k)
			b = append(b, ": "...)
			b = appendPy(b, t.vals[k])
		}
		return append(b, '}')
	case rawJSON:
		return append(b, t...)
	default:
		panic(fmt.Sprintf("comfysim: cannot encode %T", v))
	}
}

const hexDigits = "0123456789abcdef"

func appendPyString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			switch c {
			case '"':
				b = append(b, '\\', '"')
			case '\\':
				b = append(b, '\\', '\\')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				if c < 0x20 {
					b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
				} else {
					b = append(b, c)
				}
			}
			continue
		}
		r, n := decodeWTF8(s[i:])
		i += n
		if r >= 0x10000 {
			r1, r2 := utf16.EncodeRune(r)
			b = appendU4(b, r1)
			b = appendU4(b, r2)
		} else {
			b = appendU4(b, r)
		}
	}
	return append(b, '"')
}

func appendU4(b []byte, r rune) []byte {
	return append(b, '\\', 'u', hexDigits[r>>12&0xf], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
}

// pyFloatRepr is Python's repr(float) for finite values: the shortest digits
// that round-trip, fixed notation for exponents in [-4, 16), else scientific.
func pyFloatRepr(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	s := strconv.FormatFloat(f, 'e', -1, 64) // -d.ddde±XX
	neg := false
	if s[0] == '-' {
		neg = true
		s = s[1:]
	}
	epos := strings.IndexByte(s, 'e')
	mant, expStr := s[:epos], s[epos+1:]
	exp, _ := strconv.Atoi(expStr)
	digits := strings.Replace(mant, ".", "", 1)
	var out string
	if exp >= -4 && exp < 16 {
		if exp >= 0 {
			if len(digits) <= exp+1 {
				out = digits + strings.Repeat("0", exp+1-len(digits)) + ".0"
			} else {
				out = digits[:exp+1] + "." + digits[exp+1:]
			}
		} else {
			out = "0." + strings.Repeat("0", -exp-1) + digits
		}
	} else {
		m := digits[:1]
		if len(digits) > 1 {
			m += "." + digits[1:]
		}
		sign := "+"
		if exp < 0 {
			sign = "-"
			exp = -exp
		}
		out = fmt.Sprintf("%se%s%02d", m, sign, exp)
	}
	if neg {
		return "-" + out
	}
	return out
}

// pyRepr is Python's repr() of a JSON value.
func pyRepr(v any) string {
	var b strings.Builder
	writeRepr(&b, v)
	return b.String()
}

// pyStr is Python's str() of a JSON value.
func pyStr(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return pyRepr(v)
}

func writeRepr(b *strings.Builder, v any) {
	switch t := v.(type) {
	case nil:
		b.WriteString("None")
	case bool:
		if t {
			b.WriteString("True")
		} else {
			b.WriteString("False")
		}
	case *big.Int:
		b.WriteString(t.String())
	case int:
		b.WriteString(strconv.Itoa(t))
	case int64:
		b.WriteString(strconv.FormatInt(t, 10))
	case float64:
		b.WriteString(pyFloatRepr(t))
	case string:
		b.WriteString(pyStrRepr(t))
	case []any:
		b.WriteByte('[')
		for i, e := range t {
			if i > 0 {
				b.WriteString(", ")
			}
			writeRepr(b, e)
		}
		b.WriteByte(']')
	case []string:
		b.WriteByte('[')
		for i, e := range t {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(pyStrRepr(e))
		}
		b.WriteByte(']')
	case *pyDict:
		b.WriteByte('{')
		for i, k := range t.Keys() {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(pyStrRepr(k))
			b.WriteString(": ")
			writeRepr(b, t.vals[k])
		}
		b.WriteByte('}')
	case fmt.Stringer:
		b.WriteString(t.String())
	default:
		fmt.Fprintf(b, "%v", t)
	}
}

// pyStrRepr is Python's repr() of a str.
func pyStrRepr(s string) string {
	quote := byte('\'')
	if strings.IndexByte(s, '\'') >= 0 && strings.IndexByte(s, '"') < 0 {
		quote = '"'
	}
	var b strings.Builder
	b.WriteByte(quote)
	for i := 0; i < len(s); {
		r, n := decodeWTF8(s[i:])
		i += n
		switch {
		case r == rune(quote) || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r < 0x7f:
			b.WriteRune(r)
		case isPyPrintable(r):
			b.WriteRune(r)
		case r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r < 0x10000:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
	}
	b.WriteByte(quote)
	return b.String()
}

// encodePyIndent is json.dumps(v, indent=n): one item per line, "," item
// separators (no trailing space) and ": " after keys.
func encodePyIndent(v any, n int) []byte {
	return appendPyIndent(nil, v, n, 0)
}

func appendPyIndent(b []byte, v any, n, level int) []byte {
	nl := func(l int) {
		b = append(b, '\n')
		b = append(b, strings.Repeat(" ", n*l)...)
	}
	switch t := v.(type) {
	case []any:
		if len(t) == 0 {
			return append(b, "[]"...)
		}
		b = append(b, '[')
		for i, e := range t {
			if i > 0 {
				b = append(b, ',')
			}
			nl(level + 1)
			b = appendPyIndent(b, e, n, level+1)
		}
		nl(level)
		return append(b, ']')
	case *pyDict:
		if t.Len() == 0 {
			return append(b, "{}"...)
		}
		b = append(b, '{')
		for i, k := range t.keys {
			if i > 0 {
				b = append(b, ',')
			}
			nl(level + 1)
			b = appendPyString(b, k)
			b = append(b, ": "...)
			b = appendPyIndent(b, t.vals[k], n, level+1)
		}
		nl(level)
		return append(b, '}')
	}
	return appendPy(b, v)
}
