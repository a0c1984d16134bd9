"""Empty layout: three valid empty splits, a README, refusal of used folders."""

import json

import pytest
from pycocotools.coco import COCO

from sam3_lora.data.scaffold import SPLITS, create_layout, prepare_output_dir, write_annotation_file
from sam3_lora.errors import DataError


def test_writes_three_empty_valid_splits_and_a_readme(tmp_path):
    summary = create_layout(tmp_path / "new" / "data")
    root = tmp_path / "new" / "data"
    for split in SPLITS:
        path = root / split / "_annotations.coco.json"
        document = json.loads(path.read_text())
        assert document["images"] == document["annotations"] == document["categories"] == []
        assert COCO(str(path)).getImgIds() == []
    readme = (root / "README.md").read_text()
    for words in ("sam3-lora data validate", "sam3-lora train", "segmentation", "bbox",
                  "category_id", "iscrowd", str(root)):
        assert words in readme
    assert str(summary).startswith(f"wrote {root}: train 0 images/0 objects")


def test_an_existing_empty_folder_is_fine(tmp_path):
    create_layout(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "test", "train", "valid"]


def test_refuses_a_non_empty_folder_without_touching_it(tmp_path):
    (tmp_path / "mine.jpg").write_bytes(b"x")
    with pytest.raises(DataError) as error:
        create_layout(tmp_path)
    assert str(error.value) == (
        f"{tmp_path}: folder is not empty; choose an empty or new output folder"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["mine.jpg"]


def test_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(DataError, match="is a file, not a folder"):
        prepare_output_dir(tmp_path / "f")


def test_annotation_file_replaces_a_planted_symlink_instead_of_writing_through(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text("keep me")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "_annotations.coco.json").symlink_to(victim)
    write_annotation_file(tmp_path / "train" / "_annotations.coco.json", [], [], [])
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "train" / "_annotations.coco.json").is_symlink()
