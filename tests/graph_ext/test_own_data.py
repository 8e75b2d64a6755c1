"""ARIEL / GRACE on a user's own graph (issue 21): a directed, weighted edge list with string labels
built in a temporary folder from a real graph that scikit-network ships (art_philo_science: 30
Wikipedia articles, their links, 11 word features, 3 classes; the weight of a link is 1 + the
words the two articles share), and the real weighted co-appearance graph of Les Misérables as a
``.npz`` adjacency.

Checked against formulas and counts written here: the directed and weighted GCN normalisations
(dense, with diag matrices), the default's symmetrisation and its one warning, the attack on a
directed weighted graph, the embeddings' node order, the run's data summary, one-sentence errors.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from graph_ext.adjacency import dense_adjacency, normalized_adjacency
from graph_ext.attack import pgd_adversarial_view
from graph_ext.config import ARIELConfig
from graph_ext.data import load_graph, prepare_graph
from graph_ext.model import ARIEL
from graph_ext.train import embed_graph
from plugins.cli import main
from plugins.threads import cpu_threads

# small and fast: 2 epochs, 2 evaluation splits, the fast classifier
FAST = ["--epochs", "2", "--set", "hidden=8", "--set", "proj_hidden=8", "--set", "attack_steps=1"]
FAST += ["--set", "splits=2", "--set", "classifier=multinomial", "--device", "cpu"]
FAST += ["--no-progress", "--threads", "1"]
UNLISTED = 29  # this article's row is left out of labels.csv: an unlabelled node


def _real_rows() -> tuple[list[tuple[str, str, float]], list[tuple[str, str]], list, np.ndarray]:
    """(edges (source, target, weight), labels (node, label), word names, features) of
    art_philo_science, nodes by their article names."""
    from sknetwork.data import art_philo_science

    g = art_philo_science(metadata=True)
    names = [str(n) for n in g["names"]]
    words = g["biadjacency"].astype(np.float64)
    shared = (words @ words.T).toarray()
    adj = g["adjacency"].tocoo()
    edges = [(names[i], names[j], 1.0 + shared[i, j]) for i, j in zip(adj.row, adj.col)]
    labels = [(n, str(g["names_labels"][k])) for n, k in zip(names, g["labels"])]
    return edges, labels, [str(w) for w in g["names_col"]], words.toarray()


def _write(folder: Path, edges, labels, word_names=None, features=None, weights=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "edges.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "target", "weight"] if weights else ["source", "target"])
        w.writerows(e if weights else e[:2] for e in edges)
    with (folder / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["node", "label"])
        w.writerows(labels)
    if features is not None:
        with (folder / "features.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["node", *word_names])
            w.writerows([n, *row] for n, row in features)
    return folder


@pytest.fixture(scope="module")
def real():
    return _real_rows()


@pytest.fixture
def folder(tmp_path, real) -> Path:
    """The directed, weighted edge list with string labels (one article unlisted) and features."""
    edges, labels, words, x = real
    names = [n for n, _ in labels]
    unlisted = labels[UNLISTED][0]
    feats = list(zip(names, x.tolist()))
    return _write(tmp_path / "apsw", edges, [r for r in labels if r[0] != unlisted], words, feats)


def _order(edges, labels) -> list[str]:
    """The documented node order: labels.csv rows, then edge-only nodes by first appearance."""
    order = [n for n, _ in labels]
    for s, t, _ in edges:
        order += [v for v in (s, t) if v not in order]
    return order


def _dense(edges, order, weighted: bool) -> torch.Tensor:
    """A[dst, src] = weight (or 1) of src -> dst, self-loops left out, float64."""
    index = {n: i for i, n in enumerate(order)}
    a = torch.zeros(len(order), len(order), dtype=torch.float64)
    for s, t, w in edges:
        if s != t:
            a[index[t], index[s]] += w if weighted else 1.0
    return a


def _gcn(a: torch.Tensor, directed: bool) -> torch.Tensor:
    """diag(d_in)^-1/2 (A + I) diag(d_out)^-1/2 written with diag matrices; undirected: the
    in-degree on both sides."""
    a_hat = a + torch.eye(a.shape[0], dtype=a.dtype)
    d_in = torch.diag(a_hat.sum(1) ** -0.5)
    d_out = torch.diag(a_hat.sum(0) ** -0.5) if directed else d_in
    return d_in @ a_hat @ d_out


def _prepared(folder: Path, **kw):
    raw, _ = load_graph(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = prepare_graph(raw, **kw)
    return raw, data, [str(w.message) for w in caught]


def _encoder_matches(data, adj_ref: torch.Tensor, **cfg) -> None:
    """embed_graph (the encoder on the prepared graph) equals the encoder on the reference."""
    torch.manual_seed(0)
    model = ARIEL(data.x.shape[1], ARIELConfig(hidden=8, proj_hidden=8, **cfg))
    with torch.no_grad():
        expected = model(data.x, adj_ref.float())
    torch.testing.assert_close(embed_graph(model, data), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_directed_normalisation_is_the_in_out_degree_formula(folder, real, weighted) -> None:
    edges, labels, *_ = real
    raw, data, said = _prepared(folder, directed=True, weighted=weighted)
    order = _order(edges, [r for r in labels if r[0] != labels[UNLISTED][0]])
    assert raw.node_names == order
    ref = _gcn(_dense(edges, order, weighted), directed=True)
    w = data.edge_weight if weighted else None
    got = normalized_adjacency(data.edge_index, len(order), True, w, directed=True)
    torch.testing.assert_close(got.to_dense().double(), ref, rtol=1e-6, atol=1e-7)
    _encoder_matches(data, ref, directed=True, weighted=weighted)
    # asymmetric: the links have direction, and directed=True changes the matrix
    assert not torch.allclose(ref, ref.T)
    undirected = prepare_graph(raw, directed=False, weighted=weighted)
    plain = normalized_adjacency(
        undirected.edge_index, len(order), True, undirected.edge_weight if weighted else None
    )
    assert (plain.to_dense().double() - ref).abs().max() > 0.05
    # only what was kept is dropped-and-said: weights unused when weighted=False
    assert len(said) == (0 if weighted else 1) and all("direction" not in m for m in said)


def test_weighted_undirected_uses_the_mean_of_both_directions(folder, real) -> None:
    edges, labels, *_ = real
    _, data, said = _prepared(folder, weighted=True)
    order = _order(edges, [r for r in labels if r[0] != labels[UNLISTED][0]])
    w = _dense(edges, order, weighted=True)
    pattern = (w > 0).double()
    both = pattern + pattern.T
    w_sym = torch.where(both > 0, (w + w.T) / both.clamp_min(1), torch.zeros_like(w))
    ref = _gcn(w_sym, directed=False)
    got = normalized_adjacency(data.edge_index, len(order), True, data.edge_weight)
    torch.testing.assert_close(got.to_dense().double(), ref, rtol=1e-6, atol=1e-7)
    _encoder_matches(data, ref, weighted=True)
    assert len(said) == 1 and "direction" in said[0] and "weights" not in said[0]


def test_npz_adjacency_of_a_real_weighted_graph(tmp_path) -> None:
    import scipy.sparse
    from sknetwork.data import miserables

    adj = miserables().astype(np.float64).tocsr()  # co-appearance counts, symmetric
    folder = tmp_path / "mis"
    folder.mkdir()
    scipy.sparse.save_npz(folder / "adjacency.npz", adj)
    raw, data, said = _prepared(folder, weighted=True)
    assert raw.node_names == [str(i) for i in range(adj.shape[0])] and said == [
        "the graph has no node features; using identity features (77 x 77)."
    ]  # symmetric: nothing to say about direction
    ref = _gcn(torch.from_numpy(adj.T.toarray()), directed=False)
    got = normalized_adjacency(data.edge_index, adj.shape[0], True, data.edge_weight)
    torch.testing.assert_close(got.to_dense().double(), ref, rtol=1e-6, atol=1e-7)
    # the default drops the weights and says so once, with their count
    _, _, said = _prepared(folder)
    off = int((adj.data != 1).sum())
    assert [m for m in said if "weights" in m] == [
        f"the graph has weights ({off} of its {adj.nnz} edges weigh other than 1; --set "
        "weighted=true uses them); training on the unweighted graph, as GRACE and ARIEL do."
    ]


def test_default_symmetrises_and_says_so_once(folder, real) -> None:
    edges, labels, *_ = real
    _, data, said = _prepared(folder)
    pairs = {(s, t) for s, t, _ in edges if s != t}
    one_way = sum((t, s) not in pairs for s, t in pairs)
    heavy = sum(w != 1 for s, t, w in edges if s != t)
    assert said == [
        f"the graph has direction ({one_way} of its {len(pairs)} edges have no reverse edge; "
        f"--set directed=true keeps it) and weights ({heavy} of its {len(pairs)} edges weigh "
        "other than 1; --set weighted=true uses them); training on the undirected, unweighted "
        "graph, as GRACE and ARIEL do."
    ]
    order = _order(edges, [r for r in labels if r[0] != labels[UNLISTED][0]])
    index = {n: i for i, n in enumerate(order)}
    expected = {(index[s], index[t]) for s, t in pairs} | {(index[t], index[s]) for s, t in pairs}
    assert set(map(tuple, data.edge_index.T.tolist())) == expected
    assert "edge_weight" not in data


def test_attack_on_a_directed_weighted_graph_flips_ordered_pairs(folder) -> None:
    _, data, _ = _prepared(folder, directed=True, weighted=True)
    n = data.num_nodes
    adj = dense_adjacency(data.edge_index, n, edge_weight=data.edge_weight)
    torch.manual_seed(0)
    model = ARIEL(data.x.shape[1], ARIELConfig(hidden=8, proj_hidden=8, directed=True))
    from graph_ext.adjacency import normalize_dense

    budget = 0.2 * float((adj != 0).sum())
    g = torch.Generator().manual_seed(0)
    adv = pgd_adversarial_view(
        model, (data.x, normalize_dense(adj, True)), (adj, data.x), 3, budget, generator=g,
        directed=True,
    )  # fmt: skip
    assert adv.flip_probs.numel() == n * (n - 1)  # one variable per ordered pair
    assert adv.flip_probs.sum() <= budget + 1e-4
    changed = adv.adj != adj
    removed = changed & (adj > 0)
    added = changed & (adj == 0)
    assert bool((adv.adj[removed] == 0).all()) and bool((adv.adj[added] == 1).all())
    assert torch.equal(adv.adj[~changed], adj[~changed])  # kept edges keep their weights
    assert 0 < int(changed.sum()) <= int(budget)
    assert torch.count_nonzero(torch.diagonal(adv.adj)) == 0
    # a flipped ordered pair leaves its reverse alone unless that was drawn too
    assert int((changed & ~changed.T).sum()) > 0


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    with cpu_threads(1):
        code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_runs_on_the_folder_writes_the_summary_and_embeddings_in_order(
    folder, real, tmp_path, capsys, recwarn
) -> None:
    edges, labels, *_ = real
    out = tmp_path / "runs"
    code, text, err = _cli(capsys, "run", "ariel", "--data", str(folder), *FAST, "--out", str(out))
    assert code == 0, err
    said = [str(w.message) for w in recwarn if "training on the undirected" in str(w.message)]
    assert len(said) == 1 and "unweighted" in said[0]
    (run,) = out.iterdir()
    summary = json.loads((run / "metrics.json").read_text())["data_summary"]
    listed = [r for r in labels if r[0] != labels[UNLISTED][0]]
    classes = sorted({lab for _, lab in listed})
    counts = {c: sum(lab == c for _, lab in listed) for c in classes}
    assert summary["nodes"] == 30 and summary["labelled"] == 29 and summary["unlabelled"] == 1
    assert summary["class_counts"] == counts
    assert not summary["directed"] and not summary["weighted"]
    assert len(summary["splits"]) == 2
    for split in summary["splits"]:
        assert {c: split["train"][c] + split["test"][c] for c in classes} == counts
        assert sum(split["train"].values()) == int(0.5 * 29)  # train_ratio 0.5 below 200 nodes
    assert "data: 30 nodes" in text and "1 unlabelled" in text
    # embeddings: one row per node, in the documented order, named by nodes.csv
    ckpt = run / "checkpoint.pt"
    code, _, err = _cli(capsys, "predict", "ariel", "--checkpoint", str(ckpt), "--data",
                        str(folder), "--out", str(tmp_path / "emb"))  # fmt: skip
    assert code == 0, err
    z = np.load(tmp_path / "emb" / "embeddings.npy")
    with (tmp_path / "emb" / "nodes.csv").open() as f:
        rows = list(csv.DictReader(f))
    order = _order(edges, listed)
    assert z.shape == (30, 8) and [r["node"] for r in rows] == order
    assert [r["label"] for r in rows] == [dict(listed).get(n, "") for n in order]
    # the same graph with labels.csv and features.csv rows shuffled: the same embedding per node
    edges_, labels_, words, x = real
    perm = np.random.default_rng(0).permutation(len(listed))
    shuffled = [listed[i] for i in perm]
    feats = [(n, x[[m for m, _ in labels_].index(n)].tolist()) for n, _ in labels_][::-1]
    other = _write(tmp_path / "shuffled", edges, shuffled, words, feats)
    code, _, err = _cli(capsys, "predict", "ariel", "--checkpoint", str(ckpt), "--data",
                        str(other), "--out", str(tmp_path / "emb2"))  # fmt: skip
    assert code == 0, err
    z2 = np.load(tmp_path / "emb2" / "embeddings.npy")
    with (tmp_path / "emb2" / "nodes.csv").open() as f:
        names2 = [r["node"] for r in csv.DictReader(f)]
    assert names2 == _order(edges, shuffled) != order
    row2 = {n: i for i, n in enumerate(names2)}
    np.testing.assert_allclose(z2[[row2[n] for n in order]], z, rtol=1e-5, atol=1e-6)


def test_help_lists_the_graph_choices_with_defaults(capsys) -> None:
    assert main(["run", "ariel", "--help"]) == 0
    text = capsys.readouterr().out
    for key in ("directed=false", "weighted=false", "features=the data's features, else identity"):
        assert key in text, key


def _one_sentence(code: int, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "Warning" not in line]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "case,expect",
    [
        ("negative", "weight -2.0 is negative"),
        ("not_a_number", "weight 'heavy' is not a number"),
        ("short_row", "line 3 has 2 columns; the header has 3"),
        ("header", "must have the header source,target,weight"),
        ("weighted_without_weights", "no edge weights"),
        ("duplicate_label", "lists node"),
        ("features_rows", "expected numbers of shape (30, F)"),
        ("missing", "does not exist"),
    ],
)
def test_bad_input_is_one_sentence(tmp_path, real, capsys, case, expect) -> None:
    edges, labels, *_ = real
    edges = [list(e) for e in edges]
    extra: list[str] = []
    folder = tmp_path / "bad"
    if case == "negative":
        edges[0][2] = -2.0
    elif case == "not_a_number":
        edges[0][2] = "heavy"
    elif case == "short_row":
        edges[1] = edges[1][:2]
    elif case == "duplicate_label":
        labels = [*labels, labels[0]]
    _write(folder, edges, labels, weights=case != "weighted_without_weights")
    if case == "header":
        text = (folder / "edges.csv").read_text().replace("source,target", "from,to", 1)
        (folder / "edges.csv").write_text(text)
    elif case == "weighted_without_weights":
        extra = ["--set", "weighted=true"]
    elif case == "features_rows":
        np.save(folder / "features.npy", np.ones((7, 3)))
    elif case == "missing":
        folder = folder / "edges_typo.csv"
    code, _, err = _cli(capsys, "run", "ariel", "--data", str(folder), *FAST, *extra,
                        "--out", str(tmp_path / "o"))  # fmt: skip
    assert expect in _one_sentence(code, err)


def test_checkpoint_with_another_feature_count_is_one_sentence(
    folder, real, tmp_path, capsys
) -> None:
    out = tmp_path / "runs"
    code, _, err = _cli(capsys, "run", "ariel", "--data", str(folder), *FAST,
                        "--set", "features=degree", "--set", "directed=true",
                        "--out", str(out))  # fmt: skip
    assert code == 0, err
    (run,) = out.iterdir()
    summary = json.loads((run / "metrics.json").read_text())["data_summary"]
    pairs = {(s, t) for s, t, _ in real[0] if s != t}
    assert summary["directed"] and not summary["weighted"] and summary["edges"] == len(pairs)
    assert summary["features_from"] == "degree"
    code, _, err = _cli(capsys, "predict", "ariel", "--checkpoint", str(run / "checkpoint.pt"),
                        "--data", "karate", "--out", str(tmp_path / "emb"))  # fmt: skip
    # degree features have as many columns as the checkpoint's: works on another graph
    assert code == 0, err
    code, _, err = _cli(capsys, "run", "ariel", "--data", str(folder), *FAST, "--out", str(out))
    assert code == 0, err
    (first,) = [r for r in out.iterdir() if r != run]
    code, _, err = _cli(capsys, "predict", "ariel", "--checkpoint", str(first / "checkpoint.pt"),
                        "--data", "karate", "--out", str(tmp_path / "emb2"))  # fmt: skip
    assert "was trained on 11 node features (data), but --data karate gives 34" in _one_sentence(
        code, err
    )
