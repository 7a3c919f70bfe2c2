"""Widen a plain U-Net without changing what it computes (a function-preserving warm start).

A wider network trained from scratch needs a GPU's budget; started from a trained narrower one it
begins where that one stands. Every convolution keeps its trained filters; the new channels get
fresh random filters over all their inputs, and the old channels' filters give the new inputs zero
weight. The old channels therefore compute what they computed, in training (batch statistics are
per channel) and in inference, and the head reads only them at first; the new channels start to
count as soon as training moves those zeros (Chen, Goodfellow and Shlens, "Net2Net", ICLR 2016, with
zero-initialised outgoing weights instead of copied units)::

    nuclei widen pipeline/shipped/model --width 24 -o models/w24-start

then ``train.init: models/w24-start`` with ``model.width: 24``.

Must not: train, or widen anything but ``model.arch: unet`` (smp encoders have fixed widths).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from pipeline.arguments import number
from pipeline.config.model_folder import MAX_WIDTH, byte_size
from pipeline.errors import NucleiError, before_work
from pipeline.model import runtime
from pipeline.model.model_dir import load_model_dir, save_model_dir
from pipeline.model.networks import UNet, build_model

#: Memory that widening takes per parameter of the wide network (bytes): the fresh float32 network,
#: its state's float32 copy, the float16 state and its serialised bytes written.
WIDEN_BYTES_PER_PARAMETER = 14


def _old_channels(name: str, dim: int, old: int, new: int) -> torch.Tensor:
    """Where the ``old`` channels of a parameter's dimension ``dim`` lie among its ``new`` ones: the
    first ``old``, except the input of a decoder block's first convolution, which concatenates the
    skip connection and the upsampled path (each half widened)."""
    where = torch.zeros(new, dtype=torch.bool)
    if name.startswith("dec.") and name.endswith(".0.weight") and dim == 1:
        half_old, half_new = old // 2, new // 2
        where[:half_old] = True
        where[half_new:half_new + half_old] = True
    else:
        where[:old] = True
    return where


def widen_state(narrow: UNet, wide: UNet) -> dict[str, torch.Tensor]:
    """The state of ``wide`` (a freshly initialised :class:`UNet` of the same depth and a larger
    width) holding ``narrow``'s trained parameters, so that ``wide`` computes what ``narrow`` does.

    Parameters
    ----------
    narrow, wide : UNet
        Same ``in_channels``, ``out_channels``, ``depth`` and upsampling; ``wide`` at least as wide.

    Returns
    -------
    state : dict
        ``wide``'s state dict: trained values where ``narrow`` had them; for every weight of an old
        output channel, zero on the new input channels; the new channels' own filters and batch-norm
        parameters as initialised (running mean 0, variance 1).
    """
    old_state, state = narrow.state_dict(), {k: v.clone() for k, v in wide.state_dict().items()}
    if old_state.keys() != state.keys():
        raise ValueError("the networks differ in more than width (depth, upsampling or channels)")
    for name, old in old_state.items():
        new = state[name]
        if old.dim() == 0:  # num_batches_tracked
            state[name] = old.clone()
            continue
        if old.dim() != new.dim() or any(o > n for o, n in zip(old.shape, new.shape, strict=True)):
            raise ValueError(f"{name}: {tuple(old.shape)} does not fit in {tuple(new.shape)}")
        masks = [_old_channels(name, d, o, n) for d, (o, n) in enumerate(zip(old.shape, new.shape, strict=True))]
        if old.dim() >= 2:  # a convolution: (out, in, k, k), transposed (in, out, k, k)
            out_dim, in_dim = (1, 0) if _is_transposed(wide, name) else (0, 1)
            block = [slice(None)] * new.dim()
            block[out_dim], block[in_dim] = masks[out_dim], ~masks[in_dim]
            new[_grid(block)] = 0  # old outputs ignore new inputs
        new[_grid(masks)] = old.to(new.dtype)
        state[name] = new
    return state


def _grid(masks: list) -> tuple:
    """An index of the cross product of per-dimension boolean masks (or slices)."""
    index = []
    for d, m in enumerate(masks):
        if isinstance(m, slice):
            index.append(m)
        else:
            shape = [1] * len(masks)
            shape[d] = -1
            index.append(torch.nonzero(m).flatten().reshape(shape))
    return tuple(index)


def _is_transposed(model: torch.nn.Module, name: str) -> bool:
    module = model.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(module, torch.nn.ConvTranspose2d)


def widen_model_dir(source: str | Path, out: str | Path, width: int, seed: int = 0) -> Path:
    """Write ``source``'s network widened to ``width`` (:func:`widen_state`) as a model directory
    with ``source``'s configuration (``model.width`` changed); ``seed`` draws the new filters.

    Raises NucleiError naming the directory: not a plain U-Net, a width not above its own or above
    :data:`~pipeline.config.model_folder.MAX_WIDTH`, a wide network larger than the memory left, or
    ``out`` the source itself (:func:`check_widening`, before anything is allocated)."""
    return write_widened(out, *check_widening(source, out, width), seed)


def check_widening(source: str | Path, out: str | Path, width: int) -> tuple:
    """What :func:`widen_model_dir` is asked, checked before any wide network is allocated (its
    size counted on torch's ``meta`` device): (source as a Path, its network, its configuration,
    the wide network's ``model`` section)."""
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise NucleiError(f"{out}: is the source; write the widened model elsewhere")
    model, config = load_model_dir(source)
    if config.model.arch != "unet":
        raise NucleiError(f"{source}: model.arch is {config.model.arch!r}; only a plain 'unet' is widened")
    if not config.model.width < width <= MAX_WIDTH:
        raise NucleiError(f"{source}: --width {width}: expected a width above the network's {config.model.width} "
                          f"and at most {MAX_WIDTH}")
    wide_config = dataclasses.replace(config.model, width=width)
    with torch.device("meta"):
        parameters = sum(v.numel() for v in build_model(wide_config).state_dict().values())
    need, left = WIDEN_BYTES_PER_PARAMETER * parameters, runtime.available_memory()
    if left is not None and need > left:
        raise NucleiError(f"{source}: --width {width}: too large for this machine (a network of {parameters:,} "
                          f"parameters needs about {byte_size(need)}; {byte_size(left)} of memory left)")
    return source, model, config, wide_config


def write_widened(out: str | Path, source: Path, model, config, wide_config, seed: int = 0) -> Path:
    """Build :func:`check_widening`'s wide network (new filters drawn with ``seed``), fill it
    (:func:`widen_state`) and write it to ``out``; returns ``out``."""
    torch.manual_seed(seed)
    with runtime.memory_guard(str(source), f"a network of width {wide_config.width}"):
        wide = build_model(wide_config)
        wide.load_state_dict(widen_state(model.float(), wide))
    config = config.without_routes(model=wide_config, weights_sha256=None, training={
        "widened": {"source": str(source), "width": config.model.width, "seed": seed,
                    "training": config.training or None}})
    return save_model_dir(out, wide, config)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei widen``."""
    parser.add_argument("source", help="a model directory whose network is a plain U-Net (model.arch: unet)")
    parser.add_argument("--width", type=number(integer=True, at_least=1, at_most=MAX_WIDTH), required=True,
                        help=f"the new width (channels of the first level), above the network's, at most {MAX_WIDTH}")
    parser.add_argument("-o", "--out", required=True, help="the model directory to write")
    parser.add_argument("--seed", type=int, default=0, help="draws the new channels' filters (default 0)")


def main(args: argparse.Namespace) -> int:
    """``nuclei widen``: the network widened, computing what it computed."""
    with before_work():  # -o the source, a width not above the network's, too large: exit 2, nothing built
        checked = check_widening(args.source, args.out, args.width)
    out = write_widened(args.out, *checked, args.seed)
    print(f"{args.source} widened to width {args.width}, written to {out}")
    return 0
