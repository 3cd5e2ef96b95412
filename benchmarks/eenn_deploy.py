"""Early-exit networks as deployed C on an emulated Cortex-M4: accuracy and exact instructions per inference
of the generated library on temporally correlated streams (ECG windows in order, keyword runs, held digits).

For each zoo model whose exit candidates part A's augmentation cached (out/eenn/<model>/eenn_candidates,
`mcuforge eenn` writes them), a few exit sets are generated as C for cortex-m4 and their parts measured on
QEMU (exact instructions). Per mechanism, thresholds are chosen on the *validation* stream (Python
decisions, per-part instruction counts) as the cheapest with at most 1 point accuracy loss against the
single-exit model; the chosen library then runs the *test* stream on QEMU: every sample's (class, exit)
is checked against decisions.simulate, and the instructions of every invoke are counted exactly.

    .venv/bin/python benchmarks/eenn_deploy.py [--models ecg_cnn,ds_cnn,digits_cnn]

Prints a table and writes benchmarks/results/eenn_deploy.json.

    .venv/bin/python benchmarks/eenn_deploy.py --from-search [benchmarks/results/eenn.json]

deploys instead the operating points that benchmarks/eenn.py's searches chose (exits, branches,
mechanism, thresholds), runs each whole test stream through the Cortex-M4 firmware the same way (C ==
Python checked on every sample, every invoke counted) and writes results/eenn_deploy_searched.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mcuforge import zoo
from mcuforge.eenn.augment import load_augmented
from mcuforge.eenn.codegen import generate_eenn
from mcuforge.eenn.decisions import Decision, simulate
from mcuforge.eenn.measure import measure_library
from mcuforge.eenn.runner import DECIDE, reference_exit_u, run_stream_cortex_m
from mcuforge.eenn.streams import make_stream
from mcuforge.targets.table import get_target

ROOT = Path(__file__).resolve().parent
MODELS = {"ecg_cnn": "ecg", "ds_cnn": "keywords", "digits_cnn": "digits"}
MAX_LOSS = 1.0   # accuracy points given up on the validation stream (the test stream may differ)
GRID = {
    "confidence": [128, 160, 192, 208, 224, 240, 248, 252, 256],
    "difference": [0, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 320, 384],
    "patience": [0, 64, 128, 192, 224, 256],
}


def exit_sets(aug) -> list[list[tuple[int, str]]]:
    last = len(aug.cuts) - 1
    sets = []
    for arch in ("pool_fc", "conv_pool_fc"):
        sets.append([(0, arch)])
        if last > 0:
            sets.append([(0, arch), (last // 2 + 1 if last > 1 else last, arch)])
    return sets


def part_costs(costs: dict) -> tuple[list[float], list[float], float]:
    seg = [costs["segments"][k] for k in sorted(costs["segments"])]
    head = [costs["heads"][k] for k in sorted(costs["heads"])]
    return seg, head, costs["decision_overhead"]["mean"]


def evaluate(net, decision, u, y, seg, head, overhead) -> tuple[float, float]:
    outs = simulate(decision, u)
    acc = 100.0 * float(np.mean([o.cls == t for o, t in zip(outs, y)]))
    instr = float(np.mean([net.cost(o, seg, head) for o in outs])) + overhead
    return acc, instr


def candidates(kind: str, n_early: int):
    if kind == "none":
        yield Decision("none", [])
    elif kind == "difference":
        for t in GRID["difference"]:
            yield Decision("difference", [t])
    else:
        for ts in itertools.product(GRID[kind], repeat=n_early):
            yield Decision(kind, list(ts))


def run_model(model: str, tmp: Path, target) -> list[dict]:
    data = MODELS[model]
    cand = ROOT.parent / "out" / "eenn" / model / "eenn_candidates"
    if not (cand / "augmented.json").is_file():
        print(f"{model}: no exit candidates in {cand} (run `mcuforge eenn {model}` first); skipped")
        return []
    aug, spec = load_augmented(cand), zoo.get(model)
    val, test = make_stream(data, "val"), make_stream(data, "test")
    xv, xt = aug.quantize_inputs(val.model_inputs(spec)), aug.quantize_inputs(test.model_inputs(spec))
    built = []
    for i, exits in enumerate(exit_sets(aug)):
        net = aug.network(exits)
        lib = tmp / f"{model}_{i}"
        generate_eenn(net, lib, name=model, target=target)
        costs = measure_library(lib, target)
        built.append((exits, net, lib, costs, reference_exit_u(net, xv)))
    # the single-exit model: the final exit of any of them (same backbone, same int8 chain)
    rows = []
    single_val = None
    for kind in ("none", "confidence", "difference", "patience"):
        best = None
        for exits, net, lib, costs, uv in built:
            seg, head, ovh = part_costs(costs)
            for d in candidates(kind, net.n_exits - 1):
                acc, instr = evaluate(net, d, uv, val.y, seg, head, ovh)
                if kind == "none":
                    single_val = acc if single_val is None else single_val
                if kind != "none" and acc < single_val - MAX_LOSS:
                    continue
                if best is None or instr < best[0]:
                    best = (instr, acc, exits, net, lib, costs, d)
            if kind == "none":
                break
        instr_val, acc_val, exits, net, lib, costs, d = best
        rows.append({
            "model": model, "stream": data, "mechanism": kind,
            "exits": [{"cut": c, "tensor": aug.cuts[c].tensor, "arch": a} for c, a in exits],
            **deploy_and_run(net, d, xt, test.y, lib, model, target, generate=False),
            "val_accuracy": acc_val, "val_instructions_model": instr_val,
            "exit_instructions": [e["instructions"] for e in costs["exits"]],
        })
    base = rows[0]
    for r in rows:
        r["accuracy_change"] = r["accuracy"] - base["accuracy"]
        r["instructions_change"] = r["mean_instructions"] / base["mean_instructions"] - 1.0
    return rows


def deploy_and_run(net, decision: Decision, x: np.ndarray, y: np.ndarray, lib: Path, name: str, target,
                   generate: bool = True) -> dict:
    """Generate the network as C (unless lib has it), run the stream through the firmware on QEMU, check every decision against
    decisions.simulate on the integer reference, and count every invoke."""
    if generate:
        generate_eenn(net, lib, name=name, target=target)
    t0 = time.perf_counter()
    run = run_stream_cortex_m(lib, x, target, decision=decision, mode=DECIDE)
    qemu_s = time.perf_counter() - t0
    want = simulate(decision, reference_exit_u(net, x))
    same = [(int(c), int(e)) for c, e in zip(run.cls, run.exits)] == [(o.cls, o.exit) for o in want]
    macs_part = {p["what"]: p["macs"] for p in json.loads((lib / "report.json").read_text())["eenn"]["parts"]}
    seg_m = [macs_part[f"segment {k}"] for k in range(net.n_exits)]
    head_m = [macs_part[f"head {k}"] for k in range(net.n_exits - 1)]
    return {"samples": int(len(x)), "thresholds": decision.thresholds,
            "accuracy": 100.0 * float(np.mean(run.cls == y)),
            "mean_instructions": float(np.mean(run.invoke_instructions)),
            "mean_macs": float(np.mean([net.cost(o, seg_m, head_m) for o in want])),
            "exit_histogram": np.bincount(run.exits, minlength=net.n_exits).tolist(),
            "c_equals_python": bool(same), "qemu_s": qemu_s}


def run_searched(results: Path, tmp: Path, target) -> list[dict]:
    """Every operating point of benchmarks/eenn.py's results, deployed and run through the firmware."""
    from mcuforge.eenn.search import Config

    rows = []
    for case in json.loads(results.read_text())["cases"]:
        model, data = case["model"], case["stream"]
        cand = ROOT.parent / "out" / "eenn" / model / "eenn_candidates"
        if not (cand / "augmented.json").is_file():
            print(f"{model}: no exit candidates in {cand}; skipped")
            continue
        aug, spec = load_augmented(cand), zoo.get(model)
        test = make_stream(data, "test")
        xt = aug.quantize_inputs(test.model_inputs(spec))
        base = None
        for i, r in enumerate(case["rows"]):
            cfg = Config.from_json(r["config"])
            decision = cfg.decision if cfg.exits else Decision("none", [])
            net = aug.network(cfg.exits, decision if cfg.exits else None)
            row = {"model": model, "stream": data, "mechanism": r["mechanism"], "describe": r["describe"],
                   "exits": [{"cut": c, "tensor": aug.cuts[c].tensor, "arch": a} for c, a in cfg.exits],
                   "search_test_accuracy": r["test"]["accuracy"],
                   "search_test_instructions": r["test"]["instructions_measured"],
                   **deploy_and_run(net, decision, xt, test.y, tmp / f"{model}_s{i}", model, target)}
            base = base or row
            row["accuracy_change"] = row["accuracy"] - base["accuracy"]
            row["instructions_change"] = row["mean_instructions"] / base["mean_instructions"] - 1.0
            rows.append(row)
            print(f"  {model} {r['mechanism']}: {row['accuracy']:.2f}% {row['mean_instructions']:,.0f} "
                  f"({row['instructions_change']:+.1%}), C==Python {row['c_equals_python']}", flush=True)
    return rows


def main() -> None:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--from-search", nargs="?", const=str(ROOT / "results" / "eenn.json"), default=None,
                    metavar="EENN_JSON", help="deploy benchmarks/eenn.py's chosen operating points instead of the grid")
    args = ap.parse_args()
    target = get_target("cortex-m4")
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.from_search:
            rows = run_searched(Path(args.from_search), Path(tmp), target)
        else:
            for m in args.models.split(","):
                rows += run_model(m.strip(), Path(tmp), target)
    hdr = (f"{'model / stream':24} {'mechanism':20} {'thresholds':>16} {'accuracy':>9} {'d acc':>6} "
           f"{'instr/inference (M4)':>21} {'vs single':>9} {'MACs':>10} {'exits':>16} C==Py")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['model'] + ' / ' + r['stream']:24} {r['mechanism']:20} {str(r['thresholds']):>16} "
              f"{r['accuracy']:8.2f}% {r['accuracy_change']:+6.2f} {r['mean_instructions']:21,.0f} "
              f"{r['instructions_change']:+9.1%} {r['mean_macs']:10,.0f} {str(r['exit_histogram']):>16} "
              f"{'yes' if r['c_equals_python'] else 'NO'}")
    out = ROOT / "results" / ("eenn_deploy_searched.json" if args.from_search else "eenn_deploy.json")
    out.parent.mkdir(exist_ok=True)
    info = {"operating_points": str(args.from_search)} if args.from_search else {"max_val_loss_points": MAX_LOSS}
    out.write_text(json.dumps({"target": target.to_json(), **info, "rows": rows,
                               "seconds": time.perf_counter() - t0}, indent=1))
    print(f"wrote {out} ({time.perf_counter() - t0:.0f} s)")
    if not all(r["c_equals_python"] for r in rows):
        raise SystemExit("the C runtime disagreed with the Python decisions")


if __name__ == "__main__":
    main()
