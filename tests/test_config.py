"""One home for configuration: options declared once, frozen configs, the flat form of the
Model page, and the presets' values."""

from __future__ import annotations

import dataclasses
import math
from typing import get_args

import pytest

from cifar_core.augment import AUGMENTATIONS
from cifar_core.config import (
    CHOICES,
    LIMITS,
    MODEL_KEYS,
    PRESETS,
    TRAIN_KEYS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    changes_from_preset,
    choices,
    configs_from_form,
    form_values,
)
from cifar_core.model import ACTIVATIONS


def test_every_enumerated_setting_has_its_options_from_its_type() -> None:
    assert choices("padding") == ("valid", "same")
    assert choices("device") == ("auto", "cpu", "cuda", "mps")
    assert set(CHOICES) == {"stem", "padding", "activation", "pooling", "head", "init", "optimizer",
                            "lr_schedule", "augmentation", "tta", "monitor", "precision", "device"}
    for name in CHOICES:
        hint = {f.name: f.type for f in dataclasses.fields(ModelConfig) + dataclasses.fields(TrainConfig)}
        assert hint[name]  # declared on a field of one of the configs
    assert AUGMENTATIONS == choices("augmentation")
    assert tuple(ACTIVATIONS) == choices("activation")


@pytest.mark.parametrize("cls, name", [(ModelConfig, n) for n in ("padding", "activation", "pooling",
                                                                   "head", "init")]
                         + [(TrainConfig, n) for n in ("optimizer", "lr_schedule", "augmentation",
                                                       "tta", "monitor", "precision", "device")])
def test_a_value_outside_the_options_is_refused_and_each_option_is_accepted(cls: type, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        cls(**{name: "no-such-option"})
    for option in choices(name):
        if not (name == "padding" and option == "valid" and cls is not ModelConfig):
            assert getattr(cls(**{name: option}), name) == option


def test_runs_saved_with_the_mirror_switch_load_with_its_test_time_views() -> None:
    old = {**TrainConfig().to_dict(), "epochs": 7}
    del old["tta"]
    assert TrainConfig.from_dict({**old, "tta_flip": True}) == TrainConfig(epochs=7, tta="flip")
    assert TrainConfig.from_dict({**old, "tta_flip": False}) == TrainConfig(epochs=7, tta="none")


def test_configs_are_frozen_so_presets_can_be_shared() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["baseline"].train.epochs = 3  # type: ignore[misc]
    model = ModelConfig(conv_filters=[16, 32], conv_dropout=0.1)
    assert model.conv_filters == (16, 32) and model.conv_dropout == (0.1, 0.1)
    assert hash(model) == hash(ModelConfig(conv_filters=(16, 32), conv_dropout=(0.1, 0.1)))


def test_spatial_sizes_are_the_presentations() -> None:
    assert ModelConfig().conv_output_sides() == [[30, 15], [13, 6], [4, 2]]
    assert ModelConfig().feature_size() == 512
    pool_first = ModelConfig(conv_filters=(48, 96, 192), convs_per_block=2, padding="same",
                             pool_first=True, head="global_max", dense_units=(), dense_dropout=())
    assert pool_first.spatial_sizes() == [16, 8, 4] and pool_first.feature_size() == 192
    # The whitening stem's 2x2 'valid' convolution takes one pixel off first.
    quick = PRESETS["quick"].model
    assert quick.spatial_sizes() == [15, 7, 3] and quick.feature_size() == 128


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_form_round_trips_every_preset(name: str) -> None:
    preset = PRESETS[name]
    values = form_values(preset.model, preset.train)
    assert configs_from_form(values) == (preset.model, preset.train)
    assert changes_from_preset(name, preset.model, preset.train) == []


def test_form_values_name_every_layer_and_setting() -> None:
    values = form_values(ModelConfig(), TrainConfig())
    assert (values["blocks"], values["filters2"], values["conv_dropout0"]) == (3, 128, 0.25)
    assert (values["dense_layers"], values["units1"], values["dense_dropout0"]) == (2, 64, 0.5)
    assert values["pool_first"] is False and values["seed"] == 0
    values.update(blocks=2, dense_layers=0, activation="gelu", lr=0.01)
    model, train = configs_from_form(values)
    assert model.conv_filters == (32, 64) and model.dense_units == () and model.activation == "gelu"
    assert changes_from_preset("baseline", model, train) == [
        "conv_filters: [32, 64, 128] → [32, 64]", "activation: relu → gelu",
        "conv_dropout: [0.25, 0.25, 0.0] → [0.25, 0.25]", "dense_units: [128, 64] → []",
        "dense_dropout: [0.5, 0.0] → []", "lr: 0.001 → 0.01", "precision: auto → fp32"]


def test_an_invalid_form_is_a_config_error() -> None:
    values = form_values(ModelConfig(), TrainConfig()) | {"blocks": 6}
    for i in range(3, 6):
        values |= {f"filters{i}": 8, f"conv_dropout{i}": 0.0}
    with pytest.raises(ConfigError, match="shrinks to nothing"):
        configs_from_form(values)
    with pytest.raises(ConfigError):
        configs_from_form(form_values(ModelConfig(), TrainConfig()) | {"lr": "fast"})


def test_literal_types_are_the_declaration() -> None:
    from cifar_core import config

    assert get_args(config.Padding) == choices("padding")


# --- limits ------------------------------------------------------------------------------

def with_setting(name: str, value: object) -> tuple[ModelConfig, TrainConfig]:
    return apply_overrides(ModelConfig(padding="same"), TrainConfig(), {name: value})


@pytest.mark.parametrize("name", sorted(LIMITS.keys() & (MODEL_KEYS | TRAIN_KEYS)))
def test_a_setting_accepts_what_its_widget_offers_and_refuses_what_lies_beyond_its_limit(name: str) -> None:
    limit = LIMITS[name]
    for value in limit.widget_range:
        with_setting(name, value)
    with pytest.raises(ConfigError, match=name):
        with_setting(name, limit.low if limit.open == "low" else limit.low - 1)
    if limit.high != math.inf:
        with pytest.raises(ConfigError, match=name):
            with_setting(name, limit.high if limit.open == "high" else limit.high + 1)


def test_layer_limits_hold_for_the_number_of_layers_and_for_each_layer() -> None:
    largest = {"conv_filters": (LIMITS["filters"].high,) * LIMITS["blocks"].high,
               "dense_units": (LIMITS["units"].high,) * LIMITS["dense_layers"].high}
    with_setting("conv_filters", largest["conv_filters"])
    with_setting("dense_units", largest["dense_units"])
    beyond = [("conv_filters", largest["conv_filters"] + (8,)), ("conv_filters", (1025,)),
              ("dense_units", largest["dense_units"] + (8,)), ("dense_units", (4097,)),
              ("conv_dropout", (0.5, 1.0, 0.0)), ("dense_dropout", (1.0, 0.0)), ("conv_filters", ())]
    for name, value in beyond:
        with pytest.raises(ConfigError):
            with_setting(name, value)


def test_limits_keep_the_type_of_their_setting() -> None:
    # A widget's bounds, step and value must share one type; Streamlit refuses a mix.
    defaults = ModelConfig().to_dict() | TrainConfig().to_dict()
    for name, limit in LIMITS.items():
        kind = type(defaults[name]) if name in defaults else (float if name == "dropout" else int)
        offered = [*limit.widget_range] + ([limit.step] if limit.step else [])
        assert all(type(v) is kind for v in offered), name
