"""Grad-CAM, saliency and feature maps (cifar_core.explain), and the Predict page's view of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from cifar_core.config import ModelConfig, TrainConfig, get_preset
from cifar_core.data import load_cifar10
from cifar_core.explain import (
    cell_centres,
    conv_stage_names,
    feature_maps,
    gradcam,
    saliency,
    upsample_to_input,
)
from cifar_core.model import ACTIVATIONS, CifarCNN, build_model, layer_table, predict_logits
from cifar_core.training import fit

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")



def predicted_class(model: CifarCNN, pixels: np.ndarray) -> int:
    """The class the model gives one uint8 image (no test-time flip)."""
    return int(predict_logits(model, pixels[None], torch.device("cpu")).argmax(1)[0])


@pytest.fixture(scope="module")
def stripes_model(cifar_root: Path) -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    """The baseline trained for a few epochs on the synthetic stripes, and the test images."""
    data = load_cifar10(cifar_root, download=False)
    torch.manual_seed(0)
    model = build_model(ModelConfig())
    fit(model, data, TrainConfig(epochs=4, augmentation="none", early_stopping=False,
                                 precision="fp32", device="cpu"))
    model.zero_grad(set_to_none=True)  # the last training step leaves its gradients
    return model.eval(), data.x_test, data.y_test


def red_square_model() -> torch.nn.Module:
    """One 1x1 conv that passes the red channel, global max pooling, and logits +red / -red.

    Class 0's score grows with the brightest red pixel and class 1's shrinks with it, so
    where a class's evidence lies is known exactly.
    """
    cfg = ModelConfig(conv_filters=(1,), kernel_size=1, padding="same", conv_dropout=(0.0,),
                      head="global_max", dense_units=(), dense_dropout=(), init="torch")
    model = build_model(cfg)
    with torch.no_grad():
        model.layers.conv1.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
        model.layers.conv1.bias.zero_()
        model.layers.logits.weight.copy_(torch.tensor([[1.0], [-1.0]] + [[0.0]] * 8))
        model.layers.logits.bias.zero_()
    return model.eval()


def red_square_image() -> np.ndarray:
    image = np.full((32, 32, 3), 40, dtype=np.uint8)
    image[..., 0] = 0
    image[20:28, 4:12, 0] = 250  # a red square, lower left, on a red-free background
    return image


# --- Grad-CAM ----------------------------------------------------------------------------

@pytest.mark.slow
def test_gradcam_has_the_input_size_values_in_unit_range_and_depends_on_the_class(stripes_model) -> None:
    model, images, labels = stripes_model
    image = images[0]
    predicted = predicted_class(model, image)
    other = (predicted + 5) % 10
    maps = {k: gradcam(model, image, k) for k in (predicted, other)}
    for heat in maps.values():
        assert heat.shape == (32, 32) and heat.dtype == np.float32
        assert heat.min() >= 0 and heat.max() <= 1
    assert maps[predicted].max() == pytest.approx(1.0), "scaled by its maximum"
    assert maps[predicted].std() > 0.01, "not a constant map"
    assert np.abs(maps[predicted] - maps[other]).mean() > 0.01, "another class, another map"
    # Every conv layer can be asked; the map stays 32x32 in [0, 1].
    for layer in conv_stage_names(model):
        heat = gradcam(model, image, predicted, layer)
        assert heat.shape == (32, 32) and 0 <= heat.min() <= heat.max() <= 1


def test_gradcam_lights_the_evidence_and_nothing_for_a_class_it_lowers() -> None:
    model, image = red_square_model(), red_square_image()
    assert predicted_class(model, image) == 0
    heat = gradcam(model, image, 0)
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    assert 20 <= row < 28 and 4 <= col < 12, "the peak is on the red square"
    assert heat[:12, 16:].max() < 0.05, "nothing far from it"
    assert not gradcam(model, image, 1).any(), "red only lowers class 1: an empty map"


@pytest.mark.slow
def test_gradcam_and_saliency_refuse_bad_input(stripes_model) -> None:
    model, images, _ = stripes_model
    with pytest.raises(ValueError, match="target_class"):
        gradcam(model, images[0], 10)
    with pytest.raises(ValueError, match="32x32"):
        gradcam(model, images[0][:16], 0)
    with pytest.raises(ValueError, match="not a conv layer"):
        gradcam(model, images[0], 0, layer="dense1")
    with pytest.raises(ValueError, match="target_class"):
        saliency(model, images[0], -1)


@pytest.mark.slow
def test_explanations_leave_the_model_as_it_was(stripes_model) -> None:
    model, images, _ = stripes_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        gradcam(model, images[1], 3)
        saliency(model, images[1], 3)
        feature_maps(model, images[1])
        assert model.training, "the mode is put back"
    finally:
        model.eval()
    assert all(p.grad is None for p in model.parameters()), "no gradients left on the weights"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cells_of_valid_convolutions_sit_in_the_middle_of_the_image() -> None:
    baseline = build_model(ModelConfig())
    # conv3's 4x4 cells look at 18x18 patches centred on pixels 8.5 ... 20.5, not 3.5 ... 27.5.
    assert cell_centres(baseline, "relu3", 4).tolist() == [8.5, 12.5, 16.5, 20.5]
    assert cell_centres(baseline, "relu1", 30)[:2].tolist() == [1.0, 2.0]
    same = build_model(ModelConfig(conv_filters=(48, 96, 192), convs_per_block=2, padding="same",
                                   pool_first=True, head="global_max", dense_units=(), dense_dropout=()))
    assert cell_centres(same, "relu6", 4).tolist() == [3.5, 11.5, 19.5, 27.5]  # where a resize puts them
    # The whitening stem (2x2, valid) shifts every centre by half a pixel.
    airbench = build_model(get_preset("quick").model)
    assert cell_centres(airbench, "gelu6", 3).tolist() == [4.0, 12.0, 20.0]
    # One hot cell lands on its centre, and fades to nothing a step beyond the outermost ones.
    cam = np.zeros((4, 4))
    cam[0, 3] = 1
    heat = upsample_to_input(baseline, "relu3", cam)
    assert heat.shape == (32, 32)
    assert heat.max() == heat[8:10, 20:22].min() == pytest.approx(0.875 ** 2)  # around 8.5, 20.5
    assert heat[4, :].max() == 0 and heat[:, 25:].max() == 0 and heat[13:, :].max() == 0


# --- saliency and feature maps -------------------------------------------------------------

@pytest.mark.slow
def test_saliency_has_the_input_size_and_points_at_the_evidence(stripes_model) -> None:
    model, images, _ = stripes_model
    for samples in (1, 8):
        heat = saliency(model, images[2], 4, samples=samples)
        assert heat.shape == (32, 32) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    assert np.array_equal(saliency(model, images[2], 4), saliency(model, images[2], 4)), "seeded"
    square = saliency(red_square_model(), red_square_image(), 0)
    row, col = np.unravel_index(np.argmax(square), square.shape)
    assert 20 <= row < 28 and 4 <= col < 12


@pytest.mark.parametrize("config", [
    ModelConfig(), ModelConfig(batch_norm=True),
    ModelConfig(padding="same", convs_per_block=2, activation="gelu"),
    ModelConfig(conv_filters=(48, 96, 192), convs_per_block=2, padding="same", pool_first=True,
                head="global_max", dense_units=(), dense_dropout=()),
    get_preset("quick").model,
], ids=["baseline", "batch-norm", "same-gelu", "pool-first", "airbench-whiten-stem"])
def test_feature_maps_match_the_layer_table(config: ModelConfig) -> None:
    model = build_model(config).eval()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    maps = feature_maps(model, image)
    assert list(maps) == [name for name, _ in model.conv_layers()]
    rows = {row.name: row.output_shape for row in layer_table(model)}
    # A conv's maps are the activation after it: the shape of the last layer listed before
    # that activation (the conv, its batch norm, or with pool_first the pooling).
    activations = tuple(ACTIVATIONS.values())
    shown = None
    for name, module in model.layers.named_children():
        if not isinstance(module, activations):
            shown = name
        for conv, stage in conv_stage_names(model).items():
            if stage == name:
                h, w, c = rows[shown]
                assert maps[conv].shape == (c, h, w), conv
    if config.activation == "relu":
        assert all(m.min() >= 0 for m in maps.values())


# --- the Predict page ----------------------------------------------------------------------

@pytest.mark.slow
def test_predict_page_shows_grad_cam_and_feature_maps_for_a_test_image(
        cifar_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cifar_core.pipeline import train_run

    monkeypatch.setattr("cifar_core.bundled.MODELS_DIR", tmp_path / "no-bundled-models")
    data = load_cifar10(cifar_env, download=False)
    train_run(ModelConfig(), TrainConfig(epochs=1, augmentation="none", early_stopping=False,
                                         precision="fp32", device="cpu"),
              data, tmp_path / "runs" / "tiny", preset="baseline")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/predict.py")
    at.run()
    at.radio(key="predict.mode").set_value("Random test images").run()
    assert not at.exception, [e.message for e in at.exception]
    # Closed at first: nothing computed until a visitor opens the panels.
    assert "predict.explain" not in {chart.key for chart in at.get("plotly_chart")}
    at.session_state["predict.explain_open"] = True
    at.session_state["predict.features_open"] = True
    at.run()

    charts = {chart.key: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}
    panels = charts["predict.explain"]
    assert [t["type"] for t in panels["data"]] == ["image"] * len(panels["data"])
    titles = [a["text"] for a in panels["layout"]["annotations"]]
    assert titles[0].startswith("The image") and titles[1].startswith("Grad-CAM: ")
    assert "(predicted, " in titles[1]
    assert len(titles) == 3, "the predicted class and a second one"
    assert at.selectbox(key="predict.explain_layer").value == "conv3"
    # One grid of feature maps per conv layer, under the 12 test images.
    captions = [image.proto.imgs[0].caption for image in at.get("image")]
    assert [c.split(":")[0] for c in captions if c.startswith("conv")] == ["conv1", "conv2", "conv3"]
    assert "conv1: the first 16 of 32 maps, 30×30 each" in captions

    # Another class, another method: the figure follows.
    picked = next(s for s in at.selectbox if s.key.startswith("predict.explain_class."))
    other = next(o for o in range(10) if o != picked.value)
    picked.set_value(other)
    at.radio(key="predict.explain_method").set_value("Saliency (SmoothGrad)").run()
    assert not at.exception, [e.message for e in at.exception]
    titles = [a["text"] for a in json.loads(at.get("plotly_chart")[-1].proto.spec)["layout"]["annotations"]]
    assert titles[1].startswith("Saliency: ")
    assert at.selectbox(key="predict.explain_layer").disabled
