package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// stdin is where --secrets - reads from.
var stdin io.Reader = os.Stdin

// dlqConfig are the settings of `comfyfleet dlq`.
type dlqConfig struct {
	Conn    connConfig
	Pool    string
	Limit   int
	JSON    bool
	Secrets string
}

func dlqSettings(c *dlqConfig) *flagenv.Set {
	fs := flagenv.New("comfyfleet dlq", "comfyfleet dlq list shows the dead letters (jobs that used up their attempts) with\n"+
		"every attempt's error; comfyfleet dlq replay SEQ… queues them again under their id.\n"+
		"A dead letter keeps its job without the job's secrets: --secrets gives them back,\n"+
		"else the replay runs with the worker's own COMFY_ORG_API_KEY and BUCKET_* settings.")
	bindConn(fs, &c.Conn)
	fs.String(&c.Pool, "pool", "", "", "only this pool's dead letters (list)")
	fs.Int(&c.Limit, "limit", "", 100, "most dead letters listed")
	fs.Bool(&c.JSON, "json", "", false, "print JSON instead of text (list)")
	fs.String(&c.Secrets, "secrets", "", "", `file (- for stdin) with the secrets to replay with, {"comfy_org_api_key": "…", "s3Config": {"accessId": "…", "accessSecret": "…"}} (replay)`)
	return fs
}

// deadLetters runs `comfyfleet dlq list|replay`.
func deadLetters(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const name = "comfyfleet dlq"
	var c dlqConfig
	fs := dlqSettings(&c)
	fs.SetOutput(stdout, stderr)
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
	var secrets *proto.Secrets
	if c.Secrets != "" {
		if action != "replay" {
			fmt.Fprintf(stderr, "%s list: --secrets is for replay\n", name)
			return exitUsage
		}
		var data []byte
		var err error
		if c.Secrets == "-" {
			data, err = io.ReadAll(io.LimitReader(stdin, 1<<20))
		} else {
			data, err = os.ReadFile(c.Secrets)
		}
		if err == nil {
			secrets, err = proto.DecodeSecrets(data)
		}
		if err != nil {
			fmt.Fprintf(stderr, "%s replay: --secrets: %v\n", name, err)
			return exitUsage
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
		rep, err := s.b.Core.Replay(ctx, seq, secrets)
		if err != nil {
			fmt.Fprintf(stderr, "%s replay: %v\n", name, err)
			code = exitNotAllDone
			continue
		}
		fmt.Fprintf(stdout, "%d: job %s is %s again%s\n", seq, rep.Record.ID, rep.Record.Status, describeSecrets(rep.Secrets))
	}
	return code
}

// describeSecrets says where a replayed job's secrets come from.
func describeSecrets(from map[string]proto.SecretSource) string {
	var parts []string
	for _, name := range []string{"comfy_org_api_key", "s3Config"} {
		switch from[name] {
		case proto.SecretSupplied:
			parts = append(parts, name+" from --secrets")
		case proto.SecretWorker:
			setting := "COMFY_ORG_API_KEY"
			if name == "s3Config" {
				setting = "BUCKET_*, the s3Config dropped"
			}
			parts = append(parts, name+": the worker's own ("+setting+")")
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + strings.Join(parts, "; ")
}
