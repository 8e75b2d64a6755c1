"""ARIEL beyond Planetoid (issue #23): sparse loading of the Amazon / Coauthor graphs, the sparse
full-graph embedding against the dense one, the authors' evaluation protocol against an explicit
scikit-learn pipeline, the subgraph sampler's distribution, and one-sentence bad input."""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from graph_ext.config import config_for
from graph_ext.data import load_graph, prepare_graph, read_npz_sparse
from graph_ext.evaluate import C_GRID, evaluate_node_embeddings
from graph_ext.model import ARIEL
from graph_ext.train import embed_graph, sample_subgraph
from plugins.cli import main
from plugins.data import shared_data_dir
from plugins.errors import UserInputError

FAST = ["--set", "hidden=8", "--set", "proj_hidden=8", "--set", "attack_steps=1"]


def _shared_graph(family: str, name: str) -> Path:
    root = shared_data_dir(required=False)
    raw = None if root is None else root / "graphs" / family / name / "raw"
    if raw is None or not raw.is_dir():
        pytest.skip(f"shared graph {family}/{name} not on this machine")
    return raw


def _cli(capsys, out: Path, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--device", "cpu", "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sparse_npz_reader_matches_pyg_amazon_photo(tmp_path: Path) -> None:
    """Our reader keeps x sparse but holds exactly what PyG's Amazon(root, "Photo") holds."""
    from torch_geometric.datasets import Amazon

    raw = _shared_graph("amazon", "Photo")
    shutil.copytree(raw, tmp_path / "Photo" / "raw")  # PyG writes processed/ beside raw/
    ref = Amazon(str(tmp_path), "Photo")[0]
    ours = read_npz_sparse(raw / "amazon_electronics_photo.npz")
    assert ours.x.layout == torch.sparse_csr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(ours.x.to_dense(), ref.x)
    assert torch.equal(ours.edge_index, ref.edge_index)
    assert torch.equal(ours.y, ref.y)
    assert ours.num_nodes == 7650 and ours.edge_index.shape[1] == 238_162


def test_named_large_graphs_load_from_the_shared_folder_sparse() -> None:
    _shared_graph("coauthor", "Physics")
    data, name = load_graph("coauthor-physics")
    data = prepare_graph(data)
    assert name == "coauthor-physics"
    assert data.x.layout == torch.sparse_csr and tuple(data.x.shape) == (34_493, 8_415)
    assert data.edge_index.shape[1] == 495_924 and int(data.y.max()) == 4
    photo = prepare_graph(load_graph("amazon-photo")[0])  # 35% non-zero: made dense
    assert photo.x.layout == torch.strided and photo.x.shape == (7650, 745)


def test_sparse_and_dense_full_graph_embeddings_agree_on_cora() -> None:
    """Sparse features + sparse adjacency give the dense reference path's embeddings to 1e-5."""
    data = prepare_graph(load_graph("cora")[0])
    sparse = Data(x=data.x.to_sparse_csr(), edge_index=data.edge_index, y=data.y)
    torch.manual_seed(0)
    for activation in ("relu", "rrelu"):
        model = ARIEL(data.x.shape[1], config_for("cora", activation=activation))
        dense_z = embed_graph(model, data, dense=True)
        sparse_z = embed_graph(model, sparse)
        assert sparse_z.shape == (2708, 128)
        assert torch.allclose(sparse_z, dense_z, atol=1e-5, rtol=0)
        assert torch.allclose(embed_graph(model, data), dense_z, atol=1e-5, rtol=0)


def _reference_protocol(z: np.ndarray, y: np.ndarray, splits: int) -> tuple[list, list]:
    """The authors' evaluation written out with scikit-learn (one-hot labels, L2 rows, 10%/90%
    splits, one-vs-rest liblinear, C by 5-fold grid search over 2^-10..2^9, argmax of proba)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, train_test_split
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import OneHotEncoder, normalize

    onehot = OneHotEncoder(categories="auto").fit_transform(y.reshape(-1, 1)).toarray() > 0
    x = normalize(z, norm="l2")
    accs, cs = [], []
    for k in range(splits):
        xtr, xte, ytr, yte = train_test_split(x, onehot, test_size=0.9, random_state=k)
        clf = GridSearchCV(
            OneVsRestClassifier(LogisticRegression(solver="liblinear")),
            param_grid={"estimator__C": 2.0 ** np.arange(-10, 10)},
            cv=5,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(xtr, ytr)
        pred = clf.predict_proba(xte).argmax(1)
        accs.append(100.0 * np.mean(pred == yte.argmax(1)))
        cs.append(clf.best_params_["estimator__C"])
    return accs, cs


def _cora_embedding(rows: int = 1200, classes: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Untrained-GCN embeddings of the first ``rows`` Cora nodes of classes ``0..classes-1``."""
    data = prepare_graph(load_graph("cora")[0])
    torch.manual_seed(0)
    z = embed_graph(ARIEL(data.x.shape[1], config_for("cora", hidden=16)), data)
    keep = torch.nonzero(data.y < classes).flatten()[:rows]
    return z[keep].double(), data.y[keep]


def _check_against_reference(rows: int, classes: int, splits: int, n_jobs: int) -> None:
    z, y = _cora_embedding(rows, classes)
    assert len(C_GRID) == 20 and C_GRID[0] == 2.0**-10 and C_GRID[-1] == 2.0**9
    ref_accs, ref_cs = _reference_protocol(z.numpy(), y.numpy(), splits=splits)
    ours = evaluate_node_embeddings(z, y, splits=splits, classifier="ovr", seed=0, n_jobs=n_jobs)
    assert ours["accs"] == pytest.approx(ref_accs, abs=1e-12)
    assert ours["c"] == ref_cs
    assert ours["acc_mean"] == pytest.approx(np.mean(ref_accs))
    assert ours["acc_std"] == pytest.approx(np.std(ref_accs))
    assert ours["unlabelled"] == 0 and ours["seconds"] > 0


def test_ovr_protocol_equals_an_explicit_sklearn_pipeline() -> None:
    # 3 of Cora's 7 classes: the grid search is 20 C x 5 folds x one fit per class
    _check_against_reference(rows=300, classes=3, splits=1, n_jobs=1)


@pytest.mark.slow
def test_ovr_protocol_equals_the_pipeline_on_1200_nodes_in_parallel() -> None:
    _check_against_reference(rows=1200, classes=7, splits=2, n_jobs=2)


def test_unlabelled_nodes_are_left_out_and_counted() -> None:
    z, y = _cora_embedding(600)
    missing = y.clone()
    missing[::7] = -1  # 86 of 600 nodes without a label
    grid = (0.25, 4.0)
    scored = evaluate_node_embeddings(z, missing, splits=2, c_grid=grid, classifier="ovr")
    keep = missing >= 0
    direct = evaluate_node_embeddings(z[keep], y[keep], splits=2, c_grid=grid, classifier="ovr")
    assert scored["unlabelled"] == 86
    assert scored["accs"] == direct["accs"]


def test_subgraph_sampler_is_uniform_over_nodes_and_induces_edges() -> None:
    """4,000 draws of 10 of KarateClub's 34 nodes: each node is drawn with probability 10/34,
    every edge between two drawn nodes is kept and no other, and each edge appears with
    probability 10*9 / (34*33)."""
    data = prepare_graph(load_graph("karate")[0])
    n, size, draws = 34, 10, 4_000
    edges = {tuple(e) for e in data.edge_index.T.tolist()}
    node_counts = torch.zeros(n)
    edge_counts: dict[tuple[int, int], int] = dict.fromkeys(edges, 0)
    torch.manual_seed(0)
    for _ in range(draws):
        nodes, sub_edges, x = sample_subgraph(data, size)
        assert nodes.unique().numel() == size and x.shape == (size, data.x.shape[1])
        node_counts[nodes] += 1
        got = {(int(nodes[a]), int(nodes[b])) for a, b in sub_edges.T.tolist()}
        chosen = set(nodes.tolist())
        assert got == {e for e in edges if e[0] in chosen and e[1] in chosen}
        for e in got:
            edge_counts[e] += 1
    p = size / n
    sd = (draws * p * (1 - p)) ** 0.5
    assert (node_counts - draws * p).abs().max() < 4.5 * sd  # 34 binomials, 4.5 sigma
    chi2 = float(((node_counts - draws * p) ** 2 / (draws * p)).sum())
    assert chi2 < 70  # chi-square with 33 degrees of freedom: P(> 70) < 1e-4
    q = size * (size - 1) / (n * (n - 1))
    rates = np.array(list(edge_counts.values())) / draws
    assert abs(rates.mean() - q) < 0.005 and np.abs(rates - q).max() < 5 * (q / draws) ** 0.5


def test_graph_with_isolated_nodes_only_is_one_sentence(tmp_path: Path, capsys) -> None:
    with pytest.raises(UserInputError, match="all isolated"):
        prepare_graph(Data(x=torch.rand(5, 3), edge_index=torch.tensor([[1, 2], [1, 2]])))
    path = tmp_path / "lonely.pt"
    torch.save({"x": torch.rand(6, 3), "edge_index": torch.zeros(2, 0, dtype=torch.long)}, path)
    code, _, err = _cli(capsys, tmp_path / "runs", "run", "ariel", "--data", str(path), *FAST)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "6 nodes are all isolated" in err


def test_sample_size_larger_than_the_graph_is_one_sentence(tmp_path: Path, capsys) -> None:
    code, _, err = _cli(
        capsys, tmp_path / "runs", "run", "ariel", "--set", "sample_size=40", "--epochs", "1", *FAST
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "sample_size=40 is larger than the graph art_philo_science (30 nodes)" in err


def test_run_counts_nodes_without_labels(tmp_path: Path, capsys) -> None:
    data, _ = load_graph("art_philo_science")
    y = data.y.clone()
    y[:4] = -1
    path = tmp_path / "partly_labelled.pt"
    torch.save({"x": data.x, "edge_index": data.edge_index, "y": y}, path)
    with pytest.warns(UserWarning, match="4 of the 30 nodes .* have no label"):
        code, _, err = _cli(
            capsys,
            tmp_path / "runs",
            *("run", "ariel", "--data", str(path), "--epochs", "2", "--set", "splits=2", *FAST),
        )
    assert code == 0, err
    (metrics,) = (tmp_path / "runs").rglob("metrics.json")
    m = json.loads(metrics.read_text())
    assert m["unlabelled_nodes"] == 4 and 0 <= m["acc_mean"] <= 100


def test_reproduce_takes_graph_names_in_data_and_rejects_unknown_ones(
    tmp_path: Path, capsys
) -> None:
    code, _, err = _cli(capsys, tmp_path / "a", "reproduce", "ariel", "--data", "cora,nope")
    assert code == 2 and "comma-separated graph names" in err and len(err.splitlines()) == 1
    code, _, err = _cli(
        capsys, tmp_path / "b", "run", "ariel", "--data", "cora,citeseer", "--epochs", "1"
    )
    assert code == 2 and "names several" in err


def test_reproduce_table_states_the_distance_from_the_reported_value_in_its_stds(
    tmp_path: Path, capsys
) -> None:
    from graph_ext.run import REPORTED

    code, _, err = _cli(
        capsys,
        tmp_path,
        *("reproduce", "ariel", "--data", "cora", "--epochs", "1", "--set", "variants=ariel"),
        *("--set", "splits=2", "--set", "classifier=multinomial", *FAST),
    )
    assert code == 0, err
    (acc,) = [
        m["cora_ariel_acc"]
        for m in (json.loads(p.read_text()) for p in tmp_path.rglob("metrics.json"))
        if "cora_ariel_acc" in m
    ]
    table = next(tmp_path.rglob("table.md")).read_text().splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    row = [c.strip() for c in table[2].strip("|").split("|")]
    cells = dict(zip(header, row, strict=True))
    mean, std = REPORTED["cora"]
    diff = acc - mean
    assert cells["ours - reported"] == f"{diff:+.2f} ({diff / std:+.1f} std)"
    assert cells["reported (ARIEL)"].startswith("84.61 ± 0.92 (Table 2")
