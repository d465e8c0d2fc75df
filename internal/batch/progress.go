package batch

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Counts is the state of a batch's items.
type Counts struct {
	Total     int
	Done      int // COMPLETED
	Failed    int // FAILED or TIMED_OUT
	Cancelled int
	Running   int // IN_PROGRESS
	Queued    int // submitted, not yet running
	Unsent    int // never submitted
}

// Finished is the number of items in a terminal state.
func (c Counts) Finished() int { return c.Done + c.Failed + c.Cancelled }

// String reads like "done 35  failed 2  running 2  queued 11".
func (c Counts) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "done %d  failed %d  running %d  queued %d", c.Done, c.Failed, c.Running, c.Queued)
	if c.Cancelled > 0 {
		fmt.Fprintf(&b, "  cancelled %d", c.Cancelled)
	}
	if c.Unsent > 0 {
		fmt.Fprintf(&b, "  not submitted %d", c.Unsent)
	}
	return b.String()
}

// progress shows a batch's progress: a bar redrawn in place on a terminal,
// or plain lines (one per finished item and a summary now and then) when
// the output is a file or a pipe.
type progress struct {
	w        io.Writer
	terminal bool
	start    time.Time
	base     int // items already finished when the run started
	barShown bool
	lastLine time.Time
	lastSeen Counts
}

// plainEvery is how often plain output repeats the summary line.
const plainEvery = 10 * time.Second

func newProgress(w io.Writer, terminal bool, now time.Time) *progress {
	return &progress{w: w, terminal: terminal, start: now, lastLine: now}
}

// rate is items finished per second in this run, and the time left.
func (p *progress) rate(c Counts, now time.Time) (float64, time.Duration) {
	el := now.Sub(p.start).Seconds()
	done := c.Finished() - p.base
	if el <= 0 || done <= 0 {
		return 0, 0
	}
	r := float64(done) / el
	left := c.Total - c.Finished() - c.Unsent
	return r, time.Duration(float64(left) / r * float64(time.Second)).Round(time.Second)
}

// summary is the one-line state of the batch.
func (p *progress) summary(c Counts, now time.Time) string {
	s := fmt.Sprintf("%d/%d  %s", c.Finished(), c.Total, c)
	if r, eta := p.rate(c, now); r > 0 {
		s += fmt.Sprintf("  %.1f/s  ETA %s", r, eta)
	}
	return s
}

// tick redraws the bar, or prints the summary line when it is due.
func (p *progress) tick(c Counts, now time.Time) {
	if p.terminal {
		const width = 24
		filled := 0
		if c.Total > 0 {
			filled = width * c.Finished() / c.Total
		}
		bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
		fmt.Fprintf(p.w, "\r\x1b[K[%s] %s", bar, p.summary(c, now))
		p.barShown = true
		return
	}
	if now.Sub(p.lastLine) >= plainEvery && c != p.lastSeen {
		p.lastLine, p.lastSeen = now, c
		fmt.Fprintf(p.w, "progress: %s\n", p.summary(c, now))
	}
}

// line prints a line; on a terminal it goes above the bar.
func (p *progress) line(format string, args ...any) {
	if p.barShown {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.barShown = false
	}
	fmt.Fprintf(p.w, format+"\n", args...)
}

// item reports a finished item: every item in plain output, only the
// failures on a terminal (the bar shows the rest).
func (p *progress) item(n, total int, r *Result) {
	switch {
	case r.Status == "COMPLETED" && r.DownloadError == "":
		if !p.terminal {
			p.line("[%d/%d] %s %s: %d file(s), queued %s, ran %s", n, total, r.Status, r.Item,
				len(r.Files), ms(r.DelayMS), ms(r.ExecutionMS))
		}
	case r.DownloadError != "":
		p.line("[%d/%d] %s %s: download failed: %s", n, total, r.Status, r.Item, r.DownloadError)
	case r.Error == "":
		// A cancelled job usually says nothing more.
		p.line("[%d/%d] %s %s", n, total, r.Status, r.Item)
	default:
		p.line("[%d/%d] %s %s: %s", n, total, r.Status, r.Item, r.Error)
	}
}

func ms(n int64) string { return (time.Duration(n) * time.Millisecond).String() }

// done clears the bar.
func (p *progress) done() {
	if p.barShown {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.barShown = false
	}
}
