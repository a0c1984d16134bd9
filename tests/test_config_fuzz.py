"""Random configs end in a ``Config`` or a one-line ``ConfigError``, never another exception.

Random YAML documents (keys from the schema and not, values of every YAML kind: huge and
non-finite numbers, booleans, nested lists and mappings), random bytes as a config file, and
random ``section.key=value`` overrides. Every error message is one line of bounded length.
"""

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sam3_lora.config import Config, load_config
from sam3_lora.errors import ConfigError

MAX_MESSAGE = 1500

SECTIONS = list(Config.model_fields)
FIELDS = sorted({name for section in Config.model_fields.values() for name in section.annotation.model_fields})
keys = st.sampled_from(SECTIONS + FIELDS) | st.text(max_size=6)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.sampled_from([0, 1, -1, 8, 1024, 1025])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["q_proj", "all", "facebook/sam3", "sam3-tiny", "bf16", "cosine", "valid", ""]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=10,
)
sections = st.dictionaries(st.sampled_from(SECTIONS) | st.text(max_size=4),
                           st.dictionaries(keys, values, max_size=4) | values, max_size=4)
fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def outcome(path=None, overrides=()):
    try:
        return load_config(path, list(overrides))
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message and len(message) <= MAX_MESSAGE, message[:3000]
        return error


@fuzz
@given(document=sections)
def test_random_documents(tmp_path, document):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    result = outcome(path)
    if isinstance(result, Config):
        assert Config.model_validate(result.model_dump()) == result


@fuzz
@given(data=st.binary(max_size=200) | st.text(alphabet=string.printable + "[]{}&*!|>:-", max_size=200)
       .map(str.encode))
def test_random_bytes(tmp_path, data):
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    outcome(path)


override_keys = (st.tuples(st.sampled_from(SECTIONS), st.sampled_from(FIELDS)).map(".".join)
                 | st.text(max_size=12))
override_values = (values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...")
                              .replace("\n", " "))
                   | st.text(max_size=20))


@fuzz
@given(overrides=st.lists(st.tuples(override_keys, override_values).map("=".join), max_size=4))
def test_random_overrides(overrides):
    outcome(None, overrides)
