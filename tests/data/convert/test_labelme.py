"""LabelMe per-image JSON -> COCO layout: round trip against synthetic masks, and errors."""

import base64
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sam3_lora.data.convert.labelme import convert_labelme
from sam3_lora.data.synth import synthesize
from sam3_lora.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ANN = "_annotations.coco.json"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "d"
    synthesize(root, images_per_split={"train": 6}, objects_per_image=(2, 5), seed=4)
    return root / "train"


def mask_shape(label, mask):
    """A LabelMe 'mask' shape: the bbox crop as a base64 PNG and its two corners."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    buffer = io.BytesIO()
    Image.fromarray(crop.astype(np.uint8) * 255).save(buffer, format="PNG")
    return {"label": label, "shape_type": "mask", "group_id": None,
            "points": [[int(xs.min()), int(ys.min())], [int(xs.max()), int(ys.max())]],
            "mask": base64.b64encode(buffer.getvalue()).decode()}


def write_labelme(coco_split, out):
    """Polygons as polygon shapes, occluded (RLE) objects as mask shapes; the last image
    gets no JSON (unlabelled)."""
    out.mkdir()
    coco = COCO(str(coco_split / ANN))
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    for image in coco.dataset["images"]:
        shutil.copy(coco_split / image["file_name"], out / image["file_name"])
        if image is coco.dataset["images"][-1]:
            continue
        shapes = []
        for a in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
            label = names[a["category_id"]]
            if isinstance(a["segmentation"], list):
                points = np.array(a["segmentation"][0]).reshape(-1, 2).tolist()
                shapes.append({"label": label, "points": points, "shape_type": "polygon"})
            else:
                shapes.append(mask_shape(label, coco.annToMask(a) > 0))
        document = {"version": "5.4.1", "imagePath": image["file_name"], "imageData": None,
                    "imageWidth": image["width"], "imageHeight": image["height"],
                    "shapes": shapes}
        (out / image["file_name"]).with_suffix(".json").write_text(json.dumps(document))
    return coco


def test_labelme_round_trip_polygons_and_masks(source, tmp_path):
    coco = write_labelme(source, tmp_path / "lm")
    before = {p: p.read_bytes() for p in (tmp_path / "lm").iterdir()}
    summary = convert_labelme(tmp_path / "lm", tmp_path / "out")
    assert summary.notes == ["1 images without JSON skipped"]
    out = COCO(str(tmp_path / "out" / "train" / ANN))
    names = [c["name"] for c in out.dataset["categories"]]
    assert names == sorted(names) and out.dataset["categories"][0]["id"] == 1
    out_names = {c["id"]: c["name"] for c in out.dataset["categories"]}
    src_names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    by_name = {i["file_name"]: i["id"] for i in out.dataset["images"]}
    assert len(by_name) == len(coco.dataset["images"]) - 1
    for image in coco.dataset["images"][:-1]:
        source_anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        out_anns = out.loadAnns(out.getAnnIds(imgIds=by_name[image["file_name"]]))
        assert [out_names[a["category_id"]] for a in out_anns] == [
            src_names[a["category_id"]] for a in source_anns]
        for s, o in zip(source_anns, out_anns):
            a, b = coco.annToMask(s) > 0, out.annToMask(o) > 0
            assert (a & b).sum() / (a | b).sum() > 0.99
            assert np.allclose(s["bbox"][:2], o["bbox"][:2], atol=1.0)
    assert {p: p.read_bytes() for p in (tmp_path / "lm").iterdir()} == before
    coco_reader = pytest.importorskip("sam3_lora.data.coco.split")
    assert coco_reader.load_coco_split(tmp_path / "out" / "train").problems == []


def write_one(root, shapes, size=(60, 40), **fields):
    root.mkdir(exist_ok=True)
    Image.new("RGB", size).save(root / "a.png")
    document = {"imagePath": "a.png", "shapes": shapes, **fields}
    (root / "a.json").write_text(json.dumps(document))


def poly(label, points, **extra):
    return {"label": label, "points": points, "shape_type": "polygon", **extra}


def test_rectangles_circles_groups_and_skipped_shapes(tmp_path):
    left, right = [[2, 2], [10, 2], [10, 10]], [[20, 2], [28, 2], [28, 10]]
    write_one(tmp_path / "lm", [
        {"label": "box", "points": [[30, 20], [10, 5]], "shape_type": "rectangle"},
        {"label": "ball", "points": [[30, 20], [30, 28]], "shape_type": "circle"},
        poly("cut", left, group_id=1), poly("cut", right, group_id=1),
        {"label": "dot", "points": [[3, 3]], "shape_type": "point"},
        {"label": "old", "points": left},  # no shape_type: a polygon
    ])
    summary = convert_labelme(tmp_path / "lm", tmp_path / "out", split_ratios=(1.0, 0.0, 0.0))
    assert summary.notes == ["1 point/line shapes skipped"] and set(summary.images) == {"train"}
    document = json.loads((tmp_path / "out" / "train" / ANN).read_text())
    names = {c["id"]: c["name"] for c in document["categories"]}
    by_label = {names[a["category_id"]]: a for a in document["annotations"]}
    assert by_label["box"]["segmentation"] == [] and by_label["box"]["bbox"] == [10, 5, 20, 15]
    assert abs(by_label["ball"]["area"] - np.pi * 64) < 12
    assert len(by_label["cut"]["segmentation"]) == 2  # one object in two parts
    assert len(document["annotations"]) == 4 and "dot" in names.values()


@pytest.mark.parametrize(
    ("shapes", "fields", "message"),
    [([poly("x", [[1, 1], [5, 5]])], {}, r"a.json: shapes\[0\] \(polygon\): a polygon needs"),
     ([poly("x", [[1, "a"], [5, 5], [1, 5]])], {}, "field 'points' must be a list of"),
     ([poly("", [[1, 1], [5, 5], [1, 5]])], {}, r"shapes\[0\] field 'label' is empty"),
     ([{"label": "x", "points": [[1, 1]], "shape_type": "rectangle"}], {}, "exactly 2 points"),
     ([{"label": "x", "points": [[1, 1], [2, 2]], "shape_type": "blob"}], {}, "unknown shape"),
     ([], {"imageWidth": 61}, "field 'imageWidth' is 61 but a.png measures 60 px")],
)
def test_labelme_bad_shapes_are_one_line_errors(tmp_path, shapes, fields, message):
    write_one(tmp_path / "lm", shapes, **fields)
    with pytest.raises(DataError, match=message) as error:
        convert_labelme(tmp_path / "lm", tmp_path / "out")
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


def test_labelme_missing_image_and_foreign_json(tmp_path):
    write_one(tmp_path / "lm", [])
    (tmp_path / "lm" / "a.png").unlink()
    with pytest.raises(DataError, match="image 'a.png' not found beside the JSON"):
        convert_labelme(tmp_path / "lm", tmp_path / "out")
    (tmp_path / "lm" / "a.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="not a LabelMe file"):
        convert_labelme(tmp_path / "lm", tmp_path / "out")


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_image_path_leading_outside_the_source_is_refused(tmp_path, where):
    """imagePath '../../x.png' once overwrote x.png outside OUT and listed that name;
    an absolute one pulled any image into the dataset."""
    outside = tmp_path / "x.png"
    Image.new("RGB", (60, 40), "red").save(outside)
    before = outside.read_bytes()
    stated = "../x.png" if where == "parent" else str(outside)
    write_one(tmp_path / "lm", [poly("x", [[1, 1], [5, 5], [1, 5]])], imagePath=stated)
    with pytest.raises(DataError, match=r"a.json: field 'imagePath' .* leads outside") as error:
        convert_labelme(tmp_path / "lm", tmp_path / "deep" / "out")
    assert "\n" not in str(error.value) and not (tmp_path / "deep").exists()
    assert outside.read_bytes() == before


def test_image_path_with_dots_inside_the_source_is_kept_inside(tmp_path):
    (tmp_path / "lm").mkdir()
    write_one(tmp_path / "lm" / "labels", [poly("x", [[1, 1], [5, 5], [1, 5]])],
              imagePath="../images/a.png")
    (tmp_path / "lm" / "images").mkdir()
    (tmp_path / "lm" / "labels" / "a.png").rename(tmp_path / "lm" / "images" / "a.png")
    convert_labelme(tmp_path / "lm", tmp_path / "out")
    document = json.loads((tmp_path / "out" / "train" / ANN).read_text())
    assert [i["file_name"] for i in document["images"]] == ["images/a.png"]
    assert (tmp_path / "out" / "train" / "images" / "a.png").is_file()
