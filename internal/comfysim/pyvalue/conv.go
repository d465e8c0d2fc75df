package pyvalue

import (
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"unicode"
)

// Python semantics for these values (reference/comfyui-protocol.md §2):
// int(), float(), str(), bool(), equality, ordering and the `in` operator,
// with Python's error texts, because ComfyUI copies those texts into
// validation errors.

// TypeName is type(v).__name__.
func TypeName(v any) string {
	switch v.(type) {
	case nil:
		return "NoneType"
	case bool:
		return "bool"
	case *big.Int, int, int64:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []any:
		return "list"
	case *Dict:
		return "dict"
	}
	return fmt.Sprintf("%T", v)
}

// Truth is bool(v).
func Truth(v any) bool {
	switch t := v.(type) {
	case nil:
		return false
	case bool:
		return t
	case *big.Int:
		return t.Sign() != 0
	case int:
		return t != 0
	case int64:
		return t != 0
	case float64:
		return t != 0 // NaN is truthy
	case string:
		return t != ""
	case []any:
		return len(t) > 0
	case *Dict:
		return t.Len() > 0
	}
	return true
}

func isPrintable(r rune) bool {
	if r == ' ' {
		return true
	}
	if unicode.Is(unicode.Zs, r) {
		return false
	}
	return unicode.IsPrint(r)
}

// isSpace is str.isspace for one character.
func isSpace(r rune) bool {
	switch r {
	case ' ', '\t', '\n', '\r', '\v', '\f', 0x1c, 0x1d, 0x1e, 0x1f, 0x85:
		return true
	}
	return r > 0x7f && unicode.IsSpace(r) && r != 0x200b
}

func strip(s string) string {
	return strings.TrimFunc(s, isSpace)
}

// asciiDigits parses a digit part with Python's underscore rule (single
// underscores between digits) and Unicode decimal digits, returning ASCII digits.
func asciiDigits(s string) (string, bool) {
	if s == "" {
		return "", false
	}
	var b strings.Builder
	prevUnderscore := true // a leading underscore is invalid
	for _, r := range s {
		if r == '_' {
			if prevUnderscore {
				return "", false
			}
			prevUnderscore = true
			continue
		}
		if r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else if unicode.Is(unicode.Nd, r) {
			b.WriteByte(byte('0' + unicodeDigit(r)))
		} else {
			return "", false
		}
		prevUnderscore = false
	}
	if prevUnderscore {
		return "", false
	}
	return b.String(), true
}

// unicodeDigit returns the value of a Unicode decimal digit. Unicode keeps
// every Nd character in contiguous runs of ten ascending from zero, so the
// value is the count of Nd characters just before r, modulo ten.
func unicodeDigit(r rune) int {
	n := 0
	for z := r - 1; z >= 0 && unicode.Is(unicode.Nd, z); z-- {
		n++
	}
	return n % 10
}

// Int is int(v). The error string is str(exception).
func Int(v any) (*big.Int, error) {
	switch t := v.(type) {
	case bool:
		if t {
			return big.NewInt(1), nil
		}
		return big.NewInt(0), nil
	case *big.Int:
		return t, nil
	case float64:
		if math.IsNaN(t) {
			return nil, fmt.Errorf("cannot convert float NaN to integer")
		}
		if math.IsInf(t, 0) {
			return nil, fmt.Errorf("cannot convert float infinity to integer")
		}
		n, _ := big.NewFloat(math.Trunc(t)).Int(nil)
		return n, nil
	case string:
		s := strip(t)
		sign := ""
		if strings.HasPrefix(s, "+") || strings.HasPrefix(s, "-") {
			if s[0] == '-' {
				sign = "-"
			}
			s = s[1:]
		}
		digits, ok := asciiDigits(s)
		if !ok {
			return nil, fmt.Errorf("invalid literal for int() with base 10: %s", StrRepr(t))
		}
		if len(digits) > maxIntDigits {
			//lint:ignore ST1005 Python's exact message, copied into validation errors
			return nil, fmt.Errorf("Exceeds the limit (%d digits) for integer string conversion: value has %d digits; use sys.set_int_max_str_digits() to increase the limit", maxIntDigits, len(digits))
		}
		n, _ := new(big.Int).SetString(sign+digits, 10)
		return n, nil
	}
	return nil, fmt.Errorf("int() argument must be a string, a bytes-like object or a real number, not '%s'", TypeName(v))
}

// Float is float(v).
func Float(v any) (float64, error) {
	switch t := v.(type) {
	case bool:
		if t {
			return 1, nil
		}
		return 0, nil
	case *big.Int:
		f, acc := new(big.Float).SetInt(t).Float64()
		if math.IsInf(f, 0) && acc != big.Exact {
			return 0, fmt.Errorf("int too large to convert to float")
		}
		return f, nil
	case float64:
		return t, nil
	case string:
		f, ok := parseFloatString(t)
		if !ok {
			return 0, fmt.Errorf("could not convert string to float: %s", StrRepr(t))
		}
		return f, nil
	}
	return 0, fmt.Errorf("float() argument must be a string or a real number, not '%s'", TypeName(v))
}

func parseFloatString(s string) (float64, bool) {
	s = strip(s)
	sign := ""
	body := s
	if strings.HasPrefix(body, "+") || strings.HasPrefix(body, "-") {
		sign = body[:1]
		body = body[1:]
	}
	switch strings.ToLower(body) {
	case "inf", "infinity":
		if sign == "-" {
			return math.Inf(-1), true
		}
		return math.Inf(1), true
	case "nan":
		return math.NaN(), true
	}
	mant, exp := body, ""
	if i := strings.IndexAny(body, "eE"); i >= 0 {
		mant, exp = body[:i], body[i+1:]
		if exp == "" {
			return 0, false
		}
	}
	intPart, frac := mant, ""
	hasDot := false
	if i := strings.IndexByte(mant, '.'); i >= 0 {
		intPart, frac, hasDot = mant[:i], mant[i+1:], true
	}
	if intPart == "" && frac == "" {
		return 0, false
	}
	var lit strings.Builder
	lit.WriteString(sign)
	if intPart != "" {
		d, ok := asciiDigits(intPart)
		if !ok {
			return 0, false
		}
		lit.WriteString(d)
	} else {
		lit.WriteByte('0')
	}
	if hasDot && frac != "" {
		d, ok := asciiDigits(frac)
		if !ok {
			return 0, false
		}
		lit.WriteByte('.')
		lit.WriteString(d)
	}
	if exp != "" {
		esign := ""
		if exp[0] == '+' || exp[0] == '-' {
			esign = exp[:1]
			exp = exp[1:]
		}
		d, ok := asciiDigits(exp)
		if !ok {
			return 0, false
		}
		lit.WriteString("e" + esign + d)
	}
	f, err := strconv.ParseFloat(lit.String(), 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return f, true
		}
		return 0, false
	}
	return f, true
}

// Number reports whether v is a Python number (bool counts, as in Python).
func Number(v any) (*big.Float, bool) {
	switch t := v.(type) {
	case bool:
		if t {
			return big.NewFloat(1), true
		}
		return big.NewFloat(0), true
	case *big.Int:
		return new(big.Float).SetPrec(0).SetInt(t), true
	case int:
		return new(big.Float).SetInt64(int64(t)), true
	case int64:
		return new(big.Float).SetInt64(t), true
	case float64:
		if math.IsNaN(t) {
			return nil, true
		}
		return big.NewFloat(t), true
	}
	return nil, false
}

// Less is a < b for numbers; false when either is NaN or not a number.
func Less(a, b any) bool {
	x, ok1 := Number(a)
	y, ok2 := Number(b)
	if !ok1 || !ok2 || x == nil || y == nil {
		return false
	}
	return x.Cmp(y) < 0
}

// Equal is a == b for JSON values.
func Equal(a, b any) bool {
	if x, ok := Number(a); ok {
		y, ok := Number(b)
		if !ok || x == nil || y == nil {
			return false
		}
		return x.Cmp(y) == 0
	}
	switch t := a.(type) {
	case nil:
		return b == nil
	case string:
		s, ok := b.(string)
		return ok && s == t
	case []any:
		u, ok := b.([]any)
		if !ok || len(u) != len(t) {
			return false
		}
		for i := range t {
			if !Equal(t[i], u[i]) {
				return false
			}
		}
		return true
	case *Dict:
		u, ok := b.(*Dict)
		if !ok || u.Len() != t.Len() {
			return false
		}
		for _, k := range t.keys {
			w, ok := u.Get(k)
			if !ok || !Equal(t.vals[k], w) {
				return false
			}
		}
		return true
	}
	return false
}

// typeError marks a Python TypeError that would escape a handler as a 500.
type typeError struct{ msg string }

func (e typeError) Error() string { return e.msg }

// Contains is `key in container` for a string key.
func Contains(container any, key string) (bool, error) {
	switch t := container.(type) {
	case *Dict:
		return t.Has(key), nil
	case []any:
		for _, e := range t {
			if s, ok := e.(string); ok && s == key {
				return true, nil
			}
		}
		return false, nil
	case string:
		return strings.Contains(t, key), nil
	}
	return false, typeError{fmt.Sprintf("argument of type '%s' is not iterable", TypeName(container))}
}

// Index resolves a Python sequence index (negative counts from the end).
// ok is false for "index out of range".
func Index(i *big.Int, n int) (int, bool) {
	if !i.IsInt64() {
		return 0, false
	}
	x := i.Int64()
	if x < 0 {
		x += int64(n)
	}
	if x < 0 || x >= int64(n) {
		return 0, false
	}
	return int(x), true
}
