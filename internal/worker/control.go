package worker

import (
	"context"
	"reflect"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Controls are the operator's standing orders (rdb.DB): the paused lanes
// and the workers told to drain.
type Controls interface {
	ReadControls(ctx context.Context) (*rdb.Controls, error)
}

var _ Controls = (*rdb.DB)(nil)

// controlState is what the worker last read of the controls, for itself:
// the lanes of its pools that are paused, and whether it drains.
type controlState struct {
	paused   map[string]bool // proto.PausedLane
	draining bool
}

// controlPoll is how often the controls are read besides when a change is
// announced on proto.ControlSubject (a missed announcement costs this
// long at most).
const controlPoll = 5 * time.Second

// skip is the lanes' Skip: a paused lane of its pools is not pulled, and a
// draining worker pulls nothing.
func (w *Worker) skip(pool string, lane proto.Lane) bool {
	st := w.ctl.Load()
	return st != nil && (st.draining || st.paused[proto.PausedLane(pool, lane)])
}

// readControls reads the controls once and applies them; a change of
// what the worker skips is beaten at once.
func (w *Worker) readControls(ctx context.Context) {
	if w.controls == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, err := w.controls.ReadControls(rctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("read controls", zap.Error(err))
		}
		return // keep what was read last
	}
	pools := map[string]bool{w.cfg.Pool: true}
	for _, p := range w.cfg.MorePools {
		pools[p] = true
	}
	st := &controlState{paused: map[string]bool{}}
	var mine []string
	for _, pl := range c.Paused {
		for p := range pools {
			for _, lane := range []proto.Lane{proto.LaneInteractive, proto.LaneBatch} {
				if pl == proto.PausedLane(p, lane) {
					st.paused[pl] = true
					mine = append(mine, pl)
				}
			}
		}
	}
	sort.Strings(mine)
	for _, id := range c.Draining {
		if id == w.cfg.ID {
			st.draining = true
		}
	}
	old := w.ctl.Swap(st)
	if w.lanes != nil && old != nil && skipsMore(old, st) {
		// What the heartbeat says it skips must be true: no pull that
		// began before the change may still bring a job of those lanes.
		w.lanes.Settle()
	}
	w.mu.Lock()
	changed := !reflect.DeepEqual(w.self.Paused, mine) || old == nil || old.draining != st.draining
	w.self.Paused = mine
	w.mu.Unlock()
	if changed {
		if old != nil && old.draining != st.draining {
			w.log.Info("drain changed", zap.Bool("draining", st.draining))
		}
		select {
		case w.beatNow <- struct{}{}:
		default:
		}
	}
}

// skipsMore reports whether now skips a lane that before did not.
func skipsMore(before, now *controlState) bool {
	if now.draining && !before.draining {
		return true
	}
	for pl := range now.paused {
		if !before.paused[pl] {
			return true
		}
	}
	return false
}

// watchControls reads the controls when a change is announced and every
// controlPoll, until ctx ends.
func (w *Worker) watchControls(ctx context.Context, changed <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(controlPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C:
		}
		w.readControls(ctx)
	}
}

// shownState is the state the heartbeat gives: a draining worker that is
// up says so, whether it still runs a job or not.
func (w *Worker) shownState(state string) string {
	if st := w.ctl.Load(); st != nil && st.draining && (state == proto.WorkerIdle || state == proto.WorkerRunning) {
		return proto.WorkerDraining
	}
	return state
}

// noteError keeps the error of a job that failed, or was given back with
// a reason, for the heartbeat's last_error.
func (w *Worker) noteError(out outcome) {
	msg := out.errMsg
	if out.status == "" {
		msg = out.reason
	}
	if msg == "" || out.status == proto.StatusCompleted {
		return
	}
	w.mu.Lock()
	w.self.LastError = msg
	w.mu.Unlock()
}
