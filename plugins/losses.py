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
    "full_precision",
    "no_autocast",
]


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """Upcast half precision to float32; keep float32/float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(full_precision(x), dim=-1)


def no_autocast(x: torch.Tensor) -> torch.autocast:
    """Autocast off on ``x``'s device: the block computes in its inputs' own precision (with
    :func:`full_precision`, float32 or float64), as every loss of this project does."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _neg_inf(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(float("-inf"), dtype=like.dtype, device=like.device)


def _check_2d(name: str, x: torch.Tensor) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(x.shape)}")


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    positive_in_denominator: bool = True,
    gather_distributed: bool = False,
    labels: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
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
        labels: optional (N,) classes; each anchor's sum then runs only over views of its own class
            (CLAWS's within-class contrast, Herrera-Gerena et al. 2021). The positive always stays.
        valid: optional (N,) bool; pairs marked False are neither anchors nor columns (GLCNet's
            window pairs whose views barely overlap). Fixed shapes keep the all-gather simple: every
            rank passes all its N pairs and its own mask.

    Returns:
        Scalar mean of ``l_i`` over the (local, valid) anchors. With ``valid`` and
        ``gather_distributed`` the local sum is divided by the number of valid anchors averaged over
        ranks, so DDP's gradient average equals the single-process gradient even when ranks hold
        different numbers of valid pairs. Without any usable anchor (or, for
        ``positive_in_denominator=False``, with fewer than 2 valid pairs in all) it is 0, still
        attached to the graph.

    Examples:
        >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss = nt_xent(z1, z2, temperature=0.5)
    """
    _check_2d("z1", z1)
    _check_2d("z2", z2)
    if z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    with no_autocast(z1):
        z1n, z2n = _normalize(z1), _normalize(z2)
        n = z1n.shape[0]
        if gather_distributed:
            z1_all, z2_all = D.gather(z1n), D.gather(z2n)
            offset = D.rank() * n
        else:
            z1_all, z2_all, offset = z1n, z2n, 0
        n_all = z1_all.shape[0]
        if not positive_in_denominator and n_all < 2:
            raise ValueError(
                "positive_in_denominator=False needs at least 2 samples (no negatives otherwise)"
            )
        anchors = torch.cat([z1n, z2n])  # (2n, D)
        columns = torch.cat([z1_all, z2_all])  # (2n_all, D)
        # scaling the (2n, D) anchors instead of the (2n, 2n_all) product saves one full matrix
        logits = (anchors / temperature) @ columns.T  # (2n, 2n_all)

        local = torch.arange(n, device=z1.device) + offset
        self_col = torch.cat([local, local + n_all])
        pos_col = torch.cat([local + n_all, local])
        rows = torch.arange(2 * n, device=z1.device)
        # in place on the matmul output (its backward does not need it): no mask, no copy
        logits.index_put_((rows, self_col), _neg_inf(logits))
        if labels is not None:
            labels = labels.reshape(-1)
            labels_all = D.gather_no_grad(labels) if gather_distributed else labels
            logits.masked_fill_(
                labels.repeat(2)[:, None] != labels_all.repeat(2)[None, :], float("-inf")
            )
        if valid is not None:
            return _masked_nt_xent(
                logits, rows, pos_col, valid, positive_in_denominator, gather_distributed
            )
        if positive_in_denominator:
            return F.cross_entropy(logits, pos_col)  # fused log-softmax: l_i = lse_i - s(i, p(i))/t
        positive = logits[rows, pos_col]
        logits.index_put_((rows, pos_col), _neg_inf(logits))
        return (torch.logsumexp(logits, dim=1) - positive).mean()


def _masked_nt_xent(
    logits: torch.Tensor,
    rows: torch.Tensor,
    pos_col: torch.Tensor,
    valid: torch.Tensor,
    positive_in_denominator: bool,
    gather_distributed: bool,
) -> torch.Tensor:
    """:func:`nt_xent`'s tail when some pairs are invalid: (2n, 2n_all) logits, self already -inf."""
    valid = valid.reshape(-1).to(device=logits.device, dtype=torch.bool)
    if valid.shape[0] * 2 != logits.shape[0]:
        raise ValueError(
            f"valid must have shape ({logits.shape[0] // 2},), got {tuple(valid.shape)}"
        )
    # gathered as uint8: every backend moves bytes; not every one lists bool
    valid_all = D.gather_no_grad(valid.to(torch.uint8)).bool() if gather_distributed else valid
    # A finite fill, not -inf: an invalid anchor's row may have no finite entry left, and a
    # logsumexp over only -inf has a NaN gradient even when its result is multiplied by 0 later.
    # exp(min - lse) is exactly 0, so valid rows get no gradient from these columns.
    logits = logits.masked_fill(~valid_all.repeat(2)[None, :], torch.finfo(logits.dtype).min)
    positive = logits[rows, pos_col]
    if not positive_in_denominator:
        logits = logits.index_put((rows, pos_col), _neg_inf(logits))
    per_anchor = torch.logsumexp(logits, dim=1) - positive
    row_ok = valid.repeat(2)
    if not positive_in_denominator:  # a single valid pair in all has no negative: use no anchor
        count_all = row_ok.sum()
        count_all = D.all_reduce_sum(count_all) if gather_distributed else count_all
        row_ok = row_ok & (count_all >= 4)
    # no host sync: with nothing usable the loss is 0 (still attached to the graph)
    total = torch.where(row_ok, per_anchor, 0.0).sum()
    return _mean_over_anchors(total, row_ok.sum(), gather_distributed)


def _mean_over_anchors(
    total: torch.Tensor, count: torch.Tensor, gather_distributed: bool
) -> torch.Tensor:
    """``total / count``, the mean over this rank's usable anchors; with ``gather_distributed`` the
    count is averaged over ranks instead, so that the mean of the per-rank losses (and DDP's
    averaged gradient) equals the single-process mean even when ranks hold different counts.
    0 (still attached to the graph) when no rank has an anchor."""
    if gather_distributed:
        return total * D.world_size() / D.all_reduce_sum(count).clamp_min(1)
    return total / count.clamp_min(1)


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
        raise ValueError(
            f"query and key must have the same shape, got {tuple(query.shape)} and {tuple(key.shape)}"
        )
    with no_autocast(query):
        q, k = _normalize(query), _normalize(key)
        n = q.shape[0]
        offset = 0
        if gather_distributed:
            k = D.gather(k)
            offset = D.rank() * n
        columns = k
        if negatives is not None:
            _check_2d("negatives", negatives)
            if negatives.shape[1] != k.shape[1]:
                raise ValueError(
                    f"negatives must have shape (M, {k.shape[1]}) to match key, got {tuple(negatives.shape)}"
                )
            columns = torch.cat([k, _normalize(negatives).to(k.dtype)])
        logits = (q / temperature) @ columns.T
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
        left out (never NaN); if no anchor has one, returns 0 still attached to the graph. With
        ``gather_distributed`` the local sum is divided by the number of valid anchors averaged over
        ranks, so DDP's gradient average equals the single-process gradient in every case.
    """
    if features.ndim != 3:
        raise ValueError(f"features must have shape (B, V, D), got {tuple(features.shape)}")
    if contrast_mode not in ("all", "one"):
        raise ValueError(f"contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
    b, v, _ = features.shape
    if labels is None:
        labels = torch.arange(b, device=features.device) + (
            D.rank() * b if gather_distributed else 0
        )
    labels = labels.reshape(-1)
    if labels.shape[0] != b:
        raise ValueError(
            f"labels must have shape ({b},) to match features, got {tuple(labels.shape)}"
        )
    with no_autocast(features):
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
        n_anchor_views = v if contrast_mode == "all" else 1
        anchors = f[:, :n_anchor_views].transpose(0, 1).reshape(n_anchor_views * b, -1)
        anchor_labels = labels.repeat(n_anchor_views)
        rows = torch.arange(n_anchor_views * b, device=f.device)
        # anchor (view a, sample i) is column a * b_all + offset + i
        self_col = (
            torch.arange(n_anchor_views, device=f.device)[:, None] * b_all
            + offset
            + torch.arange(b, device=f.device)
        ).reshape(-1)

        logits = (anchors / temperature) @ columns.T  # (A, C)
        # drop self-contrast in place on the matmul output (its backward does not need it)
        logits.index_put_((rows, self_col), _neg_inf(logits))
        positive = anchor_labels[:, None] == column_labels[None, :]
        positive[rows, self_col] = False
        log_prob = F.log_softmax(logits, dim=1)  # fused; -inf (prob 0) at the self column
        n_pos = positive.sum(1)
        # anchors without a positive have an all-False row: they add exactly 0 to the sum
        mean_log_prob_pos = torch.where(positive, log_prob, 0.0).sum(1) / n_pos.clamp_min(1)
        # no host sync: with no valid anchor the sum is 0 (still attached to the graph)
        total = -(temperature / base_temperature) * mean_log_prob_pos.sum()
        return _mean_over_anchors(total, (n_pos > 0).sum(), gather_distributed)


def margin_contrastive(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 1.0,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Margin-based contrastive loss (Hadsell, Chopra, LeCun, CVPR 2006, eq. 4).

    Mean over ordered pairs ``i != j`` of ``same * d^2 + (1 - same) * relu(margin - d)^2`` with ``d`` the
    Euclidean distance. Used by Boutillon et al. (MICCAI 2021) between domain embeddings.

    Args:
        embeddings: (N, D), N >= 2.
        labels: (N,) integer labels.
        margin: m.
        gather_distributed: pair local embeddings with every rank's; the local sum is divided by
            the number of pairs averaged over ranks, so DDP's averaged gradient equals the
            single-process gradient over the whole batch.
    """
    _check_2d("embeddings", embeddings)
    n = embeddings.shape[0]
    if labels.reshape(-1).shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if n < 2:
        raise ValueError("margin_contrastive needs at least 2 embeddings")
    with no_autocast(embeddings):
        e = full_precision(embeddings)
        labels = labels.reshape(-1)
        if gather_distributed:
            e_all, labels_all, offset = D.gather(e), D.gather_no_grad(labels), D.rank() * n
        else:
            e_all, labels_all, offset = e, labels, 0
        d2 = (e[:, None, :] - e_all[None, :, :]).pow(2).sum(-1)  # local rows x all columns
        # d = 0 exactly for coincident points, with a finite (zero) gradient there instead of sqrt's inf
        d = torch.where(
            d2 > 0, d2.clamp_min(torch.finfo(d2.dtype).tiny).sqrt(), torch.zeros_like(d2)
        )
        same = (labels[:, None] == labels_all[None, :]).to(e.dtype)
        pair = same * d2 + (1 - same) * F.relu(margin - d).pow(2)
        rows = torch.arange(n, device=e.device)
        pair = pair.index_put((rows, rows + offset), pair.new_zeros(()))  # no pair (i, i)
        count = torch.tensor(n * (e_all.shape[0] - 1), device=e.device)
        return _mean_over_anchors(pair.sum(), count, gather_distributed)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent`. ``forward(z1, z2)``."""

    def __init__(
        self,
        temperature: float = 0.5,
        positive_in_denominator: bool = True,
        gather_distributed: bool = False,
    ):
        super().__init__()
        self.temperature = temperature
        self.positive_in_denominator = positive_in_denominator
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent(
            z1, z2, self.temperature, self.positive_in_denominator, self.gather_distributed
        )


class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce`. ``forward(query, key, negatives=None)``."""

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False):
        super().__init__()
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor | None = None
    ) -> torch.Tensor:
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
        return sup_con(
            features,
            labels,
            self.temperature,
            self.base_temperature,
            self.contrast_mode,
            self.gather_distributed,
        )


class MarginContrastiveLoss(nn.Module):
    """Module form of :func:`margin_contrastive`. ``forward(embeddings, labels)``."""

    def __init__(self, margin: float = 1.0, gather_distributed: bool = False):
        super().__init__()
        self.margin = margin
        self.gather_distributed = gather_distributed

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return margin_contrastive(embeddings, labels, self.margin, self.gather_distributed)
