package configdoc

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/comfyfleet/comfyfleet/internal/flagenv"
)

// Row is one documented setting.
type Row struct {
	Env, Flag, Default, Meaning string
}

// markerPrefix starts the line that names a binary's table.
const markerPrefix = "<!-- settings: "

// Tables returns every documented table by binary name, in the order of
// the document. A table is the run of lines starting with "|" after the
// marker (its header and separator lines are skipped).
func Tables(doc []byte) (map[string][]Row, error) {
	out := map[string][]Row{}
	sc := bufio.NewScanner(bytes.NewReader(doc))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var name string  // the table being read, "" outside one
	var started bool // its first "|" line was seen
	var header int   // header and separator lines still to skip
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(text, markerPrefix); ok {
			n, ok := strings.CutSuffix(rest, "-->")
			n = strings.TrimSpace(n)
			if !ok || n == "" {
				return nil, fmt.Errorf("line %d: bad marker %q", line, text)
			}
			if _, dup := out[n]; dup {
				return nil, fmt.Errorf("line %d: second table for %q", line, n)
			}
			name, started, header = n, false, 2
			out[name] = nil
			continue
		}
		if name == "" {
			continue
		}
		if !strings.HasPrefix(text, "|") {
			switch {
			case started:
				name = "" // the table ended
			case text != "":
				return nil, fmt.Errorf("line %d: the marker of %q is not followed by a table", line, name)
			}
			continue
		}
		started = true
		if header > 0 {
			header--
			continue
		}
		cells := splitRow(text)
		if len(cells) != 4 {
			return nil, fmt.Errorf("line %d: table %q: want 4 cells (Variable, Flag, Default, Meaning), got %d", line, name, len(cells))
		}
		out[name] = append(out[name], Row{Env: cell(cells[0]), Flag: strings.TrimPrefix(cell(cells[1]), "--"), Default: cell(cells[2]), Meaning: strings.TrimSpace(cells[3])})
	}
	return out, sc.Err()
}

// splitRow splits "| a | b |" into its cells; "\|" is a literal bar.
func splitRow(s string) []string {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "|")
	s = strings.TrimSuffix(s, "|")
	var cells []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s) && s[i+1] == '|':
			cur.WriteByte('|')
			i++
		case s[i] == '|':
			cells = append(cells, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(s[i])
		}
	}
	return append(cells, cur.String())
}

// cell is a cell's value: the inside of a single code span, "" for "—".
func cell(s string) string {
	s = strings.TrimSpace(s)
	if s == "—" || s == "-" {
		return ""
	}
	if len(s) >= 2 && s[0] == '`' && s[len(s)-1] == '`' && !strings.Contains(s[1:len(s)-1], "`") {
		return s[1 : len(s)-1]
	}
	return s
}

// Check compares the table of binary name in doc with the settings the
// code binds, and returns one sentence per difference (none when they
// agree). Settings are matched by flag.
func Check(doc []byte, name string, settings []flagenv.Setting) []string {
	tables, err := Tables(doc)
	if err != nil {
		return []string{err.Error()}
	}
	rows, ok := tables[name]
	if !ok {
		return []string{fmt.Sprintf("no table for %s: add a line %q followed by\n%s", name, markerPrefix+name+" -->", Table(settings))}
	}
	var problems []string
	documented := map[string]Row{}
	for _, r := range rows {
		if _, dup := documented[r.Flag]; dup {
			problems = append(problems, fmt.Sprintf("%s: --%s is documented twice", name, r.Flag))
		}
		documented[r.Flag] = r
	}
	bound := map[string]bool{}
	for _, s := range settings {
		bound[s.Flag] = true
		r, ok := documented[s.Flag]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: setting --%s (%s) is not documented; add the row\n%s", name, s.Flag, envName(s.Env), row(s)))
			continue
		}
		if r.Env != s.Env {
			problems = append(problems, fmt.Sprintf("%s: --%s reads %s in the code, %s in the doc", name, s.Flag, envName(s.Env), envName(r.Env)))
		}
		if r.Default != s.Default {
			problems = append(problems, fmt.Sprintf("%s: --%s defaults to %q in the code, %q in the doc", name, s.Flag, s.Default, r.Default))
		}
		if r.Meaning == "" {
			problems = append(problems, fmt.Sprintf("%s: --%s has no meaning in the doc", name, s.Flag))
		}
	}
	var gone []string
	for f := range documented {
		if !bound[f] {
			gone = append(gone, f)
		}
	}
	sort.Strings(gone)
	for _, f := range gone {
		problems = append(problems, fmt.Sprintf("%s: --%s is documented but the code binds no such setting", name, f))
	}
	return problems
}

func envName(env string) string {
	if env == "" {
		return "no variable"
	}
	return env
}

// Table renders settings as a table Check accepts, with the code's usage
// strings as meanings: the starting point for a new section.
func Table(settings []flagenv.Setting) string {
	var b strings.Builder
	b.WriteString("| Variable | Flag | Default | Meaning |\n|---|---|---|---|\n")
	for _, s := range settings {
		b.WriteString(row(s))
		b.WriteByte('\n')
	}
	return b.String()
}

func row(s flagenv.Setting) string {
	return fmt.Sprintf("| %s | `--%s` | %s | %s |", code(s.Env), s.Flag, code(s.Default), strings.ReplaceAll(s.Usage, "|", `\|`))
}

func code(s string) string {
	if s == "" {
		return "—"
	}
	return "`" + s + "`"
}

// TB is the part of testing.TB that Require uses.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Require fails t unless docPath documents the settings of binary name
// exactly; the failure lists every row to add or fix. The cmd packages'
// configuration-doc tests call it.
func Require(t TB, docPath, name string, settings []flagenv.Setting) {
	t.Helper()
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatalf("read %s: %v", docPath, err)
	}
	if problems := Check(doc, name, settings); len(problems) > 0 {
		t.Fatalf("%s is out of date:\n\n%s", docPath, strings.Join(problems, "\n\n"))
	}
}
