package node

// Error is a Python exception: raised inside a node, or by the executor or
// validation on a node's behalf. Its fields are what execution_error and the
// validation errors report.
type Error struct {
	Type      string // full type name, e.g. "RuntimeError"
	Message   string // str(ex)
	Tips      string // appended by execute() for OOM
	Traceback []string
}

func (e *Error) Error() string { return e.Type + ": " + e.Message }

// DefaultOOMMessage is str() of a typical torch.OutOfMemoryError.
const DefaultOOMMessage = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.55 GiB of which 1.06 GiB is free. " +
	"Of the allocated memory 20.12 GiB is allocated by PyTorch, and 1.20 GiB is reserved by PyTorch but unallocated. " +
	"If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  " +
	"See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"

// oomTips is what execute() appends to an OOM exception message.
const oomTips = "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might have accidentally set the batch_size to a large number."

// Raise returns the exception of type typ with str() msg, raised in the
// Python function where.
func Raise(typ, msg string, where string) *Error {
	return &Error{Type: typ, Message: msg, Traceback: fakeTraceback(where)}
}

// OutOfMemory returns the torch.OutOfMemoryError raised in where, with the
// tips execute() appends to its message.
func OutOfMemory(msg, where string) *Error {
	e := Raise("torch.OutOfMemoryError", msg, where)
	e.Tips = oomTips
	return e
}

// fakeTraceback imitates traceback.format_tb for an exception raised in a node.
func fakeTraceback(where string) []string {
	return []string{
		"  File \"/ComfyUI/execution.py\", line 534, in execute\n    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)\n",
		"  File \"/ComfyUI/execution.py\", line 334, in get_output_data\n    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)\n",
		"  File \"/ComfyUI/execution.py\", line 308, in _async_map_node_over_list\n    await process_inputs(input_dict, i)\n",
		"  File \"/ComfyUI/execution.py\", line 296, in process_inputs\n    result = f(**inputs)\n",
		"  File \"/ComfyUI/nodes.py\", line 1, in " + where + "\n    raise\n",
	}
}
