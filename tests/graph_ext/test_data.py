"""Bad input and data loading: isolated nodes, missing features, tiny graphs, bad edges, Planetoid."""

import warnings

import pytest
import torch
from torch_geometric.data import Data

from graph_ext.config import ARIELConfig
from graph_ext.data import load_graph, prepare_graph
from graph_ext.train import embed_graph, train
from plugins.data import shared_path
from plugins.errors import UserInputError

TINY = ARIELConfig(hidden=8, proj_hidden=8, epochs=3, sample_size=6, attack_steps=2)


def _graph(x: torch.Tensor | None = None) -> Data:
    # 10 nodes, nodes 8 and 9 isolated
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3, 4, 5, 6, 7], [1, 0, 2, 1, 3, 2, 5, 4, 7, 6]])
    return Data(x=x, edge_index=edge_index, y=torch.arange(10) % 2, num_nodes=10)


def test_isolated_nodes_are_kept_sampled_and_embedded() -> None:
    data = prepare_graph(_graph(torch.rand(10, 4)))
    assert data.x.shape[0] == 10
    result = train(data, TINY, seed=0)
    z = embed_graph(result.model, data)
    assert z.shape == (10, 8) and torch.isfinite(z).all()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


def test_missing_features_become_identity_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="identity features"):
        data = prepare_graph(_graph(None))
    assert torch.equal(data.x, torch.eye(10))


def test_fewer_nodes_than_sample_size_trains_on_the_whole_graph() -> None:
    data = prepare_graph(_graph(torch.rand(10, 4)))
    cfg = ARIELConfig(hidden=8, proj_hidden=8, epochs=2, sample_size=500, attack_steps=1)
    result = train(data, cfg, seed=0)
    assert len(result.history) == 2
    # the budget is 20% of all 5 undirected edges of the full 10-node graph
    assert result.history[0]["edge_budget"] == pytest.approx(0.2 * 5)


def test_edges_outside_the_node_range_are_a_clear_error() -> None:
    bad = Data(x=torch.rand(3, 2), edge_index=torch.tensor([[0, 5], [1, 0]]))
    with pytest.raises(UserInputError, match="outside the node range.*3 nodes"):
        prepare_graph(bad)
    with pytest.raises(UserInputError, match="outside the node range"):
        prepare_graph(Data(x=torch.rand(3, 2), edge_index=torch.tensor([[-1], [0]])))


def test_nan_features_and_bad_shapes_are_clear_errors() -> None:
    x = torch.rand(10, 4)
    x[2, 1] = float("nan")
    with pytest.raises(UserInputError, match="NaN"):
        prepare_graph(_graph(x))
    with pytest.raises(UserInputError, match=r"\(2, E\)"):
        prepare_graph(Data(x=torch.rand(3, 2), edge_index=torch.tensor([0, 1, 2])))
    with pytest.raises(UserInputError, match="--data"):
        load_graph("no-such-graph")


def test_prepare_makes_undirected_and_normalises_rows() -> None:
    data = Data(
        x=torch.tensor([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]]),
        edge_index=torch.tensor([[0, 1, 2], [1, 2, 2]]),
    )
    out = prepare_graph(data, normalize_features=True)
    edges = set(map(tuple, out.edge_index.T.tolist()))
    assert edges == {(0, 1), (1, 0), (1, 2), (2, 1)}  # symmetrised, self-loop dropped
    assert torch.allclose(out.x, torch.tensor([[0.25, 0.75], [0.0, 0.0], [0.5, 0.5]]))


def test_embedded_default_is_real_art_philo_science() -> None:
    data, name = load_graph(None)
    assert name == "art_philo_science"
    assert data.x.shape == (30, 11) and int(data.y.max()) == 2
    from sknetwork.data import art_philo_science

    adj = art_philo_science().astype(int)
    adj.setdiag(0)
    adj.eliminate_zeros()
    one_way = int(((adj - adj.T) > 0).sum())  # links i -> j without j -> i
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_graph(data)
    # it has features: no identity warning; its Wikipedia links are directed: said once
    assert [str(w.message).split(";")[0] for w in caught] == [
        f"the graph has direction ({one_way} of its {adj.nnz} edges have no reverse edge"
    ]


@pytest.mark.skipif(
    shared_path("planetoid", "Cora", "raw", required=False) is None,
    reason="shared Planetoid data absent",
)
def test_cora_loads_through_pyg_planetoid_without_writing_into_shared() -> None:
    data, name = load_graph("cora")
    assert name == "cora"
    assert data.x.shape == (2708, 1433) and data.edge_index.shape == (2, 10556)
    assert not (shared_path("planetoid", "Cora") / "processed").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    shared_path("planetoid", "Cora", "raw", required=False) is None,
    reason="shared Planetoid data absent",
)
def test_ariel_learns_useful_cora_embeddings() -> None:
    from graph_ext.config import config_for
    from graph_ext.evaluate import evaluate_node_embeddings

    data = prepare_graph(load_graph("cora")[0])
    result = train(data, config_for("cora", epochs=30), seed=0)
    scores = evaluate_node_embeddings(embed_graph(result.model, data), data.y, splits=3)
    assert scores["acc_mean"] > 75.0
