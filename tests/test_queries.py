"""Mirrored queries (issue 25): when the recipe trains with flips, the attacks query the image
and its mirror image (tensorflow/privacy ``research/mi_lira_2021/inference.py``, ``reflect``)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import torch

from mcmia_helpers.attacks.queries import query_views, target_view_logits, view_logits
from mcmia_helpers.data import load_dataset
from mcmia_helpers.models import build_model
from mcmia_helpers.training import TrainConfig, predict_logits


def test_views_follow_the_recipes_flip_flag_and_the_mirror_is_the_flipped_image() -> None:
    bundle = load_dataset("fashion-mnist", standin="digits", download=False)
    torch.manual_seed(0)
    model = build_model("lenet5", num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                        image_size=bundle.image_size).eval()
    plain = SimpleNamespace(train_config=TrainConfig(epochs=1), bundle=bundle, device=torch.device("cpu"))
    flips = SimpleNamespace(train_config=TrainConfig(epochs=1, augment=True), bundle=bundle,
                            device=torch.device("cpu"))
    assert query_views(plain) == ("image",)
    assert query_views(flips) == ("image", "mirror")
    idx = torch.tensor([5, 17, 3, 40])
    both = target_view_logits(model, flips, idx, query_views(flips))
    assert both.shape == (4, 2, bundle.num_classes)
    torch.testing.assert_close(both[:, 0], predict_logits(model, bundle, idx))
    mirrored = replace(bundle, images=bundle.images.flip(-1))
    torch.testing.assert_close(both[:, 1], predict_logits(model, mirrored, idx))
    assert not torch.allclose(both[:, 0], both[:, 1])
    many = view_logits([model, model], flips, idx, query_views(flips))
    assert many.shape == (2, 4, 2, bundle.num_classes)
    torch.testing.assert_close(many[0], both, atol=1e-5, rtol=1e-5)
