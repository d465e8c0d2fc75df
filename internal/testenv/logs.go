package testenv

import (
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
)

// Logger is a test logger (zaptest) that also sends every record's level
// and message on the returned channel, for a test that waits for a
// process to say something. Records beyond the channel's room are
// dropped from it (never from the test log).
func Logger(t testing.TB) (*zap.Logger, <-chan zapcore.Entry) {
	t.Helper()
	ch := make(chan zapcore.Entry, 256)
	core := zapcore.RegisterHooks(zaptest.NewLogger(t).Core(), func(e zapcore.Entry) error {
		select {
		case ch <- e:
		default:
		}
		return nil
	})
	return zap.New(core), ch
}

// WaitLog waits up to a minute for a record on entries that match
// accepts (what describes it in the failure) and returns it.
func WaitLog(t testing.TB, entries <-chan zapcore.Entry, match func(zapcore.Entry) bool, what string) zapcore.Entry {
	t.Helper()
	timeout := Context(t, time.Minute)
	for {
		select {
		case e := <-entries:
			if match(e) {
				return e
			}
		case <-timeout.Done():
			t.Fatalf("no log record %s within a minute", what)
			return zapcore.Entry{}
		}
	}
}
