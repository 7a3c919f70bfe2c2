"""Training losses for the softmax (3-class) and sigmoid (2-channel) heads.

Targets come from the ``targets`` stage (``pipeline.targets``): ``classes`` 0 = mask − border,
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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.errors import NucleiError

#: Softmax classes the Dice term is computed on (mask − border, border; not background).
DICE_CLASSES = (0, 1)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``sum(w · v) / sum(w)`` (plain mean when ``weights`` is None)."""
    if weights is None:
        return values.mean()
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
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    head: str = "softmax",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), ``−(1 − p_t)^γ log p_t``, averaged over pixels.

    Parameters
    ----------
    logits : torch.Tensor
        float (B, C, H, W).
    target : torch.Tensor
        softmax head: long classes (B, H, W); sigmoid head: float (B, C, H, W) in {0, 1}.
    gamma : float
        Focusing parameter; 0 gives (binary) cross-entropy.
    head : {'softmax', 'sigmoid'}
    weights : torch.Tensor, optional
        float (B, H, W) pixel weights (normalised by their sum).
    """
    logits = logits.float()
    if head == "softmax":
        logp = F.log_softmax(logits, dim=1).gather(1, target.long()[:, None])[:, 0]
    else:
        target = target.float()
        logp = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        weights = None if weights is None else weights[:, None]
    loss = -((1.0 - logp.exp()) ** gamma) * logp
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
    return _weighted_mean(bce, None if weights is None else weights[:, None])


def sigmoid_target(batch: dict) -> torch.Tensor:
    """The sigmoid head's target float (B, 2, H, W) = (mask, border) from a batch."""
    return torch.stack([batch["mask"], batch["border"]], dim=1).float()


class CombinedLoss:
    """``callable(logits (B, C, H, W), batch) -> scalar``: a weighted sum of loss terms.

    ``terms(logits, batch)`` returns the individual (unweighted) terms as a dict of tensors,
    for logging; ``weights`` maps term name to its factor.
    """

    def __init__(self, head: str, weights: dict[str, float], gamma: float, use_weight_maps: bool):
        self.head, self.weights = head, weights
        self.gamma, self.use_weight_maps = gamma, use_weight_maps

    def terms(self, logits: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        """Each active term, unweighted: ``{'weighted_ce' | 'bce', 'dice', 'focal'}``."""
        expected = 3 if self.head == "softmax" else 2
        if logits.ndim != 4 or logits.shape[1] != expected:
            raise ValueError(
                f"{self.head} head expects logits (B, {expected}, H, W), got {tuple(logits.shape)}"
            )
        pixel_w = batch["weights"] if self.use_weight_maps else None
        out = {}
        if self.head == "softmax":
            classes = batch["classes"].long()
            if "weighted_ce" in self.weights:
                out["weighted_ce"] = weighted_cross_entropy(logits, classes, pixel_w)
            if "dice" in self.weights:
                probs = torch.softmax(logits.float(), dim=1)[:, DICE_CLASSES]
                onehot = torch.stack([classes == c for c in DICE_CLASSES], dim=1)
                out["dice"] = soft_dice_loss(probs, onehot)
            if "focal" in self.weights:
                out["focal"] = focal_loss(logits, classes, self.gamma, "softmax", pixel_w)
        else:
            target = sigmoid_target(batch)
            if "bce" in self.weights:
                out["bce"] = bce_loss(logits, target, pixel_w)
            if "dice" in self.weights:
                out["dice"] = soft_dice_loss(torch.sigmoid(logits.float()), target)
            if "focal" in self.weights:
                out["focal"] = focal_loss(logits, target, self.gamma, "sigmoid", pixel_w)
        return out

    def __call__(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        terms = self.terms(logits, batch)
        return sum(self.weights[name] * value for name, value in terms.items())

    def __repr__(self) -> str:
        return f"CombinedLoss(head={self.head!r}, weights={self.weights}, gamma={self.gamma})"


def build_loss(cfg: dict, head: str) -> CombinedLoss:
    """Build the training loss from the ``loss`` section of ``params.yaml``.

    Parameters
    ----------
    cfg : dict
        ``weighted_ce`` (softmax head), ``bce`` (sigmoid head), ``dice``, ``focal`` — factors
        ≥ 0, a term with factor 0 is skipped; ``focal_gamma``; ``use_weight_maps``.
    head : {'softmax', 'sigmoid'}

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
    if head not in ("softmax", "sigmoid"):
        raise NucleiError(f"model.head: {head!r} is not one of softmax, sigmoid")
    names = ("weighted_ce", "dice", "focal") if head == "softmax" else ("bce", "dice", "focal")
    defaults = {"weighted_ce": 1.0, "bce": 1.0, "dice": 1.0, "focal": 0.0}
    factors = {}
    for name in names:
        value = float(cfg.get(name, defaults[name]) or 0.0)
        if value < 0:
            raise NucleiError(f"loss.{name}: must be ≥ 0, got {value}")
        if value > 0:
            factors[name] = value
    if not factors:
        raise NucleiError(f"loss: no term has a positive factor for the {head} head ({', '.join(names)})")
    return CombinedLoss(
        head,
        factors,
        gamma=float(cfg.get("focal_gamma", 2.0)),
        use_weight_maps=bool(cfg.get("use_weight_maps", True)),
    )
