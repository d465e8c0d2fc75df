"""A custom node for recording traces of a real ComfyUI (see ../../../tracerec).

FidelityLongNode is a long-running node that needs no model weights: it
loops `steps` times, sleeping `delay` seconds a step, reports progress
through ComfyUI's ProgressBar with a small JPEG preview each step, and checks
for an interrupt at every step, as a sampler does. With `check` false it
sleeps `steps`*`delay` seconds without looking at the interrupt flag, so an
interrupt lands at the next node boundary. Its output is a
`size`x`size` IMAGE of one grey whose level depends on `seed`.

comfysim has the same node (node/nodes_weightfree.go), so the traces recorded
with it replay against the emulator.
"""
import time

import torch
from PIL import Image

import comfy.model_management
import comfy.utils


class FidelityLongNode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "steps": ("INT", {"default": 5, "min": 1, "max": 1000}),
            "delay": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 10.0, "step": 0.01}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 255}),
            "size": ("INT", {"default": 8, "min": 1, "max": 64}),
            "check": ("BOOLEAN", {"default": True}),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, steps, delay, seed, size, check):
        if not check:
            # Like a node that never looks at the interrupt flag: no
            # progress bar either, whose hook checks it.
            time.sleep(delay * steps)
            return (torch.full((1, size, size, 3), seed / 255.0),)
        pbar = comfy.utils.ProgressBar(steps)
        for step in range(1, steps + 1):
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(delay)
            preview = Image.new("RGB", (size, size), (seed, step * 255 // steps, 0))
            pbar.update_absolute(step, steps, ("JPEG", preview, 512))
        comfy.model_management.throw_exception_if_processing_interrupted()
        return (torch.full((1, size, size, 3), seed / 255.0),)


NODE_CLASS_MAPPINGS = {"FidelityLongNode": FidelityLongNode}
NODE_DISPLAY_NAME_MAPPINGS = {"FidelityLongNode": "Fidelity Long Node"}
