import re

import pytest

from sam3_lora.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("info", "train", "validate", "evaluate", "predict", "export", "data"):
        assert f"    {command} " in text
    assert "presets: minimal, balanced, full, demo" in text


def test_info_on_the_full_architecture(capsys):
    code, out, _ = run(capsys, "info", "--config", "balanced", "model.source=sam3")
    assert code == 0
    assert "model:   sam3 (1008 px)" in out
    assert re.search(r"vision_encoder\s+192\s+", out) and re.search(r"mask_decoder\s+4\s+", out)
    assert "% trainable" in out


def test_info_applies_legacy_flags_and_overrides(capsys):
    _, out, _ = run(capsys, "info", "--config", "minimal", "model.source=sam3-tiny", "--lora_rank", "2",
                    "lora.target_modules=[all]")
    assert "rank 2" in out and "layers all" in out


@pytest.mark.parametrize("argv, message", [
    (["info", "--config", "minimal", "lora.rnak=3"], "did you mean 'rank'"),
    (["info", "--config", "nope"], "no such config file"),
    (["info", "--config", "demo", "lora.target_modules=[attn]"], "unknown layer name"),
    (["info", "--config", "demo", "model.source=./missing"], "no such folder"),
])
def test_user_errors_are_one_line_with_status_2(capsys, argv, message):
    code, _out, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err
