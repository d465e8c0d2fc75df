package comfysim

import (
	"fmt"
	"math/big"
	"net/http"
	"sort"
	"strings"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// The /api/jobs view (comfy_execution/jobs.py, v0.6+; cancel routes v0.26+).

var jobStatuses = []string{"pending", "in_progress", "completed", "failed", "cancelled"}

// pruned drops None values (prune_dict).
func pruned(kv ...any) *pyvalue.Dict {
	d := pyvalue.NewDict()
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != nil {
			d.Set(kv[i].(string), kv[i+1])
		}
	}
	return d
}

func jobMeta(extra *pyvalue.Dict) (createTime, workflowID any) {
	createTime, _ = extra.Get("create_time")
	if pi, ok := extra.Get("extra_pnginfo"); ok {
		if pd, ok := pi.(*pyvalue.Dict); ok {
			if wf, ok := pd.Get("workflow"); ok {
				if wd, ok := wf.(*pyvalue.Dict); ok {
					workflowID, _ = wd.Get("id")
				}
			}
		}
	}
	return createTime, workflowID
}

func queueJob(it *queueItem, status string) *pyvalue.Dict {
	ct, wf := jobMeta(it.extra)
	return pruned("id", it.id, "status", status, "priority", it.number, "create_time", ct, "outputs_count", 0, "workflow_id", wf)
}

func outputsSummary(outputs *pyvalue.Dict) (int, any) {
	count := 0
	var preview, fallback any
	for _, node := range outputs.Keys() {
		nv, _ := outputs.Get(node)
		nd, ok := nv.(*pyvalue.Dict)
		if !ok {
			continue
		}
		for _, media := range nd.Keys() {
			iv, _ := nd.Get(media)
			items, ok := iv.([]any)
			if media == "animated" || !ok {
				continue
			}
			for _, item := range items {
				d, isD := item.(*pyvalue.Dict)
				if !isD {
					if media == "text" {
						count++
						if preview == nil && fallback == nil {
							text := pyvalue.Str(item)
							p := pyvalue.NewDict()
							if len([]rune(text)) > 1024 {
								p.Set("content", string([]rune(text)[:1024]))
								p.Set("truncated", true)
							} else {
								p.Set("content", text)
							}
							p.Set("nodeId", node)
							p.Set("mediaType", media)
							fallback = p
						}
					}
					continue
				}
				count++
				if preview != nil {
					continue
				}
				if previewable(media, d) {
					e := d.Copy()
					e.Set("nodeId", node)
					if !d.Has("mediaType") {
						e.Set("mediaType", media)
					}
					if t, _ := d.Get("type"); t == "output" {
						preview = e
					} else if fallback == nil {
						fallback = e
					}
				}
			}
		}
	}
	if preview == nil {
		preview = fallback
	}
	return count, preview
}

func previewable(media string, item *pyvalue.Dict) bool {
	switch media {
	case "images", "video", "audio", "3d", "text":
		return true
	}
	if f, ok := item.Get("format"); ok {
		if fs, ok := f.(string); ok && (strings.HasPrefix(fs, "video/") || strings.HasPrefix(fs, "audio/")) {
			return true
		}
	}
	if fn, ok := item.Get("filename"); ok {
		if s, ok := fn.(string); ok {
			s = strings.ToLower(s)
			for _, ext := range []string{".obj", ".fbx", ".gltf", ".glb", ".usdz"} {
				if strings.HasSuffix(s, ext) {
					return true
				}
			}
		}
	}
	return false
}

func historyJob(e *historyEntry, full bool) *pyvalue.Dict {
	pv, _ := e.value.Get("prompt")
	tuple := pv.([]any)
	extra := tuple[3].(*pyvalue.Dict)
	ct, wf := jobMeta(extra)
	sv, _ := e.value.Get("status")
	status, _ := sv.(*pyvalue.Dict)
	var start, end, execErr any
	interrupted := false
	statusStr := ""
	if status != nil {
		ss, _ := status.Get("status_str")
		statusStr, _ = ss.(string)
		mv, _ := status.Get("messages")
		msgs, _ := mv.([]any)
		for _, m := range msgs {
			pair := m.([]any)
			ev, _ := pair[0].(string)
			data, ok := pair[1].(*pyvalue.Dict)
			if !ok {
				continue
			}
			switch ev {
			case "execution_start":
				start, _ = data.Get("timestamp")
			case "execution_success", "execution_error", "execution_interrupted":
				end, _ = data.Get("timestamp")
				if ev == "execution_error" {
					execErr = data
				} else if ev == "execution_interrupted" {
					interrupted = true
				}
			}
		}
	}
	js := "completed"
	if statusStr == "error" {
		js = "failed"
		if interrupted {
			js = "cancelled"
		}
	}
	ov, _ := e.value.Get("outputs")
	outputs, _ := ov.(*pyvalue.Dict)
	count, preview := outputsSummary(outputs)
	job := pruned("id", e.id, "status", js, "priority", tuple[0], "create_time", ct,
		"execution_start_time", start, "execution_end_time", end, "execution_error", execErr,
		"outputs_count", count, "preview_output", preview, "workflow_id", wf)
	if full {
		job.Set("outputs", outputs)
		job.Set("execution_status", sv)
		job.Set("workflow", pyvalue.NewDict("prompt", tuple[2], "extra_data", extra))
	}
	return job
}

func jsonError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, pyvalue.NewDict("error", msg))
}

func (s *Server) handleJobs(w http.ResponseWriter, r *http.Request, _ string) {
	q := parsePyQuery(r.URL.RawQuery)
	filter := jobStatuses
	if sp, ok := q.get("status"); ok && sp != "" {
		filter = nil
		var bad []string
		for _, p := range strings.Split(sp, ",") {
			p = strings.ToLower(strings.TrimSpace(p))
			if p == "" {
				continue
			}
			known := false
			for _, st := range jobStatuses {
				known = known || st == p
			}
			if !known {
				bad = append(bad, p)
			}
			filter = append(filter, p)
		}
		if len(bad) > 0 {
			jsonError(w, http.StatusBadRequest, fmt.Sprintf("Invalid status value(s): %s. Valid values: %s", strings.Join(bad, ", "), strings.Join(jobStatuses, ", ")))
			return
		}
	}
	sortBy := "created_at"
	if v, ok := q.get("sort_by"); ok {
		sortBy = strings.ToLower(v)
	}
	if sortBy != "created_at" && sortBy != "execution_duration" {
		jsonError(w, http.StatusBadRequest, "sort_by must be 'created_at' or 'execution_duration'")
		return
	}
	order := "desc"
	if v, ok := q.get("sort_order"); ok {
		order = strings.ToLower(v)
	}
	if order != "asc" && order != "desc" {
		jsonError(w, http.StatusBadRequest, "sort_order must be 'asc' or 'desc'")
		return
	}
	var limit *big.Int
	if v, ok := q.get("limit"); ok {
		n, err := pyvalue.Int(v)
		if err != nil {
			jsonError(w, http.StatusBadRequest, "limit must be an integer")
			return
		}
		if n.Sign() <= 0 {
			jsonError(w, http.StatusBadRequest, "limit must be a positive integer")
			return
		}
		limit = n
	}
	offset := 0
	if v, ok := q.get("offset"); ok {
		n, err := pyvalue.Int(v)
		if err != nil {
			jsonError(w, http.StatusBadRequest, "offset must be an integer")
			return
		}
		if n.Sign() > 0 && n.IsInt64() {
			offset = int(min(n.Int64(), 1<<40))
		}
	}
	want := map[string]bool{}
	for _, f := range filter {
		want[f] = true
	}
	workflowID, _ := q.get("workflow_id")

	var jobs []*pyvalue.Dict
	s.mu.Lock()
	if want["in_progress"] && s.running != nil {
		jobs = append(jobs, queueJob(s.running, "in_progress"))
	}
	if want["pending"] {
		for _, it := range s.queue {
			jobs = append(jobs, queueJob(it, "pending"))
		}
	}
	if want["completed"] || want["failed"] || want["cancelled"] {
		for _, id := range s.history.order {
			j := historyJob(s.history.m[id], false)
			st, _ := j.Get("status")
			if want[st.(string)] {
				jobs = append(jobs, j)
			}
		}
	}
	s.mu.Unlock()
	if workflowID != "" {
		kept := jobs[:0]
		for _, j := range jobs {
			if v, _ := j.Get("workflow_id"); v == workflowID {
				kept = append(kept, j)
			}
		}
		jobs = kept
	}
	key := func(j *pyvalue.Dict) *big.Float {
		num := func(k string) *big.Float {
			v, _ := j.Get(k)
			if f, ok := pyvalue.Number(v); ok && f != nil {
				return f
			}
			return new(big.Float)
		}
		if sortBy == "execution_duration" {
			st, en := num("execution_start_time"), num("execution_end_time")
			if st.Sign() == 0 || en.Sign() == 0 {
				return new(big.Float)
			}
			return new(big.Float).Sub(en, st)
		}
		return num("create_time")
	}
	sort.SliceStable(jobs, func(a, b int) bool {
		c := key(jobs[a]).Cmp(key(jobs[b]))
		if order == "desc" {
			return c > 0
		}
		return c < 0
	})
	total := len(jobs)
	if offset > 0 {
		if offset > len(jobs) {
			offset = len(jobs)
		}
		jobs = jobs[offset:]
	}
	var limitV any
	if limit != nil {
		limitV = limit
		if limit.IsInt64() && limit.Int64() < int64(len(jobs)) {
			jobs = jobs[:limit.Int64()]
		}
	}
	list := make([]any, len(jobs))
	for k, j := range jobs {
		list[k] = j
	}
	writeJSON(w, http.StatusOK, pyvalue.NewDict("jobs", list, "pagination",
		pyvalue.NewDict("offset", offset, "limit", limitV, "total", total, "has_more", offset+len(jobs) < total)))
}

func (s *Server) handleJob(w http.ResponseWriter, _ *http.Request, id string) {
	s.mu.Lock()
	var job *pyvalue.Dict
	if e, ok := s.history.get(id); ok {
		job = historyJob(e, true)
	} else if s.running != nil && s.running.id == id {
		job = queueJob(s.running, "in_progress")
	} else {
		for _, it := range s.queue {
			if it.id == id {
				job = queueJob(it, "pending")
				break
			}
		}
	}
	s.mu.Unlock()
	if job == nil {
		jsonError(w, http.StatusNotFound, "Job not found")
		return
	}
	writeJSON(w, http.StatusOK, job)
}

// cancelJob interrupts a running job or dequeues a pending one; it reports
// whether a cancel was dispatched.
func (s *Server) cancelJob(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running != nil && s.running.id == id {
		s.interrupted = true
		s.wakeSampler()
		return true
	}
	for k, it := range s.queue {
		if it.id != id {
			continue
		}
		if len(s.queue) == 1 {
			s.queue = nil
			s.statusLocked()
		} else {
			s.queue = append(s.queue[:k:k], s.queue[k+1:]...)
			s.queue.heapify()
		}
		s.statusLocked()
		return true
	}
	return false
}

func (s *Server) handleJobCancel(w http.ResponseWriter, _ *http.Request, id string) {
	writeJSON(w, http.StatusOK, pyvalue.NewDict("cancelled", s.cancelJob(id)))
}

func (s *Server) handleJobsCancel(w http.ResponseWriter, r *http.Request, _ string) {
	raw, ok := s.readBodyRaw(w, r)
	if !ok {
		return
	}
	body, err := pyvalue.Decode(raw)
	if err != nil {
		jsonError(w, http.StatusBadRequest, "Request body must be valid JSON")
		return
	}
	var ids []any
	if d, ok := body.(*pyvalue.Dict); ok {
		v, _ := d.Get("job_ids")
		ids, ok = v.([]any)
		if !ok {
			ids = nil
		}
	}
	if ids == nil {
		jsonError(w, http.StatusBadRequest, "job_ids must be a list")
		return
	}
	invalid := []any{}
	for _, v := range ids {
		sv, isStr := v.(string)
		if !isStr || !canonicalUUID.MatchString(sv) {
			if isStr {
				invalid = append(invalid, sv)
			} else {
				invalid = append(invalid, pyvalue.Repr(v))
			}
		}
	}
	if len(invalid) > 0 {
		writeJSON(w, http.StatusBadRequest, pyvalue.NewDict("error", "job_ids contains invalid id(s)", "invalid_ids", invalid))
		return
	}
	cancelled := false
	for _, v := range ids {
		if s.cancelJob(v.(string)) {
			cancelled = true
		}
	}
	writeJSON(w, http.StatusOK, pyvalue.NewDict("cancelled", cancelled))
}
