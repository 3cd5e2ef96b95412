"""Early exits, Python side: cut points, slicing, augmentation (final exit == the int8 model), streams,
QEMU part costs, the cost model, the search and `mcuforge eenn`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mcuforge import reference
from mcuforge.eenn.augment import (augmented_for, cut_points, load_backbone, single_model, slice_graph)
from mcuforge.eenn.cost import CostError, candidate_costs, devices, outcome_cost, parse_targets
from mcuforge.eenn.decisions import Decision, Outcome
from mcuforge.eenn.network import EarlyExitNetwork, LinkModel
from mcuforge.eenn.search import Config, choose, evaluate, precompute, search, single_exit, to_network
from mcuforge.eenn.streams import make_stream
from mcuforge.errors import DatasetError, GraphError
from mcuforge.study import StudyError

from test_cli import mcuforge

os.environ.setdefault("MCUFORGE_NO_PROGRESS", "1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """digits_cnn trained briefly, augmented (cached in its directory) and costed on QEMU Cortex-M4."""
    import torch

    from mcuforge import zoo

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("eenn") / "digits_cnn"
    zoo.train("digits_cnn", out=d, epochs=4)
    aug = augmented_for(d, epochs=4)
    costs = candidate_costs(aug, d / "eenn_candidates")
    bb = load_backbone(d)
    val = precompute(aug, make_stream("digits", "val", length=240), bb.spec, d / "eenn_candidates")
    test = precompute(aug, make_stream("digits", "test", length=240), bb.spec, d / "eenn_candidates")
    return d, bb, aug, costs, val, test


def test_difference_detection_rules():
    """A new scene is detected by distance or by a class change at exit 0; the reference is kept over
    the scene (not tracked frame to frame)."""
    from mcuforge.eenn.decisions import simulate

    u0 = np.array([[200, 56, 0], [190, 66, 0], [120, 136, 0], [120, 136, 0], [60, 196, 0], [60, 180, 16]])
    final = np.array([[0, 255, 0]] * 2 + [[255, 0, 0]] * 4)
    got = [(o.cls, o.exit) for o in simulate(Decision("difference", [40]), [u0, final])]
    # 0: first sample, full. 1: distance 20, same class: the reference's answer. 2: class 1 at exit 0 (distance
    # 160 too) -> full. 3: identical. 4: distance 120 -> full. 5: distance 32, same class -> reference
    assert got == [(1, 1), (1, 0), (0, 1), (0, 0), (0, 1), (0, 0)]
    # a class change alone (distance 4 <= T) is a new scene too
    near = np.array([[130, 126, 0], [126, 130, 0]])
    got = [(o.cls, o.exit) for o in simulate(Decision("difference", [40]), [near, final[:2]])]
    assert got == [(1, 1), (1, 1)]


def test_loss_bound_counts_scenes():
    """Errors bunched in one scene are less certain than the same number spread over many: the bound says so."""
    from mcuforge.eenn.search import loss_bound

    scene = np.repeat(np.arange(50), 10)
    ref = np.ones(500, bool)
    assert loss_bound(ref.copy(), ref, scene) == 0.0
    bunched, spread = ref.copy(), ref.copy()
    bunched[:10] = False                  # one whole scene missed: 2 points
    spread[::50] = False                  # one sample in each of 10 scenes: 2 points too
    b, s_ = loss_bound(bunched, ref, scene), loss_bound(spread, ref, scene)
    assert b > s_ > 2.0 and b > 3.0
    assert loss_bound(bunched, ref, scene, level=0.5) <= b


def test_cut_points_skip_residual_blocks():
    import torch
    import torch.nn as nn

    from mcuforge.frontends.torch import from_torch

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.c = nn.Conv2d(8, 8, 3, padding=1)
            self.d = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

        def forward(self, x):
            x = torch.relu(self.a(x))
            x = torch.relu(x + self.c(torch.relu(self.b(x))))   # a skip connection crosses b's output
            return self.head(torch.relu(self.d(x)))

    g = from_torch(Res().eval(), torch.zeros(1, 1, 8, 8))
    cuts = [c.tensor for c in cut_points(g)]
    inner = g.nodes[1].outputs[0]          # conv b's output: the skip is live across it
    assert g.nodes[1].inputs[0] in cuts and inner not in cuts and len(cuts) == 2
    with pytest.raises(GraphError, match="also reads"):
        slice_graph(g, inner, g.outputs[0])


def test_augmented_chain_is_the_int8_model(trained):
    d, bb, aug, costs, val, test = trained
    assert len(aug.cuts) == 3 and len(aug.candidates) == 6
    x = bb.calib[:40]
    xq = aug.quantize_inputs(x)
    single = reference.run(single_model(bb), [xq], mode="int")[0]
    u = aug.exit_outputs(x)
    assert np.array_equal(u["final"], single.reshape(40, -1).astype(np.int32) + 128)
    # every configuration's segment chain computes exactly the single model; heads are exit candidates
    net = aug.network([(2, "pool_fc"), (0, "conv_pool_fc")], Decision("confidence", [200, 200]))
    h = xq
    for k, seg in enumerate(net.segments):
        h = reference.run(seg, [h], mode="int")[0]
        if k < len(net.heads):
            uh = reference.run(net.heads[k], [h], mode="int")[0].reshape(40, -1).astype(np.int32) + 128
            assert np.array_equal(uh, u[["cut0/conv_pool_fc", "cut2/pool_fc"][k]])
    assert np.array_equal(h, single)
    for g in net.heads + net.segments[-1:]:
        q = g.tensors[g.outputs[0]].quant
        assert q.s == 1 / 256 and q.zp == -128
    net.save(d / "net")
    back = EarlyExitNetwork.load(d / "net")
    assert back.n_exits == 3 and back.decision == net.decision and back.meta["exits"][0]["cut"] == 0


def test_streams_are_correlated_and_deterministic():
    for name in ("ecg", "keywords", "digits"):
        s = make_stream(name, "val", preset="tiny" if name != "digits" else "small", length=120)
        assert len(s) == len(s.x) == len(s.scene) and len(s) <= 120
        assert s.repeat_rate > 0.7 and s.n_scenes >= 3
        change = np.nonzero(np.diff(s.scene))[0]   # scene ids only grow, labels are constant in a scene
        assert np.all(np.diff(s.scene) >= 0)
        for a, b in zip(np.r_[0, change + 1], np.r_[change + 1, len(s)]):
            assert len(set(s.y[a:b].tolist())) == 1
    a, b = make_stream("digits", "test", length=60), make_stream("digits", "test", length=60)
    assert np.array_equal(a.x, b.x)
    assert not np.array_equal(make_stream("digits", "val", length=60).x, a.x)
    with pytest.raises(DatasetError, match="unknown stream"):
        make_stream("shapes")


def test_part_costs_from_qemu(trained):
    d, bb, aug, costs, val, test = trained
    assert costs.target == "cortex-m4" and costs.backbone_instr > costs.backbone_macs * 0.5
    assert costs.cut_instr == sorted(costs.cut_instr) and 0 < costs.cut_instr[0] < costs.backbone_instr
    assert all(v > 0 for v in costs.head_instr.values())
    assert costs.head_instr["cut0/conv_pool_fc"] > costs.head_instr["cut0/pool_fc"]
    seg_i, head_i, seg_m, head_m = costs.parts([(0, "pool_fc"), (2, "conv_pool_fc")])
    assert sum(seg_i) == pytest.approx(costs.backbone_instr + 3 * costs.invoke_overhead)
    assert sum(seg_m) == costs.backbone_macs
    # link: a sample that goes past a device boundary pays bytes, latency and energy per byte
    link = LinkModel(bandwidth_bytes_s=1e5, latency_s=0.01, energy_per_byte_j=1e-6)
    cut_bytes = [costs.cut_bytes[0], costs.cut_bytes[2]]
    early = outcome_cost(Outcome(1, 0, (0,)), seg_i, head_i, seg_m, head_m, cut_bytes,
                         ["cortex-m4", "edge-cpu", "edge-cpu"], link)
    late = outcome_cost(Outcome(1, 2, (0, 1)), seg_i, head_i, seg_m, head_m, cut_bytes,
                        ["cortex-m4", "edge-cpu", "edge-cpu"], link)
    assert early.link_bytes == 0 and late.link_bytes == cut_bytes[0] == 1024
    m4 = devices()["cortex-m4"]
    assert early.seconds == pytest.approx(m4.seconds(seg_i[0] + head_i[0]))
    assert late.joules > early.joules + 1024e-6 - 1e-12 and late.seconds > 0.01 + 1024 / 1e5
    with pytest.raises(CostError, match="unknown target"):
        parse_targets("cortex-m4,gpu")
    with pytest.raises(CostError, match="1 to 3"):
        parse_targets("cortex-m4,cortex-m7,edge-cpu,cortex-m4")


def test_evaluate_and_search(trained, tmp_path):
    d, bb, aug, costs, val, test = trained
    base = evaluate(single_exit(), val, costs)
    assert base["accuracy"] == pytest.approx(100 * np.mean(val.u["final"].argmax(1) == val.y))
    assert base["instructions"] == pytest.approx(costs.backbone_instr + costs.invoke_overhead)
    assert base["exit_share"] == [1.0]
    # difference detection with no distance limit runs the full network exactly when exit 0's class changes
    dd = evaluate(Config([(0, "pool_fc")], Decision("difference", [100000]), ["cortex-m4"] * 2), val, costs)
    c0 = val.u["cut0/pool_fc"].argmax(1)
    full = 1 + int(np.sum(c0[1:] != c0[:-1]))
    assert dd["exit_share"] == pytest.approx([1 - full / len(val), full / len(val)])
    assert 1 < full < len(val) // 2 and dd["instructions"] < base["instructions"] / 2
    res = search(aug, costs, val, 12, default_file=tmp_path / "s.db", study_name="t", show=False)
    assert res.ran == 12 and [o.name for o in res.objectives] == ["accuracy", "instructions"]
    cfg, info = choose(res.study, res.objectives, base["accuracy"], max_loss=2.0)
    got = evaluate(cfg, val, costs)
    assert got["accuracy"] >= base["accuracy"] - 2.0 and got["instructions"] <= base["instructions"] + 1
    # with the validation stream the choice must also hold at the bootstrap bound: never cheaper, never riskier
    safe, sinfo = choose(res.study, res.objectives, base["accuracy"], 2.0, single_exit(), val=val)
    assert evaluate(safe, val, costs)["instructions"] >= got["instructions"]
    assert sinfo["trial"] is None or sinfo["loss_bound"]["points"] <= 2.0
    again = search(aug, costs, val, 12, default_file=tmp_path / "s.db", study_name="t", show=False)
    assert again.ran == 0                                                    # resumed: nothing left to run
    with pytest.raises(StudyError, match="no study"):
        search(aug, costs, val, 2, default_file=tmp_path / "s.db", study_name="other", worker=True, show=False)
    three = search(aug, costs, val, 6, targets=["cortex-m4", "cortex-m7", "edge-cpu"],
                   default_file=tmp_path / "s.db", study_name="multi", show=False)
    assert [o.name for o in three.objectives] == ["accuracy", "latency_ms", "energy_uj"]
    net = to_network(aug, Config([(0, "pool_fc"), (1, "pool_fc")], Decision("patience", [0, 0]),
                                 ["cortex-m4", "cortex-m7", "edge-cpu"]), costs=costs)
    assert net.mapping == ["cortex-m4", "cortex-m7", "edge-cpu"] and net.cut_bytes(0) == costs.cut_bytes[0]
    assert len(net.meta["costs"]["segment_instructions"]) == 3


def test_cli_eenn(trained, tmp_path, capsys):
    d, *_ = trained
    out = tmp_path / "ee"
    code, stdout, err = mcuforge(capsys, "eenn", str(d), "-o", str(out), "--trials", "10")
    assert code == 0, err
    assert "Pareto front" in stdout and "chosen:" in stdout and "fewer instructions" in stdout
    net = EarlyExitNetwork.load(out)
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "pareto.png").stat().st_size > 1000 and json.loads((out / "pareto.json").read_text())
    chosen = summary["validation"]["chosen"]
    assert chosen["accuracy"] >= summary["validation"]["single_exit"]["accuracy"] - 2.0
    assert net.n_exits == len(summary["chosen"]["exits"]) + 1
    assert Path(f"{out}.study.db").is_file()
    # user errors: one line, non-zero exit, nothing written
    for args, msg in [(["--targets", "cortex-m4,gpu"], "unknown target"), (["--kinds", "vote"], "--kinds"),
                      (["--data", "keywords"], "trained on 'digits'")]:
        code, _, err = mcuforge(capsys, "eenn", str(d), "-o", str(tmp_path / "bad"), *args)
        assert code != 0 and err.startswith("error:") and msg in err and len(err.strip().splitlines()) == 1
    code, _, err = mcuforge(capsys, "eenn", str(tmp_path), "-o", str(tmp_path / "bad"))
    assert code != 0 and "no model.pt" in err
    assert not (tmp_path / "bad").exists()
