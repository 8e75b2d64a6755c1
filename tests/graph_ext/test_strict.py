"""The strict command for ARIEL / GRACE: declared options, one-sentence errors, no network without
consent, safe .pt loading, NaN input, progress, periodic checkpoints and an exact resume."""

import json
import socket
import urllib.request
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data

from graph_ext.config import ARIELConfig
from graph_ext.data import load_graph, prepare_graph
from graph_ext.evaluate import evaluate_node_embeddings
from graph_ext.train import embed_graph, train
from plugins.checkpoint import Checkpointer, load_checkpoint
from plugins.cli import main
from plugins.errors import UserInputError
from plugins.testing import interrupt_cli_run
from plugins.threads import cpu_threads

# small and fast, but with the adversarial view: 30 nodes, ~0.01 s per epoch on one CPU thread
FAST = ["--set", "hidden=8", "--set", "proj_hidden=8", "--set", "attack_steps=1"]


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _cli(capsys, out: Path, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--device", "cpu", "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_sentence(code: int, err: str, out: Path) -> str:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir())  # no run folder left behind
    return lines[0]


def test_help_lists_every_key_with_its_default(capsys) -> None:
    assert main(["run", "ariel", "--help"]) == 0
    text = capsys.readouterr().out
    for line in (
        "train_ratio=0.1 on graphs of 200+ labelled nodes (the paper's), else 0.5",
        "lr=0.0005 (citeseer: 0.001, amazon-computers: 0.01, amazon-photo: 0.1, ",
        "sample_size=500  (an integer or none; >= 2)",
        "drop_edge=0.2,0.4 (citeseer: 0.2,0.0, amazon-computers: 0.6,0.3, ",
        "splits=20 (5 with --demo)",
        "eps=0.5 (citeseer: 1.0, amazon-computers: 1.0, coauthor-cs: 2.0, ",
        "download=false",
        "dataset=art_philo_science",
    ):
        assert line in text, line
    assert main(["run", "grace", "--help"]) == 0
    grace = capsys.readouterr().out
    assert "lr=0.0005" in grace and "\n  eps=" not in grace and "attack_steps" not in grace
    assert main(["reproduce", "ariel", "--help"]) == 0
    repro = capsys.readouterr().out
    assert "datasets=cora,citeseer" in repro and "train_ratio=0.1  (a number; 0 to 1)" in repro


@pytest.mark.parametrize(
    "method,args,expected",
    [
        ("ariel", ["--set", "sample_size=1"], "--set sample_size=1: expected at least 2."),
        ("ariel", ["--set", "attack_steps=0"], "--set attack_steps=0: expected at least 1."),
        ("ariel", ["--set", "drop_edge=0.1"], "--set drop_edge=0.1: expected 2 comma-separated"),
        ("ariel", ["--set", "activation=tanh"], "expected one of relu, prelu, rrelu."),
        (
            "ariel",
            ["--set", "lrr=0.1"],
            "unknown option --set lrr for run ariel (did you mean lr?)",
        ),
        ("grace", ["--set", "eps=0.5"], "unknown option --set eps for run grace"),
        ("ariel", ["--set", "dataset=corra"], "--set dataset corra is neither a known graph"),
        ("ariel", ["--data", "nope"], "art_philo_science, karate, cora, citeseer, pubmed"),
        ("ariel", ["--data", "karate", "--set", "dataset=cora"], "both name the graph; give one."),
        ("ariel", ["--set", "train_ratio=0.01"], "leaves 0 training and 30 test nodes"),
        ("ariel", ["--set", "train_ratio=1"], "leaves 30 training and 0 test nodes"),
    ],
)
def test_bad_input_is_one_sentence_without_a_run_folder(
    capsys, tmp_path, method, args, expected
) -> None:
    out = tmp_path / "runs"
    code, _, err = _cli(capsys, out, "run", method, *args)
    assert expected in _one_sentence(code, err, out)


def test_reproduce_refuses_data_and_unknown_data_sets(capsys, tmp_path) -> None:
    out = tmp_path / "runs"
    code, _, err = _cli(
        capsys, out, "reproduce", "ariel", "--data", "cora", "--set", "datasets=citeseer"
    )
    assert "both name the graphs; give one." in _one_sentence(code, err, out)
    code, _, err = _cli(capsys, out, "reproduce", "ariel", "--set", "datasets=cora,cifar")
    assert "--set datasets=cora,cifar: expected one of" in _one_sentence(code, err, out)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty shared folder, an empty cache, and every way to the network raising."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    empty = tmp_path / "shared"
    empty.mkdir()
    monkeypatch.setenv("CONTRASTIVE_PLUGINS_DATA", str(empty))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    import torch_geometric.data.download as pyg_download
    import torch_geometric.datasets.amazon as amazon
    import torch_geometric.datasets.coauthor as coauthor
    import torch_geometric.io.fs as pyg_fs

    for module in (pyg_download, amazon, coauthor):
        monkeypatch.setattr(module, "download_url", refuse)
    monkeypatch.setattr(pyg_fs, "cp", refuse)  # Planetoid's download
    return empty


@pytest.mark.parametrize(
    "name,where,files",
    [
        ("cora", "planetoid/Cora/raw", "ind.cora.x"),
        ("citeseer", "planetoid/CiteSeer/raw", "ind.citeseer.graph"),
        ("pubmed", "planetoid/PubMed/raw", "ind.pubmed.test.index"),
        ("amazon-photo", "graphs/amazon/Photo/raw", "amazon_electronics_photo.npz"),
        ("coauthor-cs", "graphs/coauthor/CS/raw", "ms_academic_cs.npz"),
    ],
)
def test_named_data_set_absent_is_one_sentence_and_never_downloaded(
    capsys, tmp_path, no_network, name, where, files
) -> None:
    out = tmp_path / "runs"
    code, _, err = _cli(capsys, out, "run", "ariel", "--set", f"dataset={name}")
    line = _one_sentence(code, err, out)
    assert f"data set '{name}'" in line and "not downloaded without consent" in line
    assert str(no_network / where) in line and "CONTRASTIVE_PLUGINS_DATA" in line
    assert files in line and "--data FOLDER" in line and "--set download=true" in line
    assert not (tmp_path / "cache").exists()  # not even an empty cache folder


def test_absent_shared_folder_names_the_environment_variable(monkeypatch, no_network) -> None:
    import graph_ext.data as gdata

    monkeypatch.setattr(gdata, "shared_data_dir", lambda required=False: None)
    with pytest.raises(UserInputError) as e:
        load_graph("cora", what="--set datasets")
    msg = str(e.value)
    assert "$CONTRASTIVE_PLUGINS_DATA/planetoid/Cora/raw (set CONTRASTIVE_PLUGINS_DATA" in msg
    assert "--data" not in msg  # reproduce has no --data


def test_download_happens_only_with_consent(monkeypatch, tmp_path, no_network) -> None:
    import torch_geometric.io.fs as pyg_fs

    calls = []

    def fake_download(url, folder, *args, **kwargs):
        calls.append(Path(folder))
        raise RuntimeError("stop here")

    monkeypatch.setattr(pyg_fs, "cp", fake_download)
    with pytest.raises(UserInputError):
        load_graph("cora")
    assert calls == []
    with pytest.raises(RuntimeError, match="stop here"):
        load_graph("cora", download=True)
    assert calls == [
        tmp_path / "cache" / "contrastive-plugins" / "pyg" / "planetoid" / "Cora" / "raw"
    ]


def test_raw_folder_missing_files_names_them(tmp_path) -> None:
    raw = tmp_path / "Cora" / "raw"
    raw.mkdir(parents=True)
    (raw / "ind.cora.x").write_bytes(b"")
    with pytest.raises(UserInputError, match=r"lacks raw file\(s\) ind.cora.tx, ind.cora.allx"):
        load_graph(tmp_path)


def _graph() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.rand(6, 3, generator=g),
        "edge_index": torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]]),
        "y": torch.tensor([0, 0, 0, 1, 1, 1]),
    }


def test_pt_files_load_safely(tmp_path) -> None:
    g = _graph()
    torch.save(Data(**g), tmp_path / "data.pt")
    data, name = load_graph(tmp_path / "data.pt")
    assert name == "data" and torch.equal(data.x, g["x"]) and torch.equal(data.y, g["y"])
    torch.save(g, tmp_path / "dict.pt")
    assert torch.equal(load_graph(tmp_path / "dict.pt")[0].edge_index, g["edge_index"])


class _Payload:
    """Unpickling it would create ``marker``: what weights_only=True must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pt_files_with_arbitrary_objects_are_refused_unrun(tmp_path) -> None:
    marker = tmp_path / "code-ran"
    torch.save({**_graph(), "extra": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserInputError) as e:
        load_graph(tmp_path / "evil.pt")
    assert not marker.exists()
    msg = str(e.value)
    assert f"graph file {tmp_path / 'evil.pt'} holds arbitrary Python objects" in msg
    assert "refusing to unpickle" in msg and "\n" not in msg
    torch.save({**_graph(), "x": _graph()["x"].numpy()}, tmp_path / "numpy.pt")
    with pytest.raises(UserInputError, match="holds arbitrary Python objects"):
        load_graph(tmp_path / "numpy.pt")
    torch.save({**_graph(), "x": [[1.0, 2.0]]}, tmp_path / "list.pt")
    with pytest.raises(UserInputError, match="x is a list, expected a tensor"):
        load_graph(tmp_path / "list.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "numpy.pt").read_bytes()[:100])
    with pytest.raises(UserInputError, match="truncated or corrupt"):
        load_graph(tmp_path / "cut.pt")


def test_nan_features_in_a_file_name_the_file_and_the_count(capsys, tmp_path) -> None:
    g = _graph()
    g["x"][1, 2] = float("nan")
    g["x"][4, 0] = float("inf")
    g["x"][5, 1] = float("-inf")
    path = tmp_path / "nan.pt"
    torch.save(g, path)
    out = tmp_path / "runs"
    code, _, err = _cli(capsys, out, "run", "ariel", "--data", str(path))
    line = _one_sentence(code, err, out)
    assert f"graph file {path}: node features x contains 3 NaN or infinite values" in line


def test_training_and_evaluation_show_step_progress(capsys) -> None:
    data = prepare_graph(load_graph()[0])
    cfg = ARIELConfig(hidden=8, proj_hidden=8, epochs=3, attack_steps=1)
    result = train(data, cfg, progress=True, desc="ariel:test")
    z = embed_graph(result.model, data)
    evaluate_node_embeddings(z, data.y, splits=3, train_ratio=0.5, progress=True)
    err = capsys.readouterr().err
    assert "ariel:test" in err and "/3" in err and "node classification" in err
    train(data, cfg, progress=False)
    evaluate_node_embeddings(z, data.y, splits=2, train_ratio=0.5)
    assert capsys.readouterr().err == ""


def test_resume_from_a_periodic_checkpoint_gives_the_same_parameters(tmp_path) -> None:
    data = prepare_graph(load_graph()[0])
    cfg = ARIELConfig(hidden=16, proj_hidden=16, epochs=7, attack_steps=2)
    saver = Checkpointer(tmp_path / "last.ckpt", "ariel", every_steps=3, every_seconds=None)
    full = train(data, cfg, seed=3, checkpointer=saver)
    assert saver.saved_steps == [3, 6]
    state = load_checkpoint(tmp_path / "last.ckpt", "ariel")
    assert state["step"] == 6 and len(state["objects"]["history"]) == 6
    resumer = Checkpointer(None, "ariel", resume=tmp_path / "last.ckpt")
    resumed = train(data, cfg, seed=3, checkpointer=resumer)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed.history == full.history  # the restored six epochs and the seventh


def test_sigint_keeps_a_checkpoint_and_resume_reaches_the_uninterrupted_parameters(
    capsys, tmp_path
) -> None:
    epochs = 100
    args = ["run", "ariel", "--epochs", str(epochs), *FAST, "--set", "splits=1", "--seed", "1"]
    cut = interrupt_cli_run(
        [*args, "--device", "cpu", "--no-progress", "--checkpoint-every", "1",
         "--out", str(tmp_path / "cut")],
        tmp_path / "cut", "ariel-*/last.ckpt", delay=0.1, cwd=tmp_path,  # at a random step
    )  # fmt: skip
    last = cut.last_ckpt
    assert cut.returncode == 130, cut.stderr
    assert cut.stderr.strip().splitlines()[-1] == "contrastive-plugins: interrupted."
    assert json.loads((last.parent / "metrics.json").read_text())["status"] == "interrupted"
    state = load_checkpoint(last, "ariel")
    assert 1 <= state["step"] < epochs, "the run was not interrupted during training"

    code, _, err = _cli(capsys, tmp_path / "resumed", *args, "--resume", str(last))
    assert code == 0, err
    resumed_dir = next((tmp_path / "resumed").glob("ariel-*"))
    assert json.loads((resumed_dir / "metrics.json").read_text())["status"] == "completed"
    import yaml

    config = yaml.safe_load((resumed_dir / "config.yaml").read_text())
    assert config["epochs"] == epochs and config["hidden"] == 8
    assert config["options_used"]["train_ratio"] == 0.5 and config["eval_train_ratio"] == 0.5

    # the uninterrupted reference, trained directly with the same settings and thread count
    cfg = ARIELConfig(hidden=8, proj_hidden=8, attack_steps=1, epochs=epochs)
    with cpu_threads(1):
        reference = train(prepare_graph(load_graph()[0]), cfg, "cpu", seed=1)
    final = load_checkpoint(resumed_dir / "checkpoint.pt")["model"]
    for key, value in reference.model.state_dict().items():
        assert torch.equal(final[key], value), key
    saved = state["objects"]["model"]
    assert not all(torch.equal(saved[k], final[k]) for k in final)  # it trained on after resuming
