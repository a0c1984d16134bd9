"""The video task: SAM 2's clip training (training.video_forward.ClipTracking) on a tiny
width-128 video tracker, its loss against a transcription of SAM 2's, and where its gradients go."""

import pytest
import torch

from sam3_lora.config import LoRAConfig, load_config
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.training.tasks import VideoTask, build_task
from sam3_lora.training.video_forward import ClipTracking, correction_frames
from tests.conftest import TINY_CONFIG
from tests.loss.sam2_reference import CORE_LOSS_KEY, MultiStepMultiMasksAndIous
from tests.loss.test_tracker import SAM21_WEIGHTS, as_meta
from tests.training.tiny_video import tiny_video_tracker

SIZE, FRAMES = 56, 3


def clip_batch(kind="click", seed=0):
    """One clip of FRAMES frames with two objects (squares that move), frame 0's prompts."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(2, FRAMES, SIZE, SIZE, dtype=torch.bool)
    for t in range(FRAMES):
        masks[0, t, 8 + 2 * t:28 + 2 * t, 10:30] = True
        masks[1, t, 30:48, 30 - t:46 - t] = True
    return {"pixel_values": torch.randn(1, FRAMES, 3, SIZE, SIZE, generator=g) + masks.any(0)[None, :, None],
            "masks": masks, "object_clip_index": torch.zeros(2, dtype=torch.long),
            "boxes": torch.tensor([[10.0, 8, 29, 27], [30, 30, 45, 47]]), "points": torch.tensor([[[20.0, 18]],
                                                                                              [[38, 40]]]),
            "labels": torch.ones(2, 1, dtype=torch.int32), "kind": kind, "prompt_seed": seed, "sequences": ["a"]}


def video_config(*overrides):
    return load_config(TINY_CONFIG, ["model.task=video", "training.report_to=[]", *overrides])


def run(task, model, batch):
    inputs = task.inputs(batch, torch.device("cpu"))
    outputs = task.forward(task.wrap(model), inputs)
    return outputs, task.loss(outputs, inputs), inputs


@pytest.mark.parametrize("kind", ["click", "box", "mask"])
def test_the_clip_loss_is_sam2s_summed_over_frames(kind):
    """Every frame's steps (the corrected frames' several) through VideoTask.loss equal the
    transcription of SAM 2's MultiStepMultiMasksAndIous, which sums its per-frame losses
    (``losses[k] += v`` over frames), term by term and in total; and that sum is the sum of
    SAM 2's losses of each frame alone."""
    task = build_task(video_config("training.correction_rounds=2", f"training.frames_to_correct={FRAMES}"), SIZE)
    assert isinstance(task, VideoTask)
    outputs, ours, inputs = run(task, tiny_video_tracker(SIZE).train(), clip_batch(kind))
    targets = inputs["masks"].transpose(0, 1)
    meta_loss = MultiStepMultiMasksAndIous(dict(SAM21_WEIGHTS), supervise_all_iou=True, iou_use_l1_loss=True,
                                           pred_obj_scores=True)
    meta = meta_loss(as_meta(outputs), targets)
    for name in ("loss_mask", "loss_dice", "loss_iou", "loss_class"):
        torch.testing.assert_close(ours[name], torch.as_tensor(meta[name]).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["loss"], meta[CORE_LOSS_KEY], rtol=1e-5, atol=1e-6)
    per_frame = sum(meta_loss(as_meta([frame]), targets[t:t + 1])[CORE_LOSS_KEY] for t, frame in enumerate(outputs))
    torch.testing.assert_close(ours["loss"], per_frame, rtol=1e-5, atol=1e-6)
    steps = [len(frame) for frame in outputs]
    if kind == "mask":   # the mask is frame 0's output; no correction clicks (SAM 2)
        assert steps == [1] * FRAMES
        assert torch.equal(outputs[0][0]["iou_scores"], torch.ones(2, 1))
    else:
        assert steps[0] == 3 and set(steps) <= {1, 3}


def test_gradients_reach_the_memory_attention_and_memory_encoder_adapters():
    """LoRA on the two memory components alone: one clip's loss gives their adapters gradients
    (through frame 1 and 2's memory of the frames before), which the session API (inference
    mode) could not."""
    lora = LoRAConfig(target_modules=["all"], apply_to_vision_encoder=False, apply_to_memory_attention=True,
                      apply_to_memory_encoder=True)
    model = apply_lora_to_model(tiny_video_tracker(SIZE).train(), lora, verbose=False)
    task = build_task(video_config(), SIZE)
    _, losses, _ = run(task, model, clip_batch("box"))
    losses["loss"].backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    for component in ("memory_attention", "memory_encoder"):
        mine = {n: g for n, g in grads.items() if f".{component}." in n}
        assert mine and all(".lora_" in n for n in mine)
        assert any(g is not None and g.abs().sum() > 0 for g in mine.values()), component


def test_frames_to_correct_draws_the_first_frame_and_up_to_n_minus_one_others():
    drawn = [correction_frames(6, 3, torch.Generator().manual_seed(seed)) for seed in range(40)]
    assert all(0 in frames and 1 <= len(frames) <= 3 for frames in drawn)
    assert {len(frames) for frames in drawn} == {1, 2, 3}
    assert {frame for frames in drawn for frame in frames} == set(range(6))
    assert all(correction_frames(6, 1, torch.Generator().manual_seed(s)) == {0} for s in range(10))


def test_frames_to_correct_sets_which_frames_take_correction_steps():
    model = tiny_video_tracker(SIZE).train()
    only_first = build_task(video_config("training.correction_rounds=1", "training.frames_to_correct=1"), SIZE)
    every = build_task(video_config("training.correction_rounds=1", f"training.frames_to_correct={FRAMES}"), SIZE)
    with torch.no_grad():
        assert [len(f) for f in run(only_first, model, clip_batch("click"))[0]] == [2, 1, 1]
        counts = [[len(f) for f in run(every, model, clip_batch("click", seed))[0]] for seed in range(8)]
    assert any(sum(c) > 4 for c in counts), counts   # later frames corrected too


def test_correction_from_mask_probability_changes_the_clicks():
    """Probability 1: every correction click is drawn inside the ground truth, ignoring the
    prediction; the corrected masks (and so the loss) differ from those of probability 0."""
    model = tiny_video_tracker(SIZE).train()
    losses = []
    for probability in (0.0, 1.0):
        task = build_task(video_config("training.correction_rounds=2", "training.frames_to_correct=1",
                                       f"training.correction_from_mask_probability={probability}"), SIZE)
        with torch.no_grad():
            losses.append(run(task, model, clip_batch("click"))[1]["loss"])
    assert not torch.equal(losses[0], losses[1])


def test_clip_tracking_is_one_module_over_the_tracker():
    model = tiny_video_tracker(SIZE)
    wrapped = build_task(video_config(), SIZE).wrap(model)
    assert isinstance(wrapped, ClipTracking) and wrapped.model is model
    assert dict(wrapped.named_parameters()).keys() == {f"model.{k}" for k, _ in model.named_parameters()}


def test_the_training_forward_tracks_as_track_does():
    """ClipTracking (training) and transformers' propagation (``model.video.track_from_masks``,
    what ``track`` and ``validate`` run) give the same masks from the same weights and mask
    prompt: what training improves is what tracking uses."""
    from sam3_lora.model.video import track_from_masks

    model = tiny_video_tracker(SIZE).eval()
    batch = clip_batch("mask")
    for key in ("masks", "object_clip_index", "boxes", "points", "labels"):
        batch[key] = batch[key][:1]   # one object: the propagation below tracks it alone
    task = build_task(video_config("training.correction_rounds=0"), SIZE)
    with torch.no_grad():
        trained_path = [steps[-1] for steps in run(task, model, batch)[0]]
        frames = {t: batch["pixel_values"][0, t] for t in range(FRAMES)}
        tracked = list(track_from_masks(model, frames, (SIZE, SIZE), {1: batch["masks"][0, 0]}, start=0))
    assert [frame for frame, _, _ in tracked] == list(range(FRAMES))
    for step, (_, _, logits) in zip(trained_path, tracked):
        chosen = step["pred_masks"][0, step["iou_scores"][0].argmax()]   # SAM's pick, as tracking makes
        assert torch.allclose(chosen, logits[0], atol=1e-4), float((chosen - logits[0]).abs().max())
