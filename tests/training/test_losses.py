"""Losses: known values on tiny tensors, gradients, weight maps, the combination."""

import math

import pytest
import torch

from pipeline.errors import NucleiError
from pipeline.method.heads import get_head
from pipeline.training.losses import (
    bce_loss,
    build_loss,
    focal_loss,
    soft_dice_loss,
    weighted_cross_entropy,
)

LN2, LN3 = math.log(2), math.log(3)


def two_pixels():
    """Logits (1, 3, 1, 2): pixel 0 uniform, pixel 1 gives class 0 probability 1/2."""
    logits = torch.tensor([[[[0.0, LN2]], [[0.0, 0.0]], [[0.0, 0.0]]]])
    classes = torch.tensor([[[0, 0]]])
    return logits, classes


def random_batch(b=2, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 3, (b, h, w), generator=g)
    return {
        "classes": classes,
        "mask": (classes < 2).float(),
        "border": (classes == 1).float(),
        "weights": 1 + 9 * torch.rand(b, h, w, generator=g),
    }


def test_weighted_cross_entropy_known_values():
    logits, classes = two_pixels()
    assert weighted_cross_entropy(logits, classes).item() == pytest.approx((LN3 + LN2) / 2)
    weights = torch.tensor([[[1.0, 3.0]]])
    assert weighted_cross_entropy(logits, classes, weights).item() == pytest.approx((LN3 + 3 * LN2) / 4)


def test_soft_dice_known_values():
    probs = torch.tensor([[[[0.5, 1.0], [0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert soft_dice_loss(probs, target, eps=0).item() == pytest.approx(1 - 3 / 3.5)
    assert soft_dice_loss(probs, target, eps=1).item() == pytest.approx(1 - 4 / 4.5)
    assert soft_dice_loss(target, target, eps=0).item() == pytest.approx(0.0)
    # an empty channel predicted empty costs nothing; channels are averaged
    two = torch.cat([probs, torch.zeros_like(probs)], dim=1)
    two_t = torch.cat([target, torch.zeros_like(target)], dim=1)
    assert soft_dice_loss(two, two_t, eps=1).item() == pytest.approx((1 - 4 / 4.5) / 2)


def test_focal_known_values():
    logits, classes = two_pixels()
    # gamma 0 is cross-entropy; p_t = 1/3 and 1/2
    log_p = get_head("softmax").log_likelihood(logits, classes)
    assert focal_loss(log_p, gamma=0).item() == pytest.approx((LN3 + LN2) / 2)
    expected = ((2 / 3) ** 2 * LN3 + 0.5**2 * LN2) / 2
    assert focal_loss(log_p, gamma=2).item() == pytest.approx(expected)
    # sigmoid: logit 0 gives p_t = 1/2 for either target
    z = torch.zeros(1, 2, 1, 1)
    t = torch.tensor([[[[1.0]], [[0.0]]]])
    assert focal_loss(get_head("sigmoid").log_likelihood(z, t), gamma=2).item() == pytest.approx(0.25 * LN2)


def test_bce_known_values_and_weights():
    logits = torch.tensor([[[[0.0, 2.0]], [[0.0, -1.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])
    sp = torch.nn.functional.softplus
    per_pixel = [LN2 + LN2, sp(torch.tensor(-2.0)).item() + sp(torch.tensor(1.0)).item()]
    assert bce_loss(logits, target).item() == pytest.approx(sum(per_pixel) / 4)
    weights = torch.tensor([[[1.0, 3.0]]])
    assert bce_loss(logits, target, weights).item() == pytest.approx((per_pixel[0] + 3 * per_pixel[1]) / 8)


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_combined_loss_gradient_flows(head):
    channels = 3 if head == "softmax" else 2
    cfg = {"weighted_ce": 1.0, "bce": 1.0, "dice": 1.0, "focal": 0.5, "focal_gamma": 2.0}
    loss_fn = build_loss(cfg, head)
    logits = torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = loss_fn(logits, random_batch())
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    terms = loss_fn.terms(logits, random_batch())
    expected = {"weighted_ce" if head == "softmax" else "bce", "dice", "focal"}
    assert set(terms) == expected
    total = sum(loss_fn.weights[k] * v for k, v in terms.items())
    assert loss.item() == pytest.approx(total.item())


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_weight_maps_change_the_loss(head):
    channels = 3 if head == "softmax" else 2
    logits = torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(2))
    batch = random_batch()
    cfg = {"weighted_ce": 1.0, "bce": 1.0, "dice": 0.0}
    weighted = build_loss(cfg, head)(logits, batch)
    plain = build_loss({**cfg, "use_weight_maps": False}, head)(logits, batch)
    uniform = build_loss(cfg, head)(logits, {**batch, "weights": torch.full_like(batch["weights"], 5.0)})
    assert weighted.item() != pytest.approx(plain.item())
    assert uniform.item() == pytest.approx(plain.item())  # normalised by the total weight


def test_softmax_components_match_functions():
    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    batch = random_batch()
    ce = build_loss({"weighted_ce": 2.0, "dice": 0.0}, "softmax")(logits, batch)
    assert ce.item() == pytest.approx(
        2 * weighted_cross_entropy(logits, batch["classes"], batch["weights"]).item()
    )
    dice = build_loss({"weighted_ce": 0.0, "dice": 1.0}, "softmax")(logits, batch)
    probs = torch.softmax(logits, 1)[:, :2]
    onehot = torch.stack([batch["classes"] == 0, batch["classes"] == 1], 1).float()
    assert dice.item() == pytest.approx(soft_dice_loss(probs, onehot).item())


def test_perfect_prediction_has_small_loss():
    batch = random_batch()
    logits = 20 * torch.nn.functional.one_hot(batch["classes"], 3).permute(0, 3, 1, 2).float()
    assert build_loss({"weighted_ce": 1, "dice": 1, "focal": 1}, "softmax")(logits, batch).item() < 1e-3
    sig = 40 * torch.stack([batch["mask"], batch["border"]], 1) - 20
    assert build_loss({"bce": 1, "dice": 1, "focal": 1}, "sigmoid")(sig, batch).item() < 1e-3


def test_bad_configuration():
    with pytest.raises(NucleiError, match="no term"):
        build_loss({"weighted_ce": 0, "dice": 0, "focal": 0}, "softmax")
    with pytest.raises(NucleiError, match="loss.dice"):
        build_loss({"dice": -1}, "softmax")
    with pytest.raises(NucleiError, match="head"):
        build_loss({}, "linear")
    with pytest.raises(ValueError, match="softmax head expects"):
        build_loss({}, "softmax")(torch.zeros(1, 2, 4, 4), random_batch(1, 4, 4))


def test_every_head_names_a_pixel_loss_with_a_factor():
    from pipeline.config.params import LossConfig
    from pipeline.method.heads import HEADS
    from pipeline.training.losses import PIXEL_LOSSES

    for head in HEADS.values():
        assert head.pixel_loss_name in PIXEL_LOSSES
        assert hasattr(LossConfig(), head.pixel_loss_name)
