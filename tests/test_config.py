import re

import pytest

from sam3_lora.config import (
    PRESET_DIR,
    Config,
    DataConfig,
    LoRAConfig,
    load_config,
    resolve_config_path,
)
from sam3_lora.errors import ConfigError

PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def test_the_bundled_presets_are_there():
    assert {"minimal", "balanced", "full", "demo"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates(name):
    config = load_config(name)
    assert load_config(PRESET_DIR / f"{name}.yaml") == config


def test_preset_choices_match_their_descriptions():
    minimal, balanced, full = (load_config(n).lora for n in ("minimal", "balanced", "full"))
    assert (minimal.rank, minimal.target_modules, minimal.components()) == (4, ["q_proj", "v_proj"], ["vision_encoder"])
    assert balanced.rank == 16 and balanced.components() == ["vision_encoder", "mask_decoder"]
    assert full.rank == 32 and "text_encoder" not in full.components() and len(full.components()) == 5
    assert load_config("demo").model.source == "sam3-tiny-shapes"
    assert load_config("demo").data.cache_features == "ram"   # its vision encoder is frozen
    base = load_config("base")
    assert base.training.method == "full" and base.model.source == "sam3-tiny"
    heads = load_config("heads").lora
    assert heads.components() == ["geometry_encoder", "detr_encoder", "detr_decoder", "mask_decoder"]
    assert heads.target_modules == ["all"]


@pytest.mark.parametrize("text, message", [
    ("lora:\n  rnak: 4\n", r"lora.rnak: unknown key; did you mean 'rank'\?"),
    ("trainng:\n  batch_size: 2\n", r"trainng: unknown key; did you mean 'training'\?"),
    ("training:\n  lerning_rate: 1\n", r"did you mean 'learning_rate'\?"),
    ("data:\n  zzz: 1\n", r"data.zzz: unknown key; valid keys here: root, datasets, annotation_file"),
    ("lora:\n  rank: -4\n", r"lora.rank: Input should be greater than 0 \(got -4\)"),
    ("training:\n  batch_size: two\n", r"training.batch_size: Input should be a valid integer"),
    ("lora:\n  target_modules: []\n", r"lora.target_modules: .*must name at least one layer"),
    ("model: [unclosed\n", r"line \d+ is not valid YAML"),
    ("- a\n- b\n", r"top level must be a mapping"),
])
def test_bad_files_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_overrides_parse_yaml_values():
    config = load_config("minimal", ["lora.rank=8", "lora.target_modules=[q_proj, fc1]",
                                     "training.max_steps=50", "data.prompts={CRACKS: concrete crack}",
                                     "model.image_size="])
    assert config.lora.rank == 8 and config.lora.target_modules == ["q_proj", "fc1"]
    assert config.training.max_steps == 50 and config.data.prompts == {"CRACKS": "concrete crack"}
    assert config.model.image_size is None


@pytest.mark.parametrize("override, message", [
    ("lora.rank", "write it as section.key=value"),
    ("rank=4", "write it as section.key=value"),
    ("lora.rank=abc", "lora.rank: Input should be a valid integer"),
    ("lora.rnak=4", "did you mean 'rank'"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_effective_config_round_trips(tmp_path):
    config = load_config("balanced", ["training.seed=7"])
    config.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert "apply_to_geometry_encoder: false" in (tmp_path / "config.yaml").read_text()   # defaults written


def test_unknown_config_path_lists_presets():
    with pytest.raises(ConfigError, match="no such config file; .* presets? \\(minimal, balanced, full, base, "
                                          "base-tracker, base-video-tracker, demo, demo-interactive, demo-video, heads"):
        resolve_config_path("nope.yaml")


def test_defaults_and_seed_api_config_are_one_schema():
    assert Config().lora == LoRAConfig()
    assert LoRAConfig(rank=4, alpha=8, apply_to_mask_decoder=True).components() == ["vision_encoder", "mask_decoder"]


# ---- bad input: every way a config can be wrong is one short line ---------------------------

MAX_MESSAGE = 1000


def one_line_error(path=None, overrides=()) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(path, list(overrides))
    message = str(error.value)
    assert "\n" not in message and len(message) < MAX_MESSAGE, message[:2000]
    return message


@pytest.mark.parametrize("override, message", [
    ("training.seed=-1", "training.seed: Input should be greater than or equal to 0"),
    (f"training.seed={2**70}", "training.seed: Input should be less than or equal to 4294967295"),
    (f"lora.rank={10**23}", "lora.rank: Input should be less than or equal to 1024"),
    ("lora.rank=10000000", "lora.rank: Input should be less than or equal to 1024"),
    ("lora.rank=true", "lora.rank: .*must be a number, not true/false"),
    ("lora.alpha=false", "lora.alpha: .*must be a number, not true/false"),
    ("training.max_steps=true", "training.max_steps: .*must be a number"),
    ("training.learning_rate=.inf", "training.learning_rate: Input should be a finite number"),
    ("lora.alpha=.inf", "lora.alpha: Input should be a finite number"),
    ("loss.mask_weight=.nan", "loss.mask_weight: Input should be a finite number"),
    ("training.component_learning_rates={mask_decoder: -1}", "mask_decoder: Input should be greater than or equal to 0"),
    ("model.image_size=100800", "model.image_size: Input should be less than or equal to 2016"),
    ("data.num_workers=100000", "data.num_workers: Input should be less than or equal to 256"),
])
def test_values_out_of_bounds_are_refused(override, message):
    import re

    assert re.search(message, one_line_error(None, [override]))


def test_true_and_false_still_set_switches():
    config = load_config(None, ["lora.apply_to_mask_decoder=true", "training.max_steps=3", "lora.alpha=8"])
    assert config.lora.apply_to_mask_decoder is True and config.training.max_steps == 3


def test_a_misspelt_command_line_key_is_blamed_on_the_command_line(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("lora:\n  rank: 4\n")
    message = one_line_error(path, ["lora.rnak=3"])
    assert message.startswith("command line: lora.rnak: unknown key; did you mean 'rank'?") and str(path) not in message
    path.write_text("lora:\n  rnak: 4\n")
    assert one_line_error(path, ["lora.rank=3"]).startswith(f"{path}: lora.rnak: unknown key")
    assert one_line_error(None, ["data.prompts={a: [1]}"]).startswith("command line: data.prompts.a")


def test_several_problems_make_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lora:\n  rank: -1\n  alpha: x\n  dropout: 2\n  rnak: 1\n  zz: 2\n")
    message = one_line_error(path)
    assert message.count(f"{path}: lora.") == 3 and message.endswith("and 2 more")


def test_unreadable_config_files(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"lora:\n  rank: \xff\xfe\n")
    assert "not UTF-8 text (byte 0xff at offset 14); save it as UTF-8" in one_line_error(path)
    path.write_text("lora: " + "[" * 10_000 + "]" * 10_000 + "\n")
    assert "nested too deeply to be a config" in one_line_error(path)
    path.write_text("lora: &a [*a]\n")   # a list holding itself
    assert "nested too deeply to be a config" in one_line_error(path)
    path.write_text("a: " + "x" * 1_100_000)
    assert "is not a config (at most 1,000,000)" in one_line_error(path)
    assert "nested too deeply" in one_line_error(None, ["lora.target_modules=" + "[" * 10_000 + "]" * 10_000])


def test_billion_laughs_gives_a_short_message_quickly(tmp_path):
    """1.2 KB of YAML aliases stand for 9^9 strings; printing the input in full once made a
    226 MB error message."""
    import time

    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join([*lines, "lora:", "  rank: *i", "  target_modules: *i"]) + "\n")
    started = time.perf_counter()
    message = one_line_error(path)
    assert time.perf_counter() - started < 5
    assert "lora.rank: Input should be a valid integer" in message


def test_readme_states_each_presets_rank():
    """The README's preset list once said the demo was rank 8 (it is 4)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    stated = dict(re.findall(r"^- `(\w+)`: [^\n]*?rank (\d+)", readme, flags=re.MULTILINE))
    assert {"minimal", "balanced", "full", "demo"} <= set(stated)
    for name, rank in stated.items():
        assert load_config(name).lora.rank == int(rank), name


@pytest.mark.parametrize("word", ["no", "off", "yes", "on", "y", "n"])
def test_words_yaml_1_1_reads_as_booleans_stay_words(tmp_path, word):
    """``training.mixed_precision=no`` (the documented word) was refused as "got False": YAML
    1.1 reads no/off/yes/on as booleans. They stay words wherever a word is due (a choice, a
    text, a list of phrases, a mapping's keys), from the command line and from a file."""
    config = load_config(None, [f"data.generic_prompt={word}", f"data.negative_phrases=[{word}, dog]",
                                f"data.prompts={{{word}: {word}}}", f"evaluation.retain_prompts=[{word}]"])
    assert config.data.generic_prompt == word and config.data.negative_phrases == [word, "dog"]
    assert config.data.prompts == {word: word} and config.evaluation.retain_prompts == [word]
    path = tmp_path / "config.yaml"
    path.write_text(f"data:\n  generic_prompt: {word}\n  negative_phrases: [{word}]\n")
    assert load_config(path).data.negative_phrases == [word]


def test_mixed_precision_no_is_accepted_unquoted(tmp_path):
    assert load_config(None, ["training.mixed_precision=no"]).training.mixed_precision == "no"
    path = tmp_path / "config.yaml"
    path.write_text("training:\n  mixed_precision: no\n")
    assert load_config(path).training.mixed_precision == "no"


@pytest.mark.parametrize("word, value", [("yes", True), ("on", True), ("true", True), ("no", False),
                                         ("off", False), ("false", False)])
def test_switches_still_take_yes_no_on_off(word, value):
    assert load_config(None, [f"lora.use_dora={word}"]).lora.use_dora is value


@pytest.mark.parametrize("override", ["training.learning_rate=0x10", "lora.rank=0o10", "lora.rank=0b11",
                                      "training.seed=0x1F", "training.max_steps=010"])
def test_hex_octal_and_binary_numbers_are_refused(override):
    """``learning_rate=0x10`` was read as 16 and ``010`` as 8: numbers are decimal."""
    message = one_line_error(None, [override])
    key, value = override.split("=")
    assert f"{key}: " in message and "write numbers in decimal" in message and value in message


def test_hex_numbers_in_a_file_are_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("training:\n  learning_rate: 0x10\n")
    message = one_line_error(path)
    assert str(path) in message and "training.learning_rate" in message and "decimal" in message


def test_decimal_and_exponent_numbers_still_read():
    config = load_config(None, ["training.learning_rate=1e-4", "training.max_steps=1_000", "lora.alpha=2.",
                                "training.warmup_steps=0", "loss.mask_weight=.5"])
    assert config.training.learning_rate == 1e-4 and config.training.max_steps == 1000
    assert config.training.warmup_steps == 0 and config.loss.mask_weight == 0.5


def test_a_choice_a_yaml_1_1_reader_made_a_boolean_is_taken_back():
    """A dict from yaml.safe_load (YAML 1.1) holds False for ``mixed_precision: no``."""
    import yaml

    from sam3_lora.config import validate_config

    raw = yaml.safe_load("training:\n  mixed_precision: no\n")
    assert raw == {"training": {"mixed_precision": False}}
    assert validate_config(raw).training.mixed_precision == "no"
    with pytest.raises(ConfigError, match="training.method"):   # no boolean word among its choices
        validate_config({"training": {"method": True}})


# ---- several datasets (data.datasets) -------------------------------------------------------

TWO = "data.datasets=[{name: a, root: x}, {name: b, root: y, weight: 2.5}]"


@pytest.mark.parametrize("overrides, message", [
    (["data.root=mine", TWO], "data.root=mine and data.datasets cannot go together"),
    (["data.datasets=[{name: a, root: x}, {name: a, root: y}]"], "data.datasets names a more than once"),
    (["data.datasets=[{name: a, root: x, weight: 0}]"], "data.datasets.0.weight: Input should be greater than 0"),
    (["data.datasets=[{name: a, root: x, weight: -1}]"], "data.datasets.0.weight: Input should be greater than 0"),
    (["data.datasets=[{name: ../up, root: x}]"], "data.datasets.0.name: String should match pattern"),
    (["data.datasets=[{name: a}]"], "data.datasets.0.root: Field required"),
    (["data.datasets=[{name: a, root: x, wieght: 2}]"], "data.datasets.0.wieght: unknown key"),
    ([TWO, "training.gradient_accumulation_steps=2"], "gradient_accumulation_steps=2 is not available with data.datasets"),
])
def test_bad_datasets_are_one_line(overrides, message):
    assert re.search(message, one_line_error(None, overrides))


def test_datasets_round_trip_through_the_effective_config(tmp_path):
    """The effective config writes data.root's default beside data.datasets: it loads back."""
    config = load_config(None, [TWO])
    config.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert [(d.name, d.root, d.weight) for d in config.data.datasets] == [("a", "x", 1.0), ("b", "y", 2.5)]


def test_mask_prompt_probability_defaults_to_sam2s_by_task_and_a_set_value_wins():
    assert DataConfig().mask_prompt_chance("interactive") == 0.0
    assert DataConfig().mask_prompt_chance("video") == 0.5
    assert DataConfig(mask_prompt_probability=0.2).mask_prompt_chance("video") == 0.2
    assert DataConfig(mask_prompt_probability=0.0).mask_prompt_chance("video") == 0.0
