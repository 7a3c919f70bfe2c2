"""Training losses: the loss formulas, and their weighted combination for any head.

Targets come from the ``targets`` stage (``pipeline.method.training_targets``): ``classes`` 0 = mask − border,
1 = border, 2 = background; ``mask`` and ``border`` 0/1; ``weights`` the U-Net weight map
(class balance + separation term). All functions take logits, compute in float32 (safe under
autocast) and return a scalar tensor.

:func:`build_loss` combines the components with the weights of the ``loss`` section of
``params.yaml``:

- softmax head: ``weighted_ce`` · pixel-weighted cross-entropy + ``dice`` · soft Dice on
  classes 0 and 1 + ``focal`` · focal loss;
- sigmoid head: ``bce`` · (pixel-weighted) binary cross-entropy on (mask, border) + ``dice`` ·
  soft Dice on both channels + ``focal`` · binary focal loss.

``use_weight_maps: false`` replaces the weight maps by 1 everywhere.

Must not: know the channel layout of a head (:mod:`pipeline.method.heads` says which target and channels
each term uses), or read params.yaml (the ``loss`` section comes in as a
:class:`pipeline.config.params.LossConfig`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from pipeline.config.params import LossConfig
from pipeline.errors import NucleiError
from pipeline.method.heads import get_head


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``sum(w · v) / sum(w)`` (plain mean when ``weights`` is None); (B, H, W) weights apply to
    every channel of (B, C, H, W) values."""
    if weights is None:
        return values.mean()
    if weights.ndim == values.ndim - 1:  # (B, H, W) pixel weights of (B, C, H, W) values
        weights = weights[:, None]
    weights = weights.float().expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


def weighted_cross_entropy(
    logits: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Pixel-weighted cross-entropy (U-Net paper, eq. 1), normalised by the total weight.

    Parameters
    ----------
    logits : torch.Tensor
        float (B, C, H, W).
    classes : torch.Tensor
        long (B, H, W), values in 0..C-1.
    weights : torch.Tensor, optional
        float (B, H, W), ≥ 0; None = unweighted.

    Returns
    -------
    loss : torch.Tensor
        Scalar ``sum(w · −log p_true) / sum(w)``.
    """
    ce = F.cross_entropy(logits.float(), classes.long(), reduction="none")
    return _weighted_mean(ce, weights)


def soft_dice_loss(probs: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss, per channel over the whole batch, averaged over channels.

    Parameters
    ----------
    probs : torch.Tensor
        float (B, K, H, W) probabilities in [0, 1].
    targets : torch.Tensor
        float (B, K, H, W) in {0, 1}.
    eps : float
        Smoothing added to numerator and denominator (an empty channel predicted empty
        gives loss 0).

    Returns
    -------
    loss : torch.Tensor
        Scalar ``mean_k (1 − (2 Σ p t + eps) / (Σ p + Σ t + eps))``.
    """
    probs, targets = probs.float(), targets.float()
    dims = (0, 2, 3)
    inter = (probs * targets).sum(dims)
    total = probs.sum(dims) + targets.sum(dims)
    return (1.0 - (2.0 * inter + eps) / (total + eps)).mean()


def focal_loss(
    log_p: torch.Tensor, gamma: float = 2.0, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), ``−(1 − p_t)^γ log p_t``, averaged over pixels.

    Parameters
    ----------
    log_p : torch.Tensor
        float (B, H, W) or (B, C, H, W): log-probability of the true class or value
        (:meth:`pipeline.method.heads.Head.log_likelihood`).
    gamma : float
        Focusing parameter; 0 gives (binary) cross-entropy.
    weights : torch.Tensor, optional
        float (B, H, W) pixel weights (normalised by their sum), applied to every channel.
    """
    log_p = log_p.float()
    loss = -((1.0 - log_p.exp()) ** gamma) * log_p
    return _weighted_mean(loss, weights)


def bce_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits, pixel-weighted, for the sigmoid head.

    Parameters
    ----------
    logits : torch.Tensor
        float (B, C, H, W).
    target : torch.Tensor
        float (B, C, H, W) in {0, 1}.
    weights : torch.Tensor, optional
        float (B, H, W), applied to every channel; normalised by their sum.
    """
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return _weighted_mean(bce, weights)


#: The pixel-wise losses by the :attr:`pipeline.method.heads.Head.pixel_loss_name` of the head that uses
#: them: ``loss(logits (B, C, H, W), head.batch_target(batch), weights (B, H, W) or None)``.
PIXEL_LOSSES = {"weighted_ce": weighted_cross_entropy, "bce": bce_loss}


class CombinedLoss:
    """``callable(logits (B, C, H, W), batch) -> scalar``: a weighted sum of loss terms.

    ``terms(logits, batch)`` returns the individual (unweighted) terms as a dict of tensors,
    for logging; ``weights`` maps term name to its factor. The head
    (:class:`pipeline.method.heads.Head`) says what the target is and which channels each term uses.
    """

    def __init__(self, head: str, weights: dict[str, float], gamma: float, use_weight_maps: bool):
        self.head, self.weights = head, weights
        self.gamma, self.use_weight_maps = gamma, use_weight_maps

    def terms(self, logits: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        """Each active term, unweighted: the head's pixel loss (``weighted_ce`` | ``bce``),
        ``dice``, ``focal``."""
        head = get_head(self.head)
        head.check_logits(logits)
        pixel_w = batch["weights"] if self.use_weight_maps else None
        target = head.batch_target(batch)
        out = {}
        if head.pixel_loss_name in self.weights:
            out[head.pixel_loss_name] = PIXEL_LOSSES[head.pixel_loss_name](logits, target, pixel_w)
        if "dice" in self.weights:
            out["dice"] = soft_dice_loss(*head.dice_inputs(logits, target))
        if "focal" in self.weights:
            out["focal"] = focal_loss(head.log_likelihood(logits, target), self.gamma, pixel_w)
        return out

    def __call__(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        terms = self.terms(logits, batch)
        return sum(self.weights[name] * value for name, value in terms.items())

    def __repr__(self) -> str:
        return f"CombinedLoss(head={self.head!r}, weights={self.weights}, gamma={self.gamma})"


def build_loss(cfg: LossConfig | Mapping, head: str) -> CombinedLoss:
    """Build the training loss from the ``loss`` section of ``params.yaml``.

    Parameters
    ----------
    cfg : LossConfig or mapping
        The ``loss`` section (:class:`pipeline.config.params.LossConfig`; a mapping is checked by it):
        the head's pixel loss factor (``weighted_ce`` softmax, ``bce`` sigmoid), ``dice``,
        ``focal`` — a term with factor 0 is skipped; ``focal_gamma``; ``use_weight_maps``.
    head : str
        A name of :data:`pipeline.method.heads.HEADS`.

    Returns
    -------
    loss : CombinedLoss
        ``loss(logits (B, C, H, W), batch) -> scalar tensor``; ``batch`` holds ``classes`` long
        (B, H, W), ``mask``, ``border``, ``weights`` float (B, H, W).

    Raises
    ------
    NucleiError
        Unknown head, a negative factor, or no term with a positive factor for this head.
    """
    if not isinstance(cfg, LossConfig):
        cfg = LossConfig.from_dict(cfg)
    names = (get_head(head).pixel_loss_name, "dice", "focal")
    factors = {name: getattr(cfg, name) for name in names if getattr(cfg, name) > 0}
    if not factors:
        raise NucleiError(f"loss: no term has a positive factor for the {head} head ({', '.join(names)})")
    return CombinedLoss(head, factors, gamma=cfg.focal_gamma, use_weight_maps=cfg.use_weight_maps)
