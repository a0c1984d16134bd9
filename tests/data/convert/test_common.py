"""YOLO, COCO and split converters: round trips against a synthetic source, and errors.

The source is a synthetic dataset (polygons for whole shapes, RLE for occluded ones); a small
writer in this file turns it into YOLO, polygons as polygon lines and RLE objects as box lines.
LabelMe is tested in test_convert_labelme.py.
"""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sam3_lora.data.convert.coco import convert_coco, split_coco
from sam3_lora.data.convert.common import PendingImage, place_image, split_by_ratios, write_layout
from sam3_lora.data.convert.yolo import convert_yolo
from sam3_lora.data.synth import synthesize
from sam3_lora.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ANN = "_annotations.coco.json"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "d"
    synthesize(root, images_per_split={"train": 6, "valid": 3, "test": 2},
               objects_per_image=(2, 5), seed=1)
    return root


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_yolo(coco_root, out, layout="ultralytics", names="yaml"):
    """Synthetic COCO -> YOLO; polygons as polygon lines, RLE objects as box lines."""
    for split in ("train", "valid", "test"):
        document = json.loads((coco_root / split / ANN).read_text())
        folder = "val" if split == "valid" else split
        images, labels = ((out / "images" / folder, out / "labels" / folder)
                          if layout == "ultralytics" else (out / split / "images", out / split / "labels"))
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for image in document["images"]:
            shutil.copy(coco_root / split / image["file_name"], images / image["file_name"])
            w, h = image["width"], image["height"]
            lines = []
            for a in document["annotations"]:
                if a["image_id"] != image["id"]:
                    continue
                if isinstance(a["segmentation"], list):
                    xy = np.array(a["segmentation"][0]).reshape(-1, 2) / (w, h)
                else:
                    x, y, bw, bh = a["bbox"]
                    xy = np.array([(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h])
                lines.append(f"{a['category_id'] - 1} " + " ".join(f"{v:.6f}" for v in xy.ravel()))
            (labels / image["file_name"]).with_suffix(".txt").write_text("\n".join(lines) + "\n")
    categories = [c["name"] for c in document["categories"]]
    if names == "yaml":
        mapping = "\n".join(f"  {i}: {n}" for i, n in enumerate(categories))
        (out / "data.yaml").write_text(f"path: .\ntrain: images/train\nnames:\n{mapping}\n")
    else:
        (out / "classes.txt").write_text("\n".join(categories) + "\n")


def corners(bbox):
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def assert_same_objects(source_root, out_root, split, boxes_only_for_rle=True):
    """Each converted image holds the source objects in order: masks IoU > 0.9, boxes 1 px."""
    src, out = COCO(str(source_root / split / ANN)), COCO(str(out_root / split / ANN))
    by_name = {i["file_name"]: i for i in out.dataset["images"]}
    assert len(by_name) == len(src.dataset["images"])
    for image in src.dataset["images"]:
        converted = by_name[image["file_name"]]
        assert (converted["width"], converted["height"]) == (image["width"], image["height"])
        source_anns = src.loadAnns(src.getAnnIds(imgIds=image["id"]))
        out_anns = out.loadAnns(out.getAnnIds(imgIds=converted["id"]))
        assert [a["category_id"] for a in out_anns] == [a["category_id"] for a in source_anns]
        for s, o in zip(source_anns, out_anns):
            assert np.allclose(corners(s["bbox"]), corners(o["bbox"]), atol=1.0)
            if boxes_only_for_rle and isinstance(s["segmentation"], dict):
                assert o["segmentation"] == []  # a YOLO box line is a box-only object
            else:
                assert iou(src.annToMask(s) > 0, out.annToMask(o) > 0) > 0.9


def assert_reads_back_cleanly(root):
    """The project's own COCO reader finds no problem in any written split."""
    coco = pytest.importorskip("sam3_lora.data.coco.split")
    for split in ("train", "valid", "test"):
        if (root / split).exists():
            assert coco.load_coco_split(root / split).problems == []


@pytest.mark.parametrize(("layout", "names"), [("ultralytics", "yaml"), ("roboflow", "txt")])
def test_yolo_round_trip(source, tmp_path, layout, names):
    yolo = tmp_path / "yolo"
    write_yolo(source, yolo, layout, names)
    before = snapshot(yolo)
    summary = convert_yolo(yolo, tmp_path / "out")
    for split in ("train", "valid", "test"):
        assert_same_objects(source, tmp_path / "out", split)
    assert set(summary.images) == {"train", "valid", "test"}
    assert snapshot(yolo) == before  # the input is only read
    assert_reads_back_cleanly(tmp_path / "out")
    out_image = tmp_path / "out" / "train" / "000000.png"
    assert out_image.read_bytes() == (source / "train" / "000000.png").read_bytes()


def test_yolo_single_folder_split_by_ratios(source, tmp_path):
    yolo = tmp_path / "yolo"
    write_yolo(source, yolo)
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in (yolo / "images" / "train").iterdir():  # images and labels side by side
        shutil.copy(path, flat / path.name)
        shutil.copy(yolo / "labels" / "train" / f"{path.stem}.txt", flat)
    shutil.copy(yolo / "data.yaml", flat)
    summary = convert_yolo(flat, tmp_path / "out", split_ratios=(0.5, 0.25, 0.25), seed=2)
    assert summary.images == {"train": 3, "valid": 2, "test": 1}
    pooled = {i["file_name"] for s in summary.images
              for i in json.loads((tmp_path / "out" / s / ANN).read_text())["images"]}
    assert pooled == {p.name for p in (yolo / "images" / "train").iterdir()}


YOLO_ERRORS = [
    ("0 0.5 0.5 0.2\n", "a.txt:1: 3 coordinates after the class; write 4"),
    ("0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.2 0.1 0.3\n", "a.txt:2: 5 coordinates"),
    ("\n5 0.5 0.5 0.2 0.2\n", "a.txt:2: class index 5 out of range: .*names 2 classes"),
    ("0 0.5 abc 0.2 0.2\n", "a.txt:1: value 'abc' is not a number"),
    ("0 0.5 nan 0.2 0.2\n", "a.txt:1: value 'nan' is not a number"),
    ("1.5 0.5 0.5 0.2 0.2\n", "a.txt:1: class index 1.5 out of range"),
    ("0 320 240 50 50\n", "a.txt:1: coordinate 320 is outside 0..1; YOLO values are normalised"),
]


@pytest.mark.parametrize(("label", "message"), YOLO_ERRORS)
def test_yolo_bad_label_lines_are_one_line_errors(tmp_path, label, message):
    write_tiny_yolo(tmp_path / "yolo", label)
    with pytest.raises(DataError, match=message) as error:
        convert_yolo(tmp_path / "yolo", tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing is written when the input is bad


def write_tiny_yolo(root, label, names="names: [cat, dog]\n"):
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(root / "images" / "train" / "a.jpg")
    (root / "labels" / "train" / "a.txt").write_text(label)
    (root / "data.yaml").write_text(names)


def test_yolo_label_without_image_is_an_error(tmp_path):
    write_tiny_yolo(tmp_path / "yolo", "0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "yolo" / "labels" / "train" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"b.txt: no image b\.\* in .*; add the image or delete"):
        convert_yolo(tmp_path / "yolo", tmp_path / "out")


@pytest.mark.parametrize(
    ("names", "message"),
    [("names: cat\n", "field 'names' must list the class names"),
     ("names: {0: cat, 2: dog}\n", "indices 0..N-1"),
     ("names: [cat\n", "not valid YAML")],
)
def test_yolo_bad_names_file(tmp_path, names, message):
    write_tiny_yolo(tmp_path / "yolo", "0 0.5 0.5 0.2 0.2\n", names)
    with pytest.raises(DataError, match=message):
        convert_yolo(tmp_path / "yolo", tmp_path / "out")


def test_yolo_without_names_asks_for_them(tmp_path):
    write_tiny_yolo(tmp_path / "yolo", "0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "yolo" / "data.yaml").unlink()
    with pytest.raises(DataError, match=r"no class names found .*give the file listing them \(argument names\)"):
        convert_yolo(tmp_path / "yolo", tmp_path / "out")
    (tmp_path / "names.txt").write_text("cat\ndog\n\n")
    summary = convert_yolo(tmp_path / "yolo", tmp_path / "out", names=tmp_path / "names.txt")
    assert summary.objects == {"train": 1} and summary.num_categories == 2


@pytest.mark.parametrize("kind", ["non-empty", "file"])
def test_output_folder_must_be_new_or_empty(source, tmp_path, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("")
    else:
        out.mkdir()
        (out / "x").write_text("")
    with pytest.raises(DataError, match="choose an empty or new output folder"):
        convert_coco(source / "train" / ANN, source / "train", out)


def test_coco_file_and_folder_to_one_split_keeps_ids_and_objects(source, tmp_path):
    summary = convert_coco(source / "train" / ANN, source / "train", tmp_path / "out",
                           split="valid")
    assert set(summary.images) == {"valid"}
    before = json.loads((source / "train" / ANN).read_text())
    after = json.loads((tmp_path / "out" / "valid" / ANN).read_text())
    assert after["images"] == before["images"] and after["annotations"] == before["annotations"]
    assert after["categories"] == before["categories"]


def split_ids(document):
    return [sorted(i["id"] for i in document[s]["images"]) for s in ("train", "valid", "test")]


def test_split_is_deterministic_keeps_ids_and_links_images(source, tmp_path):
    split_coco(source / "train", tmp_path / "a", ratios=(0.5, 0.25, 0.25), seed=7)
    split_coco(source / "train" / ANN, tmp_path / "b", ratios=(0.5, 0.25, 0.25), seed=7)
    split_coco(source / "train", tmp_path / "c", ratios=(0.5, 0.25, 0.25), seed=8, link=False)
    read = {k: {s: json.loads((tmp_path / k / s / ANN).read_text()) for s in ("train", "valid",
            "test")} for k in "abc"}
    assert read["a"] == read["b"]
    assert split_ids(read["a"]) != split_ids(read["c"])
    source_doc = json.loads((source / "train" / ANN).read_text())
    for version in read.values():
        assert sorted(i for ids in split_ids(version) for i in ids) == [i["id"] for i in source_doc["images"]]
        annotations = sorted((a for d in version.values() for a in d["annotations"]),
                             key=lambda a: a["id"])
        assert annotations == source_doc["annotations"]
    linked = tmp_path / "a" / "train" / read["a"]["train"]["images"][0]["file_name"]
    copied = tmp_path / "c" / "train" / read["c"]["train"]["images"][0]["file_name"]
    assert os.stat(linked).st_ino == os.stat(source / "train" / linked.name).st_ino
    assert os.stat(copied).st_ino != os.stat(source / "train" / copied.name).st_ino


def test_split_of_a_layout_root_names_the_fix(source, tmp_path):
    with pytest.raises(DataError, match="give one split folder"):
        split_coco(source, tmp_path / "out")


def test_split_counts():
    assert [len(v) for v in split_by_ratios(list(range(10)), (0.8, 0.1, 0.1), 0).values()] == [
        8, 1, 1]
    assert [len(v) for v in split_by_ratios([1, 2, 3], (0.8, 0.1, 0.1), 0).values()] == [1, 1, 1]
    assert set(split_by_ratios(list(range(5)), (1.0, 0.0, 0.0), 0)) == {"train"}
    for ratios in [(0.8, 0.1), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1)]:
        with pytest.raises(DataError, match="sum to 1, e.g. 0.8 0.1 0.1"):
            split_by_ratios([1], ratios, 0)


def write_coco(root, images, annotations, categories):
    root.mkdir()
    for image in images:
        Image.new("RGB", (image.get("width", 40), image.get("height", 30))).save(
            root / image["file_name"])
    document = {"images": images, "annotations": annotations, "categories": categories}
    (root / ANN).write_text(json.dumps(document))


def test_coco_category_zero_dropped_when_unused_and_shifted_when_used(tmp_path):
    image = {"id": 3, "file_name": "x.jpg"}  # no size: read from the file
    box = {"id": 1, "image_id": 3, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
    write_coco(tmp_path / "rf", [image], [dict(box, category_id=1)],
               [{"id": 0, "name": "shapes"}, {"id": 1, "name": "cat"}])
    convert_coco(tmp_path / "rf" / ANN, tmp_path / "rf", tmp_path / "o1")
    result = json.loads((tmp_path / "o1" / "train" / ANN).read_text())
    assert result["categories"] == [{"id": 1, "name": "cat"}]
    assert (result["images"][0]["width"], result["images"][0]["height"]) == (40, 30)
    write_coco(tmp_path / "zero", [image], [dict(box, category_id=0)],
               [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}])
    convert_coco(tmp_path / "zero" / ANN, tmp_path / "zero", tmp_path / "o2")
    result = json.loads((tmp_path / "o2" / "train" / ANN).read_text())
    assert [c["id"] for c in result["categories"]] == [1, 2]
    assert result["annotations"][0]["category_id"] == 1


@pytest.mark.parametrize(
    ("images", "annotations", "message"),
    [([{"id": 1, "file_name": "gone.jpg"}], [], "image 'gone.jpg' not found in"),
     ([{"file_name": "x.jpg"}], [], r"images\[0\] needs 'id' and 'file_name'"),
     ([{"id": 1, "file_name": "x.jpg"}] * 2, [], "image id 1 appears twice"),
     ([{"id": 1, "file_name": "x.jpg"}], [{"id": 1, "image_id": 9}],
      r"annotations\[0\] refers to image_id 9")],
)
def test_coco_bad_input_errors(tmp_path, images, annotations, message):
    root = tmp_path / "src"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "x.jpg")
    (root / ANN).write_text(json.dumps({"images": images, "annotations": annotations}))
    with pytest.raises(DataError, match=message) as error:
        convert_coco(root / ANN, root, tmp_path / "out")
    assert "\n" not in str(error.value)


def test_coco_invalid_json_names_the_line(tmp_path):
    (tmp_path / "a.json").write_text('{\n  "images": [,]\n}')
    with pytest.raises(DataError, match=r"a.json:2: invalid JSON"):
        convert_coco(tmp_path / "a.json", tmp_path, tmp_path / "out")


def test_yolo_accepts_bom_and_crlf_and_refuses_other_encodings(tmp_path):
    write_tiny_yolo(tmp_path / "yolo", "")
    label = tmp_path / "yolo" / "labels" / "train" / "a.txt"
    label.write_bytes("\ufeff0 0.5 0.5 0.2 0.2\r\n1 0.1 0.1 0.5 0.1 0.5 0.5\r\n".encode())
    summary = convert_yolo(tmp_path / "yolo", tmp_path / "out")
    assert summary.objects == {"train": 2}
    (tmp_path / "yolo" / "data.yaml").write_bytes("names: [caf\xe9]\n".encode("latin-1"))
    with pytest.raises(DataError, match="data.yaml: not UTF-8 text; re-save it as UTF-8"):
        convert_yolo(tmp_path / "yolo", tmp_path / "out2")


@pytest.mark.parametrize("link", [True, False])
def test_placing_an_image_replaces_a_planted_symlink_instead_of_writing_through(tmp_path, link):
    source, victim = tmp_path / "a.png", tmp_path / "victim.png"
    Image.new("RGB", (4, 4), "red").save(source)
    victim.write_bytes(b"keep me")
    destination = tmp_path / "out" / "train" / "a.png"
    destination.parent.mkdir(parents=True)
    destination.symlink_to(victim)
    place_image(source, destination, link)
    assert victim.read_bytes() == b"keep me"
    assert not destination.is_symlink() and destination.read_bytes() == source.read_bytes()


def test_placing_an_image_under_a_planted_folder_link_is_refused(tmp_path):
    source, elsewhere = tmp_path / "a.png", tmp_path / "elsewhere"
    Image.new("RGB", (4, 4), "red").save(source)
    elsewhere.mkdir()
    (tmp_path / "out" / "train").mkdir(parents=True)
    (tmp_path / "out" / "train" / "sub").symlink_to(elsewhere)
    with pytest.raises(DataError, match="symbolic link"):
        place_image(source, tmp_path / "out" / "train" / "sub" / "a.png", False,
                    inside=tmp_path / "out")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", ["../../x.png", "/tmp/x.png", "a/../../x.png"])
def test_write_layout_refuses_an_output_name_leading_outside(tmp_path, name):
    source = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(source)
    pending = PendingImage(source, name, 4, 4)
    with pytest.raises(DataError, match="outside the split folder"):
        write_layout(tmp_path / "out", {"train": [pending]}, [])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../x.jpg", "{outside}"])
def test_coco_file_name_leading_outside_is_looked_up_by_base_name_inside_only(tmp_path, name):
    outside = tmp_path / "x.jpg"
    Image.new("RGB", (8, 8)).save(outside)
    root = tmp_path / "src"
    root.mkdir()
    (root / ANN).write_text(json.dumps({"images": [
        {"id": 1, "file_name": name.format(outside=outside)}], "categories": []}))
    with pytest.raises(DataError, match="image .* not found in .*src"):
        convert_coco(root / ANN, root, tmp_path / "out")
    Image.new("RGB", (8, 8)).save(root / "x.jpg")
    convert_coco(root / ANN, root, tmp_path / "out")
    document = json.loads((tmp_path / "out" / "train" / ANN).read_text())
    assert document["images"][0]["file_name"] == "x.jpg"
    assert (tmp_path / "out" / "train" / "x.jpg").samefile(root / "x.jpg")
