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

// procMemory is a process's resident set now (VmRSS) and its peak over
// its life (VmHWM), in bytes, from /proc/<pid>/status.
func procMemory(pid int) (rss, hwm int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		if os.IsNotExist(err) {
			if _, serr := os.Stat("/proc/self/status"); serr != nil {
				return 0, 0, errNoProc
			}
		}
		return 0, 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	found := 0
	for sc.Scan() {
		line := sc.Bytes()
		var dst *int64
		switch {
		case bytes.HasPrefix(line, []byte("VmRSS:")):
			dst = &rss
		case bytes.HasPrefix(line, []byte("VmHWM:")):
			dst = &hwm
		default:
			continue
		}
		f := bytes.Fields(line)
		if len(f) != 3 || string(f[2]) != "kB" {
			return 0, 0, fmt.Errorf("/proc/%d/status: %q is not \"<name>: <n> kB\"", pid, line)
		}
		kb, err := strconv.ParseInt(string(f[1]), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status: %q: %w", pid, line, err)
		}
		*dst = kb << 10
		found++
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("/proc/%d/status has no VmRSS and VmHWM", pid)
	}
	return rss, hwm, nil
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
	End     float64 `json:"end_mib"`
	Samples int     `json:"samples"`
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
	rss, _, err := procMemory(pid)
	if err != nil {
		return nil, err
	}
	s := &sampler{pid: pid, done: make(chan struct{})}
	s.res.Idle, s.res.Peak, s.res.Samples = mib(rss), mib(rss), 1
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
	rss, hwm, err := procMemory(s.pid)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.lastErr = err
		return
	}
	s.lastErr = nil
	s.res.Samples++
	s.res.Peak = max(s.res.Peak, mib(rss))
	s.res.End, s.res.HWM = mib(rss), mib(hwm)
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
