"""``sam3-lora data ...`` on a parser built here (the main CLI only calls ``add_parser``)."""

import argparse
import json
import re
import sys
import types

import pytest
from PIL import Image

from sam3_lora.cli.data import add_parser
from sam3_lora.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ANN = "_annotations.coco.json"


def run(*argv) -> int:
    parser = argparse.ArgumentParser(prog="sam3-lora")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *map(str, argv)])
    return args.func(args)


def test_create_prints_what_it_wrote(tmp_path, capsys):
    assert run("create", tmp_path / "d") == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'd'}: train 0 images")
    assert (tmp_path / "d" / "README.md").is_file()


def test_synth_options_reach_the_generator(tmp_path, capsys):
    code = run("synth", tmp_path / "d", "--shapes", "star", "cross", "--colors", "yellow",
               "--background", "stripes", "checker", "--train", 3, "--valid", 0, "--test", 1,
               "--size", 64, "--max-size", 80, "--objects", 1, 2, "--seed", 5)
    assert code == 0
    pattern = rf"wrote {re.escape(str(tmp_path / 'd'))}: train 3 images/\d+ objects, test 1 images/\d+ objects; 2 categories"
    assert re.fullmatch(pattern, capsys.readouterr().out.strip())
    document = json.loads((tmp_path / "d" / "train" / ANN).read_text())
    assert [c["name"] for c in document["categories"]] == ["yellow star", "yellow cross"]
    assert all(64 <= i["width"] <= 80 for i in document["images"])
    assert not (tmp_path / "d" / "valid").exists()


def test_synth_radius_sets_the_shape_size(tmp_path):
    widths = {}
    for radius in ("0.1", "0.3"):
        run("synth", tmp_path / radius, "--train", 4, "--valid", 0, "--test", 0, "--size", 100,
            "--objects", 1, 1, "--radius", radius, radius)
        document = json.loads((tmp_path / radius / "train" / ANN).read_text())
        widths[radius] = max(a["bbox"][2] for a in document["annotations"])
    assert widths["0.1"] <= 20 and widths["0.3"] >= 40, widths   # circumradius 10 vs 30 px


def test_synth_rejects_an_unknown_shape_with_the_choices(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run("synth", tmp_path / "d", "--shapes", "blob")
    assert exit_info.value.code == 2
    assert "choose from" in capsys.readouterr().err


@pytest.fixture
def shapes(tmp_path):
    run("synth", tmp_path / "shapes", "--train", 6, "--valid", 0, "--test", 0, "--size", 64)
    return tmp_path / "shapes"


def test_convert_coco_and_split(shapes, tmp_path, capsys):
    train = shapes / "train"
    assert run("convert", "coco", train / ANN, train, tmp_path / "c", "--split", "test",
               "--copy") == 0
    assert "test 6 images" in capsys.readouterr().out
    assert run("convert", "coco", train / ANN, train, tmp_path / "r",
               "--split-ratios", 0.5, 0.25, 0.25, "--seed", 1) == 0
    assert "train 3 images" in capsys.readouterr().out
    assert run("convert", "split", train, tmp_path / "s", "--seed", 1) == 0
    assert "train 4 images" in capsys.readouterr().out  # 0.8 0.1 0.1 of 6: 4/1/1


def test_convert_yolo_and_labelme(tmp_path, capsys):
    (tmp_path / "y" / "images" / "train").mkdir(parents=True)
    (tmp_path / "y" / "labels" / "train").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "y" / "images" / "train" / "a.jpg")
    (tmp_path / "y" / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "y" / "classes.txt").write_text("cat\n")
    assert run("convert", "yolo", tmp_path / "y", tmp_path / "out") == 0
    assert capsys.readouterr().out.strip().endswith("train 1 images/1 objects; 1 categories")
    (tmp_path / "lm").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "lm" / "a.jpg")
    (tmp_path / "lm" / "a.json").write_text(json.dumps(
        {"imagePath": "a.jpg", "shapes": [{"label": "cat", "points": [[1, 1], [9, 1], [5, 8]]}]}))
    assert run("convert", "labelme", tmp_path / "lm", tmp_path / "out2", "--copy") == 0
    assert "train 1 images/1 objects" in capsys.readouterr().out


def test_user_errors_are_raised_for_the_main_cli(shapes):
    with pytest.raises(DataError, match="folder is not empty"):
        run("convert", "split", shapes / "train", shapes)


def test_validate_prints_the_report_and_returns_its_code(monkeypatch, tmp_path, capsys):
    calls = []
    report = types.SimpleNamespace(exit_code=1)
    fake = types.ModuleType("sam3_lora.data.checks")
    fake.validate_dataset = lambda root, annotation_file: calls.append((root, annotation_file)) or report
    fake.format_report = lambda given: "the report" if given is report else "?"
    monkeypatch.setitem(sys.modules, "sam3_lora.data.checks", fake)
    assert run("validate", tmp_path, "--annotation-file", "a.json") == 1
    assert calls == [(str(tmp_path), "a.json")]
    assert capsys.readouterr().out.strip() == "the report"


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["create", "--help"], ["synth", "--help"], ["validate", "--help"],
     ["convert", "--help"], ["convert", "yolo", "--help"], ["convert", "labelme", "--help"],
     ["convert", "coco", "--help"], ["convert", "split", "--help"]],
)
def test_every_command_has_help_with_an_example(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(*argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "sam3-lora data" in text and "example" in text


def test_a_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2


def test_convert_split_keeps_an_existing_test_split(tmp_path, capsys):
    run("synth", tmp_path / "export", "--train", 8, "--valid", 0, "--test", 3, "--size", 64)
    test_before = json.loads((tmp_path / "export" / "test" / ANN).read_text())
    assert run("convert", "split", tmp_path / "export" / "train", tmp_path / "out",
               "--keep-test") == 0
    assert "train 7 images" in capsys.readouterr().out   # 0.9 0.1 0 of 8: 7/1, test kept
    kept = json.loads((tmp_path / "out" / "test" / ANN).read_text())
    assert kept["images"] == test_before["images"]
    assert kept["annotations"] == test_before["annotations"]
    with pytest.raises(DataError, match=r"keeps test/ as it is, so the test ratio must be 0.*"
                                        r"\(argument split_ratios\)"):
        run("convert", "split", tmp_path / "export" / "train", tmp_path / "o2", "--keep-test",
            "--split-ratios", 0.8, 0.1, 0.1)
    run("synth", tmp_path / "solo", "--train", 4, "--valid", 0, "--test", 0, "--size", 64)
    with pytest.raises(DataError, match=r"no test/ beside .*train to keep"):
        run("convert", "split", tmp_path / "solo" / "train", tmp_path / "o3", "--keep-test")


def test_convert_split_help_documents_keep_test(capsys):
    with pytest.raises(SystemExit):
        run("convert", "split", "--help")
    assert "--keep-test" in capsys.readouterr().out


def test_synth_video_writes_clips_with_the_video_defaults_and_options(tmp_path, capsys):
    assert run("synth", tmp_path / "clips", "--video", "--train", 2, "--valid", 0,
               "--frames", 3, "--size", 48, "--objects", 1, 1, "--seed", 2) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"wrote {tmp_path / 'clips'}: train 2 sequences/6 frames/2 objects, "
                          "test 2 sequences/6 frames/2 objects; 9 categories")   # test: default 2
    frames = sorted((tmp_path / "clips" / "train" / "JPEGImages" / "seq0001").iterdir())
    assert [f.name for f in frames] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert Image.open(frames[0]).size == (48, 48)
    assert not (tmp_path / "clips" / "valid").exists()
    with pytest.raises(DataError, match=r"1 frames per clip; give at least 2 \(argument frames\)"):
        run("synth", tmp_path / "bad", "--video", "--frames", 1)


def test_validate_checks_a_video_folder_and_returns_1_on_errors(tmp_path, capsys):
    run("synth", tmp_path / "clips", "--video", "--train", 1, "--valid", 1, "--test", 0,
        "--frames", 3, "--size", 48, "--objects", 1, 2)
    capsys.readouterr()
    assert run("validate", tmp_path / "clips") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Video dataset {tmp_path / 'clips'}") and "OK: no problems" in out
    (tmp_path / "clips" / "train" / "Annotations" / "seq0000" / "00001.png").unlink()
    assert run("validate", tmp_path / "clips" / "train") == 1
    out = capsys.readouterr().out
    assert "error missing_mask: sequence 'seq0000': 1 frame(s) (00001)" in out
    assert run("validate", tmp_path / "clips" / "train", "--protocol", "youtube-vos") == 0
    listed = tmp_path / "only.txt"
    listed.write_text("seq0000\nnope\n")
    assert run("validate", tmp_path / "clips" / "valid", "--sequences", listed) == 1
    assert "error unknown_sequence" in capsys.readouterr().out


def test_validate_checks_a_youtube_vis_file(tmp_path, capsys):
    from tests.data.video.test_vis import vis_document, write_vis

    path = write_vis(tmp_path)
    assert run("validate", path) == 0
    assert "OK: no problems" in capsys.readouterr().out
    document = vis_document()
    document["annotations"][0]["category_id"] = 5
    path.write_text(json.dumps(document))
    (tmp_path / "JPEGImages").rename(tmp_path / "frames")
    assert run("validate", path, "--frames-dir", tmp_path / "frames") == 1
    out = capsys.readouterr().out
    assert "error unknown_category: annotation id 1: category_id 5" in out
    assert "FAILED: 1 error(s)" in out
