"""The airbench ingredients of the quick, fast and best presets, each against a reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from cifar_core.config import PRESETS, ConfigError, ModelConfig, TrainConfig
from cifar_core.model import build_model, count_parameters, summary, to_input, training_flops
from cifar_core.training import WeightAverage, make_optimizer, make_schedule, parameter_groups

AIRBENCH = PRESETS["quick"].model


def test_whitening_stem_decorrelates_patches_like_numpy_pca() -> None:
    rng = np.random.default_rng(0)
    # Correlated pixels: a smooth random field per image, so neighbours and colours are alike.
    base = rng.normal(size=(400, 1, 17, 17)).repeat(2, axis=2).repeat(2, axis=3)[:, :, :32, :32]
    images = (base + 0.3 * rng.normal(size=(400, 3, 32, 32))) * 40 + 128
    images = torch.from_numpy(np.clip(images, 0, 255).astype(np.uint8)).permute(0, 2, 3, 1)
    model = build_model(AIRBENCH)
    x = to_input(images)
    model.init_whitening(x, eps=0.0)

    with torch.no_grad():
        out = model.layers.stem(model.standardize(x))  # (N, 24, 31, 31)
    whitened = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    # Reference: the covariance of the whitened patches is the identity (numpy's estimate).
    np.testing.assert_allclose(np.cov(whitened.numpy().T), np.eye(12), atol=1e-3)
    # The other 12 filters are the negatives of the first.
    torch.testing.assert_close(out[:, 12:], -out[:, :12])
    assert not model.layers.stem.weight.requires_grad and model.layers.stem.bias.requires_grad


def forward_macs(model: nn.Module) -> int:
    """Multiply-adds of one image's forward pass, counted by hooks on the real layers."""
    macs = []
    hooks = [m.register_forward_hook(lambda m, i, out: macs.append(
        out[0].numel() * (m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                          if isinstance(m, nn.Conv2d) else m.in_features)))
        for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return sum(macs)


@pytest.mark.parametrize("name", list(PRESETS))
def test_training_flops_match_the_layers_that_run(name: str) -> None:
    config = PRESETS[name].model
    assert training_flops(config) == 6 * forward_macs(build_model(config))


def test_stem_shrinks_the_image_by_one_pixel_and_shows_in_the_summary() -> None:
    with_stem, without = AIRBENCH, dataclasses.replace(AIRBENCH, stem="none")
    assert with_stem.conv_output_sides()[0][0] == 31 and without.conv_output_sides()[0][0] == 32
    assert with_stem.spatial_sizes() == [15, 7, 3]
    assert "stem (Conv2d + gelu)" in summary(build_model(with_stem))


def test_dirac_init_starts_each_convolution_as_the_identity_on_its_inputs() -> None:
    model = build_model(dataclasses.replace(AIRBENCH, stem="none"))
    _, conv = model.conv_layers()[1]  # conv2: 32 -> 32 channels, 'same' padding
    x = torch.randn(2, conv.in_channels, 8, 8)
    torch.testing.assert_close(conv(x)[:, :conv.in_channels], x)


def test_fixed_batch_norm_scale_and_logit_scale() -> None:
    fixed, learned = build_model(AIRBENCH), build_model(dataclasses.replace(AIRBENCH, bn_scale=True))
    bn = [m for m in fixed.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn and all(not m.weight.requires_grad and m.bias.requires_grad for m in bn)
    assert all(m.weight.requires_grad for m in learned.modules() if isinstance(m, nn.BatchNorm2d))
    assert count_parameters(fixed) == count_parameters(learned)

    unscaled = build_model(dataclasses.replace(AIRBENCH, logit_scale=1.0))
    unscaled.load_state_dict(fixed.state_dict())
    x = torch.rand(3, 3, 32, 32)
    fixed.eval(), unscaled.eval()
    torch.testing.assert_close(fixed(x), unscaled(x) * AIRBENCH.logit_scale)
    with pytest.raises(ConfigError, match="logit_scale"):
        ModelConfig(logit_scale=0)


def test_batch_norm_momentum_changes_the_running_statistics_and_nothing_that_trains() -> None:
    slow = build_model(dataclasses.replace(AIRBENCH, bn_momentum=0.1))
    fast = build_model(dataclasses.replace(AIRBENCH, bn_momentum=0.4))
    fast.load_state_dict(slow.state_dict())
    x = torch.rand(8, 3, 32, 32)
    outputs = [model(x) for model in (slow, fast)]  # training mode: each batch's own statistics
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    for out in outputs:
        out.square().sum().backward()
    for a, b in zip(slow.parameters(), fast.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    # From zero, one batch moves the running mean by the momentum's share of its mean.
    pairs = [(a, b) for a, b in zip(slow.modules(), fast.modules(), strict=True)
             if isinstance(a, nn.BatchNorm2d)]
    assert pairs
    for a, b in pairs:
        torch.testing.assert_close(b.running_mean, a.running_mean * 4)
    with pytest.raises(ConfigError, match="bn_momentum"):
        ModelConfig(bn_momentum=0)


def test_batch_norm_shifts_learn_faster_with_less_weight_decay() -> None:
    model = build_model(AIRBENCH)
    cfg = TrainConfig(optimizer="sgd", lr=0.4, weight_decay=1e-4, bias_lr_scale=64)
    weights, shifts = parameter_groups(model, cfg)
    bn_shifts = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in shifts["params"]} == bn_shifts | {id(model.layers.stem.bias)}
    assert shifts["lr"] == pytest.approx(0.4 * 64) and shifts["weight_decay"] == pytest.approx(1e-4 / 64)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(weights["params"]) + len(shifts["params"]) == len(trainable)
    # The one-cycle schedule keeps the ratio between the groups at every step.
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    schedule = make_schedule(optimizer, dataclasses.replace(cfg, lr_schedule="onecycle"), 100)
    for _ in range(30):
        optimizer.step()
        schedule.step()
        low, high = (g["lr"] for g in optimizer.param_groups)
        assert high == pytest.approx(64 * low)
    assert len(parameter_groups(model, dataclasses.replace(cfg, bias_lr_scale=1))) == 1


@pytest.mark.parametrize("name", ["quick", "fast", "best"])
def test_preset_sgd_steps_equal_airbench_own_optimizer(name: str) -> None:
    """airbench's SGD, written out from its published hyperparameters (per 1,024 images, on
    the sum of a batch's losses), and the preset's (on the mean) take the same steps."""
    train = dataclasses.replace(PRESETS[name].train, label_smoothing=0.0)
    torch.manual_seed(0)
    ours = nn.Linear(16, 10, bias=False)
    reference = nn.Linear(16, 10, bias=False)
    reference.load_state_dict(ours.state_dict())
    step_scale = 1024 * (1 + 1 / (1 - 0.85))
    lr, decay = 11.5 / step_scale, 0.0153 * train.batch_size / step_scale
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=lr, weight_decay=decay / lr,
                                    momentum=0.85, nesterov=True)
    optimizer = make_optimizer(ours, train, torch.device("cpu"))
    for _ in range(5):
        x, y = torch.randn(train.batch_size, 16), torch.randint(0, 10, (train.batch_size,))
        for model, opt, reduction in ((ours, optimizer, "mean"), (reference, ref_optimizer, "sum")):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y, reduction=reduction).backward()
            opt.step()
    torch.testing.assert_close(ours.weight, reference.weight, rtol=1e-5, atol=1e-6)


def test_weight_average_follows_the_lookahead_rule() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(4, 2)
    average = WeightAverage(layer, total_steps=20, every=5, final_decay=0.9)
    reference = [p.detach().clone() for p in layer.parameters()]
    for step in range(1, 21):
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(torch.randn_like(p))
        expected = None
        if step % 5 == 0:
            decay = 0.9 ** 5 * (step / 20) ** 3
            reference = [r * decay + p.detach() * (1 - decay) for r, p in zip(reference, layer.parameters())]
            expected = reference
        average.step(step)
        if expected is not None:  # the weights jump back to the average
            for p, r in zip(layer.parameters(), expected):
                torch.testing.assert_close(p.detach(), r)


@pytest.mark.parametrize(("name", "mflop", "smoothing", "stem_bias_epochs"), [
    ("quick", 119.3, 0.0, 1), ("fast", 392.6, 0.0, 3), ("best", 708.9, 0.2, 3)])
def test_the_airbench_presets_use_every_ingredient(name: str, mflop: float, smoothing: float,
                                                   stem_bias_epochs: int) -> None:
    model, train = PRESETS[name].model, PRESETS[name].train
    assert (model.stem, model.init, model.bn_scale, model.activation) == ("whiten", "dirac", False, "gelu")
    assert model.logit_scale == pytest.approx(1 / 9) and model.bn_momentum == 0.4
    assert train.weight_averaging and train.bias_lr_scale == 64
    # The shifted views cost four more passes over the validation images: a sixth of quick's time.
    assert train.tta == ("flip" if name == "quick" else "flip_translate")
    assert train.label_smoothing == smoothing
    assert train.stem_bias_epochs == stem_bias_epochs
    # The preset descriptions quote these figures.
    assert training_flops(model) == pytest.approx(mflop * 1e6, rel=1e-3)
