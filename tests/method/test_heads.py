"""Heads: the registry, label encoding, activation, loss targets and watershed decoding."""

import numpy as np
import pytest
import torch

from pipeline.config.params import HEAD_NAMES
from pipeline.errors import NucleiError
from pipeline.method.heads import HEADS, TARGET_KEYS, Head, get_head, mask_and_marker
from pipeline.method.training_targets import border_mask, make_targets


def test_registry_names_every_head_once():
    assert set(HEADS) == {"softmax", "sigmoid"} == set(HEAD_NAMES)  # params.yaml's vocabulary agrees
    for name, head in HEADS.items():
        assert isinstance(head, Head) and head.name == name and head.channels >= 1
    with pytest.raises(NucleiError, match="model.head: 'linear' is not one of softmax, sigmoid"):
        get_head("linear")


def test_classes_partition_the_image(two_discs):
    border = border_mask(two_discs)
    classes = get_head("softmax").encode_labels(two_discs, border)
    assert classes.dtype == np.uint8 and classes.shape == two_discs.shape
    assert set(np.unique(classes)) == {0, 1, 2}
    np.testing.assert_array_equal(classes == 1, border)
    np.testing.assert_array_equal(classes == 0, (two_discs > 0) & ~border)
    np.testing.assert_array_equal(classes == 2, (two_discs == 0) & ~border)
    assert border[32, 33:36].all()  # the 3-px gap between discs 1 and 2 is border
    assert (classes[two_discs == 3] == 0).all()


def test_sigmoid_encoding_is_mask_and_border(two_discs):
    border = border_mask(two_discs)
    target = get_head("sigmoid").encode_labels(two_discs, border)
    assert target.dtype == np.float32 and target.shape == (2, *two_discs.shape)
    np.testing.assert_array_equal(target[0], two_discs > 0)
    np.testing.assert_array_equal(target[1], border)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_batch_target_matches_the_label_encoding(two_discs, name):
    """The loss target made from the stored arrays equals the head's encoding of the labels."""
    head = get_head(name)
    stored = make_targets(two_discs)
    batch = {k: torch.from_numpy(stored[k].astype(np.float32))[None] for k in TARGET_KEYS}
    batch["classes"] = batch["classes"].long()
    want = head.encode_labels(two_discs, stored["border"].astype(bool))
    np.testing.assert_array_equal(head.batch_target(batch)[0].numpy(), want)


def test_activation():
    logits = torch.randn(2, 3, 4, 4)
    probs = get_head("softmax").activate(logits)
    assert torch.allclose(probs.sum(1), torch.ones(2, 4, 4))
    sig = get_head("sigmoid").activate(logits[:, :2])
    assert torch.equal(sig, torch.sigmoid(logits[:, :2]))
    with pytest.raises(ValueError, match="sigmoid head expects logits"):
        get_head("sigmoid").activate(logits)


def test_mask_and_marker_decodes_each_layout():
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=(5, 6)).transpose(2, 0, 1).astype(np.float32)
    mask, marker = mask_and_marker(p, "softmax")
    np.testing.assert_allclose(mask, p[0] + p[1])
    np.testing.assert_array_equal(marker, p[0])
    mask, marker = mask_and_marker(p[:2], "sigmoid")
    np.testing.assert_array_equal(mask, p[0])
    np.testing.assert_allclose(marker, p[0] * (1 - p[1]))
    with pytest.raises(ValueError, match=r"softmax head expects probabilities of shape \(3, H, W\)"):
        mask_and_marker(p[:2], "softmax")


@pytest.mark.parametrize("name", sorted(HEADS))
def test_decoding_a_perfect_encoding_gives_back_mask_and_interior(two_discs, name):
    """Both directions agree: probabilities equal to the target decode to (mask, mask − border)."""
    head = get_head(name)
    border = border_mask(two_discs)
    target = head.encode_labels(two_discs, border)
    probs = np.eye(head.channels, dtype=np.float32)[target].transpose(2, 0, 1) if target.ndim == 2 else target
    mask, marker = head.mask_and_marker(probs)
    np.testing.assert_array_equal(mask > 0.5, (two_discs > 0) | (border & (head.name == "softmax")))
    np.testing.assert_array_equal(marker > 0.5, (two_discs > 0) & ~border)
