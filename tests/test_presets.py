"""Presets: valid data, defaults that fit the train.py template, clear errors for a wrong name."""

from __future__ import annotations

import math

import pytest

from autoresearch.config.presets import PRESETS, Preset, get_preset
from autoresearch.errors import ConfigError
from autoresearch.workspace.constants import read_constants
from autoresearch.workspace.init import template, train_py_for

ALL = sorted(PRESETS)


@pytest.mark.parametrize("name", ALL)
def test_every_preset_default_names_a_constant_of_the_template(name: str) -> None:
    constants = read_constants(template("train.py"))
    assert set(PRESETS[name].train_defaults) <= set(constants)


@pytest.mark.parametrize("name", ALL)
def test_the_template_filled_for_every_preset_compiles_with_those_values(name: str) -> None:
    source = train_py_for(PRESETS[name])
    compile(source, "train.py", "exec")
    constants = read_constants(source)
    for key, value in PRESETS[name].train_defaults.items():
        assert constants[key].value == value


@pytest.mark.parametrize("name", ALL)
def test_every_preset_batch_geometry_passes_the_templates_checks(name: str) -> None:
    preset = PRESETS[name]
    constants = {k: c.value for k, c in read_constants(train_py_for(preset)).items()}
    total, device_batch = constants["TOTAL_BATCH_SIZE"], constants["DEVICE_BATCH_SIZE"]
    assert total % preset.seq_len == 0
    assert (total // preset.seq_len) % device_batch == 0  # train.py asserts this before training
    assert constants["HEAD_DIM"] % 2 == 0  # rotary embeddings rotate the two halves of a head
    assert math.ceil(constants["DEPTH"] * constants["ASPECT_RATIO"] / constants["HEAD_DIM"]) >= 1  # heads


@pytest.mark.parametrize("name", ALL)
def test_every_preset_is_consistent(name: str) -> None:
    preset = get_preset(name)
    assert preset.name == name
    assert preset.eval_rows * preset.seq_len == preset.eval_tokens
    assert 256 < preset.vocab_size <= 65535
    assert preset.budget_seconds > 0 and preset.untimed_steps >= 1
    assert preset.as_dict()["name"] == name


def test_an_unknown_preset_is_an_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'h200'") as err:
        get_preset("h200")
    assert all(name in str(err.value) for name in ALL)


def test_a_preset_with_a_ragged_eval_set_or_a_vocabulary_beyond_uint16_is_refused() -> None:
    good = dict(
        name="x",
        description="",
        seq_len=64,
        vocab_size=1024,
        budget_seconds=1,
        eval_tokens=64 * 4,
        untimed_steps=1,
        tokenizer_train_chars=1,
        max_corpus_bytes=None,
    )
    Preset(**good)
    with pytest.raises(ConfigError, match="multiple of seq_len"):
        Preset(**{**good, "eval_tokens": 64 * 4 + 1})
    for vocab in (256, 65536):
        with pytest.raises(ConfigError, match="vocab_size"):
            Preset(**{**good, "vocab_size": vocab})


def test_preset_defaults_cannot_be_changed_by_accident() -> None:
    with pytest.raises(TypeError):
        PRESETS["tiny"].train_defaults["DEPTH"] = 99
