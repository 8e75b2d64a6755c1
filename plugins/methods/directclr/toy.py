"""The linear-network simulations of DirectCLR's paper (Jing, Vincent, LeCun, Tian, ICLR 2022).

* Toy 1, Sec. 3 (strong augmentation): a single 16x16 linear layer ``z = W x`` trained with InfoNCE,
  where the augmentation noise on the last 8 input dimensions is stronger than the data there.
  Theorem 1: ``dW/dt = W X`` with ``X = Sigma_0 - Sigma_1`` (data minus augmentation covariance,
  weighted); directions where ``X`` is negative decay, so the embedding loses exactly those 8 dims.
* Toy 2, Sec. 4 (implicit regularisation): two bias-free 16x16 layers ``z = W2 W1 x`` from a small
  initialisation, with augmentation noise *weaker* than the data in every dimension. Theorem 3: the
  alignment matrix ``A = V2^T U1`` (``W1 = U1 S1 V1^T``, ``W2 = U2 S2 V2^T``) becomes diagonal;
  Theorem 4: the singular values then evolve like ``ds/dt ~ s^2`` per mode, so weak modes stay near
  zero and the embedding collapses although a single layer with the same data does not.

Loss choice (an explicit option, ``ToyConfig.loss``):

* ``"cosine"``: ``plugins.losses.info_nce`` on L2-normalised embeddings, temperature 0.1, the loss
  DirectCLR trains with. Default for toy 1; the collapse is sharp (eigenvalues ~1e-14 of the largest).
* ``"euclidean"``: the paper's analysis loss (Sec. 3.1, eq. 1), logits ``-||z_i - z'_j||^2 / 2``
  without normalisation. Default for toy 2: a cosine loss is invariant to the scale of ``W``, so a
  "small initialisation" has no meaning there and ``W1 W1^T - W2^T W2`` (conserved by gradient flow,
  the root of the alignment, Sec. 4) never becomes small relative to the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from plugins.errors import check_finite_loss
from plugins.losses import info_nce
from plugins.monitoring import CollapseTracker

__all__ = [
    "ToyConfig",
    "ToyResult",
    "euclidean_info_nce",
    "train_linear_toy",
    "strong_augmentation_toy",
    "implicit_regularization_toy",
    "alignment_matrix",
    "alignment_diagonality",
]


@dataclass
class ToyConfig:
    """One linear-network simulation. Defaults follow the paper's 16-d set-up (Sec. 3.3 / 4.3);
    step counts, learning rates and noise levels are ours (the paper gives no exact values)."""

    dim: int = 16  # paper: 16-d input and embedding
    layers: int = 1
    batch_size: int = 128
    steps: int = 400
    lr: float = 0.1  # plain SGD, as in the paper's gradient-flow analysis
    init_scale: float = 1.0  # entries ~ N(0, init_scale^2 / dim)
    data_std: tuple[float, ...] = field(default_factory=lambda: (1.0,) * 16)
    noise_std: tuple[float, ...] = field(default_factory=lambda: (0.1,) * 8 + (2.0,) * 8)
    loss: str = "cosine"  # "cosine" (info_nce, t=0.1) or "euclidean" (paper eq. 1)
    temperature: float = 0.1  # DirectCLR's InfoNCE temperature
    probe_size: int = 2000
    track_every: int = 50
    seed: int = 0


@dataclass
class ToyResult:
    """Trained weights (first layer first), per-step losses, the collapse tracker (spectra of the
    embedding of a fixed clean probe set) and the final eigenvalues (D,), descending."""

    config: ToyConfig
    weights: list[torch.Tensor]
    losses: list[float]
    tracker: CollapseTracker
    eigenvalues: torch.Tensor

    def collapsed(self, rel: float = 1e-3) -> int:
        """Number of embedding eigenvalues below ``rel`` times the largest."""
        ev = self.eigenvalues
        return int((ev < rel * ev[0]).sum())


def euclidean_info_nce(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The paper's InfoNCE (Sec. 3.1, eq. 1) with cross-view negatives:
    ``CE(-||z1_i - z2_j||^2 / 2, diagonal)``. z1, z2: (N, D); no normalisation."""
    z1, z2 = z1.float(), z2.float()
    logits = -torch.cdist(z1, z2).pow(2) / 2
    return F.cross_entropy(logits, torch.arange(len(z1), device=z1.device))


def _loss(cfg: ToyConfig, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    if cfg.loss == "cosine":
        return (info_nce(z1, z2, cfg.temperature) + info_nce(z2, z1, cfg.temperature)) / 2
    if cfg.loss == "euclidean":
        return (euclidean_info_nce(z1, z2) + euclidean_info_nce(z2, z1)) / 2
    raise ValueError(f"loss must be 'cosine' or 'euclidean', got {cfg.loss!r}")


def _forward(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    for w in weights:
        x = x @ w.T
    return x


def train_linear_toy(cfg: ToyConfig) -> ToyResult:
    """Train ``z = W_L ... W_1 x`` (bias-free, ``cfg.layers`` layers of ``dim x dim``) with SGD on
    Gaussian data ``x ~ N(0, diag(data_std^2))`` and views ``x + N(0, diag(noise_std^2))``."""
    d = cfg.dim
    if len(cfg.data_std) != d or len(cfg.noise_std) != d:
        raise ValueError(
            f"data_std and noise_std need {d} entries, got {len(cfg.data_std)} and {len(cfg.noise_std)}"
        )
    g = torch.Generator().manual_seed(cfg.seed)
    data_std, noise_std = torch.tensor(cfg.data_std), torch.tensor(cfg.noise_std)
    weights = [
        (torch.randn(d, d, generator=g) * cfg.init_scale / d**0.5).requires_grad_()
        for _ in range(cfg.layers)
    ]
    opt = torch.optim.SGD(weights, lr=cfg.lr)
    probe = torch.randn(cfg.probe_size, d, generator=g) * data_std
    tracker = CollapseTracker(every_n_steps=cfg.track_every, on="embedding")
    losses = []
    with torch.no_grad():
        tracker.update(0, _forward(weights, probe))
    for step in range(1, cfg.steps + 1):
        x = torch.randn(cfg.batch_size, d, generator=g) * data_std
        x1 = x + torch.randn(cfg.batch_size, d, generator=g) * noise_std
        x2 = x + torch.randn(cfg.batch_size, d, generator=g) * noise_std
        loss = _loss(cfg, _forward(weights, x1), _forward(weights, x2))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(check_finite_loss(loss.detach(), len(losses)))
        if tracker.due(step) or step == cfg.steps:
            with torch.no_grad():
                tracker.update(step, _forward(weights, probe))
    ev = torch.as_tensor(tracker.spectra[cfg.steps])
    return ToyResult(cfg, [w.detach() for w in weights], losses, tracker, ev)


def strong_augmentation_toy(
    noise_on_last_half: float = 2.0, seed: int = 0, **overrides
) -> ToyResult:
    """Toy 1: one linear layer, noise std ``noise_on_last_half`` on the last 8 of 16 dims (data std 1,
    noise 0.1 elsewhere). Pass ``noise_on_last_half=0.1`` for the weak-augmentation control."""
    noise = (0.1,) * 8 + (noise_on_last_half,) * 8
    return train_linear_toy(replace(ToyConfig(noise_std=noise, seed=seed), **overrides))


def implicit_regularization_toy(layers: int = 2, seed: int = 0, **overrides) -> ToyResult:
    """Toy 2: ``layers`` bias-free 16x16 layers from a small initialisation (std 0.1/4), Euclidean
    InfoNCE, data std log-spaced from 10^0.5 to 10^-0.5 (distinct singular directions, so ``A`` is
    well defined), augmentation noise 0.1, i.e. weaker than the data in every dimension."""
    data = tuple(float(v) for v in torch.logspace(0.5, -0.5, 16))
    cfg = ToyConfig(layers=layers, steps=1000, lr=0.1, init_scale=0.1, data_std=data, noise_std=(0.1,) * 16,
                    loss="euclidean", seed=seed)  # fmt: skip
    return train_linear_toy(replace(cfg, **overrides))


def alignment_matrix(
    w1: torch.Tensor, w2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A = V2^T U1`` (paper Sec. 4, Def. 1) with ``W1 = U1 S1 V1^T``, ``W2 = U2 S2 V2^T``.

    Returns ``(A, S1, S2)``; signs of singular vectors are arbitrary, so look at ``|A|``.
    """
    u1, s1, _ = torch.linalg.svd(w1.double())
    _, s2, v2h = torch.linalg.svd(w2.double())
    return v2h @ u1, s1, s2


def alignment_diagonality(w1: torch.Tensor, w2: torch.Tensor) -> float:
    """Share of the product's energy carried by aligned pairs:
    ``sum_k s2_k s1_k A_kk^2 / sum_jk s2_j s1_k A_jk^2`` (1 = diagonal, ~1/D for random weights).

    Weighting by the singular values leaves out the near-zero modes, whose singular vectors are
    arbitrary (degenerate), so the score measures the alignment of the modes that carry signal.
    """
    a, s1, s2 = alignment_matrix(w1, w2)
    energy = s2[:, None] * s1[None, :] * a.pow(2)
    return float(energy.diagonal().sum() / energy.sum())
