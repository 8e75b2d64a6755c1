"""HCSC model: MoCo v2 with hierarchical prototypes and selective coding (Guo et al., CVPR 2022).

``HCSC.forward(im_q, im_k, index, clusters)`` returns ``(loss, logs)``; ``clusters=None`` is plain
MoCo v2 (the warm-up epochs and the MoCo baseline).

Speed: the queue-to-prototype probabilities ``P_l = softmax(key . C_l / phi_l)`` are cached per queue
slot. Keys never change after enqueue and prototypes change once per epoch, so the cache is rebuilt
once when a new :class:`ClusterResult` arrives and only the new keys' rows are computed at enqueue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plugins import distributed as D
from plugins.heads import FeatureQueue, ProjectionHead, momentum_copy, momentum_update
from plugins.methods.hcsc.config import HCSCConfig
from plugins.methods.hcsc.kmeans import ClusterResult
from plugins.methods.hcsc.loss import (
    instance_keep_probability,
    prototype_keep_probability,
    prototype_nce,
    prototype_parent_probs,
    sample_keep,
    selective_info_nce,
    selective_info_nce_levels,
)

__all__ = ["HCSCConfig", "HCSC"]


class HCSC(nn.Module):
    """Query encoder + MLP head, EMA key encoder + head, key queue, selective HCSC losses.

    Args:
        encoder: backbone mapping images to (B, feat_dim).
        feat_dim: backbone output width.
        config: :class:`HCSCConfig`.

    Examples:
        >>> from plugins.backbones import small_resnet
        >>> enc, d = small_resnet(3, "tiny")
        >>> model = HCSC(enc, d, HCSCConfig(queue_size=1024))
        >>> # loss, logs = model(im_q, im_k, index, clusters)
    """

    def __init__(self, encoder: nn.Module, feat_dim: int, config: HCSCConfig | None = None):
        super().__init__()
        self.config = cfg = config or HCSCConfig()
        # MoCo v2 head: Linear(feat, feat)-ReLU-Linear(feat, dim)
        self.online = nn.Sequential(encoder, ProjectionHead(feat_dim, feat_dim, cfg.dim))
        self.target = momentum_copy(self.online)
        self.queue = FeatureQueue(cfg.queue_size, cfg.dim)
        self._cached_for: ClusterResult | None = None
        self._queue_probs: list[torch.Tensor] = []
        # per ClusterResult: (parent softmax per level, highest assigned id per level)
        self._proto_cache: tuple[ClusterResult | None, list[torch.Tensor], list[int]] = (
            None,
            [],
            [],
        )
        self._generator: torch.Generator | None = None

    @property
    def encoder(self) -> nn.Module:
        return self.online[0]

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.online(x), dim=1)

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.target(x), dim=1)

    # -- queue -> prototype probabilities ---------------------------------------------------------
    @staticmethod
    def prototype_probs(keys: torch.Tensor, clusters: ClusterResult) -> list[torch.Tensor]:
        """Per level, (K, C_l) ``softmax(keys . C_l / phi_l)`` over prototypes (float32)."""
        keys = keys.float()
        return [
            torch.softmax(keys @ c.to(keys).T / phi.to(keys), dim=1)
            for c, phi in zip(clusters.centroids, clusters.density)
        ]

    @torch.no_grad()
    def _queue_probabilities(self, clusters: ClusterResult) -> list[torch.Tensor]:
        if not self.config.cache_queue_probs:
            return self.prototype_probs(self.queue.features, clusters)
        if self._cached_for is not clusters:
            self._queue_probs = self.prototype_probs(self.queue.features, clusters)
            self._cached_for = clusters
        return self._queue_probs

    def queue_cache(self, clusters: ClusterResult | None) -> list[torch.Tensor] | None:
        """The cached queue-to-prototype probabilities for ``clusters`` (None when not cached);
        saved in training checkpoints with the queue, since they are updated slot by slot."""
        if clusters is None or self._cached_for is not clusters:
            return None
        return list(self._queue_probs)

    def set_queue_cache(self, clusters: ClusterResult, probs: list[torch.Tensor]) -> None:
        """Restore :meth:`queue_cache` (from a checkpoint) for ``clusters``."""
        device = self.queue.features.device
        self._queue_probs, self._cached_for = [p.to(device) for p in probs], clusters

    @torch.no_grad()
    def _prototype_cache(self, clusters: ClusterResult) -> tuple[list[torch.Tensor], list[int]]:
        """Parent softmax of every level below the top and each level's highest assigned id; both
        change only with the prototypes, so they are computed once per ClusterResult."""
        if self._proto_cache[0] is not clusters:
            probs = [
                prototype_parent_probs(
                    clusters.centroids[lvl], clusters.centroids[lvl + 1], clusters.density[lvl + 1]
                )
                for lvl in range(clusters.num_levels - 1)
            ]
            tops = [int(ids.max()) for ids in clusters.im2cluster]
            self._proto_cache = (clusters, probs, tops)
        return self._proto_cache[1], self._proto_cache[2]

    @torch.no_grad()
    def _enqueue(
        self, k: torch.Tensor, index: torch.Tensor, clusters: ClusterResult | None
    ) -> None:
        slots = self.queue.enqueue(k, index)
        if clusters is not None and self.config.cache_queue_probs and self._cached_for is clusters:
            keys = D.gather_no_grad(k.detach())[-len(slots) :]
            for cache, new in zip(self._queue_probs, self.prototype_probs(keys, clusters)):
                cache[slots] = new
        elif self._cached_for is not None and clusters is None:
            self._cached_for, self._queue_probs = None, []

    # -- loss ---------------------------------------------------------------------------------------
    def _selective_terms(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        queue: torch.Tensor,
        clusters: ClusterResult,
        index: torch.Tensor,
        inst_keep: list[torch.Tensor | None],
        proto_keep: list[torch.Tensor | None],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        l_ins = selective_info_nce_levels(
            q, k, queue, cfg.temperature, inst_keep, cfg.reference_semantics
        )
        l_proto = q.new_zeros((), dtype=torch.float32)
        _, tops = self._prototype_cache(clusters)
        for level in range(clusters.num_levels):
            if cfg.prototype_loss:
                ids = clusters.im2cluster[level].to(index.device)
                l_proto = l_proto + prototype_nce(
                    q,
                    clusters.centroids[level],
                    clusters.density[level],
                    ids[index],
                    proto_keep[level],
                    cfg.reference_semantics,
                    top_id=tops[level],
                )
        return l_ins, l_proto / clusters.num_levels

    def forward(
        self,
        im_q: torch.Tensor,
        im_k: torch.Tensor,
        index: torch.Tensor,
        clusters: ClusterResult | None = None,
        crops: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training step's loss.

        Args:
            im_q: (B, C, H, W) query view.
            im_k: (B, C, H, W) key view.
            index: (B,) dataset index of each sample (looks up its prototypes; stored as queue tag).
            clusters: prototypes of this epoch, or None for plain MoCo v2.
            crops: optional extra query views (multi-crop), each (B, C, h, w); key ``im_k`` is their
                positive and they get the same instance and prototype terms.

        Returns:
            loss, logs: ``loss_ins``, ``loss_proto``, ``kept`` (fraction of queue negatives kept),
            ``keep`` ((L, B, K) bool instance-selection masks, when clustering is on) and
            ``queue_tags`` ((K,) the queue's dataset indices before this step's enqueue).
        """
        cfg = self.config
        q = self.query(im_q)
        with torch.no_grad():
            momentum_update(self.online, self.target, cfg.momentum)
            k = self.key(im_k)
        queue = self.queue.features.clone()
        logs: dict[str, torch.Tensor] = {"queue_tags": self.queue.tags.clone()}
        views = [q] + [self.query(c) for c in (crops or [])]
        if clusters is None:
            loss = sum(selective_info_nce(v, k, queue, cfg.temperature) for v in views)
            logs.update(loss_ins=loss.detach(), loss_proto=torch.zeros(()), kept=torch.ones(()))
        else:
            inst_keep, proto_keep = self._sample_masks(clusters, index)
            l_ins = l_proto = 0.0
            for v in views:
                a, b = self._selective_terms(v, k, queue, clusters, index, inst_keep, proto_keep)
                l_ins, l_proto = l_ins + a, l_proto + b
            loss = l_ins + l_proto
            logs.update(loss_ins=l_ins.detach(), loss_proto=l_proto.detach())
            if inst_keep[0] is not None:
                keep = torch.stack(inst_keep)
                logs.update(keep=keep, kept=keep.float().mean())
            else:
                logs.update(kept=torch.ones(()))
        self._enqueue(k, index, clusters)
        return loss, logs

    @torch.no_grad()
    def _sample_masks(
        self, clusters: ClusterResult, index: torch.Tensor
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        cfg, levels = self.config, clusters.num_levels
        pos = [c.to(index.device)[index] for c in clusters.im2cluster]
        inst: list[torch.Tensor | None] = [None] * levels
        proto: list[torch.Tensor | None] = [None] * levels
        if cfg.instance_selection:
            probs = self._queue_probabilities(clusters)
            inst = [
                sample_keep(instance_keep_probability(p, s), self._generator)
                for p, s in zip(probs, pos)
            ]
        if cfg.prototype_selection and cfg.prototype_loss:
            parent_probs, _ = self._prototype_cache(clusters)
            for level in range(levels - 1):
                parent = clusters.parents[level].to(index.device)[pos[level]]
                prob = prototype_keep_probability(parent_probs[level], parent)
                proto[level] = sample_keep(prob, self._generator)
        return inst, proto
