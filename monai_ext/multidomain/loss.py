"""Multi-domain segmentation loss with a contrastive regulariser on domain embeddings.

Boutillon et al., MICCAI 2021, Sec. 2.3: ``L = sum_d L_seg,d + lambda * L_con`` where ``L_seg,d`` is
the segmentation loss of the samples of domain d under head d and ``L_con`` pulls embeddings of the
same domain together and pushes different domains apart. Two choices of ``L_con``:

* ``"supcon"``: supervised contrastive loss (Khosla et al., NeurIPS 2020, eq. 2) with the domain as
  label, one view per sample, temperature 0.1 (``plugins.losses.sup_con``);
* ``"margin"``: margin contrastive loss (Hadsell et al., CVPR 2006, eq. 4), margin 1.0
  (``plugins.losses.margin_contrastive``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss
from torch import nn

from monai_ext.multidomain.config import MultiDomainConfig
from plugins.errors import UserInputError
from plugins.losses import margin_contrastive, no_autocast, sup_con

__all__ = ["domain_regulariser", "check_labels", "MultiDomainLoss"]

REGULARISERS = ("none", "supcon", "margin")
_C = MultiDomainConfig()


def domain_regulariser(
    embedding: torch.Tensor,
    domain: torch.Tensor,
    kind: str = "supcon",
    temperature: float = 0.1,
    margin: float = 1.0,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """``L_con`` over the domain labels of a batch.

    Args:
        embedding: (B, E) (L2-normalised by the model; ``sup_con`` normalises again, harmlessly).
        domain: (B,) domain ids.
        kind: ``"supcon"``, ``"margin"`` or ``"none"`` (returns 0 attached to the graph).
        gather_distributed: contrast against every DDP rank's embeddings (``multi_gpu_train``),
            so that the averaged gradient is that of one process on the whole batch.
    """
    if kind == "supcon":
        # base temperature = temperature: the plain SupCon mean of eq. 2 without rescaling
        return sup_con(
            embedding[:, None, :],
            domain,
            temperature=temperature,
            base_temperature=temperature,
            gather_distributed=gather_distributed,
        )
    if kind == "margin":
        return margin_contrastive(
            embedding, domain, margin=margin, gather_distributed=gather_distributed
        )
    if kind == "none":
        return embedding.sum() * 0.0
    raise ValueError(f"regulariser must be one of {REGULARISERS}, got {kind!r}")


def check_labels(label: torch.Tensor, domain: int, num_classes: int) -> None:
    """One clear error when a label map holds a value outside the domain's classes."""
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or hi >= num_classes:
        bad = hi if hi >= num_classes else lo
        raise UserInputError(
            f"label value {bad} is outside domain {domain}'s classes: expected integers in [0, {num_classes - 1}]."
        )


class MultiDomainLoss(nn.Module):
    """``sum_d DiceCE_d + lam * L_con`` (Boutillon et al., Sec. 2.3).

    Args:
        domain_classes: classes per domain.
        regulariser: ``"supcon"`` (default), ``"margin"`` or ``"none"``.
        lam: weight of ``L_con`` (0.1).
        temperature, margin: of the regulariser.
        require_all_domains: raise when a training batch lacks a domain (the balanced sampler
            guarantees that every batch holds every domain).
        gather_distributed: gather the regulariser's embeddings over DDP ranks (the bundle's
            ``multi_gpu_train`` config sets it). The segmentation terms stay local means: with the
            same number of samples of each domain on every rank, DDP's average is the global mean.

    ``forward(logits, label, domain, embedding, model=None)``: ``logits`` is the dict of
    :meth:`MultiDomainUNet.forward_multi`; ``label`` (B, 1, *S) integer maps in batch order;
    ``domain`` (B,). Pass ``model`` when it has a shared head and union logits were requested.
    Returns the total loss and a dict of its detached parts.
    """

    def __init__(
        self,
        domain_classes: Sequence[int],
        regulariser: str = _C.regulariser,
        lam: float = _C.lam,
        temperature: float = _C.temperature,
        margin: float = _C.margin,
        require_all_domains: bool = True,
        gather_distributed: bool = False,
    ):
        super().__init__()
        if regulariser not in REGULARISERS:
            raise ValueError(f"regulariser must be one of {REGULARISERS}, got {regulariser!r}")
        self.domain_classes = list(domain_classes)
        self.regulariser, self.lam, self.temperature, self.margin = (
            regulariser,
            lam,
            temperature,
            margin,
        )
        self.require_all_domains = require_all_domains
        self.gather_distributed = gather_distributed
        self.seg = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(
        self,
        logits: dict[int, torch.Tensor],
        label: torch.Tensor,
        domain: torch.Tensor,
        embedding: torch.Tensor,
        model: nn.Module | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        domain = domain.reshape(-1).to(label.device)
        if self.require_all_domains:
            missing = sorted(set(range(len(self.domain_classes))) - set(domain.tolist()))
            if missing:
                raise UserInputError(
                    f"the training batch lacks domain id {missing[0]}: every batch must hold every domain "
                    "(use DomainBalancedBatchSampler or set require_all_domains=False)."
                )
        parts: dict[str, float] = {}
        seg_total = embedding.new_zeros(())
        for d, lg in logits.items():
            idx = (domain == d).nonzero(as_tuple=True)[0]
            y = label[idx]
            check_labels(y, d, self.domain_classes[d])
            if (
                model is not None
                and getattr(model, "shared_head", False)
                and lg.shape[1] != self.domain_classes[d]
            ):
                y = model.to_union_labels(y, d)
            with no_autocast(lg):
                seg = self.seg(lg.float(), y.float())
            parts[f"seg_{d}"] = float(seg.detach())
            seg_total = seg_total + seg
        con = domain_regulariser(
            embedding.float(),
            domain,
            self.regulariser,
            self.temperature,
            self.margin,
            self.gather_distributed,
        )
        parts["con"] = float(con.detach())
        total = seg_total + self.lam * con
        parts["total"] = float(total.detach())
        return total, parts
