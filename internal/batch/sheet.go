package batch

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"html/template"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/comfyfleet/comfyfleet/proto"
)

// The files written beside results.jsonl at the end of every run, from
// each item's latest job: a contact sheet to open in a browser (offline:
// the pictures are the downloaded files, by relative path) and a table for
// a spreadsheet.
const (
	SheetFile = "index.html"
	CSVFile   = "results.csv"
)

// writeSheets writes index.html and results.csv into dir for the items'
// latest results, in the order given.
func writeSheets(dir, batchID string, latest []Result) error {
	params := paramNames(latest)
	if err := writeAtomic(filepath.Join(dir, CSVFile), func(b *bytes.Buffer) error { return writeCSV(b, params, latest) }); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, SheetFile), func(b *bytes.Buffer) error { return writeSheet(b, batchID, params, latest) })
}

func writeAtomic(path string, fill func(*bytes.Buffer) error) error {
	var b bytes.Buffer
	if err := fill(&b); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return nil
}

// paramNames are the swept parameters of any item, sorted.
func paramNames(rs []Result) []string {
	seen := map[string]bool{}
	var names []string
	for _, r := range rs {
		for k := range r.Params {
			if !seen[k] {
				seen[k] = true
				names = append(names, k)
			}
		}
	}
	sort.Strings(names)
	return names
}

// paramText is a parameter's value as a person reads it: a string without
// its quotes, anything else as its JSON.
func paramText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

func writeCSV(b *bytes.Buffer, params []string, rs []Result) error {
	w := csv.NewWriter(b)
	head := append([]string{"item", "status", "job_id", "try", "error"}, params...)
	head = append(head, "files", "worker_id", "delay_ms", "execution_ms")
	if err := w.Write(head); err != nil {
		return err
	}
	for _, r := range rs {
		row := []string{r.Item, string(r.Status), r.JobID, strconv.Itoa(max(r.Try, 1)), r.Error}
		for _, p := range params {
			v := ""
			if raw, ok := r.Params[p]; ok {
				v = paramText(raw)
			}
			row = append(row, v)
		}
		var files []string
		for _, f := range r.Files {
			if f.Path != "" {
				files = append(files, f.Path)
			}
		}
		row = append(row, strings.Join(files, " "), r.WorkerID, strconv.FormatInt(r.DelayMS, 10), strconv.FormatInt(r.ExecutionMS, 10))
		if err := w.Write(row); err != nil {
			return err
		}
	}
	w.Flush()
	return w.Error()
}

// sheetCard is one item on the contact sheet.
type sheetCard struct {
	Result
	Thumb  string // the first downloaded picture, by relative path
	Video  string
	Audio  string
	Params [][2]string
	OK     bool
}

func writeSheet(b *bytes.Buffer, batchID string, params []string, rs []Result) error {
	counts := map[proto.Status]int{}
	cards := make([]sheetCard, 0, len(rs))
	for _, r := range rs {
		counts[r.Status]++
		c := sheetCard{Result: r, OK: r.Status == proto.StatusCompleted}
		for _, p := range params {
			if raw, ok := r.Params[p]; ok {
				c.Params = append(c.Params, [2]string{p, paramText(raw)})
			}
		}
		for _, f := range r.Files {
			switch {
			case f.Path == "":
			case c.Thumb == "" && f.Kind == "images":
				c.Thumb = f.Path
			case c.Video == "" && f.Kind == "videos":
				c.Video = f.Path
			case c.Audio == "" && f.Kind == "audio":
				c.Audio = f.Path
			}
		}
		cards = append(cards, c)
	}
	var summary []string
	for _, s := range []proto.Status{proto.StatusCompleted, proto.StatusFailed, proto.StatusCancelled, proto.StatusTimedOut, proto.StatusInProgress, proto.StatusInQueue} {
		if counts[s] > 0 {
			summary = append(summary, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	return sheetTemplate.Execute(b, struct {
		BatchID string
		Summary string
		Cards   []sheetCard
	}{batchID, strings.Join(summary, ", "), cards})
}

// sheetTemplate is the contact sheet: html/template escapes every value
// (item names, parameters and errors come from the batch's input and the
// fleet), and the page loads nothing but the batch's own files.
var sheetTemplate = template.Must(template.New("sheet").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{.BatchID}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }
h1 { font-size: 1.3rem; margin: 0 0 .25rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 1rem; margin-top: 1rem; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .5rem; overflow: hidden; }
.card img, .card video { width: 100%; height: auto; display: block; border-radius: 4px; background: #eee; }
.card audio { width: 100%; }
.item { font-weight: 600; word-break: break-all; }
.status { font-size: .8rem; padding: 0 .4rem; border-radius: 3px; background: #e33; color: #fff; }
.status.ok { background: #2a7; }
.params, .files { font-size: .85rem; color: #555; margin: .25rem 0 0; padding: 0; list-style: none; word-break: break-all; }
.error { color: #b00; font-size: .85rem; }
</style>
</head>
<body>
<h1>{{.BatchID}}</h1>
<div>{{.Summary}}</div>
<div class="grid">
{{- range .Cards}}
<div class="card" id="{{.Item}}">
{{- if .Thumb}}<a href="{{.Thumb}}"><img src="{{.Thumb}}" alt="{{.Item}}" loading="lazy"></a>{{end}}
{{- if .Video}}<video src="{{.Video}}" controls preload="metadata"></video>{{end}}
{{- if .Audio}}<audio src="{{.Audio}}" controls preload="none"></audio>{{end}}
<div><span class="item">{{.Item}}</span> <span class="status{{if .OK}} ok{{end}}">{{.Status}}</span></div>
{{- if .Params}}<ul class="params">{{range .Params}}<li>{{index . 0}} = {{index . 1}}</li>{{end}}</ul>{{end}}
{{- if .Error}}<div class="error">{{.Error}}</div>{{end}}
{{- if .Files}}<ul class="files">{{range .Files}}{{if .Path}}<li><a href="{{.Path}}">{{.Path}}</a></li>{{end}}{{end}}</ul>{{end}}
</div>
{{- end}}
</div>
</body>
</html>
`))
