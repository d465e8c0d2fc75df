package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

// rssEvery is how often a measured process's resident memory is read.
const rssEvery = 20 * time.Millisecond

// status is the memory lines of /proc/<pid>/status, in bytes: VmRSS,
// VmHWM, and RssAnon (the resident set's anonymous part: heap, stacks;
// the rest is file pages, mostly the binary's code).
type status struct{ rss, hwm, anon int64 }

// readStatus reads /proc/<pid>/status.
func readStatus(pid int) (status, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		if os.IsNotExist(err) {
			if _, serr := os.Stat("/proc/self/status"); serr != nil {
				return status{}, errNoProc
			}
		}
		return status{}, err
	}
	return parseStatus(pid, data)
}

// parseStatus decodes the memory lines of a /proc/<pid>/status.
func parseStatus(pid int, data []byte) (status, error) {
	var m status
	rss, hwm, anon := &m.rss, &m.hwm, &m.anon
	sc := bufio.NewScanner(bytes.NewReader(data))
	found := 0
	for sc.Scan() {
		line := sc.Bytes()
		var dst *int64
		switch {
		case bytes.HasPrefix(line, []byte("VmRSS:")):
			dst = rss
		case bytes.HasPrefix(line, []byte("VmHWM:")):
			dst = hwm
		case bytes.HasPrefix(line, []byte("RssAnon:")):
			dst = anon
		default:
			continue
		}
		f := bytes.Fields(line)
		if len(f) != 3 || string(f[2]) != "kB" {
			return m, fmt.Errorf("/proc/%d/status: %q is not \"<name>: <n> kB\"", pid, line)
		}
		kb, err := strconv.ParseInt(string(f[1]), 10, 64)
		if err != nil || kb < 0 || kb > 1<<40 {
			return m, fmt.Errorf("/proc/%d/status: %q: not a size in kB", pid, line)
		}
		*dst = kb << 10
		found++
	}
	if found != 3 {
		return m, fmt.Errorf("/proc/%d/status lacks one of VmRSS, VmHWM and RssAnon", pid)
	}
	return m, nil
}

// RSS is a measured process's resident memory, in MiB.
type RSS struct {
	// Idle is its resident set once its role was ready, before the load.
	Idle float64 `json:"idle_mib"`
	// Peak is the highest resident set sampled (every 20 ms) under the
	// load; HWM is the kernel's peak over the process's life (VmHWM) at
	// the end, which no sampling can miss.
	Peak float64 `json:"peak_mib"`
	HWM  float64 `json:"hwm_mib"`
	// End is the resident set when the load was over.
	End float64 `json:"end_mib"`
	// AnonIdle and AnonPeak are the anonymous part of the resident set
	// (RssAnon: the heap, stacks, the runtime's own) when ready and at
	// its highest sample; the rest is file pages, mostly the binary's
	// code, which a smaller binary (the role's own) touches less of.
	AnonIdle float64 `json:"anon_idle_mib"`
	AnonPeak float64 `json:"anon_peak_mib"`
	Samples  int     `json:"samples"`
}

// sampler reads a process's resident memory every rssEvery until stopped.
type sampler struct {
	pid  int
	done chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	res     RSS
	lastErr error
}

func mib(b int64) float64 { return round3(float64(b) / (1 << 20)) }

// sample starts sampling pid; its resident set now is the idle figure.
func sample(pid int) (*sampler, error) {
	m, err := readStatus(pid)
	if err != nil {
		return nil, err
	}
	s := &sampler{pid: pid, done: make(chan struct{})}
	s.res.Idle, s.res.Peak, s.res.Samples = mib(m.rss), mib(m.rss), 1
	s.res.AnonIdle, s.res.AnonPeak = mib(m.anon), mib(m.anon)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(rssEvery)
		defer t.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-t.C:
				s.read()
			}
		}
	}()
	return s, nil
}

func (s *sampler) read() {
	m, err := readStatus(s.pid)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.lastErr = err
		return
	}
	s.lastErr = nil
	s.res.Samples++
	s.res.Peak, s.res.AnonPeak = max(s.res.Peak, mib(m.rss)), max(s.res.AnonPeak, mib(m.anon))
	s.res.End, s.res.HWM = mib(m.rss), mib(m.hwm)
}

// now is the resident set of the last sample, in MiB.
func (s *sampler) now() float64 {
	s.read()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.res.End
}

// stop ends the sampling with one last read and returns the figures.
func (s *sampler) stop() (RSS, error) {
	close(s.done)
	s.wg.Wait()
	s.read()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.res, s.lastErr
}
