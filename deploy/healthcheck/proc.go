package main

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// endpoint is one end of a TCP connection.
type endpoint struct {
	IP   net.IP
	Port string
}

// tcpEstablished is the "st" column of an established socket.
const tcpEstablished = "01"

// establishedConns lists the remote ends of the established TCP
// connections of this network namespace, from <procRoot>/net/tcp and tcp6.
func establishedConns(procRoot string) ([]endpoint, error) {
	var out []endpoint
	found := false
	for _, name := range []string{"tcp", "tcp6"} {
		f, err := os.Open(filepath.Join(procRoot, "net", name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // no IPv6 in this namespace
		}
		if err != nil {
			return nil, fmt.Errorf("read connections: %w", err)
		}
		found = true
		conns, err := parseProcNetTCP(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		out = append(out, conns...)
	}
	if !found {
		return nil, fmt.Errorf("read connections: no %s/net/tcp", procRoot)
	}
	return out, nil
}

// parseProcNetTCP reads the table of /proc/net/tcp or tcp6 and returns
// the remote ends of the established connections.
func parseProcNetTCP(r io.Reader) ([]endpoint, error) {
	var out []endpoint
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	first := true
	for sc.Scan() {
		if first { // the header line
			first = false
			continue
		}
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		if fields[3] != tcpEstablished {
			continue
		}
		ep, err := parseHexAddr(fields[2])
		if err != nil {
			return nil, err
		}
		out = append(out, ep)
	}
	return out, sc.Err()
}

// parseHexAddr decodes "0100007F:1F90": the address as 32-bit words in
// host byte order (little-endian on every platform our images target),
// then the port in big-endian hex.
func parseHexAddr(s string) (endpoint, error) {
	addr, port, ok := strings.Cut(s, ":")
	if !ok {
		return endpoint{}, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(addr)
	if err != nil || (len(raw) != net.IPv4len && len(raw) != net.IPv6len) {
		return endpoint{}, fmt.Errorf("bad address %q", s)
	}
	for i := 0; i < len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return endpoint{}, fmt.Errorf("bad port in %q", s)
	}
	return endpoint{IP: net.IP(raw), Port: strconv.FormatUint(p, 10)}, nil
}
