package main

import (
	"context"
	"fmt"
	"io"

	"github.com/comfyfleet/comfyfleet/internal/flagenv"
)

// getConfig are the settings of `comfyfleet get`.
type getConfig struct {
	Conn     connConfig
	Download downloadConfig
	Out      string
}

// getSettings binds the settings of `comfyfleet get`.
func getSettings(c *getConfig) *flagenv.Set {
	fs := flagenv.New("comfyfleet get", "comfyfleet get JOB [settings] downloads the files of one finished job (API or batch) into\n"+
		"--out with the names its output gives them, from the blob store or S3 (s3_url outputs through\n"+
		"the SSRF guard, as for submit).")
	bindConn(fs, &c.Conn)
	fs.String(&c.Out, "out", "", "", "folder for the files (default: ./<job id>)")
	bindDownload(fs, &c.Download)
	return fs
}

func get(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c getConfig
	fs := getSettings(&c)
	pos, code, ok := parse("comfyfleet get", fs, args, 1, stdout, stderr)
	if !ok {
		return code
	}
	s, code, ok := open(ctx, "comfyfleet get", c.Conn, dirGiven(c.Conn), &c.Download, stderr)
	if !ok {
		return code
	}
	defer s.close()
	out := c.Out
	if out == "" {
		out = pos[0]
	}
	res, err := s.runner.Get(ctx, pos[0], out)
	if err != nil {
		fmt.Fprintf(stderr, "comfyfleet get: %v\n", err)
		return exitNotAllDone
	}
	for _, f := range res.Files {
		if f.Path != "" {
			fmt.Fprintf(stdout, "%s/%s\n", out, f.Path)
		}
	}
	if res.DownloadError != "" {
		fmt.Fprintf(stderr, "comfyfleet get: %s\n", res.DownloadError)
		return exitNotAllDone
	}
	if len(res.Files) == 0 {
		fmt.Fprintf(stderr, "comfyfleet get: job %s completed without files\n", pos[0])
	}
	return exitOK
}
