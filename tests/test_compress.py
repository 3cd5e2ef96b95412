"""Pruning, importance criteria, sensitivity analysis, the cost model and `mcuforge compress`
(with a real PostgreSQL server shared by two worker processes)."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import run_mcuforge
from mcuforge.compress import CompressError
from mcuforge.compress.cost import CostModel, profile
from mcuforge.compress.importance import channel_importance, prunable_layers
from mcuforge.compress.prune import kept_channels, prune_structured, prune_unstructured
from mcuforge.compress.sensitivity import analyse, global_rates
from mcuforge.zoo.models import DSCNN

torch.set_num_threads(1)


mcuforge = run_mcuforge


def small_net(dead: int = 2) -> nn.Module:
    """conv(1->8) -> conv(8->8) -> pool -> linear: channel `dead` of the first conv outputs zero."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        net[0].weight[dead] = 0.0
        net[0].bias[dead] = 0.0
    return net


# --- pruning -----------------------------------------------------------------------------------------

def test_kept_channels_rounds_to_multiples_of_four():
    assert kept_channels(64, 0.5) == 32
    assert kept_channels(64, 0.3) == 48     # 45 kept -> 48
    assert kept_channels(64, 0.99) == 4
    assert kept_channels(6, 0.5) == 3       # too few channels to round
    assert kept_channels(8, 1.0) == 2       # never below two
    assert kept_channels(16, 0.0) == 16


def test_dscnn_structured_pruning_couples_depthwise_and_deploys():
    from mcuforge.codegen.report import layer_rows
    from mcuforge.frontends.torch import from_torch

    net = DSCNN().eval()
    x = torch.randn(2, 1, 49, 10)
    layers = prunable_layers(net, x[:1])
    # the stem and the four pointwise convs; depthwise convs and the classifier are not roots
    assert layers == ["features.0", "features.6", "features.12", "features.18", "features.24"]
    scores = channel_importance(net, layers, "l1")
    pruned = prune_structured(net, x[:1], {n: 0.5 for n in layers}, scores)
    mods = dict(pruned.named_modules())
    for i in (0, 3, 6, 9, 12, 15, 18, 21, 24):
        assert mods[f"features.{i}"].out_channels == 32
    assert mods["features.3"].groups == 32 and mods["head.2"].in_features == 32
    assert pruned(x).shape == (2, 12)
    assert net.features[0].out_channels == 64  # the original is untouched
    # the kept channels are the highest-scored ones: their weights are unchanged
    keep = np.sort(np.argsort(scores["features.0"])[32:])
    assert torch.equal(pruned.features[0].weight, net.features[0].weight[keep])
    rows = [r for r in layer_rows(from_torch(pruned, (x[:1],))) if r["macs"]]
    assert [r["macs"] for r in rows] == [p.macs for p in profile(pruned, x[:1])]


def test_unstructured_pruning_zeroes_smallest_weights():
    net = small_net()
    pruned = prune_unstructured(net, {"2": 0.5})
    w = pruned[2].weight.detach()
    assert abs(float((w == 0).float().mean()) - 0.5) < 0.01
    assert float(w.abs().max()) == float(net[2].weight.detach().abs().max())


# --- importance ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("criterion", ["l1", "taylor", "deeplift"])
def test_a_dead_channel_is_least_important(criterion):
    net = small_net(dead=2)
    x = np.random.default_rng(0).normal(size=(32, 1, 8, 8)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 4, 32)
    layers = prunable_layers(net, torch.from_numpy(x[:1]))
    assert layers == ["0", "2"]
    scores = channel_importance(net, layers, criterion, x, y, "classification")
    assert scores["0"].shape == (8,) and scores["2"].shape == (8,)
    assert np.all(scores["0"] >= 0) and scores["0"][2] == 0.0 and np.all(np.delete(scores["0"], 2) > 0)


def test_l1_importance_is_the_filter_norm():
    net = small_net()
    s = channel_importance(net, ["2"], "l1")["2"]
    np.testing.assert_allclose(s, net[2].weight.detach().abs().sum(dim=(1, 2, 3)).numpy(), rtol=1e-6)


def test_unknown_criterion_and_missing_data():
    net = small_net()
    with pytest.raises(CompressError, match="unknown importance criterion 'snip'"):
        channel_importance(net, ["0"], "snip")
    with pytest.raises(CompressError, match="needs calibration data"):
        channel_importance(net, ["0"], "deeplift")


# --- sensitivity and global rates ----------------------------------------------------------------------

def test_sensitivity_analysis_and_global_rates():
    net = small_net()
    x = torch.randn(1, 1, 8, 8)
    layers = prunable_layers(net, x)
    scores = channel_importance(net, layers, "l1")

    def quality(model):  # a stand-in metric: the fraction of the first layer's channels left, squared
        return (model[0].out_channels / 8) ** 2

    sens = analyse(net, x, layers, scores, quality, threshold=0.5)
    assert sens["base"] == 1.0
    first, second = sens["layers"]["0"], sens["layers"]["2"]
    assert second["sensitivity"] == 0.0 and second["max_rate"] == 0.9   # pruning layer 2 never hurts this metric
    assert first["sensitivity"] > 0.3 and first["max_rate"] < 0.5
    rates = global_rates(sens, 0.6)
    assert rates["2"] == pytest.approx(0.6) and rates["0"] < rates["2"]
    assert global_rates(sens, 0.6, {"2": 0.5})["2"] == 0.9  # clipped


# --- cost model ----------------------------------------------------------------------------------------

def _fake_bench(layers, per_mac, per_col, pool):
    rows = [{"name": f"l{i}", "op": "conv2d", "macs": p.macs,
             "instructions": per_mac[i] * p.macs + per_col[i] * p.macs / p.out_channels}
            for i, p in enumerate(layers)]
    rows.insert(1, {"name": "pool", "op": "max_pool2d", "macs": 0, "instructions": pool})
    total = sum(r["instructions"] for r in rows) + 10
    return {"layers": rows, "instructions": {"per_inference": total, "outside_layers": 10},
            "flash": {"total": 50_000}, "ram": {"total": 20_000, "arena": 8_000}, "target": {"name": "cortex-m4"}}


def test_cost_model_is_exact_on_a_two_term_cost():
    net = DSCNN().eval()
    x = torch.randn(1, 1, 49, 10)
    layers = prunable_layers(net, x)
    scores = channel_importance(net, layers, "l1")
    per_mac, per_col = [1.0 + 0.1 * i for i in range(10)], [5.0 + i for i in range(10)]
    base = profile(net, x)
    half = profile(prune_structured(net, x, {n: 0.5 for n in layers}, scores), x)
    cost = CostModel.from_bench(_fake_bench(base, per_mac, per_col, 1000.0), base,
                                _fake_bench(half, per_mac, per_col, 500.0), half)
    assert cost.points == 2 and cost.per_layer_fit
    other = profile(prune_structured(net, x, {n: r for n, r in zip(layers, (0.25, 0.5, 0.75, 0.1, 0.6))},
                                     scores), x)
    want = 10 + sum(per_mac[i] * p.macs + per_col[i] * p.macs / p.out_channels for i, p in enumerate(other))
    est = cost.estimate(other)
    # the pool after the first layer scales with its channels (the stem is pruned by a quarter)
    assert abs(est["instructions"] - (want + 1000.0 * other[0].out_channels / 64)) <= 2
    assert est["flash"] < 50_000 and est["macs"] == sum(p.macs for p in other)
    assert CostModel.from_json(json.loads(json.dumps(cost.to_json()))).estimate(other) == est


# --- the command -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    from mcuforge import zoo

    out = tmp_path_factory.mktemp("digits") / "digits_cnn"
    zoo.train("digits_cnn", preset="small", out=out, epochs=4)
    return out


def test_compress_errors(capsys, tmp_path, digits_dir):
    code, _, err = mcuforge(capsys, "compress", "no_such_model", "-o", tmp_path / "o")
    assert code == 1 and "error:" in err and "neither a directory" in err
    code, _, err = mcuforge(capsys, "compress", digits_dir, "--data", "keywords", "-o", tmp_path / "o")
    assert code == 1 and "does not train on 'keywords'" in err
    code, _, err = mcuforge(capsys, "compress", digits_dir, "--criterion", "snip", "-o", tmp_path / "o")
    assert code == 1 and "unknown --criterion 'snip'" in err
    code, _, err = mcuforge(capsys, "compress", digits_dir, "--target", "cortex-m99", "-o", tmp_path / "o")
    assert code == 1 and "unknown target 'cortex-m99'" in err
    code, _, err = mcuforge(capsys, "compress", digits_dir, "--storage", "postgresql://nobody@127.0.0.1:1/none",
                            "-o", tmp_path / "o")
    assert code == 1 and "cannot open study" in err
    code, _, err = mcuforge(capsys, "compress", digits_dir, "--worker", "--storage",
                            f"sqlite:///{tmp_path / 'empty.db'}")
    assert code == 1 and "no study" in err
    code, _, err = mcuforge(capsys, "compress", digits_dir)
    assert code == 1 and "-o" in err
    code, _, err = mcuforge(capsys, "compress", digits_dir, "--flash", "lots", "-o", tmp_path / "o")
    assert code == 1 and "cannot read --flash 'lots'" in err
    # an instruction budget no pruning can reach: refused after the set-up, before any trial
    code, _, err = mcuforge(capsys, "compress", digits_dir, "--max-instructions", "20000", "-o", tmp_path / "o")
    assert code == 1 and "cannot be met" in err and "--max-instructions 20,000" in err
    assert not (tmp_path / "o").exists()


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL is not installed (the set-up installs the Debian package postgresql)"
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server on a unix socket, run as an unprivileged user (initdb refuses root)."""
    bindir = _pg_bindir()
    base = Path(tempfile.mkdtemp(prefix="mcf-pg-", dir="/tmp"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (base, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    run = lambda *a: subprocess.run(prefix + [str(v) for v in a], check=True, capture_output=True)  # noqa: E731
    run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "mcuforge", "--no-sync")
    run(bindir / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "-o",
        f"-k {sock} -c listen_addresses='' -F", "start")
    try:
        run(bindir / "createdb", "-h", sock, "-U", "mcuforge", "studies")
        yield f"postgresql://mcuforge@/studies?host={sock}"
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_compress_on_postgres_with_two_workers(capsys, tmp_path, digits_dir, postgres):
    import optuna

    out = tmp_path / "compressed"
    common = [digits_dir, "--target", "cortex-m4", "--max-instructions", "450000", "--storage", postgres,
              "--study", "digits-pg", "--finetune-epochs", "1"]
    # the leader: set-up (sensitivity, QEMU measurements), two trials, the chosen model measured
    code, stdout, err = mcuforge(capsys, "compress", *common, "--trials", "2", "--final-epochs", "1", "-o", out)
    assert code == 0, err
    assert "layer sensitivity" in stdout and "Pareto front" in stdout and "measured on QEMU" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["budget_met"] and report["compressed"]["instructions"] <= 450_000
    assert report["speedup"] > 1.2 and report["base"]["instructions"] > 500_000
    assert report["compressed"]["reference_mismatches"] == 0 and report["base"]["reference_mismatches"] == 0
    assert report["compressed"]["int8"] > 0.8
    for f in ("sensitivity.png", "pareto.png", "pareto.json", "model.pt2", "calib.npy", "report.md",
              "lib/report.json", "lib/digits_cnn.c"):
        assert (out / f).is_file(), f
    # the chosen model deploys with the ordinary flow
    code, _, err = mcuforge(capsys, "deploy", out / "model.pt2", "--calib", out / "calib.npy", "-o", tmp_path / "lib")
    assert code == 0, err

    # two worker processes on the same study
    env = dict(os.environ, MCUFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "mcuforge", "compress", *map(str, common), "--worker", "--trials", "12"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e
        assert "ran" in o
    study = optuna.load_study(study_name="digits-pg", storage=postgres.replace("postgresql://",
                                                                               "postgresql+psycopg://"))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # every worker stops once the study holds 12; one in flight at that moment may still finish
    assert 12 <= len(done) <= 13
    workers = {t.user_attrs["worker"] for t in done[2:]}
    assert len(workers) == 2 and {str(p.pid) for p in procs} == {w.rsplit(":", 1)[1] for w in workers}

    # resuming the finished study runs no trial and rewrites the result from all 12
    code, stdout, err = mcuforge(capsys, "compress", *common, "--trials", "12", "--final-epochs", "1", "-o", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["trials_finished"] == len(done) and report["trials_run_here"] == 0


def test_weight_formats_simulated_on_the_float_model():
    from mcuforge.compress.weights import check_formats, index_bits, simulate

    net = small_net()
    simulate(net, ["2"], "int4")
    w = net[2].weight.detach().reshape(8, -1)
    assert all(len(torch.unique(row)) <= 15 for row in w)
    net = small_net()
    simulate(net, ["2"], "codebook4")
    w = net[2].weight.detach().reshape(8, -1)
    ints = torch.round(w / (w.abs().amax(dim=1, keepdim=True) / 127))
    assert len(torch.unique(ints)) <= 4
    assert [index_bits(f) for f in ("int8", "int4", "int2", "codebook16", "codebook4")] == [8, 4, 2, 4, 2]
    with pytest.raises(CompressError, match="unknown weight format 'int3'"):
        check_formats(["int8", "int3"])
