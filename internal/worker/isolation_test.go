package worker_test

import (
	"bytes"
	"context"
	"image/color"
	"image/png"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

// filesOf lists the files under a job's folder in an emulator's input
// folder, with their sizes; nil when the folder is gone.
func filesOf(t *testing.T, sim *simtest.Sim, jobID string) map[string]int64 {
	t.Helper()
	root := filepath.Join(sim.InputDir(), "comfyfleet", jobID)
	var files map[string]int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if files == nil {
			files = map[string]int64{}
		}
		if !d.IsDir() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(sim.InputDir(), p)
			files[filepath.ToSlash(rel)] = fi.Size()
		}
		return nil
	})
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	return files
}

// requireInputsGone checks that the job's inputs reached the emulator and
// left it: deleted with its folder when the worker has the input folder,
// else emptied (every file is there with no bytes).
func requireInputsGone(t *testing.T, sim *simtest.Sim, jobID string, deleted bool) {
	t.Helper()
	uploaded := 0
	for _, u := range sim.Uploads() {
		if strings.HasPrefix(u.Subfolder, "comfyfleet/"+jobID+"/") && u.Size > 0 {
			uploaded++
		}
	}
	require.Positive(t, uploaded, "the job's inputs were never uploaded to this ComfyUI")
	files := filesOf(t, sim, jobID)
	if deleted {
		require.Nil(t, files, "the job's folder is still in ComfyUI's input folder")
		return
	}
	require.NotEmpty(t, files)
	for f, size := range files {
		require.Zero(t, size, "%s still holds the input's bytes", f)
	}
}

// inputsEmptied reports whether every file of the job's folder is empty.
func inputsEmptied(t *testing.T, sim *simtest.Sim, jobID string) bool {
	files := filesOf(t, sim, jobID)
	for _, size := range files {
		if size > 0 {
			return false
		}
	}
	return len(files) > 0
}

// TestInputsLeaveComfyUIAtEveryEnding runs a job with an input to each of
// its possible ends, with and without the worker knowing ComfyUI's input
// folder (COMFYUI_INPUT_DIR), and looks on disk: the input is gone from
// the emulator's input folder (emptied through /upload/image without it),
// and no later than the job's ending is written.
func TestInputsLeaveComfyUIAtEveryEnding(t *testing.T) {
	t.Parallel()
	red := pngBytes(t, 8, 8, color.RGBA{R: 255, A: 255})
	// The input is loaded and saved; a sampler beside it can be made to
	// hang or fail.
	job := input(loadAndSave("in.png", "in")+","+sampler("1", 4)+save("9", "s"),
		`"images":[{"name":"in.png","image":"`+b64(red)+`"}]`)
	endings := []struct {
		name string
		// run takes the job to its end on a worker of cfg and returns the
		// emulator whose input folder held the job's inputs, once the end
		// is observable.
		run func(t *testing.T, b *bundle, cfg worker.Config, id string) *simtest.Sim
	}{{
		name: "completed",
		run: func(t *testing.T, b *bundle, cfg worker.Config, id string) *simtest.Sim {
			b.startWorker("w1", cfg)
			b.enqueue(id, job)
			b.wait(id, proto.StatusCompleted)
			return b.sim
		},
	}, {
		name: "failed",
		run: func(t *testing.T, b *bundle, cfg worker.Config, id string) *simtest.Sim {
			b.sim.SetFault(comfysim.Fault{FailClass: "SaveImage"}) // no output: FAILED
			b.startWorker("w1", cfg)
			b.enqueue(id, job)
			b.wait(id, proto.StatusFailed)
			return b.sim
		},
	}, {
		name: "cancelled",
		run: func(t *testing.T, b *bundle, cfg worker.Config, id string) *simtest.Sim {
			b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
			b.startWorker("w1", cfg)
			b.enqueue(id, job)
			eventually(t, func() bool { return b.sim.Stats().Running != "" }, "prompt never ran")
			_, err := b.core.Cancel(context.Background(), id)
			require.NoError(t, err)
			b.requireDrained() // the worker acks once it is done with the job
			b.wait(id, proto.StatusCancelled)
			return b.sim
		},
	}, {
		name: "timed out",
		run: func(t *testing.T, b *bundle, cfg worker.Config, id string) *simtest.Sim {
			b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
			b.startWorker("w1", cfg)
			b.enqueueJob(&proto.Job{ID: id, Input: []byte(job), Policy: proto.Policy{ExecutionTimeout: 300}})
			b.wait(id, proto.StatusTimedOut)
			return b.sim
		},
	}, {
		name: "lease lost",
		run: func(t *testing.T, b *bundle, cfg worker.Config, id string) *simtest.Sim {
			const leaseTTL = 1500 * time.Millisecond
			b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
			b.startSweeper(lifecycle.SweeperConfig{Every: 25 * time.Millisecond})
			var cut partition
			log1, logs1 := observed(t)
			cfg1 := cfg
			cfg1.LeaseTTL = leaseTTL
			b.startWorker("w1", cfg1, workerOpts{db: b.partitionedDB(&cut), logger: log1})
			b.enqueue(id, job)
			eventually(t, func() bool { return b.sim.Stats().Running != "" }, "w1's prompt never ran")
			sim2 := simtest.Start(t, comfysim.Config{StepDelay: time.Millisecond})
			cfg2 := cfg
			cfg2.LeaseTTL = leaseTTL
			if cfg2.InputDir != "" {
				cfg2.InputDir = sim2.InputDir()
			}
			b.startWorker("w2", cfg2, workerOpts{sim: sim2})
			cut.cut.Store(true)
			eventually(t, func() bool {
				r, err := b.db.Get(context.Background(), id)
				return err == nil && r.Status == proto.StatusInProgress && r.Attempt == 2
			}, "the job was never handed to another worker")
			cut.cut.Store(false)
			eventually(t, func() bool {
				return logs1.FilterMessageSnippet("lease lost while running").Len() == 1
			}, "w1 did not drop the job")
			rec := b.wait(id, proto.StatusCompleted)
			require.Equal(t, "w2", rec.WorkerID)
			return b.sim
		},
	}, {
		name: "given back, its ComfyUI died",
		run: func(t *testing.T, b *bundle, cfg worker.Config, id string) *simtest.Sim {
			b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
			b.startWorker("w1", cfg)
			b.enqueue(id, job)
			eventually(t, func() bool { return b.sim.Stats().Running != "" }, "prompt never ran")
			sim2 := simtest.Start(t, comfysim.Config{StepDelay: time.Millisecond})
			cfg2 := cfg
			if cfg2.InputDir != "" {
				cfg2.InputDir = sim2.InputDir()
			}
			b.startWorker("w2", cfg2, workerOpts{sim: sim2})
			b.sim.Restart()
			b.sim.SetDown(true)
			rec := b.wait(id, proto.StatusCompleted)
			require.Equal(t, "w2", rec.WorkerID)
			if cfg.InputDir == "" {
				// The files stay while their ComfyUI is away; the worker
				// empties them when it is back, before it takes a job.
				require.False(t, inputsEmptied(t, b.sim, id))
				b.sim.SetDown(false)
				eventually(t, func() bool { return inputsEmptied(t, b.sim, id) }, "the inputs were not emptied once ComfyUI was back")
			}
			return b.sim
		},
	}, {
		name: "given back, its worker stopped",
		run: func(t *testing.T, b *bundle, cfg worker.Config, id string) *simtest.Sim {
			b.sim.SetFault(comfysim.Fault{HangAtStep: 2})
			cfg.Grace = 50 * time.Millisecond
			w := b.startWorker("w1", cfg)
			b.enqueue(id, job)
			eventually(t, func() bool { return b.sim.Stats().Running != "" }, "prompt never ran")
			w.Stop()
			rec := b.wait(id, proto.StatusInQueue)
			require.Equal(t, 1, rec.Attempt)
			return b.sim
		},
	}}
	for _, deleted := range []bool{true, false} {
		mode := "emptied over HTTP"
		if deleted {
			mode = "deleted from COMFYUI_INPUT_DIR"
		}
		for _, e := range endings {
			t.Run(mode+"/"+e.name, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				var cfg worker.Config
				if deleted {
					cfg.InputDir = b.sim.InputDir()
				}
				id := "job-" + strings.ReplaceAll(e.name, " ", "-")
				id = strings.NewReplacer(",", "", "'", "").Replace(id)
				sim := e.run(t, b, cfg, id)
				requireInputsGone(t, sim, id, deleted)
			})
		}
	}
}

// TestOtherJobsFilesAreRefused replays the finding on one shared worker:
// job B's workflow reads job A's input by its path in ComfyUI's input
// folder, job C reads A's output by its [output] name. With isolation
// (the default) both fail at once, before anything is queued, with the
// node, the input and the reason; the job's own folder and the files
// shipped in the input folder stay allowed. With ISOLATE_JOB_FILES=false
// both run as before.
func TestOtherJobsFilesAreRefused(t *testing.T) {
	t.Parallel()
	red := pngBytes(t, 8, 8, color.RGBA{R: 255, A: 255})
	const refused = "Workflow validation failed:\n• Node 1 (errors): LoadImage input image: %s" +
		"\n\nOn this worker a workflow may name only its own input files (the job's images) and the files shipped in ComfyUI's input folder."
	for _, shared := range []bool{false, true} {
		name := "isolated"
		if shared {
			name = "shared"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.startWorker("w1", worker.Config{SharedFiles: shared, InputDir: b.sim.InputDir()})
			b.enqueue("job-a", input(loadAndSave("in.png", "ComfyUI"), `"images":[{"name":"in.png","image":"`+b64(red)+`"}]`))
			recA := b.wait("job-a", proto.StatusCompleted)
			require.Equal(t, "ComfyUI_00001_.png", b.output(recA).Images[0].Filename)
			if !shared {
				require.Nil(t, filesOf(t, b.sim, "job-a"), "A's input was removed")
				// Put it back, as if A were still running: B must not reach it.
				dir := filepath.Join(b.sim.InputDir(), "comfyfleet", "job-a", "1")
				require.NoError(t, os.MkdirAll(dir, 0o755))
				require.NoError(t, os.WriteFile(filepath.Join(dir, "in.png"), red, 0o644))
			}
			prompts, uploads := len(b.sim.Prompts()), len(b.sim.Uploads())

			b.enqueue("job-b", input(loadAndSave("comfyfleet/job-a/1/in.png", "b")))
			b.enqueue("job-c", input(loadAndSave("ComfyUI_00001_.png [output]", "c")))
			if shared {
				for _, id := range []string{"job-b", "job-c"} {
					rec := b.wait(id, proto.StatusCompleted)
					img, err := png.Decode(bytes.NewReader(b.blobBytes(b.output(rec).Images[0].Blob)))
					require.NoError(t, err)
					require.Equal(t, 8, img.Bounds().Dx(), "%s read job A's file", id)
				}
				require.Len(t, b.sim.Prompts(), prompts+2)
				return
			}
			for id, why := range map[string]string{
				"job-b": `"comfyfleet/job-a/1/in.png" is in another job's input folder (comfyfleet/job-a/); a job may read only its own inputs`,
				"job-c": `"ComfyUI_00001_.png [output]" names a file in ComfyUI's output folder ([output]); a workflow cannot read outputs: its own are named only while it runs, the others are other jobs'`,
			} {
				rec := b.wait(id, proto.StatusFailed)
				msg := strings.Replace(refused, "%s", why, 1)
				require.Equal(t, msg, rec.Error, id)
				require.Equal(t, proto.Failure{Error: msg}, b.failure(rec), id)
				require.Equal(t, 1, rec.Attempt, "%s is not retried", id)
			}
			b.requireDrained()
			require.Len(t, b.sim.Prompts(), prompts, "nothing was queued in ComfyUI")
			require.Len(t, b.sim.Uploads(), uploads)

			// The job's own folder, and files shipped in the input folder,
			// are allowed.
			require.NoError(t, os.WriteFile(filepath.Join(b.sim.InputDir(), "shipped.png"), red, 0o644))
			b.enqueue("job-d", input(loadAndSave("comfyfleet/job-d/1/in.png", "d")+`,
				"3":{"class_type":"LoadImage","inputs":{"image":"shipped.png [input]"}},
				"4":{"class_type":"SaveImage","inputs":{"filename_prefix":"shipped","images":["3",0]}}`,
				`"images":[{"name":"in.png","image":"`+b64(red)+`"}]`))
			rec := b.wait("job-d", proto.StatusCompleted)
			require.Len(t, b.output(rec).Images, 2)
		})
	}
}

// outputFiles lists the regular files under an emulator's output folder.
func outputFiles(t *testing.T, sim *simtest.Sim) []string {
	t.Helper()
	dir := filepath.Join(sim.Dir(), "output")
	var files []string
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, filepath.ToSlash(rel))
		}
		return err
	}))
	return files
}

// TestOutputsLeaveComfyUIOnceStored: a worker given ComfyUI's output
// folder (COMFYUI_OUTPUT_DIR) removes a job's output files from it, in
// their subfolders, once they are stored and before the job is COMPLETED;
// other files stay. KEEP_COMFYUI_FILES keeps the outputs and the inputs,
// and so does ISOLATE_JOB_FILES=false, where workflows may read [output]
// files.
func TestOutputsLeaveComfyUIOnceStored(t *testing.T) {
	t.Parallel()
	red := pngBytes(t, 8, 8, color.RGBA{R: 255, A: 255})
	job := input(loadAndSave("in.png", "top")+","+sampler("1", 2)+save("9", "nested/deeper/s"),
		`"images":[{"name":"in.png","image":"`+b64(red)+`"}]`)
	tests := []struct {
		name     string
		cfg      func(b *bundle) worker.Config
		wantKept bool
	}{
		{name: "removed", cfg: func(b *bundle) worker.Config {
			return worker.Config{OutputDir: filepath.Join(b.sim.Dir(), "output"), InputDir: b.sim.InputDir()}
		}},
		{name: "KEEP_COMFYUI_FILES", wantKept: true, cfg: func(b *bundle) worker.Config {
			return worker.Config{OutputDir: filepath.Join(b.sim.Dir(), "output"), InputDir: b.sim.InputDir(), KeepFiles: true}
		}},
		{name: "shared files", wantKept: true, cfg: func(b *bundle) worker.Config {
			return worker.Config{OutputDir: filepath.Join(b.sim.Dir(), "output"), SharedFiles: true}
		}},
		{name: "no output folder given", wantKept: true, cfg: func(*bundle) worker.Config { return worker.Config{} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			other := filepath.Join(b.sim.Dir(), "output", "someone-elses.png")
			require.NoError(t, os.WriteFile(other, red, 0o644))
			b.startWorker("w1", tt.cfg(b))
			id := "job-outputs-" + strings.ReplaceAll(tt.name, " ", "-")
			id = strings.ReplaceAll(id, "_", "-")
			b.enqueue(id, job)
			rec := b.wait(id, proto.StatusCompleted)
			out := b.output(rec)
			require.Len(t, out.Images, 2)
			var written []string
			for _, img := range out.Images {
				written = append(written, path.Join(img.Subfolder, img.Filename))
			}
			require.Contains(t, written, "nested/deeper/s_00001_.png")
			if tt.wantKept {
				require.ElementsMatch(t, append(written, "someone-elses.png"), outputFiles(t, b.sim))
				if tt.name == "KEEP_COMFYUI_FILES" {
					require.NotEmpty(t, filesOf(t, b.sim, id), "the inputs are kept too")
				}
				return
			}
			require.Equal(t, []string{"someone-elses.png"}, outputFiles(t, b.sim), "the job's outputs are gone once COMPLETED")
			require.Nil(t, filesOf(t, b.sim, id), "and so are its inputs")
		})
	}
}
