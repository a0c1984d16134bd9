import numpy as np
import pytest
import torch

from sam3_lora.config import DataConfig
from sam3_lora.data.dataset import AUGMENT_STREAM, sample_generator
from sam3_lora.data.images import open_image
from sam3_lora.data.prompts import center_click
from sam3_lora.data.transforms import build_transform
from sam3_lora.data.video.clips import ClipDataset, ClipSampler, build_clip_loader, collate_clips
from sam3_lora.data.video.layout import load_video_split
from sam3_lora.data.video.synth import synthesize_video
from sam3_lora.errors import DataError
from sam3_lora.model.processing import image_to_tensor, resize_and_normalize
from tests.data.video.folders import TWO_OBJECTS, boxes_mask, write_clip, write_mask

SIZE = 64
"""The model's input side in these tests."""


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Three synthetic clips of 8 frames, 64-80 px, three objects each (object 3 leaves the
    frame at 80 % of the clip)."""
    root = tmp_path_factory.mktemp("clips")
    synthesize_video(root / "d", frames=8, image_size=((64, 56), (80, 72)), objects_per_clip=(3, 3),
                     sequences_per_split={"train": 3}, seed=1)
    return load_video_split(root / "d" / "train")


def config(**keys) -> DataConfig:
    return DataConfig(**{"clip_frames": 4, **keys})


def generators(count):
    return [torch.Generator().manual_seed(seed) for seed in range(count)]


def test_a_sample_is_a_clip_of_the_configured_frames_and_objects(synthetic):
    sample = ClipDataset(synthetic, config(), SIZE, train=True)[0]
    frames = sample["frame_indices"]
    objects = len(sample["object_ids"])
    assert sample["pixel_values"].shape == (4, 3, SIZE, SIZE)
    assert sample["masks"].shape == (4, objects, SIZE, SIZE) and sample["masks"].dtype == torch.bool
    assert sample["valid"].shape == (4, SIZE, SIZE) and sample["valid"].all()   # no void in synth
    assert frames.diff().abs().tolist() == [1, 1, 1]   # consecutive
    assert sample["box"].shape == (objects, 4) and sample["points"].shape == (objects, 1, 2)
    assert 1 <= objects <= 3
    shorter = ClipDataset(synthetic, config(clip_frames=2, max_objects_per_clip=1), SIZE, train=True)[0]
    assert shorter["pixel_values"].shape[0] == 2 and len(shorter["object_ids"]) == 1


def test_same_seed_epoch_and_index_give_the_same_clip_another_epoch_another(synthetic):
    def sample(epoch, seed=0):
        dataset = ClipDataset(synthetic, config(horizontal_flip=0.5, color_jitter=0.2), SIZE,
                              train=True, seed=seed)
        dataset.set_epoch(epoch)
        return dataset[1]

    first, again = sample(0), sample(0)
    for key in ("pixel_values", "masks", "valid", "object_ids", "frame_indices", "box", "points"):
        assert torch.equal(first[key], again[key])
    assert first["prompt_seed"] == again["prompt_seed"]
    others = [sample(epoch) for epoch in range(1, 6)]
    assert any(not torch.equal(first["frame_indices"], o["frame_indices"]) for o in others)
    assert all(first["prompt_seed"] != o["prompt_seed"] for o in others)
    assert sample(0, seed=1)["prompt_seed"] != first["prompt_seed"]


def test_only_objects_on_the_first_frame_are_tracked_and_prompted(tmp_path):
    # Frame 0: objects 1 and 2; frame 1: 1 alone; frame 2: 2 alone (folders.TWO_OBJECTS).
    split = load_video_split(write_clip(tmp_path, "seq", TWO_OBJECTS))
    sequence = split.sequences[0]
    sampler = ClipSampler(num_frames=2, max_objects=5, reverse_probability=0.5)
    visible = {0: [1, 2], 1: [1], 2: [2]}
    clips = [sampler.sample(sequence, g) for g in generators(40)]
    assert all(clip.object_ids == visible[clip.frames[0]] for clip in clips)
    assert {clip.frames[0] for clip in clips} == {0, 1, 2}
    dataset = ClipDataset(split, config(clip_frames=2, reverse_time_probability=0.5), 32, train=False)
    for epoch in range(6):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        assert sample["masks"][0].flatten(1).any(1).all()   # every object is on the first frame
        x, y = sample["points"][:, 0].long().unbind(-1)
        assert sample["masks"][0, torch.arange(len(x)), y, x].all()   # its click inside it


def test_a_first_frame_without_any_object_is_never_drawn(tmp_path):
    split = load_video_split(write_clip(tmp_path, "seq", [{}, {1: (2, 2, 8, 8)}, {1: (3, 2, 9, 8)}]))
    clips = [ClipSampler(2, 3).sample(split.sequences[0], g) for g in generators(20)]
    assert {tuple(clip.frames) for clip in clips} == {(1, 2)}
    ending_empty = load_video_split(write_clip(tmp_path / "r", "seq", [{1: (2, 2, 8, 8)}, {1: (3, 2, 9, 8)}, {}]))
    backwards = [ClipSampler(2, 3, 1.0).sample(ending_empty.sequences[0], g) for g in generators(20)]
    assert {tuple(clip.frames) for clip in backwards} == {(1, 0)}   # (2, 1) would start empty
    empty = load_video_split(write_clip(tmp_path / "e", "seq", [{}, {}]))
    with pytest.raises(DataError, match=r"Annotations/seq: no object is visible on any possible first frame"):
        ClipSampler(2, 3).sample(empty.sequences[0], torch.Generator())


def test_max_objects_per_clip_draws_a_subset_of_the_visible_objects(synthetic):
    sequence = synthetic.sequences[0]
    drawn = {tuple(ClipSampler(4, 1).sample(sequence, g).object_ids) for g in generators(30)}
    assert all(len(ids) == 1 for ids in drawn) and len(drawn) > 1


def test_reverse_time_probability_plays_clips_backwards(synthetic):
    def sample(probability):
        return ClipDataset(synthetic, config(reverse_time_probability=probability), SIZE, train=False)[2]

    forward, backward = sample(0.0), sample(1.0)
    assert not forward["reversed"] and forward["frame_indices"].diff().tolist() == [1, 1, 1]
    assert backward["reversed"] and backward["frame_indices"].diff().tolist() == [-1, -1, -1]
    # Played backwards, the first frame (where objects are prompted) is the clip's last in time.
    last = int(backward["frame_indices"][0])
    image = open_image(synthetic.sequences[2].frame_paths[last])
    assert torch.allclose(backward["pixel_values"][0], resize_and_normalize(image, SIZE))
    probabilities = [ClipSampler(2, 3, 0.3).sample(synthetic.sequences[0], g).reversed
                     for g in generators(200)]
    assert 0.15 < np.mean(probabilities) < 0.45


def test_frames_are_resized_and_normalised_as_the_image_path_does(synthetic):
    sample = ClipDataset(synthetic, config(), SIZE, train=False)[0]
    sequence = synthetic.sequences[0]
    for t, frame in enumerate(sample["frame_indices"].tolist()):
        expected = resize_and_normalize(open_image(sequence.frame_paths[frame]), SIZE)
        assert torch.allclose(sample["pixel_values"][t], expected)
    # Training: the image tracker's transform, drawn from the sample's augmentation stream.
    cfg = config(min_resize_ratio=0.5, color_jitter=0.3)
    dataset = ClipDataset(synthetic, cfg, SIZE, train=True, seed=5)
    dataset.set_epoch(2)
    sample = dataset[0]
    frame = int(sample["frame_indices"][-1])
    image = image_to_tensor(np.array(open_image(sequence.frame_paths[frame])))
    expected, _, _ = build_transform(cfg, SIZE, train=True)(image, torch.zeros(0, 4),
                                                            sample_generator(5, 2, 0, AUGMENT_STREAM))
    assert torch.equal(sample["pixel_values"][-1], expected)


def test_training_augments_every_frame_of_a_clip_alike(synthetic):
    """SAM 2's consistent transforms: one scale and one flip for the whole clip, so the
    padding (black, -1 after normalisation) covers the same pixels on every frame."""
    dataset = ClipDataset(synthetic, config(min_resize_ratio=0.5, horizontal_flip=1.0), SIZE, train=True)
    pixels = dataset[0]["pixel_values"]
    padding = (pixels == -1).all(1)   # (T, S, S)
    assert padding.any() and all(torch.equal(padding[0], p) for p in padding[1:])
    unflipped = ClipDataset(synthetic, config(min_resize_ratio=0.5, horizontal_flip=0.0), SIZE,
                            train=True)[0]
    masks, plain = dataset[0]["masks"], unflipped["masks"]
    width = int((~padding[0]).any(0).sum())   # the content's width, same draw of the scale
    assert torch.equal(masks[..., :width], plain[..., :width].flip(-1))


def test_a_sequence_shorter_than_a_clip_is_left_out_with_a_warning(tmp_path):
    root = write_clip(tmp_path, "long", [{1: (0, 0, 4, 4)}] * 3)
    write_clip(root, "short", [{1: (0, 0, 4, 4)}, {1: (1, 0, 5, 4)}, None])   # 2 annotated frames
    split = load_video_split(root)
    with pytest.warns(UserWarning, match="1 sequences with fewer than 3 annotated frames"):
        dataset = ClipDataset(split, config(clip_frames=3), 32, train=True)
    assert [s.name for s in dataset.sequences] == ["long"] and len(dataset) == 1
    with pytest.raises(DataError, match="no sequence has 4 annotated frames .*data.clip_frames"):
        ClipDataset(split, config(clip_frames=4), 32, train=True)
    with pytest.raises(DataError, match=r"Annotations/short: sequence 'short' has 2 annotated frames"):
        ClipSampler(3, 3).sample(split.sequences[1], torch.Generator())


def test_void_pixels_are_not_valid_and_belong_to_no_object(tmp_path):
    root = write_clip(tmp_path, "seq", [{1: (0, 0, 8, 12)}, {1: (0, 0, 8, 12)}])
    ids = boxes_mask({1: (0, 0, 8, 12), 255: (8, 0, 16, 12)})   # right half void (DAVIS)
    write_mask(root / "Annotations" / "seq" / "00001.png", ids)
    sample = ClipDataset(load_video_split(root), config(clip_frames=2), 32, train=False)[0]
    assert sample["object_ids"].tolist() == [1]   # 255 is never an object
    valid = sample["valid"][sample["frame_indices"].tolist().index(1)]
    assert not valid[:, 16:].any() and valid[:, :16].all()
    assert sample["valid"][sample["frame_indices"].tolist().index(0)].all()
    assert not sample["masks"][:, 0, :, 16:].any()


def test_a_mask_of_another_size_than_its_frame_is_refused_naming_it(tmp_path):
    root = write_clip(tmp_path, "seq", [{1: (0, 0, 4, 4)}, {1: (0, 0, 4, 4)}])
    write_mask(root / "Annotations" / "seq" / "00001.png", boxes_mask({1: (0, 0, 4, 4)}, size=(20, 12)))
    dataset = ClipDataset(load_video_split(root), config(clip_frames=2), 32, train=False)
    with pytest.raises(DataError, match=r"00001.png: the mask is 20x12 but its frame .* is 16x12"):
        dataset[0]


def test_mask_prompt_probability_prompts_clips_with_their_masks(synthetic):
    kinds = {p: {ClipDataset(synthetic, config(mask_prompt_probability=p), SIZE, train=False)[i]["kind"]
                 for i in range(3)} for p in (0.0, 1.0)}
    assert kinds[1.0] == {"mask"} and "mask" not in kinds[0.0]


def test_clips_are_prompted_with_masks_half_the_time_unless_set(synthetic):
    def kinds(cfg):
        return [ClipDataset(synthetic, cfg, SIZE, train=False)[i]["kind"] for i in range(3)]
    assert kinds(config()) == kinds(config(mask_prompt_probability=0.5)) != kinds(config(mask_prompt_probability=0.0))


def test_center_click_probability_clicks_each_object_at_its_centre_on_the_first_frame(synthetic):
    sample = ClipDataset(synthetic, config(center_click_probability=1.0), SIZE, train=False)[0]
    first_frame = sample["masks"][0]   # (O, S, S)
    assert torch.equal(sample["points"], center_click(first_frame)[0])


def test_the_loader_batches_clips_by_the_contract(synthetic):
    loader = build_clip_loader(synthetic, config(), SIZE, batch_size=2, train=True, seed=3)
    batch = next(iter(loader))
    objects = len(batch["object_ids"])
    assert batch["pixel_values"].shape == (2, 4, 3, SIZE, SIZE)
    assert batch["valid"].shape == (2, 4, SIZE, SIZE)
    assert batch["masks"].shape == (objects, 4, SIZE, SIZE)
    assert batch["boxes"].shape == (objects, 4) and batch["labels"].shape == (objects, 1)
    assert batch["frame_indices"].shape == (2, 4) and batch["reversed"].shape == (2,)
    assert batch["object_clip_index"].tolist() == sorted(batch["object_clip_index"].tolist())
    assert set(batch["object_clip_index"].tolist()) == {0, 1} and len(batch["sequences"]) == 2


def test_a_seeded_loader_gives_the_same_batches_with_workers(synthetic):
    def batches(workers):
        cfg = config(num_workers=workers, color_jitter=0.3, reverse_time_probability=0.5)
        return list(build_clip_loader(synthetic, cfg, SIZE, batch_size=2, train=True, seed=3, epoch=2))

    reference, with_workers = batches(0), batches(2)
    assert len(reference) == len(with_workers) == 2
    for a, b in zip(reference, with_workers):
        assert a["sequences"] == b["sequences"] and a["kind"] == b["kind"]
        for key in ("pixel_values", "masks", "valid", "boxes", "points", "frame_indices", "reversed"):
            assert torch.equal(a[key], b[key]), key


def test_collate_keeps_each_clips_objects_with_their_masks():
    def clip(objects, kind):
        return {"pixel_values": torch.zeros(2, 3, 4, 4), "valid": torch.ones(2, 4, 4, dtype=torch.bool),
                "masks": torch.arange(2 * objects)[:, None, None].expand(-1, 4, 4).reshape(2, objects, 4, 4) > 0,
                "object_ids": torch.arange(1, objects + 1), "box": torch.zeros(objects, 4),
                "points": torch.zeros(objects, 1, 2), "labels": torch.ones(objects, 1, dtype=torch.int32),
                "kind": kind, "prompt_seed": objects, "frame_indices": torch.tensor([0, 1]),
                "reversed": False, "sequence": f"s{objects}"}

    first, second = clip(2, "box"), clip(1, "mask")
    batch = collate_clips([first, second])
    assert batch["object_clip_index"].tolist() == [0, 0, 1]
    assert batch["object_ids"].tolist() == [1, 2, 1]
    assert torch.equal(batch["masks"][1], first["masks"][:, 1])   # object 2 of clip 0, every frame
    assert torch.equal(batch["masks"][2], second["masks"][:, 0])
    assert batch["kind"] == "box" and batch["prompt_seed"] == 2   # SAM 2: one kind per batch
