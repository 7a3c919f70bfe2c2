"""One optimisation step and one validation pass (the trainer's and the benchmark's steps).

Must not: own any state across steps (:class:`pipeline.training.trainer.Trainer` does), or know a head's
channel layout (:mod:`pipeline.method.heads`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.config.params import PostprocessConfig
from pipeline.method.heads import TARGET_KEYS, get_head
from pipeline.model.runtime import autocast, to_channels_last


def train_step(
    net: nn.Module,
    batch: dict[str, torch.Tensor],
    loss_fn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    precision: str = "fp32",
) -> torch.Tensor:
    """One optimisation step on a batch of training items.

    Parameters
    ----------
    net : torch.nn.Module
        The network (possibly DDP-wrapped or compiled), in training mode.
    batch : dict of tensors
        ``image`` float32 (B, 3, H, W) and the targets of :class:`pipeline.training.dataset.NucleiDataset`.
    loss_fn : callable(logits, batch) -> scalar tensor
    optimizer, scaler
        The scaler is a no-op unless float16 autocast is used.
    device : torch.device
    precision : {'fp32', 'bf16', 'fp16'}
        A resolved precision (:func:`pipeline.model.runtime.resolve_precision`): autocast dtype of the
        forward pass. The image goes in channels-last memory format (the network should be in it
        too, :func:`pipeline.model.runtime.prepare_model`).

    Returns
    -------
    loss : torch.Tensor
        The detached scalar loss (on ``device``; no host synchronisation).
    """
    image = to_channels_last(batch["image"], device)
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "image"}
    with autocast(device, precision):
        logits = net(image)
    loss = loss_fn(logits.float(), batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


# --------------------------------------------------------------------------- validation


def postprocess_function(head: str, postprocess: PostprocessConfig):
    """``(probs (C, H, W), image_type=None) -> int32 labels``: the watershed of the postprocess
    stage, with the thresholds of the image's type (:func:`pipeline.method.watershed.for_image_type`)."""
    from pipeline.method.watershed import for_image_type
    from pipeline.method.watershed import postprocess as watershed

    settings = postprocess.thresholds()
    return lambda probs, image_type=None: watershed(probs, head, **for_image_type(settings, image_type))


@torch.no_grad()
def validate(model: nn.Module, loader, loss_fn, head: str, segment, device: torch.device, precision="fp32",
             groups=None, n_groups: int = 1):
    """Loss and DSB2018 score of ``model`` on whole validation images.

    Parameters
    ----------
    model : torch.nn.Module
        Plain network; put in eval mode here, and back in training mode at the end.
    loader : iterable of validation items of :class:`pipeline.training.dataset.NucleiDataset` (batch 1).
    loss_fn : callable(logits, batch) -> scalar tensor
    head : str
        A name of :data:`pipeline.method.heads.HEADS`.
    segment : callable(probabilities float32 (C, H, W), image_type) -> int32 labels (H, W)
        As :func:`postprocess_function`; ``image_type`` is that of the validation image
        (:func:`pipeline.model.segmenter.image_type_of`), so stained images take their own thresholds.
    device : torch.device
    precision : {'fp32', 'bf16', 'fp16'}
        A resolved precision (autocast of the forward pass).
    groups : sequence of int, optional
        The group (source) of each item of ``loader``, in ``[0, n_groups)``; all 0 when None.
    n_groups : int

    Returns
    -------
    sums : list of float, length 3 + 2 ``n_groups``
        ``[sum of losses, sum of DSB2018 scores, number of images]`` over ``loader``, then the
        sums of DSB2018 scores of each group, then the number of images of each group (sums, so
        that processes can add theirs; :func:`validation_score` reduces them).
    """
    from pipeline.method.image_types import image_type_of
    from pipeline.method.metrics import dsb_score

    model.eval()
    loss_sum = score_sum = count = 0.0
    group_scores, group_counts = np.zeros(n_groups), np.zeros(n_groups)
    for i, batch in enumerate(loader):
        labels = batch["labels"][0].numpy()
        h, w = labels.shape
        image = to_channels_last(batch["image"], device)
        with autocast(device, precision):
            logits = model(image)
        logits = logits[..., :h, :w].float()
        targets = {k: batch[k].to(device, non_blocking=True) for k in TARGET_KEYS}
        targets["classes"] = targets["classes"].long()
        loss_sum += float(loss_fn(logits, targets))
        probs = get_head(head).activate(logits)[0].cpu().numpy()
        image_type = image_type_of(batch["image"][0, :, :h, :w].permute(1, 2, 0).numpy())
        score = dsb_score(labels, segment(probs, image_type))
        group = 0 if groups is None else groups[i]
        score_sum, count = score_sum + score, count + 1
        group_scores[group] += score
        group_counts[group] += 1
    model.train()
    return [loss_sum, score_sum, count, *group_scores.tolist(), *group_counts.tolist()]


def validation_score(sums, balance: str = "image") -> float:
    """The DSB2018 score that chooses the best epoch, from the (all-reduced) sums of :func:`validate`.

    Parameters
    ----------
    sums : sequence of float, length 3 + 2 n_groups
    balance : {'image', 'source'}
        ``image``: the mean over images; ``source``: the mean over groups (sources) of the mean
        over each group's images, so that each source counts once (groups without images are left
        out), as ``nuclei tune --balance source`` and the model card weigh them.

    Returns
    -------
    score : float
    """
    _, score_sum, count, *groups = sums
    if balance == "image":
        return score_sum / count
    n = len(groups) // 2
    scores, counts = np.asarray(groups[:n], float), np.asarray(groups[n:], float)
    seen = counts > 0
    return float(np.mean(scores[seen] / counts[seen]))
