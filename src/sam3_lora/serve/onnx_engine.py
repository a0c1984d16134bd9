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

from pathlib import Path

import numpy as np
from PIL import Image

from sam3_lora.config import DEFAULT_SCORE_THRESHOLD
from sam3_lora.cpu import openmp_settings
from sam3_lora.errors import Sam3LoraError
from sam3_lora.onnx_format import (  # noqa: F401 - FORMAT too: the format this engine reads
    CONFIG_FILE,
    FORMAT,
    GRAPH_FILES,
    INSTALL_HINT,
    check_graph,
    read_metadata,
)
from sam3_lora.serve.prompts import (
    ImagePredictor,
    boxes_cxcywh,
    check_threshold,
)

GRAPHS = tuple(GRAPH_FILES)
BOX_PADDING_LABEL = -10
"""transformers' label of a padding box. A prompt without boxes passes one, which the graph
turns into "no geometry" (see ``export.onnx``)."""
UPSAMPLE_FLOATS = 2**26
"""Mask logits are resized this many float32 values (256 MB) at a time; the same bound as
``model.postprocess.UPSAMPLE_FLOATS`` (a test keeps them equal)."""


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

TASK_ENGINES = {"concept": "SAM3OnnxInference (text and box prompts)",
                "interactive": "SAM3OnnxTracker (clicks, a box or a mask)"}
"""What runs an export of each ``task``: named in the error when a folder reaches the other."""


def read_export(folder: str | Path, task: str | None = None) -> dict:
    """``sam3_onnx.json`` of an export folder, checked (``onnx_format.read_metadata``: its
    schema, its sizes, and every file it names present and inside the folder), and of
    ``task`` when given (``concept``, the detector; ``interactive``, the tracker)."""
    folder = Path(folder)
    metadata = read_metadata(folder, OnnxEngineError)
    if metadata is None:
        raise OnnxEngineError(f"{folder}: no {CONFIG_FILE}; give a folder written by `sam3-lora export --onnx`")
    found = metadata.get("task", "concept")
    if task is not None and found != task:
        raise OnnxEngineError(f"{folder}: an export of model.task={found}, not {task}; run it with "
                              f"{TASK_ENGINES[found]}")
    return metadata


def load_tokenizer(path: Path, text: dict):
    """The ``tokenizers`` tokenizer in ``path``; an unreadable file, or one whose padding
    token is not ``text["pad_id"]`` (another model's tokenizer), is one line."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception for a damaged file
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise OnnxEngineError(f"{path}: not a readable tokenizer ({first[:120]}); copy the export again or export "
                              f"again") from None
    found = tokenizer.token_to_id(text["pad_token"])
    if found != text["pad_id"]:
        raise OnnxEngineError(f"{path}: its padding token {text['pad_token'][:20]!r} has id {found}, {CONFIG_FILE} "
                              f"says {text['pad_id']}: it is another model's tokenizer; export again")
    largest = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=0)
    if text.get("vocab_size") is not None and largest >= text["vocab_size"]:
        raise OnnxEngineError(f"{path}: has token ids up to {largest}, the text encoder knows {text['vocab_size']}: "
                              f"it is another model's tokenizer; export again")
    return tokenizer


def open_session(path: Path, metadata: dict, threads: int | None, providers):
    """An onnxruntime session for one graph; a missing onnxruntime, a too-old one, or a
    damaged file as one line."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxEngineError(f"the ONNX engine needs onnxruntime: {INSTALL_HINT}") from None
    options = ort.SessionOptions()
    # Unless told, follow the process's OpenMP settings (the command line sizes them to the
    # free CPUs, with passive waiting: sam3_lora.cpu); onnxruntime's pool spins otherwise.
    omp_threads, passive = openmp_settings()
    if threads or omp_threads:
        options.intra_op_num_threads = threads or omp_threads
    if passive:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.log_severity_level = 3   # onnxruntime's warnings (e.g. unused initializers) are noise here
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises Fail, InvalidGraph, NotImplemented, ...
        raise OnnxEngineError(session_error(path, metadata, ort.__version__, exc)) from None


def run_graph(session, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``session.run`` of graph ``name``; an onnxruntime failure on a checked folder (a graph
    damaged inside, a tokenizer whose ids its embedding lacks) is one line."""
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises InvalidArgument, Fail, RuntimeException, ...
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise OnnxEngineError(f"{name}: onnxruntime failed to run it ({first[:200]}); the export is damaged or "
                              f"mismatched: export again") from None


def checked_session(name: str, folder: Path, metadata: dict, threads: int | None, providers):
    """The session of graph ``name``, its inputs and outputs checked against ``metadata``
    (``onnx_format.check_graph``) before it runs anything."""
    session = open_session(folder / metadata["graphs"][name]["file"], metadata, threads, providers)
    check_graph(name, {arg.name: list(arg.shape) for arg in session.get_inputs()},
                {arg.name: list(arg.shape) for arg in session.get_outputs()}, metadata, OnnxEngineError)
    return session


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
            import tokenizers  # noqa: F401 - checked before any work: load_tokenizer needs it
        except ImportError:
            raise OnnxEngineError(f"the ONNX engine needs tokenizers: {INSTALL_HINT}") from None

        self.folder = Path(onnx_dir)
        self.metadata = read_export(self.folder, "concept")
        self.threshold = check_threshold(detection_threshold)
        self.mask_nms_iou = mask_nms_iou
        self.tokenizer = load_tokenizer(self.folder / self.metadata["text"]["file"], self.metadata["text"])
        self.sessions = {name: checked_session(name, self.folder, self.metadata, threads, providers)
                         for name in GRAPHS}
        image = self.metadata["image"]
        self.image_size = int(image["size"])
        self._mean, self._std = tuple(image["mean"]), tuple(image["std"])
        self._text_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}   # prompt -> (T, D) features, (T,) mask
        self._last_image: Image.Image | None = None

    # ---- one graph each ------------------------------------------------------------------

    def encode_image(self, image: Image.Image) -> list[np.ndarray]:
        """One RGB image -> its three feature levels, each (1, C, h, w)."""
        pixels = preprocess_image(image, self.image_size, self._mean, self._std)[None]
        return run_graph(self.sessions["vision_encoder"], "vision_encoder", {"pixel_values": pixels})

    def text_features(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(K, T, D) text features and (K, T) int64 mask; each prompt encoded once, then cached."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            ids, mask = tokenize(self.tokenizer, self.metadata["text"], missing)
            (features,) = run_graph(self.sessions["text_encoder"], "text_encoder",
                                    {"input_ids": ids, "attention_mask": mask})
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
        outputs = run_graph(self.sessions["prompt_decoder"], "prompt_decoder", {
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
