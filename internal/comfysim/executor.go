package comfysim

import (
	"errors"
	"fmt"
	"math/big"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/node"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// errAborted ends a prompt abandoned by Restart or Close: nothing more is
// sent and no history is written, as when the process dies.
var errAborted = errors.New("comfysim: prompt abandoned")

// errInterrupted is comfy.model_management.InterruptProcessingException.
var errInterrupted = errors.New("comfysim: processing interrupted")

// execution is the state of the prompt being executed (PromptExecutor plus
// the progress registry).
type execution struct {
	s        *Server
	item     *queueItem
	epoch    uint64
	clientID any // nil = no client_id
	extra    *pyvalue.Dict
	messages []any

	progress      *pyvalue.Dict // node id -> *progressState, insertion ordered
	previews      bool
	executed      []string
	executedSet   map[string]bool
	uiOutputs     *pyvalue.Dict // node id -> {"meta":..., "output":...}
	sig           *signer
	faultStepDone map[string]bool
	modelsLoaded  bool // loadModels ran (vram.go)
}

type progressState struct {
	state      string
	value, max any
}

func nowMillis() int64 { return time.Now().UnixMilli() }

// executorLoop is prompt_worker: one prompt at a time, in heap order.
func (s *Server) executorLoop() {
	defer close(s.executorDone)
	for {
		s.mu.Lock()
		for {
			if s.closed {
				s.mu.Unlock()
				return
			}
			if s.freeMemory {
				s.freeMemory = false
				s.resetCachesLocked()
			}
			if s.unload {
				s.unload = false
				s.loaded = nil
			}
			if len(s.queue) > 0 && !s.holdQueue {
				break
			}
			s.cond.Wait()
		}
		item := s.queue.pop()
		s.running = item
		epoch := s.epoch
		s.statusLocked() // PromptQueue.get() -> queue_updated()
		s.mu.Unlock()

		s.runPrompt(item, epoch)
	}
}

// resetCachesLocked is PromptExecutor.reset() via POST /free free_memory.
func (s *Server) resetCachesLocked() {
	s.cache = newOutputCache()
	s.objects = map[[2]string]*node.Object{}
}

// tasksRemainingLocked is get_tasks_remaining.
func (s *Server) tasksRemainingLocked() int {
	n := len(s.queue)
	if s.running != nil {
		n++
	}
	return n
}

func (s *Server) queueInfoLocked() *pyvalue.Dict {
	return pyvalue.NewDict("exec_info", pyvalue.NewDict("queue_remaining", s.tasksRemainingLocked()))
}

// statusLocked is queue_updated(): broadcast status.
func (s *Server) statusLocked() {
	s.hub.sendJSON(broadcastTarget, "status", pyvalue.NewDict("status", s.queueInfoLocked()))
}

// send is send_sync from the executor: dropped once the prompt is abandoned.
func (ex *execution) send(t target, event string, data any) error {
	s := ex.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epoch != ex.epoch {
		return errAborted
	}
	s.hub.sendJSON(t, event, data)
	return nil
}

func (ex *execution) sendBinary(t target, frame []byte) error {
	s := ex.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epoch != ex.epoch {
		return errAborted
	}
	s.hub.sendBinary(t, frame)
	return nil
}

func (ex *execution) target() target { return targetFor(ex.clientID) }

// addMessage is PromptExecutor.add_message.
func (ex *execution) addMessage(event string, data *pyvalue.Dict, broadcast bool) error {
	data = data.Copy()
	data.Set("timestamp", nowMillis())
	ex.messages = append(ex.messages, []any{event, data})
	if ex.clientID != nil || broadcast {
		return ex.send(ex.target(), event, data)
	}
	return nil
}

// checkInterrupt is throw_exception_if_processing_interrupted.
func (ex *execution) checkInterrupt() error {
	s := ex.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epoch != ex.epoch {
		return errAborted
	}
	if s.interrupted {
		s.interrupted = false
		return errInterrupted
	}
	return nil
}

// sleep waits d, returning early with an error on interrupt or abandonment
// (ComfyUI checks the flag in every model op, so it reacts at once).
func (ex *execution) sleep(d time.Duration) error {
	if err := ex.checkInterrupt(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return ex.checkInterrupt()
		case <-ex.s.interruptCh:
			if err := ex.checkInterrupt(); err != nil {
				return err
			}
		}
	}
}

func (s *Server) wakeSampler() {
	select {
	case s.interruptCh <- struct{}{}:
	default:
	}
}

// --- progress registry (comfy_execution/progress.py) ---

func (ex *execution) ensureProgress(id string) *progressState {
	if v, ok := ex.progress.Get(id); ok {
		return v.(*progressState)
	}
	p := &progressState{state: "pending", value: 0, max: 1}
	ex.progress.Set(id, p)
	return p
}

func (ex *execution) sendProgressState() error {
	nodes := pyvalue.NewDict()
	for _, id := range ex.progress.Keys() {
		v, _ := ex.progress.Get(id)
		p := v.(*progressState)
		if p.state == "pending" {
			continue
		}
		nodes.Set(id, pyvalue.NewDict(
			"value", p.value, "max", p.max, "state", p.state,
			"node_id", id, "prompt_id", ex.item.id,
			"display_node_id", id, "parent_node_id", nil, "real_node_id", id,
		))
	}
	return ex.send(ex.target(), "progress_state", pyvalue.NewDict("prompt_id", ex.item.id, "nodes", nodes))
}

func (ex *execution) startProgress(id string) error {
	p := ex.ensureProgress(id)
	p.state, p.value, p.max = "running", 0.0, 1.0
	return ex.sendProgressState()
}

func (ex *execution) finishProgress(id string) error {
	p := ex.ensureProgress(id)
	p.state, p.value = "finished", p.max
	return ex.sendProgressState()
}

// --- one prompt ---

func (s *Server) runPrompt(item *queueItem, epoch uint64) {
	extra := item.extra.Copy()
	for _, k := range item.sensitive.Keys() {
		v, _ := item.sensitive.Get(k)
		extra.Set(k, v)
	}
	clientID, _ := extra.Get("client_id")
	ex := &execution{
		s: s, item: item, epoch: epoch, clientID: clientID, extra: extra,
		progress: pyvalue.NewDict(), uiOutputs: pyvalue.NewDict(), executedSet: map[string]bool{},
		faultStepDone: map[string]bool{},
	}
	if pm, ok := extra.Get("preview_method"); ok {
		if m, isStr := pm.(string); isStr {
			switch m {
			case "auto", "latent2rgb", "taesd":
				ex.previews = true
			}
		}
	}
	ex.sig = newSigner(s, item.prompt)

	s.mu.Lock()
	if s.epoch != epoch {
		s.mu.Unlock()
		s.stats.aborted.Add(1)
		return
	}
	s.interrupted = false
	s.clientID = clientID
	s.lastNodeID = nil
	// The object cache keeps only objects of nodes in this prompt.
	for k := range s.objects {
		n, ok := item.prompt.Get(k[0])
		if !ok {
			delete(s.objects, k)
			continue
		}
		if ct, _ := n.(*pyvalue.Dict).Get("class_type"); ct != k[1] {
			delete(s.objects, k)
		}
	}
	s.mu.Unlock()

	success, err := ex.execute()
	if errors.Is(err, errAborted) {
		s.stats.aborted.Add(1)
		s.log.Info("prompt abandoned", zap.String("prompt_id", item.id))
		return
	}

	statusStr := "success"
	if !success {
		statusStr = "error"
	}
	outputs, meta := pyvalue.NewDict(), pyvalue.NewDict()
	for _, id := range ex.uiOutputs.Keys() {
		v, _ := ex.uiOutputs.Get(id)
		rec := v.(*pyvalue.Dict)
		o, _ := rec.Get("output")
		m, _ := rec.Get("meta")
		outputs.Set(id, o)
		meta.Set(id, m)
	}
	entry := &historyEntry{id: item.id, value: pyvalue.NewDict(
		"prompt", item.tuple(),
		"outputs", outputs,
		"status", pyvalue.NewDict("status_str", statusStr, "completed", success, "messages", ex.messages),
		"meta", meta,
	)}

	// task_done: write history, broadcast status; then executing null.
	s.mu.Lock()
	if s.epoch != epoch {
		s.mu.Unlock()
		s.stats.aborted.Add(1)
		return
	}
	if !s.fault.DropHistory {
		s.history.put(entry)
	}
	s.running = nil
	s.lastNodeID = nil
	s.statusLocked()
	if clientID != nil {
		s.hub.sendJSON(targetFor(clientID), "executing", pyvalue.NewDict("node", nil, "prompt_id", item.id))
	}
	s.clientID = nil
	s.mu.Unlock()

	s.stats.executed.Add(1)
	switch {
	case success:
		s.stats.succeeded.Add(1)
	case lastEvent(ex.messages) == "execution_interrupted":
		s.stats.interrupted.Add(1)
	default:
		s.stats.failed.Add(1)
	}
}

func lastEvent(msgs []any) string {
	if len(msgs) == 0 {
		return ""
	}
	return msgs[len(msgs)-1].([]any)[0].(string)
}

// execute is PromptExecutor.execute_async. It reports success, or errAborted.
func (ex *execution) execute() (bool, error) {
	s := ex.s
	pid := ex.item.id
	if err := ex.addMessage("execution_start", pyvalue.NewDict("prompt_id", pid), false); err != nil {
		return false, err
	}

	s.mu.Lock()
	cache := s.cache
	var cached []string
	for _, id := range ex.item.prompt.Keys() {
		if cache.get(ex.sig.key(id)) != nil {
			cached = append(cached, id)
		}
	}
	s.mu.Unlock()
	if cached == nil {
		cached = []string{}
	}
	if err := ex.addMessage("execution_cached", pyvalue.NewDict("nodes", cached, "prompt_id", pid), false); err != nil {
		return false, err
	}

	list := newExecList(ex)
	for _, o := range ex.item.outputs {
		list.addNode(o)
	}
	for !list.empty() {
		id, ok := list.stage()
		if !ok {
			blamed := list.cycleNode()
			err := ex.handleError(blamed, &node.Error{Type: "graph.DependencyCycleError", Message: "Dependency cycle detected", Traceback: []string{}}, nil, true)
			return false, err
		}
		err := ex.executeNode(id, list)
		if err != nil {
			if errors.Is(err, errAborted) {
				return false, err
			}
			var ne *execFailure
			if errors.As(err, &ne) {
				if herr := ex.handleError(id, ne.err, ne.inputs, false); herr != nil {
					return false, herr
				}
				return false, nil
			}
			return false, err
		}
		list.complete(id)
	}
	if err := ex.addMessage("execution_success", pyvalue.NewDict("prompt_id", pid), false); err != nil {
		return false, err
	}
	return true, nil
}

// execFailure wraps a node failure with its formatted inputs.
type execFailure struct {
	err    error // errInterrupted or *node.Error
	inputs *pyvalue.Dict
}

func (e *execFailure) Error() string { return e.err.Error() }

// handleError is PromptExecutor.handle_execution_error.
func (ex *execution) handleError(nodeID string, err error, inputs *pyvalue.Dict, cycle bool) error {
	classType := ""
	if n, ok := ex.item.prompt.Get(nodeID); ok {
		ct, _ := n.(*pyvalue.Dict).Get("class_type")
		classType, _ = ct.(string)
	}
	executed := append([]string{}, ex.executed...)
	if errors.Is(err, errInterrupted) {
		return ex.addMessage("execution_interrupted", pyvalue.NewDict(
			"prompt_id", ex.item.id, "node_id", nodeID, "node_type", classType, "executed", executed,
		), true)
	}
	var ne *node.Error
	if !errors.As(err, &ne) {
		ne = &node.Error{Type: "Exception", Message: err.Error(), Traceback: []string{}}
	}
	var currentInputs any = inputs
	if inputs == nil {
		currentInputs = pyvalue.NewDict()
	}
	msg := ne.Message + "\n" + ne.Tips
	if cycle {
		currentInputs = []any{}
		msg = ne.Message
	}
	return ex.addMessage("execution_error", pyvalue.NewDict(
		"prompt_id", ex.item.id,
		"node_id", nodeID,
		"node_type", classType,
		"executed", executed,
		"exception_message", msg,
		"exception_type", ne.Type,
		"traceback", ne.Traceback,
		"current_inputs", currentInputs,
		"current_outputs", ex.item.prompt.Keys(),
	), false)
}

// executeNode is execution.execute for one node.
func (ex *execution) executeNode(id string, list *execList) error {
	s := ex.s
	nodeV, _ := ex.item.prompt.Get(id)
	nd := nodeV.(*pyvalue.Dict)
	ctV, _ := nd.Get("class_type")
	ct, _ := ctV.(string)
	def := s.nodes.Class(ct)
	inV, _ := nd.Get("inputs")
	inputs, _ := inV.(*pyvalue.Dict)
	if inputs == nil {
		inputs = pyvalue.NewDict()
	}

	key := ex.sig.key(id)
	s.mu.Lock()
	cached := s.cache.get(key)
	s.mu.Unlock()
	if cached != nil {
		// _send_cached_ui
		if ex.clientID != nil {
			var out any
			if cached.ui != nil {
				out, _ = cached.ui.Get("output")
			}
			if err := ex.send(ex.target(), "executed", pyvalue.NewDict("node", id, "display_node", id, "output", out, "prompt_id", ex.item.id)); err != nil {
				return err
			}
			if cached.ui != nil {
				ex.uiOutputs.Set(id, cached.ui)
			}
		}
		return ex.finishProgress(id)
	}

	if err := ex.startProgress(id); err != nil {
		return err
	}
	run := &node.Run{Class: def, ID: id, Inputs: map[string]any{}, Prompt: ex.item.prompt,
		Host: s.host, Exec: &runner{ex: ex, class: def, nodeID: id}}
	unexpected := "" // an undeclared linked input (raises TypeError)
	formatted := pyvalue.NewDict()
	var resolveErr error
	for _, name := range inputs.Keys() {
		v, _ := inputs.Get(name)
		_, declared := def.Input(name)
		if src, slot, isL := isLink(v); isL {
			val, err := list.resolve(src, slot)
			if err != nil {
				resolveErr = err
				break
			}
			run.Inputs[name] = val
			formatted.Set(name, []any{formatValue(val)})
			if !declared && unexpected == "" {
				unexpected = name
			}
			continue
		}
		if declared {
			run.Inputs[name] = v
			formatted.Set(name, []any{formatValue(v)})
		}
	}
	if resolveErr != nil {
		return &execFailure{err: resolveErr, inputs: pyvalue.NewDict()}
	}
	if !def.V3 {
		for _, h := range def.Hidden {
			switch h[1] {
			case "PROMPT":
				formatted.Set(h[0], []any{formatValue(ex.item.prompt)})
			case "EXTRA_PNGINFO":
				pi, _ := ex.extra.Get("extra_pnginfo")
				formatted.Set(h[0], []any{formatValue(pi)})
			}
		}
	}
	run.ExtraPNGInfo, _ = ex.extra.Get("extra_pnginfo")

	if ex.clientID != nil {
		s.mu.Lock()
		if s.epoch == ex.epoch {
			s.lastNodeID = id
		}
		s.mu.Unlock()
		if err := ex.send(ex.target(), "executing", pyvalue.NewDict("node", id, "display_node", id, "prompt_id", ex.item.id)); err != nil {
			return err
		}
	}

	s.mu.Lock()
	objKey := [2]string{id, ct}
	obj := s.objects[objKey]
	if obj == nil {
		obj = def.NewObject()
		if s.epoch == ex.epoch {
			s.objects[objKey] = obj
		}
	}
	s.mu.Unlock()
	run.Object = obj

	// before_node_execution: the interrupt point at node start.
	if err := ex.checkInterrupt(); err != nil {
		if errors.Is(err, errInterrupted) {
			return &execFailure{err: err}
		}
		return err
	}
	if unexpected != "" {
		return &execFailure{err: node.Raise("TypeError",
			fmt.Sprintf("%s() got an unexpected keyword argument '%s'", def.FuncName(), unexpected), def.FuncName()), inputs: formatted}
	}
	if ferr := ex.injectedFault(def, 0); ferr != nil {
		return &execFailure{err: ferr, inputs: formatted}
	}
	if err := ex.loadModels(); err != nil {
		if errors.Is(err, errInterrupted) {
			return &execFailure{err: err}
		}
		return err
	}

	outputs, ui, err := def.Func(run)
	if err != nil {
		if errors.Is(err, errAborted) {
			return err
		}
		if errors.Is(err, errInterrupted) {
			return &execFailure{err: err}
		}
		return &execFailure{err: err, inputs: formatted}
	}

	var uiRec *pyvalue.Dict
	if ui != nil && ui.Len() > 0 {
		uiRec = pyvalue.NewDict(
			"meta", pyvalue.NewDict("node_id", id, "display_node", id, "parent_node", nil, "real_node_id", id),
			"output", ui,
		)
		ex.uiOutputs.Set(id, uiRec)
		if ex.clientID != nil {
			if err := ex.send(ex.target(), "executed", pyvalue.NewDict("node", id, "display_node", id, "output", ui, "prompt_id", ex.item.id)); err != nil {
				return err
			}
		}
	}
	s.mu.Lock()
	if s.epoch == ex.epoch { // a restarted process has a new, empty cache
		s.cache.set(key, &cacheEntry{outputs: outputs, ui: uiRec})
	}
	s.mu.Unlock()
	if err := ex.finishProgress(id); err != nil {
		return err
	}
	if !ex.executedSet[id] {
		ex.executedSet[id] = true
		ex.executed = append(ex.executed, id)
	}
	return nil
}

// formatValue is execution.format_value.
func formatValue(v any) any {
	switch v.(type) {
	case nil, bool, *big.Int, float64, string:
		return v
	}
	return pyvalue.Str(v)
}

// injectedFault returns the configured node failure for this class, if any.
// step is 0 at node start, or the KSampler step being reached.
func (ex *execution) injectedFault(def *node.Class, step int) error {
	s := ex.s
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fault
	if f.FailClass == "" || f.FailClass != def.Name || f.FailAtStep != step {
		return nil
	}
	if f.FailTimes > 0 {
		s.faultUses++
		if s.faultUses >= f.FailTimes {
			// Exhausted: clear the node-failure part of the fault.
			s.fault.FailClass, s.fault.FailMessage, s.fault.FailType = "", "", ""
			s.fault.FailOOM, s.fault.FailTimes, s.fault.FailAtStep = false, 0, 0
			s.faultUses = 0
		}
	}
	where := def.FuncName()
	if f.FailOOM {
		msg := f.FailMessage
		if msg == "" {
			msg = node.DefaultOOMMessage
		}
		return node.OutOfMemory(msg, where)
	}
	typ := f.FailType
	if typ == "" {
		typ = "RuntimeError"
	}
	msg := f.FailMessage
	if msg == "" {
		msg = "emulated failure in " + def.Name
	}
	return node.Raise(typ, msg, where)
}

// stepFaults applies the fault-injection hooks that act when a sampler of
// class def reaches step.
func (ex *execution) stepFaults(def *node.Class, step int) error {
	s := ex.s
	s.mu.Lock()
	f := s.fault
	s.mu.Unlock()
	if f.FailAtStep > 0 && f.FailAtStep == step {
		if err := ex.injectedFault(def, step); err != nil {
			return err
		}
	}
	if f.DropWebSocketsAtStep > 0 && step == f.DropWebSocketsAtStep && !ex.faultStepDone["drop"] {
		ex.faultStepDone["drop"] = true
		s.DropWebSockets()
	}
	if f.RestartAtStep > 0 && step == f.RestartAtStep {
		s.Restart()
		return errAborted
	}
	if f.HangAtStep > 0 && step == f.HangAtStep {
		// Hang until interrupted, abandoned, or the fault is cleared.
		for {
			s.mu.Lock()
			still := s.fault.HangAtStep == step
			s.mu.Unlock()
			if !still {
				return nil
			}
			if err := ex.sleep(10 * time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

// --- ExecutionList (comfy_execution/graph.py) ---

type execList struct {
	ex         *execution
	pending    *pyvalue.Dict // node id -> true, insertion ordered
	blockCount map[string]int
	blocking   map[string]map[string]bool
}

func newExecList(ex *execution) *execList {
	return &execList{ex: ex, pending: pyvalue.NewDict(), blockCount: map[string]int{}, blocking: map[string]map[string]bool{}}
}

func (l *execList) inputsOf(id string) *pyvalue.Dict {
	v, ok := l.ex.item.prompt.Get(id)
	if !ok {
		return nil
	}
	n, _ := v.(*pyvalue.Dict)
	in, _ := n.Get("inputs")
	d, _ := in.(*pyvalue.Dict)
	return d
}

func (l *execList) exists(id string) bool {
	_, ok := l.ex.item.prompt.Get(id)
	return ok
}

func (l *execList) isCached(id string) bool {
	s := l.ex.s
	k := l.ex.sig.key(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache.get(k) != nil
}

type link struct{ from, to string }

func (l *execList) addNode(start string) {
	stack := []string{start}
	var links []link
	for len(stack) > 0 {
		u := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if l.pending.Has(u) {
			continue
		}
		l.pending.Set(u, true)
		l.blockCount[u] = 0
		l.blocking[u] = map[string]bool{}
		inputs := l.inputsOf(u)
		for _, name := range inputs.Keys() {
			v, _ := inputs.Get(name)
			if src, _, ok := isLink(v); ok && l.exists(src) {
				if !l.isCached(src) {
					stack = append(stack, src)
				}
				links = append(links, link{src, u})
			}
		}
	}
	for _, lk := range links {
		l.addStrongLink(lk.from, lk.to)
	}
}

func (l *execList) addStrongLink(from, to string) {
	if l.isCached(from) {
		return
	}
	l.addNode(from)
	if !l.blocking[from][to] {
		l.blocking[from][to] = true
		l.blockCount[to]++
	}
}

func (l *execList) empty() bool { return l.pending.Len() == 0 }

func (l *execList) isOutput(id string) bool {
	v, _ := l.ex.item.prompt.Get(id)
	ct, _ := v.(*pyvalue.Dict).Get("class_type")
	name, _ := ct.(string)
	d := l.ex.s.nodes.Class(name)
	return d != nil && d.OutputNode
}

// stage returns the node to run next (ux_friendly_pick_node).
func (l *execList) stage() (string, bool) {
	var ready []string
	for _, id := range l.pending.Keys() {
		if l.blockCount[id] == 0 {
			ready = append(ready, id)
		}
	}
	if len(ready) == 0 {
		return "", false
	}
	for _, id := range ready {
		if l.isOutput(id) {
			return id, true
		}
	}
	for _, id := range ready {
		for b := range l.blocking[id] {
			if l.isOutput(b) {
				return id, true
			}
		}
	}
	for _, id := range ready {
		for b := range l.blocking[id] {
			for b2 := range l.blocking[b] {
				if l.isOutput(b2) {
					return id, true
				}
			}
		}
	}
	return ready[0], true
}

func (l *execList) cycleNode() string {
	keys := l.pending.Keys()
	if len(keys) == 0 {
		return ""
	}
	return keys[0]
}

func (l *execList) complete(id string) {
	l.pending.Delete(id)
	for b := range l.blocking[id] {
		l.blockCount[b]--
	}
	delete(l.blocking, id)
}

// resolve is get_input_data for a link: the source's cached output, or None
// when the source produced nothing for that slot.
func (l *execList) resolve(src string, slot any) (any, error) {
	if !l.exists(src) {
		return nil, nil
	}
	s := l.ex.s
	k := l.ex.sig.key(src)
	s.mu.Lock()
	e := s.cache.get(k)
	s.mu.Unlock()
	if e == nil || e.outputs == nil {
		return nil, nil
	}
	var idx *big.Int
	switch t := slot.(type) {
	case *big.Int:
		idx = t
	case bool:
		idx = big.NewInt(0)
		if t {
			idx = big.NewInt(1)
		}
	default:
		return nil, node.Raise("TypeError", "list indices must be integers or slices, not "+pyvalue.TypeName(slot), "get_input_data")
	}
	if idx.Sign() >= 0 && (!idx.IsInt64() || idx.Int64() >= int64(len(e.outputs))) {
		return nil, nil
	}
	n, ok := pyvalue.Index(idx, len(e.outputs))
	if !ok {
		return nil, node.Raise("IndexError", "list index out of range", "get_input_data")
	}
	return e.outputs[n], nil
}

// isLink is comfy_execution.graph_utils.is_link.
func isLink(v any) (src string, slot any, ok bool) {
	l, isList := v.([]any)
	if !isList || len(l) != 2 {
		return "", nil, false
	}
	s, isStr := l[0].(string)
	if !isStr {
		return "", nil, false
	}
	switch l[1].(type) {
	case *big.Int, float64, bool:
		return s, l[1], true
	}
	return "", nil, false
}
