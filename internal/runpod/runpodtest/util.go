package runpodtest

import (
	"bytes"
	"encoding/base64"
	"io"
)

func decodeB64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
