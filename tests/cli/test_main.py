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
    from sam3_lora.config import preset_names

    assert f"presets: {', '.join(preset_names())} (see configs/)" in text
    assert preset_names()[:3] == ["minimal", "balanced", "full"] and "heads" in preset_names()


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


def test_warnings_are_one_line_and_peft_deprecations_stay_hidden(tmp_path):
    """A command's Python warnings read ``warning: ...`` without Python's source line, and
    PEFT's use of transformers' deprecated ``is_gradient_checkpointing`` stays inside."""
    import subprocess
    import sys

    from sam3_lora.data.synth import synthesize

    synthesize(tmp_path / "data", images_per_split={"train": 2}, image_size=112, seed=0)
    result = subprocess.run(
        [sys.executable, "-W", "always", "-m", "sam3_lora.cli", "train", "--config", "demo", "model.source=sam3-tiny",
         f"data.root={tmp_path / 'data'}", f"output.dir={tmp_path / 'run'}", "training.max_steps=1",
         "data.prompt_mode=generic"], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^warning: .*one prompt \(object\), so there are no negative queries.*data\.negative_phrases"
                     r"[^\n]*$", result.stderr, flags=re.MULTILINE), result.stderr
    assert "warnings.warn(" not in result.stderr and "UserWarning" not in result.stderr
    assert "is_gradient_checkpointing" not in result.stderr


def test_one_line_warning_is_bounded():
    from sam3_lora.cli.main import MAX_WARNING_CHARS, one_line_warning

    text = one_line_warning(FutureWarning("x\n" * 1000), FutureWarning, "f.py", 1, "source line")
    assert text.startswith("warning (FutureWarning): x x") and text.count("\n") == 1
    assert len(text) <= MAX_WARNING_CHARS + 30 and "source line" not in text


def test_validate_refuses_an_adapter_with_nan_weights(capsys, tmp_path):
    """It used to load, predict nothing and exit 0."""
    import torch

    from sam3_lora.data.synth import synthesize
    from sam3_lora.lora.adapter import save_adapter
    from sam3_lora.model.loading import load_sam3
    from tests.conftest import TINY_CONFIG
    from tests.lora.test_adapter import trained_adapter

    synthesize(tmp_path / "data", images_per_split={"train": 2, "valid": 2}, image_size=112, seed=0)
    adapted = trained_adapter(load_sam3("sam3-tiny", seed=0).model)
    with torch.no_grad():
        next(p for n, p in adapted.named_parameters() if "lora_B" in n).fill_(float("nan"))
    save_adapter(adapted, tmp_path / "nan", base_source="sam3-tiny")
    code, _out, err = run(capsys, "validate", "--config", str(TINY_CONFIG), f"data.root={tmp_path / 'data'}",
                          "--weights", str(tmp_path / "nan"), "--output", str(tmp_path / "eval"))
    assert code == 2 and err.count("\n") == 1 and "hold NaN or infinite values" in err


def test_explain_with_markdown_and_a_key_is_refused(capsys):
    """--markdown used to print the whole reference, ignoring the key."""
    code, out, err = run(capsys, "info", "--explain", "lora.rank", "--markdown")
    assert code == 2 and out == "" and err.count("\n") == 1 and "--markdown" in err


@pytest.mark.parametrize("argv, message", [
    (["--config", "missing.yaml"], "missing.yaml: no such config file"),
    (["lora.rank=abc"], "lora.rank: Input should be a valid integer"),
    (["lora.rnak=3"], "did you mean 'rank'"),
])
def test_explain_checks_the_config_and_overrides_it_is_given(capsys, argv, message):
    """They used to be ignored: a missing --config and a bad override passed silently."""
    code, out, err = run(capsys, "info", "--explain", "lora.rank", *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err


def test_explain_shows_the_value_a_config_gives(capsys):
    code, out, _ = run(capsys, "info", "--explain", "lora.rank", "--config", "minimal", "lora.rank=12")
    assert code == 0 and out.startswith("  lora.rank = 8 (this config: 12)\n")
    code, out, _ = run(capsys, "info", "--explain", "lora.rank")
    assert code == 0 and "this config" not in out


@pytest.mark.parametrize("key", ["x" * 100_000, "lora." + "y" * 100_000])
def test_explain_of_a_huge_key_is_a_short_line(capsys, key):
    code, _out, err = run(capsys, "info", "--explain", key)
    assert code == 2 and err.count("\n") == 1 and len(err) < 400


def test_explain_prints_plain_text_without_restructuredtext_marks(capsys):
    """``use_rslora`` was printed with its reStructuredText backquotes."""
    from sam3_lora.config import reference_markdown

    code, out, _ = run(capsys, "info", "--explain", "lora.alpha")
    assert code == 0 and "``" not in out and "(alpha / sqrt(rank) with use_rslora)" in out
    _, out, _ = run(capsys, "info", "--explain")
    assert "``" not in out
    assert "``use_rslora``" in reference_markdown()   # Markdown keeps its code marks


@pytest.mark.parametrize("flag", ["--lora-rank", "--lora_rank"])
def test_legacy_flags_take_either_spelling(capsys, flag):
    """--learning-rate (hyphen) used to print the top-level usage with no hint."""
    code, out, _ = run(capsys, "info", "--config", "minimal", "model.source=sam3-tiny", flag, "2")
    assert code == 0 and "rank 2" in out


@pytest.mark.parametrize("flag", ["--learning-rate", "--learning_rate", "--batch-size", "--batch_size",
                                  "--num-epochs", "--num_epochs"])
def test_every_legacy_flag_sets_its_key_in_both_spellings(flag):
    from sam3_lora.cli.common import config_from_args
    from sam3_lora.cli.main import build_parser, spelled_as_declared

    parser = build_parser()
    args = parser.parse_args(spelled_as_declared(["train", "--config", "minimal", f"{flag}=3"], parser))
    config = config_from_args(args)
    key = flag.lstrip("-").replace("-", "_")
    assert getattr(config.training, key) == 3


def test_other_flags_take_underscores_too(capsys, tmp_path):
    from sam3_lora.cli.main import build_parser, spelled_as_declared

    parser = build_parser()
    args = parser.parse_args(spelled_as_declared(["train", "--skip_invalid", "--config", "demo"], parser))
    assert args.skip_invalid is True
    args = parser.parse_args(spelled_as_declared(["predict", "--image", "x.png", "--no_lora", "--prompt", "a"],
                                                 parser))
    assert args.no_lora is True


@pytest.mark.parametrize("argv, hint", [
    (["train", "--learnig-rate", "1"], "did you mean --learning-rate?"),
    (["validate", "--positive-only"], "did you mean --positives-only?"),
    (["predict", "--image", "x.png", "--tresh", "0.3"], "did you mean --threshold?"),
])
def test_an_unknown_flag_gets_a_did_you_mean_from_its_command(capsys, argv, hint):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and hint in err
    assert err.startswith(f"usage: sam3-lora {argv[0]}")   # the command's usage, not the top level's


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`sam3-lora ... | head` ended in a BrokenPipeError traceback. The reader here closes its
    end before the command prints anything."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "sam3_lora.cli", "info", "--explain"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert err.decode() == "" and process.returncode == 141


@pytest.mark.parametrize("module, argv, dest", [
    ("predict", ["predict", "--image", "x.png"], "threshold"),
    ("evaluate", ["evaluate", "--gt", "g.json", "--predictions", "p.json"], "score_threshold"),
])
def test_score_thresholds_default_to_the_config_schemas(monkeypatch, module, argv, dest):
    """predict --threshold and evaluate --score-threshold had their own 0.5."""
    import importlib

    from sam3_lora.cli.main import build_parser
    from sam3_lora.config import DEFAULT_SCORE_THRESHOLD, EvaluationConfig

    assert DEFAULT_SCORE_THRESHOLD == EvaluationConfig().score_threshold
    monkeypatch.setattr(importlib.import_module(f"sam3_lora.cli.{module}"), "DEFAULT_SCORE_THRESHOLD", 0.25)
    assert getattr(build_parser().parse_args(argv), dest) == 0.25


def test_info_prints_the_trackers_table(capsys):
    code, out, _ = run(capsys, "info", "--config", "minimal", "model.source=sam3", "model.task=interactive",
                       "lora.apply_to_mask_decoder=true", "lora.target_modules=[all]")
    assert code == 0 and "task interactive: Sam3TrackerModel" in out
    assert re.search(r"mask_decoder\s+50\s+", out) and "text_encoder" not in out


def test_info_prints_the_video_trackers_table(capsys):
    """model.task=video: the video tracker's components, memory included, on a preset built
    128 wide (model.tracker_width: the tiny preset's own 32 cannot run on video)."""
    code, out, _ = run(capsys, "info", "--config", "minimal", "model.source=sam3-tiny", "model.task=video",
                       "model.tracker_width=128", "lora.apply_to_memory_attention=true",
                       "lora.apply_to_memory_encoder=true", "lora.target_modules=[all]")
    assert code == 0 and "task video: Sam3TrackerVideoModel" in out
    assert re.search(r"memory_attention\s+\d+\s+", out) and re.search(r"memory_encoder\s+\d+\s+", out)
    code, _, err = run(capsys, "info", "--config", "minimal", "model.source=sam3-tiny", "model.task=video")
    assert code == 2 and "32 wide" in err and "model.tracker_width=128" in err
