"""The CNN: the presentation's Keras model exactly, parameter counts against a formula,
Keras initialisation, and the CPU dropout layer against the definition of dropout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from cifar_core.config import ConfigError, ModelConfig, get_preset
from cifar_core.model import (
    CIFAR_MEAN,
    CIFAR_STD,
    Dropout,
    build_model,
    count_parameters,
    layer_table,
    predict_logits,
    summary,
    training_flops,
)

# What Keras' model.summary() prints for the presentation's model.
KERAS_SHAPES = [(30, 30, 32), (15, 15, 32), (13, 13, 64), (6, 6, 64), (4, 4, 128), (2, 2, 128),
                (512,), (128,), (64,), (10,)]
KERAS_PARAMS = {"conv1": 896, "conv2": 18_496, "conv3": 73_856, "dense1": 65_664,
                "dense2": 8_256, "logits": 650}


def reference_param_count(c: ModelConfig) -> int:
    """Parameters by hand: k*k*in*out weights (+ out biases, or 2*out for batch norm's scale
    and shift), the side shrinking by k-1 per valid conv and halving per pool; dense in*out+out."""
    total, channels, side = 0, 3, 32
    for filters in c.conv_filters:
        for i in range(c.convs_per_block):
            total += c.kernel_size ** 2 * channels * filters + (2 * filters if c.batch_norm else filters)
            channels = filters
            side -= c.kernel_size - 1 if c.padding == "valid" else 0
            if c.pool_first and i == 0:
                side //= 2
        if not c.pool_first:
            side //= 2
    width = channels * side * side if c.head == "flatten" else channels
    for units in (*c.dense_units, c.num_classes):
        total += width * units + units
        width = units
    return total


CONFIGS = {
    "baseline": {},
    "batch norm": {"batch_norm": True},
    "same padding": {"padding": "same"},
    "two convs per block": {"convs_per_block": 2, "padding": "same"},
    "global max head": {"head": "global_max", "dense_units": (), "dense_dropout": ()},
    "global avg head, one dense": {"head": "global_avg", "dense_units": (256,), "dense_dropout": (0.5,)},
    "5x5 kernels": {"kernel_size": 5, "padding": "same", "pooling": "avg"},
    "two blocks": {"conv_filters": (16, 32), "conv_dropout": (0.1, 0.2)},
    "pool first": {"conv_filters": (32, 64, 128), "convs_per_block": 2, "padding": "same",
                   "pool_first": True, "batch_norm": True, "head": "global_max",
                   "dense_units": (), "dense_dropout": ()},
    "fast-like": {"conv_filters": (64, 128, 256), "convs_per_block": 2, "padding": "same",
                  "batch_norm": True, "activation": "gelu", "head": "global_max",
                  "dense_units": (), "dense_dropout": (), "conv_dropout": 0.0},
}


@pytest.fixture(scope="module")
def baseline() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig())


def test_baseline_has_exactly_the_keras_parameter_count(baseline: nn.Module) -> None:
    assert count_parameters(baseline) == 167_818


def test_baseline_layer_table_matches_keras(baseline: nn.Module) -> None:
    rows = [r for r in layer_table(baseline) if not r.kind.startswith("Dropout")]
    assert [r.output_shape for r in rows] == KERAS_SHAPES
    params = {r.name: r.params for r in rows if r.params}
    assert params == KERAS_PARAMS
    assert sum(r.params for r in layer_table(baseline)) == 167_818


def test_baseline_has_the_presentation_dropout(baseline: nn.Module) -> None:
    rates = [m.p for m in baseline.modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.25, 0.25, 0.5]


def test_summary_ends_with_total_params(baseline: nn.Module) -> None:
    text = summary(baseline)
    assert text.splitlines()[-1] == "Total params: 167,818"
    assert "(None, 30, 30, 32)" in text and "(None, 512)" in text
    assert "Trainable params: 167,818" in text


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_count_matches_the_formula(name: str) -> None:
    config = ModelConfig(**CONFIGS[name])
    model = build_model(config)
    assert count_parameters(model) == reference_param_count(config)
    assert sum(r.params for r in layer_table(model)) == count_parameters(model)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_feature_size_agrees_with_the_module(name: str) -> None:
    config = ModelConfig(**CONFIGS[name])
    model = build_model(config).eval()
    features = model.layers[: list(dict(model.layers.named_children())).index("flatten") + 1]
    assert features(torch.zeros(1, 3, 32, 32)).shape == (1, config.feature_size())


def test_batch_norm_layers_sit_between_conv_and_activation() -> None:
    names = [name for name, _ in build_model(ModelConfig(batch_norm=True)).layers.named_children()]
    assert names[:4] == ["conv1", "bn1", "relu1", "pool1"]
    model = build_model(ModelConfig(batch_norm=True))
    assert all(m.bias is None for _, m in model.conv_layers())


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu"])
@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_forward_equals_the_textbook_order_in_value_and_gradient(activation: str, pooling: str,
                                                                 batch_norm: bool) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(activation=activation, pooling=pooling, batch_norm=batch_norm))
    model.train()  # batch norm on the batch's statistics; dropout masks drawn from the seed
    x = torch.rand(8, 3, 32, 32)
    outputs, grads = [], []
    for run in (model, lambda x: model.layers(model.standardize(x))):
        torch.manual_seed(1)
        model.zero_grad()
        out = run(x)
        out.square().sum().backward()
        outputs.append(out)
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outputs[0], outputs[1])
    for fast, textbook in zip(*grads):
        torch.testing.assert_close(fast, textbook)


def test_only_max_pooling_moves_before_a_non_decreasing_activation() -> None:
    def order(**values: object) -> list[str]:
        model = build_model(ModelConfig(**values))
        names = {id(m): n for n, m in model.layers.named_children()}
        return [names[id(m)] for m in model.running_order][:4]

    assert order() == ["conv1", "pool1", "relu1", "dropout1"]
    assert order(batch_norm=True) == ["conv1", "bn1", "pool1", "relu1"]
    assert order(activation="gelu") == ["conv1", "gelu1", "pool1", "dropout1"]
    assert order(pooling="avg") == ["conv1", "relu1", "pool1", "dropout1"]


def test_training_flops_of_the_baseline() -> None:
    conv_macs = 30 * 30 * 9 * 3 * 32 + 13 * 13 * 9 * 32 * 64 + 4 * 4 * 9 * 64 * 128
    dense_macs = 512 * 128 + 128 * 64 + 64 * 10
    assert training_flops(ModelConfig()) == 6 * (conv_macs + dense_macs)


def test_training_flops_leave_out_the_first_input_gradient_once_the_stem_is_fixed() -> None:
    quick = get_preset("quick").model
    first_conv = 31 * 31 * 9 * 24 * 32  # the whitened 31x31x24 map into 32 filters
    assert training_flops(quick, stem_fixed=True) == training_flops(quick) - 2 * first_conv
    assert training_flops(ModelConfig(), stem_fixed=True) == training_flops(ModelConfig()), "no stem"


def test_keras_init_zero_biases_and_glorot_uniform_kernels() -> None:
    torch.manual_seed(1)
    model = build_model(ModelConfig())
    for module in model.modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        assert torch.count_nonzero(module.bias) == 0
        w = module.weight.detach()
        receptive = w[0, 0].numel()
        bound = math.sqrt(6 / (w.shape[1] * receptive + w.shape[0] * receptive))
        assert w.abs().max() <= bound
        # The kernel is uniform on [-bound, bound].
        assert stats.kstest(w.flatten().numpy() / bound, "uniform", args=(-1, 2)).pvalue > 1e-3


def test_torch_init_differs_from_keras_init() -> None:
    model = build_model(ModelConfig(init="torch"))
    assert torch.count_nonzero(model.layers.conv1.bias) > 0


def test_standardize_input_equals_standardizing_by_hand() -> None:
    torch.manual_seed(2)
    inside = build_model(ModelConfig(standardize_input=True)).eval()
    outside = build_model(ModelConfig()).eval()
    outside.load_state_dict(inside.state_dict())
    x = torch.rand(4, 3, 32, 32)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(inside(x), outside((x - mean) / std))


def test_test_time_views_equal_views_made_on_the_pixels() -> None:
    torch.manual_seed(3)
    model = build_model(get_preset("quick").model).eval()
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    cpu = torch.device("cpu")

    def plain(pixels: np.ndarray) -> torch.Tensor:
        return predict_logits(model, np.ascontiguousarray(pixels), cpu)

    def mirror_mean(pixels: np.ndarray) -> torch.Tensor:
        return (plain(pixels) + plain(pixels[:, :, ::-1])) / 2

    # One pixel up-left and one down-right: the image padded by reflection and cut again.
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = mirror_mean(padded[:, :32, :32]) + mirror_mean(padded[:, 2:, 2:])
    expected = {"none": plain(images), "flip": mirror_mean(images),
                "flip_translate": mirror_mean(images) / 2 + shifted / 4}
    for tta, logits in expected.items():
        torch.testing.assert_close(predict_logits(model, images, cpu, tta=tta), logits)


@pytest.mark.parametrize("values, message", [
    ({"conv_filters": (32, 64, 128, 256, 512)}, "shrinks"),
    ({"conv_dropout": (1.0, 0.0, 0.0)}, "dropout"),
    ({"conv_dropout": (0.1, 0.1, 0.1, 0.1)}, "4 rates for 3"),
    ({"kernel_size": 4}, "kernel_size"),
    ({"activation": "swish"}, "activation"),
    ({"conv_filters": (), "conv_dropout": ()}, "conv_filters: the number of blocks must be 1..6"),
])
def test_invalid_configs_are_refused(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**values)


def test_config_round_trips_through_a_dict() -> None:
    config = ModelConfig(**CONFIGS["pool first"])
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_dict({**config.to_dict(), "wings": 2})


# --- dropout -------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.25, 0.5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dropout_keeps_one_minus_p_and_scales(p: float, channels_last: bool) -> None:
    torch.manual_seed(3)
    x = torch.rand(64, 32, 15, 15) + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = Dropout(p).train()(x)
    kept = y != 0
    assert y.shape == x.shape
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_exactly_the_bytes_at_or_above_the_threshold(p: float, dtype: torch.dtype) -> None:
    x = (torch.rand(8, 6, 5, 5) + 0.5).to(dtype).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(6)
    random_bytes = torch.randint(-2**63, 2**63 - 1, ((x.numel() + 7) // 8,),
                                 dtype=torch.int64).view(torch.uint8)[:x.numel()]
    threshold = round(p * 256)
    keep = (random_bytes.view(8, 5, 5, 6) >= threshold).permute(0, 3, 1, 2)
    torch.manual_seed(6)
    y = Dropout(p).train()(x)
    assert torch.equal(y, x * keep * (256 / (256 - threshold)))


def test_dropout_masks_are_independent_per_element_and_per_call() -> None:
    torch.manual_seed(4)
    x = torch.ones(16, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    layer = Dropout(0.5).train()
    a, b = layer(x) != 0, layer(x) != 0
    assert not torch.equal(a, b)
    # No structure across the channel axis: channels_last order must not repeat one mask.
    assert not torch.equal(a[:, 0], a[:, 1])
    # About half of the elements kept in one call are kept in the next.
    assert abs((a & b).float().mean().item() - 0.25) < 0.03


def test_dropout_is_identity_in_eval() -> None:
    x = torch.rand(8, 16, 5, 5)
    assert torch.equal(Dropout(0.5).eval()(x), x)


@pytest.mark.parametrize("shape", [(32, 16, 6, 6), (32, 128)])
def test_dropout_gradient_uses_the_same_mask(shape: tuple[int, ...]) -> None:
    torch.manual_seed(5)
    x = (torch.rand(shape) + 0.1).requires_grad_()
    y = Dropout(0.25).train()(x)
    y.sum().backward()
    expected = (y != 0).float() / 0.75
    torch.testing.assert_close(x.grad, expected)


def test_dropout_follows_the_torch_seed() -> None:
    x = torch.ones(4, 4, 8, 8)
    torch.manual_seed(6)
    a = Dropout(0.5).train()(x)
    torch.manual_seed(6)
    assert torch.equal(a, Dropout(0.5).train()(x))


@pytest.mark.parametrize("p", [0.999, 0.001])
def test_dropout_rates_near_the_ends_still_drop_the_right_share(p: float) -> None:
    torch.manual_seed(7)
    x = torch.ones(100, 10_000)
    y = Dropout(p).train()(x)
    assert torch.isfinite(y).all()
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.0005
