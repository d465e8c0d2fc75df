package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"github.com/comfyfleet/comfyfleet/internal/flagenv"
)

// dlqConfig are the settings of `comfyfleet dlq`.
type dlqConfig struct {
	Conn  connConfig
	Pool  string
	Limit int
	JSON  bool
}

func dlqSettings(c *dlqConfig) *flagenv.Set {
	fs := flagenv.New("comfyfleet dlq", "comfyfleet dlq list shows the dead letters (jobs that used up their attempts) with\n"+
		"every attempt's error; comfyfleet dlq replay SEQ… queues them again under their id.")
	bindConn(fs, &c.Conn)
	fs.String(&c.Pool, "pool", "", "", "only this pool's dead letters (list)")
	fs.Int(&c.Limit, "limit", "", 100, "most dead letters listed")
	fs.Bool(&c.JSON, "json", "", false, "print JSON instead of text (list)")
	return fs
}

// deadLetters runs `comfyfleet dlq list|replay`.
func deadLetters(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const name = "comfyfleet dlq"
	var c dlqConfig
	fs := dlqSettings(&c)
	fs.SetOutput(stderr)
	// Flags and arguments in any order, as parse reads them.
	var pos []string
	for {
		if err := fs.Parse(args, nil); err != nil {
			if errors.Is(err, flagenv.ErrHelp) {
				return exitOK
			}
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			return exitUsage
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if len(pos) == 0 || (pos[0] != "list" && pos[0] != "replay") {
		fmt.Fprintf(stderr, "%s: want list or replay SEQ… (see --help)\n", name)
		return exitUsage
	}
	action, rest := pos[0], pos[1:]
	var seqs []uint64
	if action == "list" && len(rest) > 0 {
		fmt.Fprintf(stderr, "%s list: takes no argument\n", name)
		return exitUsage
	}
	if action == "replay" {
		if len(rest) == 0 {
			fmt.Fprintf(stderr, "%s replay: name the sequence numbers (see comfyfleet dlq list)\n", name)
			return exitUsage
		}
		for _, a := range rest {
			n, err := strconv.ParseUint(a, 10, 64)
			if err != nil || n == 0 {
				fmt.Fprintf(stderr, "%s replay: %q is not a sequence number\n", name, a)
				return exitUsage
			}
			seqs = append(seqs, n)
		}
	}
	s, code, ok := open(ctx, name, c.Conn, dirGiven(c.Conn), nil, stderr)
	if !ok {
		return code
	}
	defer s.close()
	if action == "list" {
		list, err := s.b.Queue.DeadLetters(ctx, c.Pool, c.Limit)
		if err != nil {
			fmt.Fprintf(stderr, "%s list: %v\n", name, err)
			return exitNotAllDone
		}
		if c.JSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(list)
			return exitOK
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tPOOL\tJOB\tTIME\tLAST ERROR")
		for _, d := range list {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", d.Seq, d.Pool, d.JobID, d.Time.Format("2006-01-02 15:04:05"), d.Reason)
			for _, a := range d.Attempts {
				fmt.Fprintf(tw, "\t\t\t\t  %s\n", a)
			}
		}
		_ = tw.Flush()
		return exitOK
	}
	code = exitOK
	for _, seq := range seqs {
		rec, err := s.b.Core.Replay(ctx, seq)
		if err != nil {
			fmt.Fprintf(stderr, "%s replay: %v\n", name, err)
			code = exitNotAllDone
			continue
		}
		fmt.Fprintf(stdout, "%d: job %s is %s again\n", seq, rec.ID, rec.Status)
	}
	return code
}
