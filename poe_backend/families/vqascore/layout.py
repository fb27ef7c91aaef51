"""Optional LLM layout parser for regional_t2i: a global prompt -> region prompts and boxes.

Uses the VQAScore backbone (Qwen2.5-VL, text only, greedy decoding) through the same
model roles (``vqa.model``, ``vqa.tokenizer``), so no extra model is needed. The model is
asked for a JSON list ``[{"prompt": ..., "box": [x_min, y_min, x_max, y_max]}, ...]`` in
pixels; :func:`parse_layout` takes the first JSON array in the answer and keeps the valid
entries (boxes clipped to the image, empty ones dropped). Anything unparsable gives no
regions, and the task then runs the global expert alone (the manifest keeps the raw answer).
"""

from __future__ import annotations

import json
import re

import torch

from poe_backend.runtime.cache import MODEL_CACHE

INSTRUCTION = (
    "You plan image layouts. For an image of {width}x{height} pixels described as \"{prompt}\", "
    "list the main objects as a JSON array of objects with keys \"prompt\" (a short description) "
    "and \"box\" ([x_min, y_min, x_max, y_max] in pixels, origin top-left). Answer with JSON only."
)
CHAT = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
ARRAY = re.compile(r"\[.*\]", re.DOTALL)


def parse_layout(text: str, width: int, height: int) -> list[tuple[str, list[int]]]:
    """``[(prompt, [x0, y0, x1, y1])]`` from the first JSON array in ``text``; invalid
    entries are skipped, boxes clipped to ``width`` x ``height`` (max exclusive)."""
    match = ARRAY.search(text)
    if match is None:
        return []
    try:
        entries = json.loads(match.group(0))
    except json.JSONDecodeError:
        return []
    regions = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
            continue
        box = entry.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            continue
        x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
        x1, y1 = min(width, int(round(box[2]))), min(height, int(round(box[3])))
        if x1 > x0 and y1 > y0:
            regions.append((entry["prompt"].strip(), [x0, y0, x1, y1]))
    return regions


class LayoutParser:
    """Greedy text generation with the VQAScore backbone; :meth:`__call__` returns the
    parsed regions and the raw answer."""

    def __init__(self, preset: str = "default", *, device: str = "cpu", max_new_tokens: int = 256) -> None:
        self.device, self.max_new_tokens = device, max_new_tokens
        self.model = MODEL_CACHE.load("vqa.model", preset, device=device)
        self.tokenizer = MODEL_CACHE.load("vqa.tokenizer", preset)

    @torch.inference_mode()
    def __call__(self, prompt: str, width: int, height: int) -> tuple[list[tuple[str, list[int]]], str]:
        text = CHAT.format(text=INSTRUCTION.format(prompt=prompt, width=width, height=height))
        tokens = self.tokenizer([text], return_tensors="pt").to(self.device)
        output = self.model.generate(**tokens, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        answer = self.tokenizer.decode(output[0, tokens.input_ids.shape[1] :], skip_special_tokens=True)
        return parse_layout(answer, width, height), answer
