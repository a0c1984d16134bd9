"""ONNX export, INT8 and the onnxruntime engine against PyTorch, on the bundled base.

One export (through the command line) serves the module: the bundled tiny base with a
random LoRA on every component, saved as an adapter, as a user would export it. The
PyTorch reference is ``SAM3LoRAInference`` on the same adapter, unmerged (what ``sam3-lora
predict`` runs), so the merge, the graphs and the numpy pre/post-processing are all checked.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'sam3-lora[onnx]'")
pytest.importorskip("onnxscript", reason="the onnx extra: pip install 'sam3-lora[onnx]'")

import sam3_lora.export.onnx as onnx_export
from sam3_lora.cli import main
from sam3_lora.config import LoRAConfig, load_config
from sam3_lora.data.results import prediction_entries
from sam3_lora.data.rle import as_compressed
from sam3_lora.data.synth import compose_scene
from sam3_lora.export.onnx import OnnxExportError, export_sam3_onnx
from sam3_lora.export.quantize import quantize_export
from sam3_lora.files import current_umask
from sam3_lora.lora.adapter import save_adapter
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.model.loading import bundled_concepts, load_sam3
from sam3_lora.serve.inference import SAM3LoRAInference
from sam3_lora.serve.onnx_engine import OnnxEngineError, SAM3OnnxInference

BASE = "sam3-tiny-shapes"
PROMPTS = ["red circle", "blue square", "green triangle", "yellow circle", "purple star"]


def dead_pid() -> int:
    """The id of a process that has ended."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """The bundled base with a random LoRA (rank 4, every Linear of all six components)."""
    loaded = load_sam3(BASE)
    config = LoRAConfig(rank=4, alpha=8, target_modules=["all"], apply_to_text_encoder=True,
                        apply_to_geometry_encoder=True, apply_to_detr_encoder=True, apply_to_detr_decoder=True,
                        apply_to_mask_decoder=True)
    model = apply_lora_to_model(loaded.model, config, verbose=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)
    return save_adapter(model.eval(), tmp_path_factory.mktemp("adapter") / "adapter", base_source=BASE)


@pytest.fixture(scope="module")
def exported(adapter, tmp_path_factory) -> Path:
    """``sam3-lora export --weights ADAPTER --onnx OUT``, with the staging folder of an
    earlier export that was killed outright lying next to OUT."""
    root = tmp_path_factory.mktemp("onnx")
    stale = root / f".out.partial-{socket.gethostname()}-{dead_pid()}-x1"
    stale.mkdir()
    (stale / "vision_encoder.onnx").write_bytes(b"half")
    torch.set_num_threads(1)
    assert main(["export", "--weights", str(adapter), "--onnx", str(root / "out")]) == 0
    assert not stale.exists(), "the killed export's staging folder was not removed"
    return root / "out"


@pytest.fixture(scope="module")
def reference(adapter):
    """PyTorch: SAM3LoRAInference with the adapter attached (not merged)."""
    return SAM3LoRAInference(config=load_config("demo", [f"model.source={BASE}"]), weights_path=adapter)


@pytest.fixture(scope="module")
def engine(exported):
    return SAM3OnnxInference(exported, threads=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Four scenes of the base's concepts: two at the model's 112 px, two of other sizes."""
    folder = tmp_path_factory.mktemp("images")
    concepts = [(i + 1, name.split()[1], name.split()[0]) for i, name in enumerate(bundled_concepts(BASE))]
    for index, size in enumerate([(112, 112), (173, 131), (112, 112), (96, 210)]):
        scene = compose_scene(np.random.default_rng([3, index]), *size, concepts, ["plain", "noise"], (1, 4),
                              (0.12, 0.25), 20)
        Image.fromarray(scene.image).save(folder / f"{index}.png")
    return sorted(folder.glob("*.png"))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def assert_same_detections(expected: list[dict], got: list[dict], score_tol=1e-3, min_iou=0.99,
                           max_pixels_apart=4) -> int:
    """Per prompt: the same number of detections, each matched to the nearest box and score
    (near-equal scores may swap), scores within ``score_tol``, mask IoU >= ``min_iou`` or at
    most ``max_pixels_apart`` pixels different (a low-score proposal's mask of a few pixels:
    one pixel at the logit's threshold flipped by the other runtime's rounding moved an IoU
    to 0.67 in CI). Returns the number of detections compared."""
    compared = 0
    for ours, theirs in zip(expected, got, strict=True):
        assert ours["prompt"] == theirs["prompt"]
        assert ours["num_detections"] == theirs["num_detections"], ours["prompt"]
        assert abs(ours["presence"] - theirs["presence"]) < score_tol
        for box, score, mask in zip(ours["boxes"], ours["scores"], ours["masks"], strict=True):
            best = int(np.argmin(np.abs(theirs["boxes"] - box).max(axis=1) + np.abs(theirs["scores"] - score)))
            assert abs(theirs["scores"][best] - score) <= score_tol
            assert np.abs(theirs["boxes"][best] - box).max() <= 0.5
            other = theirs["masks"][best]
            assert iou(mask, other) >= min_iou or np.sum(mask != other) <= max_pixels_apart
            compared += 1
    return compared


# ---- parity with PyTorch -----------------------------------------------------------------------

def test_predict_onnx_writes_pytorchs_detections(exported, reference, images, tmp_path, capsys):
    """``predict --onnx`` on a folder, five prompts at once (one the base never saw): the
    COCO-results JSON holds the PyTorch path's detections."""
    assert main(["predict", "--onnx", str(exported), "--image", str(images[0].parent), "--prompt", *PROMPTS,
                 "--threshold", "0.1", "--output", str(tmp_path / "out")]) == 0
    compared = 0
    for image_id, image in enumerate(images):
        expected = prediction_entries(reference.predict(image, PROMPTS, threshold=0.1), image_id)
        got = json.loads((tmp_path / "out" / f"{image.stem}.json").read_text())
        assert (tmp_path / "out" / f"{image.stem}.png").is_file()
        assert sorted((e["category_id"], e["prompt"]) for e in got) == sorted(
            (e["category_id"], e["prompt"]) for e in expected)
        for entry in expected:
            mine = min((e for e in got if e["category_id"] == entry["category_id"]),
                       key=lambda e: np.abs(np.subtract(e["box_xyxy"], entry["box_xyxy"])).max())
            assert abs(mine["score"] - entry["score"]) <= 1e-3
            assert np.abs(np.subtract(mine["bbox"], entry["bbox"])).max() <= 0.5
            assert iou(*(mask_utils.decode(as_compressed(e["segmentation"])) for e in (mine, entry))) >= 0.99
            compared += 1
    assert compared >= 20, "too few detections to compare: lower the threshold"


def test_every_query_matches_pytorch(engine, reference, images):
    """Threshold 0: all 20 proposals of every prompt, low scores included."""
    expected = reference.predict_batch(images, PROMPTS, threshold=0.0)
    got = engine.predict_batch(images, PROMPTS, threshold=0.0)
    compared = sum(assert_same_detections(e, g) for e, g in zip(expected, got, strict=True))
    assert compared == len(images) * len(PROMPTS) * 20


@pytest.mark.parametrize("prompts", [PROMPTS[:3], None], ids=["text+boxes", "boxes-only"])
def test_box_prompts_match_pytorch(engine, reference, images, prompts):
    """Positive and negative box exemplars, with text and alone (RoiAlign in the graph)."""
    for image in images[:2]:
        width, height = Image.open(image).size
        boxes, negative = [[5, 8, width // 2, height // 2]], [[width // 2, height // 3, width - 1, height - 2]]
        kwargs = {"boxes": boxes, "negative_boxes": negative, "threshold": 0.0}
        assert_same_detections(reference.predict(image, prompts, **kwargs), engine.predict(image, prompts, **kwargs))


def test_single_prompt_max_detections_and_visualize(engine, reference, images, tmp_path):
    """One phrase, the detection cap, a per-call threshold: as SAM3LoRAInference answers."""
    expected = reference.predict(images[1], "red circle", threshold=0.05, max_detections=3)
    got = engine.predict(images[1], "red circle", threshold=0.05, max_detections=3)
    assert_same_detections(expected, got)
    assert got[0]["num_detections"] <= 3
    assert engine.visualize(got, tmp_path / "o.png").is_file()


def test_batched_encode_boxes_equals_transformers(adapter):
    """The export's one-call roi_align pooling = transformers' per-row ``_encode_boxes``."""
    geometry = load_sam3(BASE).model.geometry_encoder
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(5, geometry.hidden_size, 8, 8, generator=generator)
    boxes = torch.rand(5, 3, 4, generator=generator) * 0.6 + 0.1
    labels = torch.randint(0, 2, (5, 3), generator=generator)
    mask = torch.ones(5, 3, dtype=torch.bool)
    with torch.no_grad():
        original, _ = geometry._encode_boxes(boxes, mask, labels, features)
        batched, _ = onnx_export._encode_boxes_batched(geometry, boxes, mask, labels, features)
    assert (original - batched).abs().max() < 1e-6


def test_roi_align_alignment_is_torchvisions():
    """ONNX RoiAlign with output_half_pixel = torchvision's roi_align(aligned=False), which
    SAM3 uses (the package's roi_align follows torchvision's kernel; tests/model). The
    other mode, half_pixel (= aligned=True), is far off: the test can tell them apart."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from sam3_lora.model.roi_align import roi_align

    def onnx_roi_align(features, rois, index, mode):
        node = helper.make_node("RoiAlign", ["X", "rois", "index"], ["Y"], coordinate_transformation_mode=mode,
                                output_height=7, output_width=7, sampling_ratio=0, spatial_scale=1.0, mode="avg")
        inputs = [helper.make_tensor_value_info(n, t, None) for n, t in
                  (("X", TensorProto.FLOAT), ("rois", TensorProto.FLOAT), ("index", TensorProto.INT64))]
        graph = helper.make_graph([node], "roi", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"X": features, "rois": rois, "index": index})[0]

    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, 4, 24, 24)).astype(np.float32)
    centre, extent = rng.uniform(-0.1, 1.1, (100, 2)), rng.uniform(0.001, 1.0, (100, 2))
    rois = (np.concatenate([centre - extent / 2, centre + extent / 2], 1) * 24).astype(np.float32)
    index = rng.integers(0, 2, 100).astype(np.int64)
    kernel = roi_align(torch.from_numpy(features).double(),
                       torch.cat([torch.from_numpy(index[:, None]).double(), torch.from_numpy(rois).double()], 1),
                       7, aligned=False).numpy()
    assert np.abs(onnx_roi_align(features, rois, index, "output_half_pixel") - kernel).max() < 1e-4
    assert np.abs(onnx_roi_align(features, rois, index, "half_pixel") - kernel).max() > 0.1


# ---- the engine without torch ---------------------------------------------------------------------

NO_TORCH = r"""
import json, sys
for name in ("torch", "transformers", "peft", "torchvision"):
    sys.modules[name] = None               # "import torch" now raises ImportError
from sam3_lora import SAM3OnnxInference
from sam3_lora.data.results import prediction_entries
engine = SAM3OnnxInference(sys.argv[1], threads=1)
found = engine.predict(sys.argv[2], ["red circle", "blue square"], boxes=[[10, 10, 60, 50]], threshold=0.0)
engine.visualize(found, sys.argv[3])
entries = prediction_entries(found, 0)
from sam3_lora.cli import main             # the command line too: sam3-lora predict --onnx
assert main(["predict", "--onnx", sys.argv[1], "--image", sys.argv[2], "--prompt", "red circle",
             "--output", sys.argv[3].replace(".png", "-cli.png")]) == 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "peft", "torchvision")
               and sys.modules[m] is not None)
print(json.dumps({"entries": len(entries), "heavy": heavy}))
"""


def test_engine_runs_without_torch(exported, images, tmp_path):
    done = subprocess.run([sys.executable, "-c", NO_TORCH, str(exported), str(images[0]), str(tmp_path / "o.png")],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {"entries": 40, "heavy": []}
    assert (tmp_path / "o.png").is_file() and (tmp_path / "o-cli.json").is_file()


# ---- what the export folder holds ---------------------------------------------------------------

def test_export_folder_contents_and_modes(exported):
    metadata = json.loads((exported / "sam3_onnx.json").read_text())
    names = {p.name for p in exported.iterdir()}
    assert names == {"vision_encoder.onnx", "text_encoder.onnx", "prompt_decoder.onnx", "tokenizer.json",
                     "tokenizer_config.json", "sam3_onnx.json"}
    assert metadata["format"] == "sam3-lora-onnx/1" and metadata["opset"] == 18
    assert metadata["image"]["size"] == 112 and metadata["quantization"] is None
    assert set(metadata["files"]) == names - {"sam3_onnx.json"}
    assert {"torch", "onnx", "onnxruntime", "onnxscript", "transformers", "sam3_lora"} <= set(metadata["exported_with"])
    for path in [exported, *exported.iterdir()]:   # the user's umask, not mkdtemp's 0700 / 0600
        assert path.stat().st_mode & 0o777 == (0o777 if path.is_dir() else 0o666) & ~current_umask(), path.name


def test_int8_export_runs_through_predict_onnx(exported, images, tmp_path, capsys):
    """``export --weights FP32_EXPORT --onnx OUT --quantize int8`` (no re-export), then
    ``predict --onnx``. The accuracy cost is measured in bench/bench_onnx.py, not here."""
    assert main(["export", "--weights", str(exported), "--onnx", str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    metadata = json.loads((tmp_path / "int8" / "sam3_onnx.json").read_text())
    assert metadata["quantization"]["method"] == "int8"
    assert metadata["graphs"]["vision_encoder"]["file"] == "vision_encoder_int8.onnx"
    assert not (tmp_path / "int8" / "vision_encoder.onnx").exists()
    assert main(["predict", "--onnx", str(tmp_path / "int8"), "--image", str(images[0]), "--prompt", *PROMPTS,
                 "--threshold", "0", "--output", str(tmp_path / "p.png")]) == 0
    assert len(json.loads((tmp_path / "p.json").read_text())) == len(PROMPTS) * 20


def test_quantized_external_data_keeps_the_umask(exported, tmp_path):
    """onnxruntime's quantizer writes GRAPH.onnx.data files 0600 (measured); the export
    folder gives every file the umask. (Full-size graphs keep their weights outside.)"""
    import onnx

    source = tmp_path / "fp32"
    source.mkdir()
    for path in exported.iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    model = onnx.load(str(source / "vision_encoder.onnx"))
    onnx.save_model(model, str(source / "vision_encoder.onnx"), save_as_external_data=True,
                    location="vision_encoder.onnx.data", size_threshold=0)
    out = quantize_export(source, tmp_path / "int8")
    data = [p for p in out.iterdir() if p.name.endswith(".onnx.data")]
    assert data, "the quantized vision encoder kept no external data: the test lost its point"
    for path in out.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask(), path.name
    SAM3OnnxInference(out, threads=1).predict(Image.new("RGB", (50, 40)), "red circle")


# ---- failures: one line, nothing left behind -----------------------------------------------------

def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("opset", ["17", "99"])
def test_unusable_opset_is_one_line_before_loading(adapter, tmp_path, capsys, opset):
    code, err = run_cli(capsys, "export", "--weights", str(adapter), "--onnx", str(tmp_path / "out"),
                        "--opset", opset)
    assert code == 2 and err.count("\n") == 1
    assert f"opset {opset}: choose 18.." in err and err.rstrip().endswith("(--opset)")
    assert list(tmp_path.iterdir()) == []


def test_target_that_is_not_new_or_empty(adapter, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    code, err = run_cli(capsys, "export", "--weights", str(adapter), "--onnx", str(tmp_path / "out"))
    assert code == 2 and "exists and is not empty; choose a new or empty folder" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]


def test_onnx_options_need_onnx(adapter, tmp_path, capsys):
    code, err = run_cli(capsys, "export", "--weights", str(adapter), "--merged", str(tmp_path / "m"),
                        "--quantize", "int8")
    assert code == 2 and "--quantize applies to --onnx exports only" in err and not (tmp_path / "m").exists()


def test_without_the_extra_export_and_predict_say_what_to_install(adapter, exported, images, tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, err = run_cli(capsys, "export", "--weights", str(adapter), "--onnx", str(tmp_path / "out"))
    assert code == 2 and err == "error: ONNX export needs onnxruntime: pip install 'sam3-lora[onnx]'\n"
    code, err = run_cli(capsys, "predict", "--onnx", str(exported), "--image", str(images[0]), "--prompt", "x",
                        "--output", str(tmp_path / "p.png"))
    assert code == 2 and err == "error: the ONNX engine needs onnxruntime: pip install 'sam3-lora[onnx]'\n"
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.png").exists()


def test_predict_onnx_refuses_model_options(exported, images, tmp_path, capsys):
    code, err = run_cli(capsys, "predict", "--onnx", str(exported), "--weights", "runs/x/best", "--image",
                        str(images[0]), "--prompt", "x", "--output", str(tmp_path / "p.png"))
    assert code == 2 and "--weights does not apply with --onnx" in err and err.count("\n") == 1


def test_an_op_without_onnx_translation_is_one_line(monkeypatch, tmp_path):
    """The real exporter error (roi_align's translation removed), as one line."""
    monkeypatch.setattr(onnx_export, "translation_table", dict)

    class Pool(torch.nn.Module):
        def forward(self, features, rois):
            return onnx_export.roi_align_op()(features, rois, 1.0, 7, 7, 0, False)

    with pytest.raises(OnnxExportError) as error:
        onnx_export.export_graph(Pool(), (torch.rand(1, 2, 8, 8), torch.tensor([[0.0, 1, 1, 5, 5]])),
                                 tmp_path / "pool.onnx", ["features", "rois"], ["pooled"], None, 18)
    message = str(error.value)
    assert "pool: torch.onnx.export failed at opset 18" in message and "roi_align" in message
    assert "\n" not in message and len(message) < 600


@pytest.mark.parametrize("interruption", [OnnxExportError("text_encoder: simulated"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_export_leaves_nothing(adapter, tmp_path, monkeypatch, interruption):
    calls = []

    def second_graph_fails(module, args, path, *rest, **kwargs):
        calls.append(path)
        Path(path).write_bytes(b"a graph, half written")
        if len(calls) == 2:
            raise interruption

    monkeypatch.setattr(onnx_export, "export_graph", second_graph_fails)
    loaded = load_sam3(BASE)
    with pytest.raises(type(interruption)):
        export_sam3_onnx(loaded.model, loaded.tokenizer, tmp_path / "out")
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_sigterm_mid_export_leaves_nothing(adapter, tmp_path):
    """A real export process, terminated once its staging folder exists."""
    process = subprocess.Popen([sys.executable, "-m", "sam3_lora.cli", "export", "--weights", str(adapter),
                                "--onnx", str(tmp_path / "out")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.partial-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the export ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_onnxruntime_that_cannot_run_the_graph_fails_the_export(adapter, exported, monkeypatch):
    """E.g. opset 22's RoiAlign, which onnxruntime 1.32 has no kernel for (measured)."""
    def no_kernel(path, threads=1):
        raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for "
                           "RoiAlign(22) node with name 'node_roi_align'")

    monkeypatch.setattr(onnx_export, "ort_session", no_kernel)
    model = load_sam3(BASE).model
    with onnx_export.export_patches(model), torch.no_grad(), pytest.raises(OnnxExportError) as error:
        inputs = onnx_export._example_inputs(model, load_sam3(BASE).tokenizer, 32)
        onnx_export._check_graphs(model, inputs, exported, lambda line: None)
    assert "vision_encoder: onnxruntime" in str(error.value) and "RoiAlign(22)" in str(error.value)
    assert "export with opset 18 (the default) or upgrade onnxruntime" in str(error.value)


def test_unmerged_adapter_and_half_weights_are_refused(tmp_path):
    model = apply_lora_to_model(load_sam3("sam3-tiny").model, verbose=False)
    with pytest.raises(OnnxExportError, match="merge it first"):
        export_sam3_onnx(model, load_sam3("sam3-tiny").tokenizer, tmp_path / "out")
    with pytest.raises(OnnxExportError, match="weights are bfloat16; the export computes in float32"):
        export_sam3_onnx(load_sam3("sam3-tiny").model.bfloat16(), load_sam3("sam3-tiny").tokenizer, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_export_patches_restore_the_model():
    model = load_sam3(BASE).model.train()
    with pytest.raises(ZeroDivisionError), onnx_export.export_patches(model):
        assert model.config._attn_implementation == "eager"
        raise ZeroDivisionError
    assert model.training and model.config._attn_implementation != "eager"
    assert "_encode_boxes" not in vars(model.geometry_encoder)
    assert not model.geometry_encoder._forward_hooks


# ---- the engine's one-line errors ------------------------------------------------------------------

def copy_export(exported: Path, to: Path) -> Path:
    to.mkdir()
    for path in exported.iterdir():
        (to / path.name).write_bytes(path.read_bytes())
    return to


def test_engine_errors_are_one_line(exported, tmp_path):
    with pytest.raises(OnnxEngineError, match="no sam3_onnx.json; give a folder written by"):
        SAM3OnnxInference(tmp_path)
    newer = copy_export(exported, tmp_path / "newer")
    metadata = json.loads((newer / "sam3_onnx.json").read_text())
    (newer / "sam3_onnx.json").write_text(json.dumps({**metadata, "format": "sam3-lora-onnx/2"}))
    with pytest.raises(OnnxEngineError, match="format 'sam3-lora-onnx/2', this sam3-lora reads sam3-lora-onnx/1"):
        SAM3OnnxInference(newer)
    (newer / "sam3_onnx.json").write_text(json.dumps({**metadata, "graphs": {}}))
    with pytest.raises(OnnxEngineError, match=r"sam3_onnx.json: graphs: \[\], but task concept exports have \['vision_encoder', "):
        SAM3OnnxInference(newer)
    partial = copy_export(exported, tmp_path / "partial")
    (partial / "text_encoder.onnx").unlink()
    with pytest.raises(OnnxEngineError, match="text_encoder.onnx: missing"):
        SAM3OnnxInference(partial)
    truncated = copy_export(exported, tmp_path / "truncated")
    data = (truncated / "prompt_decoder.onnx").read_bytes()
    (truncated / "prompt_decoder.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxEngineError, match="damaged or incomplete: copy it again or export again") as error:
        SAM3OnnxInference(truncated)
    assert "\n" not in str(error.value)


def test_too_old_onnxruntime_is_one_line(exported, monkeypatch):
    """onnxruntime 1.16.3's exact refusal of this export (measured in its own environment)."""
    import onnxruntime

    def old(*args, **kwargs):
        raise onnxruntime.capi.onnxruntime_pybind11_state.Fail(
            "[ONNXRuntimeError] : 1 : FAIL : Load model from vision_encoder.onnx failed:/onnxruntime_src/onnxruntime/"
            "core/graph/model.cc:179 onnxruntime::Model::Model(...) Unsupported model IR version: 10, max supported "
            "IR version: 9")

    monkeypatch.setattr(onnxruntime, "InferenceSession", old)
    with pytest.raises(OnnxEngineError) as error:
        SAM3OnnxInference(exported)
    assert str(error.value).startswith("vision_encoder.onnx: onnxruntime ") and "is too old for this export" in str(
        error.value)
    assert "Unsupported model IR version: 10, max supported IR version: 9; pip install -U 'onnxruntime>=1." in str(
        error.value)


# ---- a damaged or hostile export folder (tests/serve/test_onnx_engine.py: its metadata alone) -------

def edit_metadata(folder: Path, change) -> Path:
    """Apply ``change(metadata)`` to ``folder``'s sam3_onnx.json."""
    metadata = json.loads((folder / "sam3_onnx.json").read_text())
    change(metadata)
    (folder / "sam3_onnx.json").write_text(json.dumps(metadata))
    return folder


def swap_graphs(folder: Path) -> None:
    (folder / "vision_encoder.onnx").rename(folder / "swap")
    (folder / "text_encoder.onnx").rename(folder / "vision_encoder.onnx")
    (folder / "swap").rename(folder / "text_encoder.onnx")


def restate_image_size(metadata: dict) -> None:
    """image.size 56, and the vision encoder's input said to be 56 px too: only the graph knows."""
    metadata["image"]["size"] = 56
    metadata["graphs"]["vision_encoder"]["inputs"]["pixel_values"][2:] = [56, 56]


def restate_max_length(metadata: dict) -> None:
    metadata["text"]["max_length"] = 5
    metadata["graphs"]["text_encoder"]["inputs"]["input_ids"][1] = 5


def foreign_tokenizer(folder: Path, ids: dict) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(ids, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))


GRAPH_DAMAGE = {
    "graphs swapped": (swap_graphs, ("vision_encoder.onnx: has inputs ['input_ids', 'attention_mask'], the "
                                     "vision_encoder has ['pixel_values']; the graphs are swapped or damaged")),
    "image size restated": (lambda f: edit_metadata(f, restate_image_size),
                            ("vision_encoder.onnx: pixel_values has shape ['batch', 3, 112, 112], sam3_onnx.json "
                             "states ['batch', 3, 56, 56]")),
    "max_length restated": (lambda f: edit_metadata(f, restate_max_length),
                            ("text_encoder.onnx: input_ids has shape ['prompts', 32], sam3_onnx.json states "
                             "['prompts', 5]")),
    "tokenizer missing": (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json: missing"),
    "tokenizer garbage": (lambda f: (f / "tokenizer.json").write_text("{garbage"), "not a readable tokenizer"),
    "another model's tokenizer": (lambda f: foreign_tokenizer(f, {"[PAD]": 0, "[UNK]": 1, "red": 2}),
                                  ("its padding token '<pad>' has id None, sam3_onnx.json says 0: it is another "
                                   "model's tokenizer")),
    "a tokenizer with more ids": (lambda f: foreign_tokenizer(f, {"<pad>": 0, "[UNK]": 1, "red": 999_999}),
                                  "has token ids up to 999999, the text encoder knows 260: it is another model's"),
}


@pytest.mark.parametrize("case", GRAPH_DAMAGE)
def test_graphs_and_tokenizer_are_checked_against_the_metadata(case, exported, tmp_path):
    damage, expected = GRAPH_DAMAGE[case]
    folder = copy_export(exported, tmp_path / "export")
    damage(folder)
    with pytest.raises(OnnxEngineError) as error:
        SAM3OnnxInference(folder, threads=1)
    assert expected in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_a_graph_that_fails_to_run_is_one_line(exported, tmp_path):
    """What the checks cannot see (here: a tokenizer with ids past the embedding, in an
    export older than text.vocab_size) still fails in one line, not onnxruntime's traceback."""
    folder = edit_metadata(copy_export(exported, tmp_path / "export"), lambda m: m["text"].pop("vocab_size"))
    foreign_tokenizer(folder, {"<pad>": 0, "[UNK]": 1, "red": 999_999})
    engine = SAM3OnnxInference(folder, threads=1)
    with pytest.raises(OnnxEngineError, match=r"text_encoder: onnxruntime failed to run it \(.*Gather.*\); the "
                                              r"export is damaged or mismatched: export again"):
        engine.predict(Image.new("RGB", (40, 30)), "red")


@pytest.mark.parametrize("case", ["graphs swapped", "outside", "deep JSON"])
def test_predict_onnx_on_a_damaged_folder_is_one_line(case, exported, images, tmp_path, capsys):
    folder = copy_export(exported, tmp_path / "export")
    if case == "graphs swapped":
        swap_graphs(folder)
    elif case == "outside":
        edit_metadata(folder, lambda m: m["text"].update(file="/etc/passwd"))
    else:
        (folder / "sam3_onnx.json").write_text("[" * 50_000 + "]" * 50_000)
    code, err = run_cli(capsys, "predict", "--onnx", str(folder), "--image", str(images[0]), "--prompt", "x",
                        "--output", str(tmp_path / "p.png"))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "p.png").exists()


def outside_graph(exported: Path, tmp_path: Path, how: str) -> tuple[Path, str]:
    """A real graph outside the export (so that quantizing it would work, and delete it), and
    the name that leads to it: absolute, climbing, or through a link in the folder."""
    outside = tmp_path / "outside" / "vision_encoder.onnx"
    outside.parent.mkdir()
    outside.write_bytes((exported / "vision_encoder.onnx").read_bytes())
    folder = copy_export(exported, tmp_path / "export")
    (folder / "vision_encoder.onnx").unlink()
    if how == "link":
        (folder / "linked.onnx").symlink_to(outside)
    name = {"absolute": str(outside), "climbing": "../outside/vision_encoder.onnx", "link": "linked.onnx"}[how]
    edit_metadata(folder, lambda m: m["graphs"]["vision_encoder"].update(file=name))
    return outside, name


@pytest.mark.parametrize("how", ["absolute", "climbing", "link"])
def test_quantizing_never_touches_a_graph_outside_the_folder(how, exported, tmp_path, capsys):
    """Quantizing replaces each source graph, deleting it: named outside, it was deleted."""
    outside, name = outside_graph(exported, tmp_path, how)
    before = outside.read_bytes()
    code, err = run_cli(capsys, "export", "--weights", str(tmp_path / "export"), "--onnx", str(tmp_path / "int8"),
                        "--quantize", "int8")
    assert code == 2 and err.count("\n") == 1
    assert f"graphs.vision_encoder.file {name!r} leads outside" in err and "refused, nothing opened" in err
    assert outside.read_bytes() == before and not (tmp_path / "int8").exists()


QUANTIZE_DAMAGE = {
    "garbage": (b"{not json", "not valid JSON"),
    "a list": (b"[1, 2]", "is a JSON list, not an object"),
    "no graphs": (None, "graphs: Field required"),
    "not UTF-8": ('{"format": "sam3-lora-onnx/1"}'.encode("utf-16"), "not UTF-8 text"),
}


@pytest.mark.parametrize("case", QUANTIZE_DAMAGE)
def test_quantizing_a_damaged_folder_is_one_line(case, exported, tmp_path, capsys):
    data, expected = QUANTIZE_DAMAGE[case]
    folder = copy_export(exported, tmp_path / "export")
    if data is None:
        edit_metadata(folder, lambda m: m.pop("graphs"))
    else:
        (folder / "sam3_onnx.json").write_bytes(data)
    code, err = run_cli(capsys, "export", "--weights", str(folder), "--onnx", str(tmp_path / "int8"),
                        "--quantize", "int8")
    assert code == 2 and err.count("\n") == 1 and expected in err and "sam3_onnx.json" in err, err
    assert not (tmp_path / "int8").exists()


def test_quantizing_refuses_a_file_linked_from_outside(exported, tmp_path, capsys):
    """A file the metadata does not name, linked from outside, would be copied into the new export."""
    (tmp_path / "secret").write_text("not yours")
    folder = copy_export(exported, tmp_path / "export")
    (folder / "notes.txt").symlink_to(tmp_path / "secret")
    code, err = run_cli(capsys, "export", "--weights", str(folder), "--onnx", str(tmp_path / "int8"),
                        "--quantize", "int8")
    assert code == 2 and "notes.txt: a link to a file outside" in err and err.count("\n") == 1
    assert not (tmp_path / "int8").exists()


def test_an_empty_onnx_path_is_one_line(adapter, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, "export", "--weights", str(adapter), "--onnx", "")
    assert code == 2 and err == "error: the output folder's path is empty; give the new folder to write the export to\n"
    assert list(tmp_path.iterdir()) == []
