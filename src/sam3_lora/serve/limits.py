"""What one request to the app may be: bounds on uploads, prompts and boxes.

Kept apart from the app (no torch, no gradio) so that the command line can show the
defaults without loading a model.
"""

from sam3_lora.data.images import IMAGE_SUFFIXES

UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")   # PIL's names; nothing else is parsed
UPLOAD_SUFFIXES = sorted(IMAGE_SUFFIXES - {".gif"})        # the suffixes of those formats
MAX_UPLOAD_MB = 10.0
MAX_PIXELS = 25_000_000   # 25 MP: masks are kept at image size, so this bounds memory per request
MAX_PROMPTS = 16
MAX_BOXES = 32
