package comfy

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
)

func TestAnswerWithoutPromptID(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{StepDelay: -1}, nil)
	env.sim.SetFault(comfysim.Fault{PromptWithoutID: true})
	_, err := env.c.Run(testCtx(t), txt2img(comfysim.DefaultCheckpoint, "1", 1), RunOptions{})
	var me *MissingPromptIDError
	require.ErrorAs(t, err, &me)
	require.Equal(t, `Missing 'prompt_id' in queue response: {"number": 0, "node_errors": {}}`, me.Error())
}

func TestEndedWithoutHistoryEntry(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{StepDelay: -1}, nil)
	env.sim.SetFault(comfysim.Fault{DropHistory: true})
	_, err := env.c.Run(testCtx(t), txt2img(comfysim.DefaultCheckpoint, "2", 1), RunOptions{})
	require.ErrorIs(t, err, ErrNoHistoryEntry)
	require.ErrorIs(t, err, ErrPromptLost)
}

// TestRestartBetweenEndAndHistory: ComfyUI ends the prompt, then restarts
// before its history is read (a restart takes the history with it): the
// prompt was lost, not evicted, and is worth running again.
func TestRestartBetweenEndAndHistory(t *testing.T) {
	t.Parallel()
	env := setup(t, comfysim.Config{StepDelay: -1}, nil)
	// The entry is never written, and the history is slow to answer, as
	// ComfyUI is while it comes back: the socket drops in between.
	env.sim.SetFault(comfysim.Fault{DropHistory: true, HistoryDelay: 300 * time.Millisecond})
	sub, err := env.c.Submit(testCtx(t), txt2img(comfysim.DefaultCheckpoint, "3", 1), RunOptions{})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := env.c.Wait(testCtx(t), sub.PromptID)
		done <- err
	}()
	require.Eventually(t, func() bool {
		st := env.sim.Stats()
		return st.PromptsQueued == 1 && st.QueueRemaining == 0
	}, 5*time.Second, time.Millisecond, "the prompt ends")
	env.sim.DropWebSockets()
	err = <-done
	require.ErrorIs(t, err, ErrPromptLost)
	require.NotErrorIs(t, err, ErrNoHistoryEntry)
}
