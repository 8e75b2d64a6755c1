"""Core contrastive losses: pure functions of tensors plus thin ``nn.Module`` wrappers.

Conventions shared by every function here:

* Similarities, ``exp`` and ``logsumexp`` run in float32 even under autocast (float64 inputs stay
  float64, which the reference-loop tests use). Half-precision inputs are upcast, never the reverse.
* No Python loop over samples; masks select positives and negatives.
* Every tensor follows its input's device.
* ``gather_distributed=True`` all-gathers the inputs with gradient (:mod:`plugins.distributed`) and
  computes only the local rows of the logit matrix against all columns; the loss is the mean over
  local anchors, so after DDP's gradient averaging the gradient equals the single-process gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plugins import distributed as D

__all__ = [
    "nt_xent",
    "info_nce",
    "sup_con",
    "margin_contrastive",
    "NTXentLoss",
    "InfoNCELoss",
    "SupConLoss",
    "MarginContrastiveLoss",
]


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """Upcast half precision to float32; keep float32/float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(_full_precision(x), dim=-1)


def _no_autocast(x: torch.Tensor) -> torch.autocast:
    return torch.autocast(device_type=x.device.type, enabled=False)


def _check_2d(name: str, x: torch.Tensor) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(x.shape)}")


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    positive_in_denominator: bool = True,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """SimCLR's NT-Xent loss over 2N anchors (Chen et al., ICML 2020, eq. 1).

    For anchor ``i`` with positive ``p(i)`` (the other view of the same sample) and cosine
    similarities ``s``::

        l_i = -s(i, p(i)) / t + log sum_{k != i} exp(s(i, k) / t)

    With ``positive_in_denominator=False`` the sum runs over the 2N-2 negatives only
    (``k != i, p(i)``): the variant GLCNet's code computes (Li et al., TGRS 2022).

    Args:
        z1: (N, D) first view, L2-normalised inside.
        z2: (N, D) second view.
        temperature: t.
        positive_in_denominator: keep the positive in the log-sum-exp (standard SimCLR).
        gather_distributed: contrast against every rank's samples (see module docstring).

    Returns:
        Scalar mean of ``l_i`` over the (local) 2N anchors.

    Examples:
        >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss = nt_xent(z1, z2, temperature=0.5)
    """
    _check_2d("z1", z1)
    _check_2d("z2", z2)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    with _no_autocast(z1):
        z1n, z2n = _normalize(z1), _normalize(z2)
        n = z1n.shape[0]
        if gather_distributed:
            z1_all, z2_all = D.gather(z1n), D.gather(z2n)
            offset = D.rank() * n
        else:
            z1_all, z2_all, offset = z1n, z2n, 0
        n_all = z1_all.shape[0]
        anchors = torch.cat([z1n, z2n])  # (2n, D)
        columns = torch.cat([z1_all, z2_all])  # (2n_all, D)
        logits = anchors @ columns.T / temperature  # (2n, 2n_all)

        local = torch.arange(n, device=z1.device) + offset
        self_col = torch.cat([local, local + n_all])
        pos_col = torch.cat([local + n_all, local])
        rows = torch.arange(2 * n, device=z1.device)
        positive = logits[rows, pos_col]
        excluded = torch.zeros_like(logits, dtype=torch.bool)
        excluded[rows, self_col] = True
        if not positive_in_denominator:
            excluded[rows, pos_col] = True
        denominator = torch.logsumexp(logits.masked_fill(excluded, float("-inf")), dim=1)
        return (denominator - positive).mean()


def info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    temperature: float = 0.1,
    negatives: torch.Tensor | None = None,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Cross-view InfoNCE (van den Oord et al., 2018; MoCo form, He et al., CVPR 2020, eq. 1).

    ``CE(norm(q) @ norm(k).T / t, diagonal)``: query ``i``'s positive is key ``i``, its negatives the
    other keys (and, when given, every row of ``negatives``).

    Args:
        query: (N, D).
        key: (N, D).
        temperature: t.
        negatives: optional (M, D) extra negatives appended as columns (e.g. a MoCo queue); not
            gathered (queues are already global).
        gather_distributed: keys of every rank become columns.

    Returns:
        Scalar mean over the (local) N queries.
    """
    _check_2d("query", query)
    _check_2d("key", key)
    if query.shape != key.shape:
        raise ValueError(f"query and key must have the same shape, got {tuple(query.shape)} and {tuple(key.shape)}")
    with _no_autocast(query):
        q, k = _normalize(query), _normalize(key)
        n = q.shape[0]
        offset = 0
        if gather_distributed:
            k = D.gather(k)
            offset = D.rank() * n
        columns = k
        if negatives is not None:
            _check_2d("negatives", negatives)
            columns = torch.cat([k, _normalize(negatives).to(k.dtype)])
        logits = q @ columns.T / temperature
        target = torch.arange(n, device=q.device) + offset
        return F.cross_entropy(logits, target)


def sup_con(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    contrast_mode: str = "all",
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020, eq. 2, "L_out").

    For anchor ``i`` with positives ``P(i)`` (same label, other than ``i``) and all other samples
    ``A(i)``::

        l_i = -(t / t_base) / |P(i)| * sum_{p in P(i)} [ s(i,p)/t - log sum_{a in A(i)} exp(s(i,a)/t) ]

    Args:
        features: (B, V, D) V views per sample, L2-normalised inside.
        labels: (B,) integer labels; ``None`` gives SimCLR (each sample its own class).
        temperature: t.
        base_temperature: t_base.
        contrast_mode: ``"all"`` (every view is an anchor) or ``"one"`` (only view 0).
        gather_distributed: contrast local anchors against every rank's samples.

    Returns:
        Mean of ``l_i`` over anchors that have at least one positive. Anchors without a positive are
        left out (never NaN); if no anchor has one, returns 0 still attached to the graph.
    """
    if features.ndim != 3:
        raise ValueError(f"features must have shape (B, V, D), got {tuple(features.shape)}")
    if contrast_mode not in ("all", "one"):
        raise ValueError(f"contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
    b, v, _ = features.shape
    if labels is None:
        labels = torch.arange(b, device=features.device) + (D.rank() * b if gather_distributed else 0)
    labels = labels.reshape(-1)
    if labels.shape[0] != b:
        raise ValueError(f"labels must have shape ({b},) to match features, got {tuple(labels.shape)}")
    with _no_autocast(features):
        f = _normalize(features)
        if gather_distributed:
            f_all, labels_all = D.gather(f), D.gather_no_grad(labels)
            offset = D.rank() * b
        else:
            f_all, labels_all, offset = f, labels, 0
        b_all = f_all.shape[0]
        # view-major stacking: row (view, sample)
        columns = f_all.transpose(0, 1).reshape(v * b_all, -1)
        column_labels = labels_all.repeat(v)
        column_ids = torch.arange(b_all, device=f.device).repeat(v) + b_all * torch.arange(
            v, device=f.device
        ).repeat_interleave(b_all)
        n_anchor_views = v if contrast_mode == "all" else 1
        anchors = f[:, :n_anchor_views].transpose(0, 1).reshape(n_anchor_views * b, -1)
        anchor_labels = labels.repeat(n_anchor_views)
        anchor_ids = (torch.arange(b, device=f.device) + offset).repeat(n_anchor_views) + b_all * torch.arange(
            n_anchor_views, device=f.device
        ).repeat_interleave(b)

        logits = anchors @ columns.T / temperature
        is_self = anchor_ids[:, None] == column_ids[None, :]
        positive = (anchor_labels[:, None] == column_labels[None, :]) & ~is_self
        log_prob = logits - torch.logsumexp(logits.masked_fill(is_self, float("-inf")), dim=1, keepdim=True)
        n_pos = positive.sum(1)
        has_pos = n_pos > 0
        mean_log_prob_pos = (log_prob * positive).sum(1)[has_pos] / n_pos[has_pos]
        if mean_log_prob_pos.numel() == 0:
            return logits.sum() * 0.0
        return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def margin_contrastive(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Margin-based contrastive loss (Hadsell, Chopra, LeCun, CVPR 2006, eq. 4).

    Mean over ordered pairs ``i != j`` of ``same * d^2 + (1 - same) * relu(margin - d)^2`` with ``d`` the
    Euclidean distance. Used by Boutillon et al. (MICCAI 2021) between domain embeddings.

    Args:
        embeddings: (N, D), N >= 2.
        labels: (N,) integer labels.
        margin: m.
    """
    _check_2d("embeddings", embeddings)
    n = embeddings.shape[0]
    if labels.reshape(-1).shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if n < 2:
        raise ValueError("margin_contrastive needs at least 2 embeddings")
    with _no_autocast(embeddings):
        e = _full_precision(embeddings)
        d2 = (e[:, None, :] - e[None, :, :]).pow(2).sum(-1)
        # clamp keeps sqrt's gradient finite for coincident points of different labels
        d = d2.clamp_min(1e-12).sqrt()
        labels = labels.reshape(-1)
        same = (labels[:, None] == labels[None, :]).to(e.dtype)
        pair = same * d2 + (1 - same) * F.relu(margin - d).pow(2)
        off_diag = ~torch.eye(n, dtype=torch.bool, device=e.device)
        return pair[off_diag].mean()


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent`. ``forward(z1, z2)``."""

    def __init__(self, temperature: float = 0.5, positive_in_denominator: bool = True, gather_distributed: bool = False):
        super().__init__()
        self.temperature = temperature
        self.positive_in_denominator = positive_in_denominator
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent(z1, z2, self.temperature, self.positive_in_denominator, self.gather_distributed)


class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce`. ``forward(query, key, negatives=None)``."""

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False):
        super().__init__()
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        return info_nce(query, key, self.temperature, negatives, self.gather_distributed)


class SupConLoss(nn.Module):
    """Module form of :func:`sup_con`. ``forward(features, labels=None)``."""

    def __init__(
        self,
        temperature: float = 0.07,
        base_temperature: float = 0.07,
        contrast_mode: str = "all",
        gather_distributed: bool = False,
    ):
        super().__init__()
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.contrast_mode = contrast_mode
        self.gather_distributed = gather_distributed

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return sup_con(features, labels, self.temperature, self.base_temperature, self.contrast_mode, self.gather_distributed)


class MarginContrastiveLoss(nn.Module):
    """Module form of :func:`margin_contrastive`. ``forward(embeddings, labels)``."""

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return margin_contrastive(embeddings, labels, self.margin)
