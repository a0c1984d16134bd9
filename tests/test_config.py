import pytest

from sam3_lora.config import PRESET_DIR, Config, LoRAConfig, load_config, resolve_config_path
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
    base = load_config("base")
    assert base.training.method == "full" and base.model.source == "sam3-tiny"


@pytest.mark.parametrize("text, message", [
    ("lora:\n  rnak: 4\n", r"lora.rnak: unknown key; did you mean 'rank'\?"),
    ("trainng:\n  batch_size: 2\n", r"trainng: unknown key; did you mean 'training'\?"),
    ("training:\n  lerning_rate: 1\n", r"did you mean 'learning_rate'\?"),
    ("data:\n  zzz: 1\n", r"data.zzz: unknown key; valid keys here: root, annotation_file"),
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
    with pytest.raises(ConfigError, match="no such config file; .* presets? \\(balanced, base, demo, full, minimal"):
        resolve_config_path("nope.yaml")


def test_defaults_and_seed_api_config_are_one_schema():
    assert Config().lora == LoRAConfig()
    assert LoRAConfig(rank=4, alpha=8, apply_to_mask_decoder=True).components() == ["vision_encoder", "mask_decoder"]
