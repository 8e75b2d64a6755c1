"""Domain-specific batch normalisation (DSBN) and conversion of existing MONAI/torch networks.

Boutillon et al., "Multi-task, multi-domain deep segmentation with shared representations and
contrastive regularization for sparse pediatric datasets", MICCAI 2021, Sec. 2.1: convolution
filters are shared by every domain while each domain keeps its own batch-norm affine parameters
and running statistics (after Chang et al., "Domain-Specific Batch Normalization", CVPR 2019).

The domain reaches the layers in one of three ways, so that a converted network keeps its usual
``forward(x)`` signature:

* ``dsbn(x, domain)`` called directly;
* ``with domain_context(model, domain): model(x)`` sets the domain on every DSBN of ``model``;
* ``DomainRouter(model)(x, domain)``, a thin wrapper doing the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from plugins.errors import UserInputError

__all__ = [
    "DomainSpecificBatchNorm",
    "convert_to_dsbn",
    "domain_context",
    "set_domain",
    "DomainRouter",
]

_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
Domain = int | torch.Tensor | None


def check_domain(domain: int | torch.Tensor, num_domains: int, what: str = "domain") -> None:
    """Raise one clear error when a domain id lies outside ``[0, num_domains)``."""
    values = domain.reshape(-1).tolist() if isinstance(domain, torch.Tensor) else [int(domain)]
    bad = [v for v in values if not 0 <= int(v) < num_domains]
    if bad:
        raise UserInputError(
            f"{what} id {int(bad[0])} is out of range: expected an integer in [0, {num_domains - 1}] "
            f"for a model with {num_domains} domains."
        )


class DomainSpecificBatchNorm(nn.Module):
    """K independent batch norms behind one call.

    Args:
        num_features: channels C.
        num_domains: K.
        spatial_dims: 1, 2 or 3 (selects ``BatchNorm{1,2,3}d``).
        eps, momentum, affine, track_running_stats: as in ``nn.BatchNorm``.

    ``forward(x, domain)`` takes ``x`` of shape ``(B, C, *spatial)`` and ``domain`` either an int (the
    whole batch), a ``(B,)`` tensor of per-sample ids, or ``None`` (the id last given with
    :func:`set_domain`/:func:`domain_context`). A mixed batch is split by domain, each part is
    normalised with its own statistics (as the per-domain forward passes would be) and the results
    are scattered back in the original order.
    """

    def __init__(
        self,
        num_features: int,
        num_domains: int,
        spatial_dims: int = 2,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ):
        super().__init__()
        if spatial_dims not in _BN:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.num_features = num_features
        self.num_domains = num_domains
        self.spatial_dims = spatial_dims
        self.bns = nn.ModuleList(
            _BN[spatial_dims](num_features, eps, momentum, affine, track_running_stats)
            for _ in range(num_domains)
        )
        self.domain: Domain = None

    def forward(self, x: torch.Tensor, domain: Domain = None) -> torch.Tensor:
        domain = self.domain if domain is None else domain
        if domain is None:
            if self.num_domains == 1:
                domain = 0
            else:
                raise RuntimeError(
                    "DomainSpecificBatchNorm needs a domain: pass forward(x, domain) or wrap the call in "
                    "monai_ext.dsbn.domain_context(model, domain)"
                )
        check_domain(domain, self.num_domains)
        if isinstance(domain, torch.Tensor) and domain.ndim > 0:
            domain = domain.reshape(-1).to(x.device)
            if domain.shape[0] != x.shape[0]:
                raise ValueError(
                    f"domain must have shape ({x.shape[0]},) to match x, got {tuple(domain.shape)}"
                )
            present = torch.unique(domain)
            if present.numel() > 1:
                out = torch.empty_like(x)
                # loop over the domains present (at most K), never over samples
                for d in present.tolist():
                    idx = (domain == d).nonzero(as_tuple=True)[0]
                    out[idx] = self.bns[d](x[idx])
                return out
            domain = present.item()
        return self.bns[int(domain)](x)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_domains={self.num_domains}, spatial_dims={self.spatial_dims}"
        )

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm, num_domains: int) -> DomainSpecificBatchNorm:
        """A DSBN whose every slot is a copy of ``bn`` (weights, bias, running stats, counters)."""
        dims = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}.get(type(bn))
        if dims is None:
            raise TypeError(f"cannot convert {type(bn).__name__}; expected BatchNorm1d/2d/3d")
        new = cls(
            bn.num_features,
            num_domains,
            dims,
            bn.eps,
            bn.momentum,
            bn.affine,
            bn.track_running_stats,
        )
        ref = bn.state_dict()
        for slot in new.bns:
            slot.load_state_dict(ref)
        new.train(bn.training)
        p = next(iter(bn.parameters()), None)
        if p is not None:
            new.to(device=p.device, dtype=p.dtype)
        elif bn.running_mean is not None:
            new.to(device=bn.running_mean.device)
        return new


def convert_to_dsbn(model: nn.Module, num_domains: int) -> nn.Module:
    """Replace every ``BatchNorm{1,2,3}d`` of ``model`` (in place) by a :class:`DomainSpecificBatchNorm`.

    Each of the K slots starts as a copy of the original layer, so at conversion time the network's
    output is unchanged whichever domain is chosen. Set the domain with :func:`domain_context` or
    :class:`DomainRouter`; the network's ``forward`` signature is untouched.

    Returns:
        ``model`` (or a new DSBN if ``model`` itself is a batch norm).
    """
    if isinstance(model, _BatchNorm):
        return DomainSpecificBatchNorm.from_batchnorm(model, num_domains)
    for name, child in model.named_children():
        if isinstance(child, _BatchNorm):
            setattr(model, name, DomainSpecificBatchNorm.from_batchnorm(child, num_domains))
        else:
            convert_to_dsbn(child, num_domains)
    return model


def set_domain(model: nn.Module, domain: Domain) -> None:
    """Set the domain used by every DSBN inside ``model`` when called without one."""
    for m in model.modules():
        if isinstance(m, DomainSpecificBatchNorm):
            if domain is not None:
                check_domain(domain, m.num_domains)
            m.domain = domain


@contextlib.contextmanager
def domain_context(model: nn.Module, domain: Domain) -> Iterator[nn.Module]:
    """``with domain_context(net, k): net(x)`` runs ``net`` with domain ``k`` (int or (B,) tensor)."""
    previous = [(m, m.domain) for m in model.modules() if isinstance(m, DomainSpecificBatchNorm)]
    set_domain(model, domain)
    try:
        yield model
    finally:
        for m, d in previous:
            m.domain = d


class DomainRouter(nn.Module):
    """Wrap a converted network so that ``router(x, domain)`` runs it in that domain."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
        with domain_context(self.model, domain):
            return self.model(x)
