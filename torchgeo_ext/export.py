"""Move GLCNet weights into segmentation models.

torchgeo's ``SemanticSegmentationTask(weights=path)`` keeps only the ``model.*`` keys of a
checkpoint and loads them strictly into ``model.encoder``, so a GLCNet checkpoint (keys
``model.net.encoder.*``) cannot be given to it directly. :func:`export_encoder` (command:
``python -m torchgeo_ext.export GLCNET.ckpt OUT.ckpt``) writes a checkpoint it accepts; and
:class:`torchgeo_ext.finetune.GLCNetSegmentationTask` loads encoder *and* decoder (ASPP included).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from plugins.checkpoint import load_checkpoint
from plugins.errors import UserInputError

# last entry: torchgeo SimCLRTask/MoCoTask checkpoints (timm ResNet keys match smp's ResNet encoder)
ENCODER_PREFIXES = ("model.net.encoder.", "net.encoder.", "model.encoder.", "encoder.", "backbone.")
DECODER_PREFIXES = ("model.net.decoder.", "net.decoder.", "model.decoder.", "decoder.")


def _load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """State dict and hyperparameters of a checkpoint, read with
    :func:`plugins.checkpoint.load_checkpoint` (tensors and plain containers only)."""
    ckpt = load_checkpoint(path, what="checkpoint")
    if "state_dict" in ckpt:
        state, hp = ckpt["state_dict"], ckpt.get("hyper_parameters") or {}
        if not isinstance(state, Mapping) or not isinstance(hp, Mapping):
            raise UserInputError(f"checkpoint {path} holds no state dict.")
        return dict(state), dict(hp)
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return dict(ckpt), {}  # a plain state dict
    raise UserInputError(f"checkpoint {path} holds no state dict.")


def _strip(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for p in prefixes:
        out = {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
        if out:
            return out
    return {}


def encoder_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Encoder weights from a GLCNet/Lightning checkpoint, an exported one or a plain state dict."""
    state, hp = _load(path)
    enc = _strip(state, ENCODER_PREFIXES)
    if not enc and hp.get("model") == "deeplabv3+":  # our own export: keys are model.<encoder key>
        enc = _strip(state, ("model.",))
    if not enc:
        raise UserInputError(
            f"checkpoint {path} has no encoder weights (expected keys starting with one of {ENCODER_PREFIXES})."
        )
    return enc


def decoder_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """DeepLabv3+ decoder weights (ASPP, block1, block2); empty when the checkpoint has none."""
    state, _ = _load(path)
    return _strip(state, DECODER_PREFIXES)


def first_conv_bands(module_or_state: nn.Module | Mapping[str, torch.Tensor]) -> int | None:
    """Input bands of the first convolution of an encoder (module) or an encoder state dict."""
    if isinstance(module_or_state, nn.Module):
        conv = next((m for m in module_or_state.modules() if isinstance(m, nn.Conv2d)), None)
        return conv.in_channels if conv is not None else None
    w = next((v for v in module_or_state.values() if v.ndim == 4), None)
    return int(w.shape[1]) if w is not None else None


def check_bands(enc: Mapping[str, torch.Tensor], encoder: nn.Module, path: str | Path) -> None:
    """One sentence when the checkpoint's encoder was trained on another band count."""
    theirs, mine = first_conv_bands(enc), first_conv_bands(encoder)
    if theirs is not None and mine is not None and theirs != mine:
        raise UserInputError(
            f"checkpoint {path} was trained on {theirs} bands but this model takes {mine}; "
            f"select the same {theirs} bands (data bands=[...]) and set in_channels={theirs}."
        )


def export_encoder(checkpoint: str | Path, out: str | Path) -> Path:
    """Write ``out`` so that ``SemanticSegmentationTask(model="deeplabv3+", backbone=B, weights=out)``
    loads the GLCNet encoder (torchgeo's ``utils.extract_backbone`` reads ``hyper_parameters.model``
    and the ``model.*`` keys)."""
    state, hp = _load(checkpoint)
    enc = encoder_state_dict(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "hyper_parameters": {
            "model": "deeplabv3+",
            "backbone": hp.get("backbone"),
            "in_channels": hp.get("in_channels"),
        },
        "state_dict": {f"model.{k}": v.clone() for k, v in enc.items()},
    }
    from plugins.reporting import atomic_write_bytes

    atomic_write_bytes(out, lambda tmp: torch.save(payload, tmp))
    return out


def load_pretrained(
    seg_model: nn.Module, checkpoint: str | Path, decoder: bool = True
) -> dict[str, list[str]]:
    """Load GLCNet encoder (and decoder) weights into an smp DeepLabV3Plus; returns what was loaded.

    The encoder must match exactly (missing or unexpected keys raise); the segmentation head stays
    as initialised.
    """
    enc = encoder_state_dict(checkpoint)
    check_bands(enc, seg_model.encoder, checkpoint)
    try:
        seg_model.encoder.load_state_dict(enc, strict=True)
    except RuntimeError as err:
        raise UserInputError(
            f"checkpoint {checkpoint} does not fit the encoder: {str(err).splitlines()[0]}"
        ) from None
    loaded = {"encoder": sorted(enc)}
    if decoder:
        dec = decoder_state_dict(checkpoint)
        if dec:
            try:
                seg_model.decoder.load_state_dict(dec, strict=True)
            except RuntimeError as err:
                raise UserInputError(
                    f"checkpoint {checkpoint} does not fit the decoder: {str(err).splitlines()[0]}"
                ) from None
        loaded["decoder"] = sorted(dec)
    return loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torchgeo_ext.export", description=export_encoder.__doc__
    )
    parser.add_argument("checkpoint", help="GLCNetTask checkpoint (.ckpt)")
    parser.add_argument("out", help="output checkpoint for SemanticSegmentationTask(weights=...)")
    args = parser.parse_args(argv)
    print(export_encoder(args.checkpoint, args.out))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except UserInputError as err:
        print(f"python -m torchgeo_ext.export: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
