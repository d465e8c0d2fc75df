// Package pyvalue is the emulator's model of Python values as ComfyUI sees
// them: what json.loads makes of a request body and json.dumps writes back,
// and what int(), float(), str(), repr(), bool(), ==, < and `in` do with
// them, with Python's error texts, which ComfyUI copies into its validation
// errors.
//
// Go's encoding/json is not used for prompts because it loses three things
// ComfyUI keeps: key order (Python dicts are ordered, and the scheduler and
// execution_cached depend on it), integers wider than 64 bits (seeds go to
// 2^64-1 and Python ints are unbounded), and the bare NaN and Infinity
// tokens Python accepts and echoes.
//
// A value is one of: nil (None), bool, *big.Int (int), float64 (float),
// string (str), []any (list) or *Dict (dict). Messages built in Go may also
// hold int, int64, []string and RawJSON; the encoder accepts those too. Any
// other value (the emulator's node outputs) has repr() from its String
// method.
package pyvalue
