// Package comfy is the client a gpuworker uses to run jobs on the ComfyUI
// process next to it, over ComfyUI's HTTP API and its WebSocket.
//
// One Client owns one WebSocket with its own client id. Start dials it and
// hands it to a background loop that pings it, routes incoming messages to
// the prompts waiting on them (by prompt_id), and redials with exponential
// backoff and the same client id when it drops. After every reconnect each
// waiting prompt is reconciled through GET /history/{id} (done?) and
// GET /queue (still running or pending?); a prompt in neither was lost (a
// ComfyUI restart loses its queue and history) and fails with ErrPromptLost.
// A history poll every few seconds is a safety net on top.
//
// Run queues one workflow and waits for it: Submit posts it with a prompt_id
// chosen by the client (the waiter is registered before the POST, so no
// message is missed) and Wait follows it to the end, signalled by `executing`
// with `node: null`, then reads GET /history/{id}. The workflow travels as raw
// JSON bytes and is never decoded, so a seed of 18446744073709551615 reaches
// ComfyUI unchanged.
//
// Errors are typed; check them with errors.Is / errors.As:
//
//	condition                            error                         worker-comfyui string it maps to
//	ComfyUI down, 502/503/504, WS lost   ErrUnavailable                "ComfyUI server ... not reachable ..." / "WebSocket communication error: ..."
//	400 from POST /prompt                *ValidationError              Message(): "Workflow validation failed:\n• Node ..." (§2.3)
//	other non-2xx from POST /prompt      *StatusError                  "Error queuing workflow: " + StatusError.Error()
//	200 from /prompt without prompt_id   *MissingPromptIDError         "Missing 'prompt_id' in queue response: ..."
//	a node raised                        *ExecutionError               Detail(): "Workflow execution error: Node Type: X, Node ID: 3, Message: boom"
//	interrupted or removed from queue    *InterruptedError, ErrInterrupted
//	ended, but no history entry          ErrNoHistoryEntry (+Lost)     "Prompt ID <id> not found in history after execution."
//	gone from queue and history          ErrPromptLost                 (ComfyUI restarted: run it again)
//	ended, then the socket dropped       ErrPromptLost                 (a restart took the history entry: run it again)
//	and no history entry
//	Client closed                        ErrClosed
//
// The ComfyUI behaviour this package relies on is written down in
// reference/comfyui-protocol.md (§15.2 is the algorithm, §11 the gotchas).
package comfy
