"""Network heads: what the output channels mean, in both directions (one class per head).

A head is the representation the network learns, as Cellpose's ``dynamics`` owns its flows. Each
:class:`Head` owns

- ``channels``: the number of output channels;
- the training target: :meth:`Head.encode_labels` (numpy, from instance labels and the border
  mask) and :meth:`Head.batch_target` (torch, from a batch of the stored target arrays
  :data:`TARGET_KEYS`), the name of its pixel-wise loss (:attr:`Head.pixel_loss_name`, a key of
  the ``loss`` section of params.yaml and of :data:`pipeline.training.losses.PIXEL_LOSSES`), the
  log-likelihood used by the focal loss and the probabilities/targets of the Dice loss;
- the activation :meth:`Head.activate` (logits → probabilities);
- the decoding :meth:`Head.mask_and_marker` of probabilities into P(nucleus) and P(marker) for the
  marker-controlled watershed.

:data:`HEADS` maps the ``model.head`` name of params.yaml to a head; :func:`get_head` looks one up.
Adding a head is one subclass plus :func:`register`.

Heads shipped:

- ``softmax``: 3 classes (mask − border, border, background), softmax over the channels;
- ``sigmoid``: 2 independent channels (mask, border), elementwise sigmoid (the shipped model).

Must not: read files or params.yaml, or import torch at module level (the ``targets`` and
``postprocess`` stages run without it), or import :mod:`pipeline.training.losses` (which imports this
module). Loss formulas live in :mod:`pipeline.training.losses`; this module only names the pixel loss a head
uses and says which channels the likelihood and Dice terms are taken on.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from pipeline.errors import NucleiError

#: Arrays of ``data/targets/<id>.npz`` that training targets are made from, all (H, W):
#: ``classes`` uint8 (the softmax encoding), ``mask`` uint8 0/1, ``border`` uint8 0/1, ``weights``
#: float (the U-Net weight map).
TARGET_KEYS = ("classes", "mask", "border", "weights")


class Head:
    """Base class of a network head; subclasses set :attr:`name` and :attr:`channels`."""

    name: ClassVar[str]
    channels: ClassVar[int]
    #: The head's pixel-wise loss: a key of the ``loss`` section (its factor) and of
    #: :data:`pipeline.training.losses.PIXEL_LOSSES` (its formula, called on :meth:`batch_target`).
    pixel_loss_name: ClassVar[str]
    #: What each output channel holds after :meth:`activate`, in order: (short name, meaning); the
    #: documentation of exported networks (:mod:`pipeline.model.interchange`) says it.
    channel_meanings: ClassVar[tuple[tuple[str, str], ...]]
    #: :meth:`mask_and_marker` in words, in the channels' short names: (P(nucleus), marker image).
    formulas: ClassVar[tuple[str, str]]

    # -- numpy: labels → target, probabilities → watershed inputs

    def encode_labels(self, labels: np.ndarray, border: np.ndarray) -> np.ndarray:
        """The target of one image: ``labels`` int (H, W), ``border`` bool (H, W) → array."""
        raise NotImplementedError

    def mask_and_marker(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``probs`` float (C, H, W) → (P(nucleus), P(nucleus interior away from contacts)),
        both float32 (H, W)."""
        raise NotImplementedError

    def check_probs(self, probs: np.ndarray) -> np.ndarray:
        """``probs`` as float32, checked to be (channels, H, W); ValueError otherwise."""
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim != 3 or probs.shape[0] != self.channels:
            raise ValueError(
                f"{self.name} head expects probabilities of shape ({self.channels}, H, W), got {probs.shape}"
            )
        return probs

    # -- torch: logits → probabilities, batch → target, losses

    def check_logits(self, logits):
        """Raise ValueError unless ``logits`` is (B, channels, H, W)."""
        if logits.ndim != 4 or logits.shape[1] != self.channels:
            raise ValueError(
                f"{self.name} head expects logits (B, {self.channels}, H, W), got {tuple(logits.shape)}"
            )

    def activate(self, logits):
        """Probabilities float (B, C, H, W) from logits (B, C, H, W)."""
        raise NotImplementedError

    def batch_target(self, batch: dict):
        """The loss target from a batch of :data:`TARGET_KEYS` tensors (B, H, W)."""
        raise NotImplementedError

    def log_likelihood(self, logits, target):
        """float32 log-probability of the true value, per pixel (and channel), for the focal loss."""
        raise NotImplementedError

    def dice_inputs(self, logits, target):
        """(probabilities, 0/1 targets), both float (B, K, H, W): the channels Dice is taken on."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, channels={self.channels})"


#: The heads by their ``model.head`` name.
HEADS: dict[str, Head] = {}


def register(cls: type[Head]) -> type[Head]:
    """Class decorator: add an instance of ``cls`` to :data:`HEADS` under ``cls.name``."""
    HEADS[cls.name] = cls()
    return cls


def get_head(name: str) -> Head:
    """The head called ``name``; NucleiError naming ``model.head`` when there is none."""
    try:
        return HEADS[name]
    except (KeyError, TypeError):
        raise NucleiError(f"model.head: {name!r} is not one of {', '.join(HEADS)}") from None


@register
class SoftmaxHead(Head):
    """3 classes: 0 = mask − border, 1 = border, 2 = background; softmax over the channels."""

    name, channels, pixel_loss_name = "softmax", 3, "weighted_ce"
    channel_meanings = (
        ("interior", "P(pixel is nucleus, away from a contact with another nucleus)"),
        ("border", "P(pixel lies on the border between touching nuclei)"),
        ("background", "P(pixel is background)"),
    )
    formulas = ("interior + border", "interior")
    #: Classes the Dice term is computed on (not background).
    DICE_CLASSES = (0, 1)

    def encode_labels(self, labels: np.ndarray, border: np.ndarray) -> np.ndarray:
        """uint8 (H, W) classes; border pixels on background are class 1 too, so the three
        classes partition the image."""
        classes = np.where(np.asarray(labels) > 0, np.uint8(0), np.uint8(2))
        classes[np.asarray(border, bool)] = 1
        return classes

    def mask_and_marker(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P(nucleus) = p0 + p1, P(marker) = p0."""
        probs = self.check_probs(probs)
        return probs[0] + probs[1], probs[0]

    def activate(self, logits):
        import torch

        self.check_logits(logits)
        return torch.softmax(logits, dim=1)

    def batch_target(self, batch: dict):
        return batch["classes"].long()

    def log_likelihood(self, logits, target):
        import torch.nn.functional as F

        return F.log_softmax(logits.float(), dim=1).gather(1, target.long()[:, None])[:, 0]

    def dice_inputs(self, logits, target):
        import torch

        probs = torch.softmax(logits.float(), dim=1)[:, self.DICE_CLASSES]
        return probs, torch.stack([target == c for c in self.DICE_CLASSES], dim=1)


@register
class SigmoidHead(Head):
    """2 independent channels (mask, border); elementwise sigmoid."""

    name, channels, pixel_loss_name = "sigmoid", 2, "bce"
    channel_meanings = (
        ("mask", "P(pixel belongs to a nucleus)"),
        ("border", "P(pixel lies on the border between touching nuclei)"),
    )
    formulas = ("mask", "mask * (1 - border)")

    def encode_labels(self, labels: np.ndarray, border: np.ndarray) -> np.ndarray:
        """float32 (2, H, W) in {0, 1}: (labels > 0, border)."""
        return np.stack([np.asarray(labels) > 0, np.asarray(border, bool)]).astype(np.float32)

    def mask_and_marker(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P(nucleus) = channel 0, P(marker) = mask · (1 − border)."""
        probs = self.check_probs(probs)
        return probs[0], probs[0] * (1.0 - probs[1])

    def activate(self, logits):
        import torch

        self.check_logits(logits)
        return torch.sigmoid(logits)

    def batch_target(self, batch: dict):
        import torch

        return torch.stack([batch["mask"], batch["border"]], dim=1).float()

    def log_likelihood(self, logits, target):
        import torch.nn.functional as F

        return -F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")

    def dice_inputs(self, logits, target):
        import torch

        return torch.sigmoid(logits.float()), target


def mask_and_marker(probs: np.ndarray, head: str) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`Head.mask_and_marker` of the head called ``head``.

    Parameters
    ----------
    probs : (C, H, W) float array
        Probabilities in [0, 1] in the head's channel layout.
    head : str
        A name in :data:`HEADS`.

    Returns
    -------
    mask, marker : (H, W) float32
        P(pixel belongs to a nucleus), P(pixel is nucleus interior, away from a contact).
    """
    return get_head(head).mask_and_marker(probs)


#: Pixels with P(nucleus) in this open interval count as ambiguous (confidence).
AMBIGUOUS = (0.3, 0.7)



def confidence(probs: np.ndarray, head: str) -> float:
    """Share of unambiguous pixels among the possible nucleus pixels of a probability map.

    Parameters
    ----------
    probs : (C, H, W) float32
        Network probabilities (:func:`pipeline.method.heads.mask_and_marker` layout).
    head : str

    Returns
    -------
    confidence : float in [0, 1]; 1 when no pixel is possibly a nucleus.
    """
    mask_p, _ = mask_and_marker(probs, head)
    possible = mask_p > 0.1
    n = int(possible.sum())
    if n == 0:
        return 1.0
    ambiguous = int(((mask_p > AMBIGUOUS[0]) & (mask_p < AMBIGUOUS[1])).sum())
    return 1.0 - ambiguous / n
