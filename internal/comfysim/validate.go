package comfysim

import (
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/node"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// errServer is an exception that escapes a request handler: aiohttp answers
// 500 with its plain-text page.
var errServer = errors.New("comfysim: unhandled exception")

func serverError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errServer, fmt.Sprintf(format, args...))
}

func reason(typ, message, details string, extra *pyvalue.Dict) *pyvalue.Dict {
	if extra == nil {
		extra = pyvalue.NewDict()
	}
	return pyvalue.NewDict("type", typ, "message", message, "details", details, "extra_info", extra)
}

// checkReplacements mirrors the exceptions NodeReplaceManager.apply_replacements
// raises before validation (v0.14+): the prompt must be a dict, a node that
// has both "class_type" and "inputs" must be a dict with a hashable
// class_type and dict inputs, and every node must support `in`.
func checkReplacements(prompt any) error {
	d, ok := prompt.(*pyvalue.Dict)
	if !ok {
		return serverError("'%s' object has no attribute 'items'", pyvalue.TypeName(prompt))
	}
	for _, k := range d.Keys() {
		node, _ := d.Get(k)
		hasCT, err := pyvalue.Contains(node, "class_type")
		if err != nil {
			return serverError("%v", err)
		}
		if !hasCT {
			continue
		}
		hasIn, err := pyvalue.Contains(node, "inputs")
		if err != nil {
			return serverError("%v", err)
		}
		if !hasIn {
			continue
		}
		nd, ok := node.(*pyvalue.Dict)
		if !ok {
			return serverError("indices must be integers")
		}
		ct, _ := nd.Get("class_type")
		switch ct.(type) {
		case []any, *pyvalue.Dict:
			return serverError("unhashable type: '%s'", pyvalue.TypeName(ct))
		}
		if in, _ := nd.Get("inputs"); !isDict(in) {
			return serverError("'%s' object has no attribute 'items'", pyvalue.TypeName(in))
		}
	}
	return nil
}

func isDict(v any) bool {
	_, ok := v.(*pyvalue.Dict)
	return ok
}

// valResult is one entry of validate_prompt's `validated` dict.
type valResult struct {
	ok      bool
	reasons []any
}

type validator struct {
	s         *Server
	prompt    *pyvalue.Dict
	order     []string
	validated map[string]*valResult
}

func (v *validator) set(id string, r *valResult) {
	if _, ok := v.validated[id]; !ok {
		v.order = append(v.order, id)
	}
	v.validated[id] = r
}

// validationResult is what validate_prompt returns.
type validationResult struct {
	ok         bool
	err        *pyvalue.Dict // the top-level error when !ok
	good       []string
	nodeErrors *pyvalue.Dict
}

// validatePrompt is execution.validate_prompt. It rewrites coerced values in
// place. A non-nil error means the request must fail with a 500.
func (s *Server) validatePrompt(prompt *pyvalue.Dict, partial any, hasPartial bool) (validationResult, error) {
	var outputs []string
	for _, x := range prompt.Keys() {
		nv, _ := prompt.Get(x)
		node, ok := nv.(*pyvalue.Dict)
		if !ok {
			return validationResult{}, serverError("node %s is not a dict", x)
		}
		meta := pyvalue.NewDict()
		if mv, has := node.Get("_meta"); has {
			m, ok := mv.(*pyvalue.Dict)
			if !ok {
				return validationResult{}, serverError("'%s' object has no attribute 'get'", pyvalue.TypeName(mv))
			}
			meta = m
		}
		ctV, hasCT := node.Get("class_type")
		if !hasCT {
			title, _ := meta.Get("title")
			name := "ID #" + x
			if pyvalue.Truth(title) {
				name = pyvalue.Str(title)
			}
			return validationResult{err: reason("missing_node_type",
				fmt.Sprintf("Node '%s' has no class_type. The workflow may be corrupted or a custom node is missing.", name),
				fmt.Sprintf("Node ID '#%s'", x),
				pyvalue.NewDict("node_id", x, "class_type", nil, "node_title", title))}, nil
		}
		switch ctV.(type) {
		case []any, *pyvalue.Dict:
			return validationResult{}, serverError("unhashable type: '%s'", pyvalue.TypeName(ctV))
		}
		ct, _ := ctV.(string)
		def := s.nodes.Class(ct)
		if _, isStr := ctV.(string); !isStr || def == nil {
			title, has := meta.Get("title")
			if !has {
				title = ctV
			}
			return validationResult{err: reason("missing_node_type",
				fmt.Sprintf("Node '%s' not found. The custom node may not be installed.", pyvalue.Str(title)),
				fmt.Sprintf("Node ID '#%s'", x),
				pyvalue.NewDict("node_id", x, "class_type", ctV, "node_title", title))}, nil
		}
		if def.OutputNode {
			if hasPartial && partial != nil {
				// x in partial_execution_targets
				in, err := pyvalue.Contains(partial, x)
				if err != nil {
					return validationResult{}, serverError("%v", err)
				}
				if !in {
					continue
				}
			}
			outputs = append(outputs, x)
		}
	}
	if len(outputs) == 0 {
		return validationResult{err: reason("prompt_no_outputs", "Prompt has no outputs", "", nil), nodeErrors: pyvalue.NewDict()}, nil
	}

	v := &validator{s: s, prompt: prompt, validated: map[string]*valResult{}}
	var good []string
	type failed struct {
		o       string
		reasons []any
	}
	var failures []failed
	nodeErrors := pyvalue.NewDict()
	for _, o := range outputs {
		r, exc := v.validateInputs(o, nil)
		var reasons []any
		valid := false
		if exc != nil {
			reasons = []any{reason("exception_during_validation", "Exception when validating node", exc.Message,
				pyvalue.NewDict("exception_type", exc.Type, "traceback", exc.Traceback))}
			v.set(o, &valResult{ok: false, reasons: reasons})
		} else {
			valid, reasons = r.ok, r.reasons
		}
		if valid {
			good = append(good, o)
			continue
		}
		failures = append(failures, failed{o, reasons})
		for _, id := range v.order {
			res := v.validated[id]
			if res.ok || len(res.reasons) == 0 {
				continue
			}
			ne, ok := nodeErrors.Get(id)
			if !ok {
				nv, _ := prompt.Get(id)
				ct, _ := nv.(*pyvalue.Dict).Get("class_type")
				ne = pyvalue.NewDict("errors", res.reasons, "dependent_outputs", []any{}, "class_type", ct)
				nodeErrors.Set(id, ne)
			}
			d := ne.(*pyvalue.Dict)
			deps, _ := d.Get("dependent_outputs")
			d.Set("dependent_outputs", append(deps.([]any), o))
		}
	}
	if len(good) == 0 {
		var lines []string
		for _, f := range failures {
			for _, r := range f.reasons {
				rd := r.(*pyvalue.Dict)
				m, _ := rd.Get("message")
				d, _ := rd.Get("details")
				lines = append(lines, pyvalue.Str(m)+": "+pyvalue.Str(d))
			}
		}
		return validationResult{
			err:        reason("prompt_outputs_failed_validation", "Prompt outputs failed validation", strings.Join(lines, "\n"), nil),
			nodeErrors: nodeErrors,
		}, nil
	}
	return validationResult{ok: true, good: good, nodeErrors: nodeErrors}, nil
}

// keyError is str(KeyError(key)).
func keyError(key any) *node.Error {
	switch key.(type) {
	case []any, *pyvalue.Dict:
		return node.Raise("TypeError", fmt.Sprintf("unhashable type: '%s'", pyvalue.TypeName(key)), "validate_inputs")
	}
	return node.Raise("KeyError", pyvalue.Repr(key), "validate_inputs")
}

// validateInputs is execution.validate_inputs; a non-nil *node.Error is an
// exception escaping it.
func (v *validator) validateInputs(id string, visiting []string) (*valResult, *node.Error) {
	if r, ok := v.validated[id]; ok {
		return r, nil
	}
	for k, vid := range visiting {
		if vid != id {
			continue
		}
		path := append(append([]string{}, visiting[k:]...), id)
		var cycle []string
		seen := map[string]bool{}
		for _, n := range path {
			if !seen[n] {
				seen[n] = true
				cycle = append(cycle, n)
			}
		}
		parts := make([]string, len(path))
		for j, n := range path {
			nv, _ := v.prompt.Get(n)
			ct, _ := nv.(*pyvalue.Dict).Get("class_type")
			parts[j] = fmt.Sprintf("%s (%s)", n, pyvalue.Str(ct))
		}
		for _, n := range cycle {
			v.set(n, &valResult{ok: false, reasons: []any{reason("dependency_cycle", "Dependency cycle detected",
				strings.Join(parts, " -> "), pyvalue.NewDict("node_id", n, "cycle_nodes", cycle))}})
		}
		return v.validated[id], nil
	}

	nv, _ := v.prompt.Get(id)
	node := nv.(*pyvalue.Dict)
	inV, ok := node.Get("inputs")
	if !ok {
		return nil, keyError("inputs")
	}
	inputs := inV.(*pyvalue.Dict)
	ctV, _ := node.Get("class_type")
	def := v.s.nodes.Class(ctV.(string))

	var errs []any
	valid := true
	validateArgs := map[string]bool{}
	for _, a := range def.ValidateArgs {
		validateArgs[a] = true
	}
	for _, in := range def.Inputs {
		x := in.Name
		typ, extra := in.Spec(v.s.host)
		val, present := inputs.Get(x)
		if !present {
			if !in.Optional {
				errs = append(errs, reason("required_input_missing", "Required input is missing", x, pyvalue.NewDict("input_name", x)))
			}
			continue
		}
		info := []any{typ, extra}
		if l, isList := val.([]any); isList {
			if len(l) != 2 {
				errs = append(errs, reason("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", x,
					pyvalue.NewDict("input_name", x, "input_config", info, "received_value", val)))
				continue
			}
			oid, isStr := l[0].(string)
			if !isStr {
				return nil, keyError(l[0])
			}
			src, exists := v.prompt.Get(oid)
			if !exists {
				return nil, keyError(oid)
			}
			sct, _ := src.(*pyvalue.Dict).Get("class_type")
			sdef := v.s.nodes.Class(sct.(string))
			received, exc := returnTypeAt(sdef, l[1])
			if exc != nil {
				return nil, exc
			}
			if !validateNodeInput(received, typ) {
				errs = append(errs, reason("return_type_mismatch", "Return type mismatch between linked nodes",
					fmt.Sprintf("%s, received_type(%s) mismatch input_type(%s)", x, received, pyvalue.Str(typ)),
					pyvalue.NewDict("input_name", x, "input_config", info, "received_type", received, "linked_node", val)))
				continue
			}
			r, exc := v.validateInputs(oid, append(visiting, id))
			if exc != nil {
				valid = false
				v.set(oid, &valResult{ok: false, reasons: []any{reason("exception_during_inner_validation",
					"Exception when validating inner node", exc.Message,
					pyvalue.NewDict("input_name", x, "input_config", info, "exception_message", exc.Message,
						"exception_type", exc.Type, "traceback", exc.Traceback, "linked_node", val))}})
				continue
			}
			if !r.ok {
				valid = false
			}
			continue
		}

		if d, isD := val.(*pyvalue.Dict); isD {
			if inner, has := d.Get("__value__"); has {
				val = inner
				inputs.Set(x, val)
			}
		}
		if ts, isStr := typ.(string); isStr {
			var conv any
			var cerr error
			switch ts {
			case "INT":
				conv, cerr = pyvalue.Int(val)
			case "FLOAT":
				conv, cerr = pyvalue.Float(val)
			case "STRING":
				conv = pyvalue.Str(val)
			case "BOOLEAN":
				conv = pyvalue.Truth(val)
			default:
				conv = val
			}
			if cerr != nil {
				errs = append(errs, reason("invalid_input_type", "Failed to convert an input value to a "+ts+" value",
					fmt.Sprintf("%s, %s, %s", x, pyvalue.Str(val), cerr.Error()),
					pyvalue.NewDict("input_name", x, "input_config", info, "received_value", val, "exception_message", cerr.Error())))
				continue
			}
			if ts == "INT" || ts == "FLOAT" || ts == "STRING" || ts == "BOOLEAN" {
				val = conv
				inputs.Set(x, val)
			}
		}
		if validateArgs[x] {
			continue
		}
		if mn, has := extra.Get("min"); has && pyvalue.Less(val, mn) {
			errs = append(errs, reason("value_smaller_than_min", fmt.Sprintf("Value %s smaller than min of %s", pyvalue.Str(val), pyvalue.Str(mn)), x,
				pyvalue.NewDict("input_name", x, "input_config", info, "received_value", val)))
			continue
		}
		if mx, has := extra.Get("max"); has && pyvalue.Less(mx, val) {
			errs = append(errs, reason("value_bigger_than_max", fmt.Sprintf("Value %s bigger than max of %s", pyvalue.Str(val), pyvalue.Str(mx)), x,
				pyvalue.NewDict("input_name", x, "input_config", info, "received_value", val)))
			continue
		}
		if opts, isCombo := in.ComboOptions(v.s.host); isCombo {
			in := false
			for _, o := range opts {
				if pyvalue.Equal(val, o) {
					in = true
					break
				}
			}
			if !in {
				var cfg any = info
				listInfo := pyvalue.Repr(opts)
				if len(opts) > 20 {
					listInfo = fmt.Sprintf("(list of length %d)", len(opts))
					cfg = nil
				}
				errs = append(errs, reason("value_not_in_list", "Value not in list",
					fmt.Sprintf("%s: %s not in %s", x, pyvalue.Repr(val), listInfo),
					pyvalue.NewDict("input_name", x, "input_config", cfg, "received_value", val)))
				continue
			}
		}
	}

	if def.Validate != nil {
		args := map[string]any{}
		var argOrder []string
		for _, x := range inputs.Keys() {
			if !validateArgs[x] {
				continue
			}
			val, _ := inputs.Get(x)
			if _, _, isL := isLink(val); isL {
				val = nil // get_input_data without an execution list: missing
			} else if _, declared := def.Input(x); !declared {
				continue
			}
			args[x] = val
			argOrder = append(argOrder, x)
		}
		ret, exc := def.Validate(v.s.host, args)
		if exc != nil {
			return nil, exc
		}
		if b, isB := ret.(bool); !isB || !b {
			for _, x := range argOrder {
				details := x
				if !(isB && !b) {
					details += " - " + pyvalue.Str(ret)
				}
				errs = append(errs, reason("custom_validation_failed", "Custom validation failed for node", details, pyvalue.NewDict("input_name", x)))
			}
		}
	}

	prev, had := v.validated[id]
	if !had {
		prev = &valResult{ok: true}
	}
	merged := append([]any{}, prev.reasons...)
	for _, e := range errs {
		dup := false
		for _, p := range prev.reasons {
			if pyvalue.Equal(e, p) {
				dup = true
				break
			}
		}
		if !dup {
			merged = append(merged, e)
		}
	}
	r := &valResult{ok: prev.ok && valid && len(errs) == 0, reasons: merged}
	v.set(id, r)
	return r, nil
}

// returnTypeAt is RETURN_TYPES[slot] with Python's indexing errors.
func returnTypeAt(def *node.Class, slot any) (string, *node.Error) {
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
		return "", node.Raise("TypeError", "tuple indices must be integers or slices, not "+pyvalue.TypeName(slot), "validate_inputs")
	}
	if !idx.IsInt64() {
		return "", node.Raise("IndexError", "cannot fit 'int' into an index-sized integer", "validate_inputs")
	}
	n, ok := pyvalue.Index(idx, len(def.ReturnTypes))
	if !ok {
		return "", node.Raise("IndexError", "tuple index out of range", "validate_inputs")
	}
	return def.ReturnTypes[n], nil
}

// validateNodeInput is comfy_execution.validation.validate_node_input
// (non-strict): equal types, "*" on either side, or overlapping unions.
func validateNodeInput(received string, inputType any) bool {
	it, isStr := inputType.(string)
	if isStr && received == it {
		return true
	}
	if received == "*" || it == "*" {
		return true
	}
	if !isStr {
		return false
	}
	rs := map[string]bool{}
	for _, t := range strings.Split(received, ",") {
		rs[strings.TrimSpace(t)] = true
	}
	if rs["*"] {
		return true
	}
	for _, t := range strings.Split(it, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || rs[t] {
			return true
		}
	}
	return false
}
