"""SAM3 from an ONNX export, on onnxruntime: numpy, PIL and ``tokenizers`` only, no torch.

``SAM3OnnxInference(folder)`` reads a folder written by ``sam3-lora export --onnx`` (see
``export.onnx``) and answers like ``SAM3LoRAInference``: ``predict``, ``predict_batch`` and
``visualize`` with the same arguments (one phrase or a list, box prompts, ``threshold=`` and
``max_detections=`` per call) and the same per-prompt dicts::

    prompt          str ("boxes" for box-only prompts)
    num_detections  int n
    boxes           (n, 4) float32, x1 y1 x2 y2 in pixels of the image
    scores          (n,) float32 in [0, 1]: sigmoid(query logit) x sigmoid(presence logit)
    masks           (n, H, W) bool at the image's size
    presence        float, sigmoid(presence logit)

One vision-encoder run per image serves all its K prompts (one prompt-decoder run of K
rows), and each prompt's text is encoded once, then cached, as in PyTorch.

Nothing here imports torch, transformers or peft, directly or through what it imports (a
test runs it where ``import torch`` fails). The pre- and post-processing below are the numpy
twins of the PyTorch path's, and tests keep them equal:

- images: ``model.processing.resize_and_normalize`` resizes with torch's bilinear,
  ``antialias=True``; PIL's bilinear resize of each channel as a 32-bit float image ("F")
  uses the same antialiased triangle filter without PIL's uint8 rounding (measured: within
  7.6e-6 on the bundled base's images, 1.3e-4 at worst on noise upscaled to 1008 px, in
  normalised units; a uint8 PIL resize would be off by a grey level, 7.8e-3);
- text: ``tokenizers`` with the padding and truncation the export recorded (the export
  checks that it reproduces the transformers tokenizer, or fails);
- outputs: ``postprocess_query`` is the numpy twin of ``model.postprocess.postprocess_query``
  (scores, threshold, best first, ``max_detections``, bilinear mask resize exactly as torch's
  ``interpolate(align_corners=False)`` computes it, then > 0, optional mask NMS, boxes clamped
  to [0, 1] and scaled to pixels). Change one, change the other: ``tests/serve/
  test_onnx_engine.py`` compares them on random outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from sam3_lora.config import DEFAULT_SCORE_THRESHOLD
from sam3_lora.errors import Sam3LoraError
from sam3_lora.serve.prompts import (
    ImagePredictor,
    boxes_cxcywh,
    check_threshold,
)

FORMAT = "sam3-lora-onnx/1"
"""What ``sam3_onnx.json`` says it is; the number changes when the graphs' interface does."""
CONFIG_FILE = "sam3_onnx.json"
GRAPHS = ("vision_encoder", "text_encoder", "prompt_decoder")
BOX_PADDING_LABEL = -10
"""transformers' label of a padding box. A prompt without boxes passes one, which the graph
turns into "no geometry" (see ``export.onnx``)."""
UPSAMPLE_FLOATS = 2**26
"""Mask logits are resized this many float32 values (256 MB) at a time; the same bound as
``model.postprocess.UPSAMPLE_FLOATS`` (a test keeps them equal)."""
INSTALL_HINT = "pip install 'sam3-lora[onnx]'"


class OnnxEngineError(Sam3LoraError):
    """An export folder, or an onnxruntime, that cannot run it."""


# ---- preprocessing --------------------------------------------------------------------------

def preprocess_image(image: Image.Image, size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> np.ndarray:
    """RGB image -> (3, size, size) float32, as ``model.processing.resize_and_normalize``:
    direct (not aspect-preserving) antialiased bilinear resize, clip to [0, 255], /255, then
    (x - mean) / std."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    channels = [Image.fromarray(np.ascontiguousarray(array[..., c]), mode="F").resize((size, size), Image.BILINEAR)
                for c in range(3)]
    resized = np.clip(np.stack([np.asarray(c, dtype=np.float32) for c in channels]), 0.0, 255.0)
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    std = np.asarray(std, dtype=np.float32)[:, None, None]
    return ((resized / 255.0 - mean) / std).astype(np.float32)


def tokenize(tokenizer, text: dict, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> input_ids and attention_mask, each (K, T) int64, padded and truncated to
    T = ``text["max_length"]`` as the model's transformers tokenizer does."""
    tokenizer.enable_truncation(max_length=text["max_length"])
    tokenizer.enable_padding(length=text["max_length"], pad_id=text["pad_id"], pad_token=text["pad_token"])
    encoded = tokenizer.encode_batch(list(prompts))
    return (np.array([e.ids for e in encoded], dtype=np.int64),
            np.array([e.attention_mask for e in encoded], dtype=np.int64))


def box_prompts(positive: np.ndarray, negative: np.ndarray, size: tuple[int, int], rows: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """One image's checked pixel boxes as the decoder's inputs for ``rows`` prompts:
    input_boxes (rows, n, 4) float32 cxcywh in [0, 1], input_boxes_labels (rows, n) int64.
    No boxes: one padding box per row (label -10), which the graph reads as "no geometry"."""
    if not len(positive) and not len(negative):
        return np.zeros((rows, 1, 4), np.float32), np.full((rows, 1), BOX_PADDING_LABEL, np.int64)
    cxcywh, labels = boxes_cxcywh(positive, negative, size)
    return (np.ascontiguousarray(np.broadcast_to(cxcywh, (rows, *cxcywh.shape))),
            np.ascontiguousarray(np.broadcast_to(labels, (rows, len(labels)))))


# ---- post-processing: the numpy twin of model.postprocess ------------------------------------

def sigmoid(x: np.ndarray) -> np.ndarray:
    """Elementwise logistic function in float32."""
    x = np.asarray(x, dtype=np.float32)
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def linear_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear resize along one axis (``align_corners=False``, no antialias): each
    output index reads inputs ``low`` and ``high`` with weights ``w_low`` and ``w_high``
    (float32, as torch computes them: the source coordinate (i + 0.5) * scale - 0.5 is one
    fused multiply-add, rounded once, which float64 reproduces exactly)."""
    scale = np.float32(in_size) / np.float32(out_size)
    exact = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)).astype(np.float64) * np.float64(scale) - 0.5
    source = np.maximum(exact.astype(np.float32), np.float32(0.0))
    low = np.minimum(source.astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    w_high = (source - low.astype(np.float32)).astype(np.float32)
    return low, high, (np.float32(1.0) - w_high).astype(np.float32), w_high


def resize_masks(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, m, m) mask logits -> (n, height, width) bool: bilinear resize, then > 0
    (probability 0.5). Width first, then height, as torch's kernel; ``UPSAMPLE_FLOATS`` at
    a time."""
    rows_low, rows_high, rows_w0, rows_w1 = linear_taps(height, logits.shape[1])
    cols_low, cols_high, cols_w0, cols_w1 = linear_taps(width, logits.shape[2])
    step = max(1, UPSAMPLE_FLOATS // max(height * width, 1))
    out = np.empty((len(logits), height, width), dtype=bool)
    for start in range(0, len(logits), step):
        chunk = logits[start:start + step].astype(np.float32)
        across = chunk[:, :, cols_low] * cols_w0 + chunk[:, :, cols_high] * cols_w1   # (c, m, width)
        out[start:start + step] = (rows_w0[:, None] * across[:, rows_low, :]
                                   + rows_w1[:, None] * across[:, rows_high, :]) > 0
    return out


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS on mask IoU; masks (n, H, W) bool (``model.postprocess.mask_nms``)."""
    flat = masks.reshape(len(masks), -1).astype(np.float32)
    intersection = flat @ flat.T
    area = flat.sum(1)
    iou = intersection / np.maximum(area[:, None] + area[None, :] - intersection, 1.0)
    keep: list[int] = []
    for index in np.argsort(-scores, kind="stable"):
        if all(iou[index, kept] <= iou_threshold for kept in keep):
            keep.append(int(index))
    return np.array(keep, dtype=np.int64)


def postprocess_query(pred_logits: np.ndarray, presence_logit: np.ndarray, pred_boxes: np.ndarray,
                      pred_masks: np.ndarray | None, image_size: tuple[int, int], threshold: float = 0.5,
                      mask_nms_iou: float | None = None, max_detections: int | None = None) -> dict:
    """One prompt's outputs -> its detections in the original image, best first.

    pred_logits (N,), presence_logit (1,), pred_boxes (N, 4) xyxy in [0, 1], pred_masks
    (N, m, m) logits or None; image_size (H, W). Returns ``scores`` (n,), ``boxes`` (n, 4)
    pixels, ``masks`` (n, H, W) bool or None, ``presence`` float.
    """
    height, width = image_size
    scores = sigmoid(pred_logits) * sigmoid(presence_logit)
    keep = np.flatnonzero(scores >= threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_detections]
    masks = None
    if pred_masks is not None:
        masks = resize_masks(pred_masks[keep], height, width)
        if mask_nms_iou is not None and len(keep):
            survivors = mask_nms(masks, scores[keep], mask_nms_iou)
            keep, masks = keep[survivors], masks[survivors]
    scale = np.array([width, height, width, height], dtype=np.float32)
    boxes = np.clip(pred_boxes[keep].astype(np.float32), 0.0, 1.0) * scale
    return {"scores": scores[keep], "boxes": boxes, "masks": masks,
            "presence": float(sigmoid(presence_logit).reshape(-1)[0])}


# ---- the export folder ------------------------------------------------------------------------

def read_export(folder: str | Path) -> dict:
    """``sam3_onnx.json`` of an export folder, checked: format, and every graph present."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise OnnxEngineError(f"{folder}: no {CONFIG_FILE}; give a folder written by `sam3-lora export --onnx`")
    try:
        metadata = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OnnxEngineError(f"{path}: not valid JSON ({type(exc).__name__}); export again") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise OnnxEngineError(f"{path}: format {str(found)[:40]!r}, this sam3-lora reads {FORMAT}; export again "
                              f"with this version")
    try:
        files = {name: str(metadata["graphs"][name]["file"]) for name in GRAPHS}
        int(metadata["image"]["size"]), metadata["text"]["file"], metadata["text"]["max_length"]
    except (KeyError, TypeError, ValueError) as exc:
        raise OnnxEngineError(f"{path}: incomplete ({type(exc).__name__}: {str(exc)[:60]}); export again") from None
    for name, graph in files.items():
        if not (folder / graph).is_file():
            raise OnnxEngineError(f"{folder / graph}: missing ({name}); copy the whole export folder, or export again")
    return metadata


def open_session(path: Path, metadata: dict, threads: int | None, providers):
    """An onnxruntime session for one graph; a missing onnxruntime, a too-old one, or a
    damaged file as one line."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxEngineError(f"the ONNX engine needs onnxruntime: {INSTALL_HINT}") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3   # onnxruntime's warnings (e.g. unused initializers) are noise here
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises Fail, InvalidGraph, NotImplemented, ...
        raise OnnxEngineError(session_error(path, metadata, ort.__version__, exc)) from None


def session_error(path: Path, metadata: dict, ort_version: str, exc: Exception) -> str:
    """The one line for an onnxruntime that cannot load ``path``: the file is damaged, or
    this onnxruntime is older than the graph (IR version, opset, or a kernel it lacks)."""
    text = str(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    made = metadata.get("exported_with", {}).get("onnxruntime", "?")
    if "INVALID_PROTOBUF" in text or "NO_SUCHFILE" in text or "Protobuf parsing failed" in text:
        return (f"{path}: not a readable ONNX file ({first[:160]}); the export is damaged or incomplete: copy it "
                f"again or export again")
    if any(sign in text for sign in ("IR version", "NOT_IMPLEMENTED", "opset", "Opset")):
        detail = text[text.find("Unsupported"):] if "Unsupported" in text else first
        return (f"{path.name}: onnxruntime {ort_version} is too old for this export (opset {metadata.get('opset')}, "
                f"made and checked with onnxruntime {made}): {detail.splitlines()[0][:160]}; "
                f"pip install -U 'onnxruntime>={made}'")
    return f"{path.name}: onnxruntime {ort_version} cannot load it: {first[:200]}"


# ---- the engine ---------------------------------------------------------------------------------

class SAM3OnnxInference(ImagePredictor):
    """SAM3 from an ONNX export, ready for prompts, with ``SAM3LoRAInference``'s API.

    ``onnx_dir``: a folder written by ``sam3-lora export --onnx``. ``detection_threshold``
    is the default score threshold (``predict`` takes another per call); ``threads``:
    onnxruntime's intra-op threads (None: its default, one per physical core);
    ``providers``: onnxruntime execution providers, CPU by default.
    """

    def __init__(self, onnx_dir: str | Path, detection_threshold: float = DEFAULT_SCORE_THRESHOLD, *, threads: int | None = None,
                 mask_nms_iou: float | None = None, providers=("CPUExecutionProvider",)):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise OnnxEngineError(f"the ONNX engine needs tokenizers: {INSTALL_HINT}") from None

        self.folder = Path(onnx_dir)
        self.metadata = read_export(self.folder)
        self.threshold = check_threshold(detection_threshold)
        self.mask_nms_iou = mask_nms_iou
        self.sessions = {name: open_session(self.folder / self.metadata["graphs"][name]["file"], self.metadata,
                                            threads, providers) for name in GRAPHS}
        self.tokenizer = Tokenizer.from_file(str(self.folder / self.metadata["text"]["file"]))
        image = self.metadata["image"]
        self.image_size = int(image["size"])
        self._mean, self._std = tuple(image["mean"]), tuple(image["std"])
        self._text_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}   # prompt -> (T, D) features, (T,) mask
        self._last_image: Image.Image | None = None

    # ---- one graph each ------------------------------------------------------------------

    def encode_image(self, image: Image.Image) -> list[np.ndarray]:
        """One RGB image -> its three feature levels, each (1, C, h, w)."""
        pixels = preprocess_image(image, self.image_size, self._mean, self._std)[None]
        return self.sessions["vision_encoder"].run(None, {"pixel_values": pixels})

    def text_features(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(K, T, D) text features and (K, T) int64 mask; each prompt encoded once, then cached."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            ids, mask = tokenize(self.tokenizer, self.metadata["text"], missing)
            (features,) = self.sessions["text_encoder"].run(None, {"input_ids": ids, "attention_mask": mask})
            self._text_cache.update(zip(missing, zip(features, mask, strict=True), strict=True))
        features, masks = zip(*(self._text_cache[p] for p in prompts), strict=True)
        return np.stack(features), np.stack(masks)

    def clear_text_cache(self) -> None:
        """Forget cached prompt features."""
        self._text_cache.clear()

    def decode(self, levels: list[np.ndarray], features: np.ndarray, mask: np.ndarray, boxes: np.ndarray,
               labels: np.ndarray) -> dict[str, np.ndarray]:
        """One image's levels and K prompts -> pred_logits (K, N), pred_boxes (K, N, 4),
        pred_masks (K, N, m, m), presence_logits (K, 1)."""
        outputs = self.sessions["prompt_decoder"].run(None, {
            "fpn_0": levels[0], "fpn_1": levels[1], "fpn_2": levels[2], "text_features": features,
            "text_mask": mask, "input_boxes": boxes, "input_boxes_labels": labels})
        return dict(zip(("pred_logits", "pred_boxes", "pred_masks", "presence_logits"), outputs, strict=True))

    # ---- SAM3LoRAInference's API ----------------------------------------------------------

    def predict_batch(self, images: list, prompts: str | list[str] | None = None, boxes=None,
                      negative_boxes=None, *, threshold: float | None = None,
                      max_detections: int | None = None) -> list[list[dict]]:
        """Every prompt on every image: one vision-encoder run per image, one prompt-decoder
        run of K rows per image. ``prompts`` is one phrase or a list; ``max_detections``
        keeps that many best per prompt. Returns, per image, one dict per prompt."""
        pictures, threshold, names, texts, geometry = self._checked_request(images, prompts, boxes,
                                                                           negative_boxes, threshold)
        features, mask = self.text_features(texts)
        answers = []
        for picture, (positive, negative) in zip(pictures, geometry, strict=True):
            outputs = self.decode(self.encode_image(picture), features, mask,
                                  *box_prompts(positive, negative, picture.size, len(texts)))
            found = [postprocess_query(outputs["pred_logits"][q], outputs["presence_logits"][q],
                                       outputs["pred_boxes"][q], outputs["pred_masks"][q],
                                       (picture.height, picture.width), threshold, self.mask_nms_iou, max_detections)
                     for q in range(len(texts))]
            answers.append([{"prompt": name, "num_detections": len(d["scores"]), "boxes": d["boxes"],
                             "scores": d["scores"], "masks": d["masks"], "presence": d["presence"]}
                            for name, d in zip(names, found, strict=True)])
        self._last_image = pictures[-1]
        return answers
