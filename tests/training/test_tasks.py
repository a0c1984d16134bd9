import pytest
import torch

from sam3_lora.config import load_config
from sam3_lora.loss.tracker import TrackerCriterion
from sam3_lora.model.tracker import load_tracker
from sam3_lora.training.tasks import CorrectionRounds, InteractiveTask, build_task

SIZE = 112


@pytest.fixture
def batch():
    """Two objects: squares with their boxes and a click inside each."""
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[0, 20:60, 30:70] = True
    masks[1, 50:90, 10:40] = True
    return {"pixel_values": torch.randn(2, 3, SIZE, SIZE), "masks": masks,
            "boxes": torch.tensor([[30.0, 20, 69, 59], [10, 50, 39, 89]]),
            "points": torch.tensor([[[40.0, 30]], [[20, 60]]]), "labels": torch.ones(2, 1, dtype=torch.int32),
            "prompt_seed": 7}


def run(rounds, batch, kind, model=None):
    model = model or load_tracker("sam3-tiny").model
    return CorrectionRounds(model, rounds)(batch["pixel_values"], batch["masks"], kind, batch["boxes"],
                                           batch["points"], batch["labels"], batch["prompt_seed"])


@pytest.mark.parametrize("kind, masks_first", [("click", 3), ("box", 1)])
def test_correction_rounds_add_one_supervised_step_each(batch, kind, masks_first):
    steps = run(2, batch, kind)
    assert len(steps) == 3   # the initial prompt, then training.correction_rounds=2 corrections
    assert steps[0]["pred_masks"].shape == (2, masks_first, SIZE, SIZE)   # SAM 2: 3 masks for one click
    assert all(s["pred_masks"].shape == (2, 1, SIZE, SIZE) for s in steps[1:])
    assert steps[1]["iou_scores"].shape == (2, 1) and steps[1]["object_score_logits"].shape == (2, 1)
    assert len(run(0, batch, kind)) == 1


def test_a_mask_prompt_gets_no_correction_rounds(batch):
    steps = run(3, batch, "mask")
    assert len(steps) == 1 and steps[0]["pred_masks"].shape == (2, 1, SIZE, SIZE)


def test_correction_clicks_reach_the_model_and_follow_the_seed(batch, monkeypatch):
    model = load_tracker("sam3-tiny").model
    seen = []
    original = model.forward

    def spy(**kwargs):
        seen.append(kwargs.get("input_points"))
        return original(**kwargs)

    monkeypatch.setattr(model, "forward", spy)
    run(2, batch, "box", model)
    assert seen[0] is None and seen[1].shape == (2, 1, 1, 2) and seen[2].shape == (2, 1, 2, 2)
    first = [p.clone() for p in seen[1:]]
    seen.clear()
    run(2, batch, "box", model)
    assert all(torch.equal(a, b) for a, b in zip(first, seen[1:]))


def test_every_round_is_in_the_loss_and_trains(batch):
    model = load_tracker("sam3-tiny").model
    steps = run(2, batch, "click", model)
    losses = TrackerCriterion()([steps], batch["masks"][None])
    fewer = TrackerCriterion()([steps[:1]], batch["masks"][None])
    assert losses["loss"] > fewer["loss"] > 0
    losses["loss"].backward()
    assert model.mask_decoder.iou_prediction_head.proj_in.weight.grad.abs().sum() > 0


def test_the_task_follows_model_task():
    concept = build_task(load_config(None, []), SIZE, tokenize=None)
    interactive = build_task(load_config(None, ["model.task=interactive"]), SIZE)
    assert type(concept).__name__ == "ConceptTask" and isinstance(interactive, InteractiveTask)
    rounds = build_task(load_config(None, ["model.task=interactive", "training.correction_rounds=3"]), SIZE)
    assert rounds.wrap(torch.nn.Identity()).rounds == 3
