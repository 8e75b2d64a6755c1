"""Training loop pieces: induced-subgraph sampling, feature masking, objective composition."""

import math
import warnings

import pytest
import torch
from torch_geometric.data import Data

from graph_ext.config import ARIELConfig
from graph_ext.model import ARIEL
from graph_ext.train import mask_feature_columns, sample_subgraph, training_loss


def _ring(n: int = 12) -> Data:
    src = torch.arange(n)
    dst = (src + 1) % n
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    return Data(
        x=torch.rand(n, 5, generator=torch.Generator().manual_seed(0)), edge_index=edge_index
    )


def test_sample_subgraph_is_the_induced_subgraph_relabelled() -> None:
    data = _ring()
    torch.manual_seed(0)
    nodes, edge_index, x = sample_subgraph(data, 7)
    assert len(set(nodes.tolist())) == 7
    assert torch.equal(x, data.x[nodes])
    pos = {int(v): i for i, v in enumerate(nodes)}
    expected = {(pos[s], pos[d]) for s, d in data.edge_index.T.tolist() if s in pos and d in pos}
    assert set(map(tuple, edge_index.T.tolist())) == expected


def test_mask_feature_columns_zeroes_whole_columns() -> None:
    torch.manual_seed(0)
    x = torch.rand(20, 400) + 0.1
    out = mask_feature_columns(x, 0.3)
    zero_cols = (out == 0).all(0)
    assert torch.equal((out == 0).any(0), zero_cols)  # a column is masked entirely or not at all
    assert 0.2 < zero_cols.float().mean() < 0.4
    assert torch.equal(out[:, ~zero_cols], x[:, ~zero_cols])


@pytest.mark.parametrize("eps,lam", [(0.0, 0.0), (0.5, 0.0), (1.0, 2.0)])
def test_objective_is_the_weighted_sum_of_its_terms(eps: float, lam: float) -> None:
    data = _ring()
    cfg = ARIELConfig(hidden=4, proj_hidden=4, eps=eps, lam=lam, attack_steps=2)
    torch.manual_seed(0)
    model = ARIEL(5, cfg)
    loss, parts = training_loss(model, data.edge_index, data.x)
    expected = (
        parts["contrast"] + eps * parts.get("adversarial", 0.0) + lam * parts.get("info", 0.0)
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert ("adversarial" in parts) == (eps > 0) and ("info" in parts) == (lam > 0)
    if lam > 0:
        assert parts["info"] >= 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_options_override_known_fields_and_reject_typos() -> None:
    from graph_ext.config import config_for
    from plugins.errors import UserInputError

    cfg = config_for("citeseer").with_options(
        {"lr": 0.01, "drop_edge": [0.1, 0.2], "dataset": "x"}, ("dataset",)
    )
    assert cfg.lr == 0.01 and cfg.drop_edge == (0.1, 0.2) and cfg.hidden == 256
    with pytest.raises(UserInputError, match="unknown option --set lrr"):
        cfg.with_options({"lrr": 0.1})


def test_sparse_feature_helpers_match_dense() -> None:
    from graph_ext.train import select_rows, sparse_features

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(20, 30, generator=g) < 0.05).float() * torch.rand(20, 30, generator=g)
    assert sparse_features(torch.rand(5, 4) + 0.1) is None  # dense features stay dense
    xs = sparse_features(x)
    assert xs is not None and xs.layout == torch.sparse_csr
    rows = torch.tensor([7, 0, 19, 7, 3])
    assert torch.equal(select_rows(xs, rows).to_dense(), x[rows])
    torch.manual_seed(1)
    dense = mask_feature_columns(x, 0.5)
    torch.manual_seed(1)
    assert torch.equal(mask_feature_columns(xs, 0.5).to_dense(), dense)


def test_first_linear_split_equals_the_plain_encoder() -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(9, 6, generator=g) < 0.3).double()
    delta = torch.randn(9, 6, generator=g, dtype=torch.float64) * 0.04
    adj = torch.rand(9, 9, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = ARIEL(6, ARIELConfig(hidden=4, proj_hidden=4, activation="prelu")).double()
    expected = model.embed_projected(x + delta, adj)
    for feats in (x, x.to_sparse_csr()):
        h0 = model.first_linear(feats, delta)
        torch.testing.assert_close(model.embed_projected_from_linear(h0, adj), expected)
    torch.testing.assert_close(
        model.embed_projected(x.to_sparse_csr(), adj), model.embed_projected(x, adj)
    )


@pytest.mark.parametrize("eps,lam", [(0.5, 0.0), (1.0, 2.0)])
def test_objective_with_sparse_features_equals_dense(eps: float, lam: float) -> None:
    from graph_ext.train import sparse_features

    data = _ring(16)
    x = (torch.rand(16, 40, generator=torch.Generator().manual_seed(2)) < 0.08).float()
    cfg = ARIELConfig(hidden=4, proj_hidden=4, eps=eps, lam=lam, attack_steps=3)
    results = []
    for xs in (None, sparse_features(x)):
        torch.manual_seed(0)
        model = ARIEL(40, cfg)
        loss, parts = training_loss(model, data.edge_index, x, xs)
        loss.backward()
        results.append((parts, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (dense_parts, dense_grads), (sparse_parts, sparse_grads) = results
    assert dense_parts.keys() == sparse_parts.keys()
    for key, value in dense_parts.items():
        assert sparse_parts[key] == pytest.approx(value, rel=1e-5, abs=1e-6)
    for a, b in zip(dense_grads, sparse_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_identical_projections_are_flagged_and_warned_once() -> None:
    """GRACE's term for identical projections is log(2n - 1) (each node's positive weighs as much
    as each of its 2n - 2 negatives): the watch flags exactly those epochs and warns once."""
    from graph_ext.loss import grace_loss
    from graph_ext.train import StallWatch

    n = 7
    same = torch.ones(n, 4)
    assert float(grace_loss(same, same, 0.5)) == pytest.approx(math.log(2 * n - 1), abs=1e-6)
    watch = StallWatch(patience=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flags = [watch.update(v, n, e, 0.1) for e, v in enumerate([2.0, *[math.log(13)] * 5, 2.0])]
    assert flags == [False, True, True, True, True, True, False]
    (w,) = caught
    assert "since epoch 2" in str(w.message) and "--set lr=0.1" in str(w.message)


def test_a_run_whose_units_die_is_warned_and_counts_its_stalled_epochs() -> None:
    """0/1 features, 35% non-zero as Amazon-Photo's, plain ReLU, a large first Adam step: every
    first-layer unit dies, the loss sits at log(2n - 1), and the run says so instead of ending
    quietly; at lr 0.01 nothing stalls."""
    from graph_ext.config import config_for
    from graph_ext.data import prepare_graph
    from graph_ext.train import train

    g = torch.Generator().manual_seed(0)
    n = 120
    x = (torch.rand(n, 200, generator=g) < 0.35).float()
    src, dst = torch.randint(0, n, (2, 600), generator=g)
    edges = torch.stack([src[src != dst], dst[src != dst]])
    data = prepare_graph(Data(x=x, edge_index=torch.cat([edges, edges.flip(0)], 1)))
    small = {"eps": 0.0, "sample_size": None, "hidden": 32, "proj_hidden": 16, "epochs": 40}
    with pytest.warns(UserWarning, match=r"log\(2n - 1\) = 5\.476 since epoch \d+"):
        result = train(data, config_for("amazon-photo", lr=0.3, **small))
    stalled = [abs(h["contrast"] - math.log(2 * n - 1)) < 1e-3 for h in result.history]
    assert result.stalled_epochs == sum(stalled) >= 30
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        healthy = train(data, config_for("amazon-photo", lr=0.01, **small))
    assert healthy.stalled_epochs == 0
