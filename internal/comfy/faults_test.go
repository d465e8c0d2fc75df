package comfy

import (
	"testing"

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
