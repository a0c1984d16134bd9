import json
import shutil

import pytest

from sam3_lora.config import load_config
from sam3_lora.data.synth import synthesize
from sam3_lora.errors import AdapterError, DataError
from sam3_lora.evaluation.results import ground_truth
from sam3_lora.evaluation.runner import score
from sam3_lora.recipes.train import SAM3LoRATrainer
from sam3_lora.recipes.validate import EvaluationError, load_split, validate
from tests.conftest import TINY_CONFIG

FLAT_KEYS = {"mAP", "mAP50", "mAP75", "cgF1", "cgF1_50", "cgF1_75", "pmF1", "IL_MCC"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short LoRA run on synthetic shapes: (config, the trainer's final validation loss)."""
    root = tmp_path_factory.mktemp("eval")
    synthesize(root / "data", images_per_split={"train": 8, "valid": 6, "test": 4}, image_size=112, seed=2)
    config = load_config(TINY_CONFIG, [f"data.root={root / 'data'}", f"output.dir={root / 'run'}", "training.max_steps=6",
                                  "training.report_to=[]", "training.batch_size=4", "evaluation.retain_images=2",
                                  "evaluation.retain_prompts=[dog, sky]", "evaluation.report_examples=1"])
    trainer = SAM3LoRATrainer(config, quiet=True)
    trainer.train()
    return config, trainer.evaluate()["val_loss"]


def test_validate_writes_metrics_predictions_and_report(trained, tmp_path):
    config, _ = trained
    summary = validate(config, weights=f"{config.output.dir}/last", output=tmp_path, compare_base=True)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert FLAT_KEYS <= set(written) and FLAT_KEYS <= set(written["base"])
    assert written["mAP"] == summary["mAP"] and 0.0 <= written["mAP"] <= 1.0
    assert written["cgF1_defined"] is True
    assert set(written["per_category"]) == set(load_split(config, "valid").categories.values())
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    assert predictions and {"image_id", "category_id", "score", "bbox", "segmentation"} <= set(predictions[0])
    assert all(p["score"] >= config.evaluation.min_score for p in predictions)
    assert (tmp_path / "base_predictions.json").is_file()
    forgetting = written["forgetting"]
    assert forgetting["retain_prompts"] == ["dog", "sky"] and forgetting["images"] == 2
    assert set(forgetting["per_prompt"]) == {"dog", "sky"}
    report = (tmp_path / "report.md").read_text()
    assert "mAP" in report and ".png" in report


def test_every_category_is_prompted_on_every_image(trained, tmp_path):
    config, _ = trained
    split = load_split(config, "valid")
    summary = validate(config, output=tmp_path)
    assert summary["units"] == len(split.images) * len(split.categories)
    assert summary["weights"].endswith("best")


def test_validation_loss_is_the_trainers(trained, tmp_path):
    config, trainer_loss = trained
    summary = validate(config, weights=f"{config.output.dir}/last", output=tmp_path)
    assert summary["val_loss"] == pytest.approx(trainer_loss, rel=1e-5)


def test_validation_follows_model_dtype_and_records_it(trained, tmp_path):
    """model.dtype=bfloat16: the split runs in bf16 (the loss in float32 on its outputs), the
    dtype is in metrics.json, and the loss is the float32 trainer's, up to rounding."""
    config, trainer_loss = trained
    half = config.model_copy(update={"model": config.model.model_copy(update={"dtype": "bfloat16"})})
    summary = validate(half, weights=f"{config.output.dir}/last", output=tmp_path)
    assert summary["model_dtype"] == "bfloat16"
    assert json.loads((tmp_path / "metrics.json").read_text())["model_dtype"] == "bfloat16"
    assert summary["val_loss"] == pytest.approx(trainer_loss, rel=0.02)
    assert validate(config, weights=f"{config.output.dir}/last", output=tmp_path / "fp32")["model_dtype"] == "float32"


def test_perfect_predictions_score_one(trained):
    """The ground truth itself, as predictions: mAP and cgF1 are 1 (negatives included)."""
    config, _ = trained
    gt = ground_truth(load_split(config, "valid"))
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0, "bbox": a["bbox"],
                "segmentation": a["segmentation"]} for a in gt["annotations"]]
    metrics, _ = score(gt, perfect, config.evaluation.score_threshold)
    assert metrics["mAP"] == pytest.approx(1.0)
    assert metrics["cgF1"] == pytest.approx(1.0, abs=1e-3)   # SAM3's formulas carry 1e-4 epsilons


def test_base_model_alone(trained, tmp_path):
    config, _ = trained
    summary = validate(config, no_lora=True, output=tmp_path, num_samples=2)
    assert summary["weights"] == "base model" and "forgetting" not in summary and summary["images"] == 2
    assert summary["mAP"] is not None and summary["output"] == str(tmp_path)


def test_split_without_negatives_is_refused_unless_asked(trained, tmp_path):
    """Every image holds every category: no negative units, so cgF1 cannot exist."""
    config, _ = trained
    root = tmp_path / "data"
    synthesize(root, images_per_split={"train": 2, "valid": 3}, concepts=["red circle"], objects_per_image=(1, 2),
               image_size=112, seed=0)
    positive_only = config.model_copy(update={"data": config.data.model_copy(update={"root": str(root)})})
    with pytest.raises(EvaluationError, match="every \\(image, prompt\\) unit is positive.*positives only") as error:
        validate(positive_only, output=tmp_path / "out")
    assert error.value.option == "positives_only"   # the command line says (--positives-only)
    summary = validate(positive_only, output=tmp_path / "out", positives_only=True)
    assert summary["cgF1"] is None and summary["cgF1_defined"] is False and summary["mAP"] is not None


def test_missing_adapter_says_what_to_do(trained, tmp_path):
    config, _ = trained
    with pytest.raises(AdapterError, match="no adapter there; train first"):
        validate(config, weights=tmp_path / "nothing")


def test_missing_split_names_the_key(trained, tmp_path):
    config, _ = trained
    root = tmp_path / "data"
    shutil.copytree(f"{config.data.root}/train", root / "train")
    moved = config.model_copy(update={"data": config.data.model_copy(update={"root": str(root)})})
    with pytest.raises(DataError, match="data.root=.*no valid/ split"):
        validate(moved)


def test_evaluate_command_rescores_validate_and_compares_base(trained, tmp_path, capsys):
    """`sam3-lora evaluate` on validate's own files gives validate's numbers."""
    from sam3_lora.cli import main

    config, _ = trained
    summary = validate(config, output=tmp_path, compare_base=True)
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(ground_truth(load_split(config, "valid"))))
    code = main(["evaluate", "--gt", str(gt_file), "--predictions", str(tmp_path / "predictions.json"),
                 "--compare-base", str(tmp_path / "base_predictions.json"), "--output", str(tmp_path / "m.json")])
    assert code == 0
    rescored = json.loads((tmp_path / "m.json").read_text())
    for key in ("mAP", "mAP50", "cgF1", "pmF1", "IL_MCC"):
        assert rescored[key] == summary[key] and rescored["base"][key] == summary["base"][key]
    printed = capsys.readouterr().out
    assert "adapted" in printed and "base AP" in printed


def with_evaluation(config, **changes):
    return config.model_copy(update={"evaluation": config.evaluation.model_copy(update=changes)})


def test_every_evaluation_key_has_an_effect(trained, tmp_path, monkeypatch):
    from sam3_lora.config import EvaluationConfig
    from sam3_lora.evaluation import runner

    config, _ = trained
    nms_seen = []
    real_postprocess = runner.postprocess

    def spy(*args, **kwargs):
        if "mask_nms_iou" in kwargs:   # the split's predictions, not the forgetting check
            nms_seen.append(kwargs["mask_nms_iou"])
        return real_postprocess(*args, **kwargs)

    monkeypatch.setattr(runner, "postprocess", spy)

    def run(name, **changes):
        return validate(with_evaluation(config, **changes), output=tmp_path / name, num_samples=3)

    def predictions(name):
        return json.loads((tmp_path / name / "predictions.json").read_text())

    base = run("base")
    effects = {
        "split": run("split", split="test")["split"] == "test",
        "min_score": len(predictions("base")) > len(run("min", min_score=0.3) and predictions("min")),
        "score_threshold": run("thr", score_threshold=0.0)["IL_FP"] > base["IL_FP"],
        # What NMS suppresses is tested in test_postprocess.py; here, that the key gets there.
        "mask_nms_iou": bool(run("nms", mask_nms_iou=0.1)) and nms_seen[-1] == 0.1 and nms_seen[0] is None,
        "retain_prompts": run("retain", retain_prompts=["tree"])["forgetting"]["retain_prompts"] == ["tree"],
        "retain_images": run("images", retain_images=1)["forgetting"]["images"] == 1,
        "report_examples": (run("ex", report_examples=0) and not (tmp_path / "ex" / "examples.png").exists()
                            and (tmp_path / "base" / "examples.png").exists()),
    }
    assert set(effects) == set(EvaluationConfig.model_fields)
    assert all(effects.values()), effects


def box_only_copy(config, tmp_path):
    """A copy of ``config``'s data under ``tmp_path`` whose valid split has boxes only, and
    ``config`` pointed at it: (root, config)."""
    root = tmp_path / "data"
    shutil.copytree(config.data.root, root)
    coco_file = root / "valid" / "_annotations.coco.json"
    coco = json.loads(coco_file.read_text())
    for annotation in coco["annotations"]:
        del annotation["segmentation"]
    coco_file.write_text(json.dumps(coco))
    return root, config.model_copy(update={"data": config.data.model_copy(update={"root": str(root)})})


def test_box_only_split_is_scored_on_boxes_and_says_why(trained, tmp_path, capsys):
    """A split without masks used to get mask mAP against its boxes drawn as masks, silently."""
    from sam3_lora.cli import main

    config, _ = trained
    root, boxes = box_only_copy(config, tmp_path)
    summary = validate(boxes, output=tmp_path / "boxes", compare_base=True)
    assert summary["iou_type"] == "bbox" and "no object of this split has a mask" in summary["iou_type_reason"]
    written = json.loads((tmp_path / "boxes" / "metrics.json").read_text())
    assert written["iou_type"] == "bbox" and written["base"]["iou_type"] == "bbox"
    assert "Box metrics: no object of this split has a mask" in (tmp_path / "boxes" / "report.md").read_text()
    # The same predictions scored as boxes by `evaluate` give the same numbers.
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(ground_truth(load_split(boxes, "valid"))))
    assert main(["evaluate", "--gt", str(gt_file), "--predictions", str(tmp_path / "boxes" / "predictions.json"),
                 "--iou-type", "bbox", "--output", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["mAP"] == summary["mAP"]
    assert validate(config, output=tmp_path / "masks")["iou_type"] == "segm"
    config.save(tmp_path / "boxes.yaml")
    capsys.readouterr()
    assert main(["validate", "--config", str(tmp_path / "boxes.yaml"), f"data.root={root}",
                 "--output", str(tmp_path / "cli")]) == 0
    assert "box metrics: no object of this split has a mask" in capsys.readouterr().out


def test_report_examples_of_box_only_data_carry_each_object_box(trained, tmp_path, monkeypatch):
    """The report's example grid drew no ground truth for box-only objects ("ground truth: 0")."""
    import sam3_lora.recipes.validate as recipe

    config, _ = trained
    _, boxes = box_only_copy(config, tmp_path)
    drawn, write_report = {}, recipe.write_report
    monkeypatch.setattr(recipe, "write_report", lambda out, **kwargs: drawn.update(kwargs) or write_report(out, **kwargs))
    validate(boxes, output=tmp_path / "boxes")
    assert drawn["examples"]
    for example in drawn["examples"]:
        assert len(example["gt_boxes"]) == len(example["gt_masks"]) > 0 and not example["gt_masks"].any()


def test_unwritable_output_is_refused_before_the_model_loads(trained, tmp_path, monkeypatch):
    import sam3_lora.recipes.validate as recipe
    from sam3_lora.errors import Sam3LoraError

    config, _ = trained
    monkeypatch.setattr(recipe, "load_finetuned", lambda *args: pytest.fail("loaded first"))
    (tmp_path / "plain").write_text("x")
    with pytest.raises(Sam3LoraError, match="output .*plain: is a file; give a folder there"):
        validate(config, output=tmp_path / "plain")


def test_a_full_disk_while_writing_is_one_line(trained, tmp_path, monkeypatch):
    import errno

    import sam3_lora.recipes.validate as recipe

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    config, _ = trained
    monkeypatch.setattr(recipe, "_write_outputs", full)
    with pytest.raises(EvaluationError, match=r"out: cannot write the results \(No space left on device\); "
                                              r"choose another output folder \(argument output\)$"):
        validate(config, output=tmp_path / "out", num_samples=1)
