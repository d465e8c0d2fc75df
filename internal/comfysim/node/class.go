package node

import (
	"strings"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// Input is one declared input of a node class, as INPUT_TYPES returns it.
type Input struct {
	Name string
	// Type is the io type ("INT", "IMAGE", "COMBO", ...). Empty means a v1
	// combo whose options come from Combo.
	Type string
	// Options is the static options dict; nil renders as a one-element
	// tuple in object_info (and as {} in validation errors, like
	// get_input_info).
	Options *pyvalue.Dict
	// Combo lists the options of a v1 combo (Type "") or of a v3 COMBO.
	Combo    func(h Host) []string
	Optional bool
}

// Class is a node class: its schema (for /object_info and validation) and
// its emulated behaviour. The fields mirror the class attributes ComfyUI
// reads (RETURN_TYPES, OUTPUT_NODE, VALIDATE_INPUTS, IS_CHANGED, FUNCTION...).
type Class struct {
	Name, DisplayName, Description, Category, PythonModule string
	// V3 marks a class of the v3 schema (comfy_api.latest.io), whose
	// object_info and hidden inputs differ from v1's.
	V3             bool
	Inputs         []Input
	Hidden         [][2]string // name, hidden type
	ReturnTypes    []string
	ReturnNames    []string // nil = ReturnTypes (v1); v3 uses display names
	OutputTooltips []string // v1: nil = absent; v3: "" = None
	OutputNode     bool
	SearchAliases  []string
	Essentials     string // essentials_category; "" = none

	Deprecated, Experimental bool

	// ValidateArgs are the argument names of VALIDATE_INPUTS; Validate is
	// called with them when non-empty and returns true or a message string.
	ValidateArgs []string
	Validate     func(h Host, args map[string]any) (any, *Error)
	// IsChanged returns IS_CHANGED's value for the cache signature; nil
	// stands for NaN (never equal, so never cached).
	IsChanged func(h Host, inputs *pyvalue.Dict) any
	// Func executes the node: its outputs, its UI dict (nil for none) or
	// the exception it raised.
	Func func(x *Run) (outputs []any, ui *pyvalue.Dict, err error)
}

// Input returns the declared input name.
func (c *Class) Input(name string) (Input, bool) {
	for _, in := range c.Inputs {
		if in.Name == name {
			return in, true
		}
	}
	return Input{}, false
}

// Spec returns (input_type, extra_info) as get_input_info does: the type is a
// string or, for a v1 combo, the list of options.
func (in Input) Spec(h Host) (typ any, extra *pyvalue.Dict) {
	extra = in.Options
	if extra == nil {
		extra = pyvalue.NewDict()
	}
	switch {
	case in.Type == "":
		typ = strList(in.Combo(h))
	case in.Type == "COMBO" && in.Combo != nil:
		extra = extra.Copy()
		extra.Set("options", strList(in.Combo(h)))
		typ = "COMBO"
	default:
		typ = in.Type
	}
	return typ, extra
}

// ComboOptions returns the options of a combo input, or false if it is not
// one.
func (in Input) ComboOptions(h Host) ([]any, bool) {
	typ, extra := in.Spec(h)
	if l, ok := typ.([]any); ok {
		return l, true
	}
	if typ == "COMBO" {
		if o, ok := extra.Get("options"); ok {
			if l, ok := o.([]any); ok {
				return l, true
			}
		}
		return []any{}, true
	}
	return nil, false
}

func strList(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// ObjectInfo renders the /object_info entry of the class.
func (c *Class) ObjectInfo(h Host) *pyvalue.Dict {
	input := pyvalue.NewDict()
	order := pyvalue.NewDict()
	var req, opt []string
	reqD, optD := pyvalue.NewDict(), pyvalue.NewDict()
	for _, in := range c.Inputs {
		typ, _ := in.Spec(h)
		var entry []any
		switch {
		case in.Type == "COMBO":
			_, extra := in.Spec(h)
			entry = []any{typ, extra}
		case in.Options == nil:
			entry = []any{typ}
		default:
			entry = []any{typ, in.Options}
		}
		if in.Optional {
			optD.Set(in.Name, entry)
			opt = append(opt, in.Name)
		} else {
			reqD.Set(in.Name, entry)
			req = append(req, in.Name)
		}
	}
	input.Set("required", reqD)
	order.Set("required", req)
	if len(opt) > 0 {
		input.Set("optional", optD)
		order.Set("optional", opt)
	}
	if len(c.Hidden) > 0 {
		hd := pyvalue.NewDict()
		var names []string
		for _, hidden := range c.Hidden {
			if c.V3 {
				hd.Set(hidden[0], []any{hidden[1]})
			} else {
				hd.Set(hidden[0], hidden[1])
			}
			names = append(names, hidden[0])
		}
		input.Set("hidden", hd)
		order.Set("hidden", names)
	}
	outIsList := make([]any, len(c.ReturnTypes))
	for k := range outIsList {
		outIsList[k] = false
	}
	names := c.ReturnNames
	if names == nil {
		names = c.ReturnTypes
	}
	info := pyvalue.NewDict(
		"input", input,
		"input_order", order,
		"is_input_list", false,
		"output", c.ReturnTypes,
		"output_is_list", outIsList,
		"output_name", names,
	)
	if c.V3 {
		tips := make([]any, len(c.ReturnTypes))
		for k := range tips {
			if k < len(c.OutputTooltips) && c.OutputTooltips[k] != "" {
				tips[k] = c.OutputTooltips[k]
			}
		}
		var aliases any
		if len(c.SearchAliases) > 0 {
			aliases = c.SearchAliases
		}
		var ess any
		if c.Essentials != "" {
			ess = c.Essentials
		}
		info.Set("output_tooltips", tips)
		info.Set("output_matchtypes", nil)
		var display any
		if c.DisplayName != "" {
			display = c.DisplayName // a v3 schema without one renders None
		}
		info.Set("name", c.Name)
		info.Set("display_name", display)
		info.Set("description", c.Description)
		info.Set("python_module", c.PythonModule)
		info.Set("category", c.Category)
		info.Set("output_node", c.OutputNode)
		info.Set("deprecated", c.Deprecated)
		info.Set("experimental", c.Experimental)
		info.Set("dev_only", false)
		info.Set("api_node", false)
		info.Set("price_badge", nil)
		info.Set("search_aliases", aliases)
		info.Set("essentials_category", ess)
		info.Set("has_intermediate_output", false)
		return info
	}
	info.Set("name", c.Name)
	info.Set("display_name", c.DisplayName)
	info.Set("description", c.Description)
	info.Set("python_module", c.PythonModule)
	info.Set("category", c.Category)
	info.Set("output_node", c.OutputNode)
	info.Set("has_intermediate_output", false)
	if c.OutputTooltips != nil {
		info.Set("output_tooltips", c.OutputTooltips)
	}
	if c.Deprecated {
		info.Set("deprecated", true)
	}
	if c.Experimental {
		info.Set("experimental", true)
	}
	aliases := c.SearchAliases
	if aliases == nil {
		aliases = []string{}
	}
	info.Set("search_aliases", aliases)
	if c.Essentials != "" {
		info.Set("essentials_category", c.Essentials)
	}
	return info
}

// FuncName is the qualified name of the class's FUNCTION, for tracebacks
// and TypeErrors.
func (c *Class) FuncName() string {
	if c.V3 {
		return c.Name + ".execute"
	}
	switch c.Name {
	case "CheckpointLoaderSimple":
		return "CheckpointLoaderSimple.load_checkpoint"
	case "CLIPTextEncode":
		return "CLIPTextEncode.encode"
	case "EmptyLatentImage":
		return "EmptyLatentImage.generate"
	case "KSampler":
		return "KSampler.sample"
	case "VAEDecode":
		return "VAEDecode.decode"
	case "SaveImage", "PreviewImage":
		return "SaveImage.save_images"
	case "LoadImage":
		return "LoadImage.load_image"
	case "PreviewAny":
		return "PreviewAny.main"
	case "UNETLoader":
		return "UNETLoader.load_unet"
	case "DualCLIPLoader":
		return "DualCLIPLoader.load_clip"
	case "VAELoader":
		return "VAELoader.load_vae"
	case "LoraLoader":
		return "LoraLoader.load_lora"
	case "VHS_VideoCombine":
		return "VideoCombine.combine_video"
	case "SaveImageWebsocket":
		return "SaveImageWebsocket.save_images"
	}
	return c.Name + ".run"
}

// Object is the per-(node id, class) instance ComfyUI keeps in its object
// cache; PreviewImage keeps its random file-name suffix there. The executor
// owns the cache and hands the object to each Run.
type Object struct {
	previewSuffix string
}

// NewObject creates the class's instance, as the object cache does when it
// has none for a node.
func (c *Class) NewObject() *Object {
	obj := &Object{}
	if c.Name == "PreviewImage" {
		obj.previewSuffix = "_temp_" + randomLetters(5)
	}
	return obj
}

// randomLetters is PreviewImage's suffix alphabet (sic: "p" twice, no "w").
func randomLetters(n int) string {
	const alphabet = "abcdefghijklmnopqrstupvxyz"
	var b strings.Builder
	for range n {
		b.WriteByte(alphabet[randIntn(len(alphabet))])
	}
	return b.String()
}
