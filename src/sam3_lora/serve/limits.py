"""What one request to the app may be: bounds on uploads, prompts and boxes.

Kept apart from the app (no torch, no gradio) so that the command line can show the
defaults without loading a model.
"""

from sam3_lora.data.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,  # noqa: F401  (re-exported: one limit for uploads and dataset images)
)

UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")   # PIL's names; nothing else is parsed
UPLOAD_SUFFIXES = sorted(IMAGE_SUFFIXES - {".gif"})        # the suffixes of those formats
MAX_UPLOAD_MB = 10.0
MAX_PROMPTS = 16
MAX_BOXES = 32
MAX_PROMPT_TEXT = 2000
"""Characters in the prompts box, and in the box-prompts box: what the page lets one type.
Checked again on the server, where a script can send anything (a 300,000-character prompt
held the app's one model queue for 25 s). SAM3 reads 32 tokens of a prompt anyway."""
MAX_CLICKS = 64
"""Clicks on one object in the app (``model.task: interactive``). Each request replays them
all through the tracker's mask decoder (one pass per click, the image encoded once), so
this bounds a request's work; SAM's click protocols stop at 20."""
MAX_DETECTIONS = 20
"""Detections kept per prompt, best first (SAM3 proposes 200). Masks are kept at the image's
size, a byte a pixel each, so this bounds a request's masks whatever the threshold (at
threshold 0 every proposal would be kept: 200 masks of a 25 MP image are 5 GB)."""
MAX_PROMPT_PIXELS = 100_000_000
"""Budget of a request: prompts x image pixels (twice that side by side, which holds two
answers), e.g. 16 prompts on a 6 MP image, 8 on a 12 MP photo, 4 on a 25 MP one. A prompt
costs up to MAX_DETECTIONS image-sized bool masks, so the budget caps a request's masks at
20 x 100 M = 2 GB, plus transients (resizing, overlay, RLE): 4 prompts on a 25 MP image at
threshold 0 grew the peak RSS by 3.0 GB (bench/bench_app.py, BENCHMARKS.md). Without it,
16 prompts on 25 MP could need ~10 GB."""
