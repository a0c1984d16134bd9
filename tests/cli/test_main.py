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


def test_library_errors_name_their_flag_on_the_command_line(capsys, tmp_path):
    from sam3_lora.data.synth import synthesize

    synthesize(tmp_path / "data", images_per_split={"train": 2}, image_size=112, seed=0)
    code, _out, err = run(capsys, "train", "--config", "demo", "model.source=sam3-tiny",
                          f"data.root={tmp_path / 'data'}", f"output.dir={tmp_path / 'run'}",
                          "--resume", str(tmp_path / "nothing"))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and err.strip().endswith("no checkpoint there; give a run folder "
                                                              "with checkpoints/ (--resume)")


def test_info_explains_config_keys(capsys):
    code, out, _ = run(capsys, "info", "--explain", "lora.rank")
    assert code == 0 and out.startswith("  lora.rank = 8\n") and "inner dimension" in out
    _, out, _ = run(capsys, "info", "--explain", "training")
    assert "training.mixed_precision" in out and "training.seed" in out
    code, _out, err = run(capsys, "info", "--explain", "lora.rnak")
    assert code == 2 and "did you mean 'rank'" in err


def test_the_config_reference_is_generated_from_the_schema():
    """docs/config.md is what `sam3-lora info --explain --markdown` prints; regenerate it
    with that command when a field changes."""
    from pathlib import Path

    from sam3_lora.config import Config, reference_markdown

    written = (Path(__file__).parents[2] / "docs" / "config.md").read_text()
    assert written == reference_markdown() + "\n"
    for section, field in Config.model_fields.items():
        for name, spec in field.annotation.model_fields.items():
            assert spec.description, f"{section}.{name} has no documentation"
