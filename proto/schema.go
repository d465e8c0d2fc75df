package proto

import _ "embed"

//go:embed schema.json
var jobSchema []byte

// JobSchema returns the JSON Schema (draft 2020-12) of a [Job] message as a
// producer sends it, the text of proto/schema.json. A producer in any
// language can validate a message with it before publishing. It is stricter
// than [DecodeJob] in one way only: it refuses unknown top-level fields, so a
// misspelt field name is caught before sending instead of being ignored.
func JobSchema() []byte { return append([]byte(nil), jobSchema...) }
