// Package role builds each role's process of the fleet from its settings:
// the dispatcher (control plane), the gpuworker and the runpod-adapter.
// It is the one wiring: cmd/dispatcher, cmd/gpuworker, cmd/runpod-adapter
// and `comfyfleet dev` bind the same settings (Common.Bind and each
// role's Bind, from flags and the environment), finish them the same way
// (Finish names the setting at fault) and start the same processes (New*
// then Start); dev differs only in where the servers come from and in
// serving every role's HTTP routes on one listener.
//
// Above it there are only cmd/ and the dev stack; below it the roles
// (dispatch, worker, runpod), the lifecycle core, and the adapters.
package role
