"""Early-exit networks on temporally correlated streams: single exit vs confidence-based exits vs
Difference Detection vs Temporal Patience.

For each (model, stream): ecg_cnn on the ECG stream, ds_cnn on the keyword stream, digits_cnn on the
digit stream. Each mechanism gets its own Optuna search (exits, branch architectures, thresholds; the
confidence-based row searches confidence, margin and entropy together and keeps the best) on the
VALIDATION stream; its operating point is the cheapest trial within --max-loss (default 1) accuracy
points of the single exit there. That point is then reported on the TEST stream.

Instructions per inference are exact Cortex-M4 counts of the DEPLOYED parts: the chosen network is
generated as C for the Cortex-M4 and every segment and head is counted on QEMU
(eenn.measure.measure_exit_costs); the mean over the test stream adds, per sample, the parts its
decision ran plus the measured decision overhead. The per-layer estimate the search used is reported
beside it. MACs per inference likewise.

    .venv/bin/python benchmarks/eenn.py [--trials 100] [--max-loss 1] [--models-dir out/eenn]

Table on stdout, results in benchmarks/results/eenn.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = [("ecg_cnn", "ecg"), ("ds_cnn", "keywords"), ("digits_cnn", "digits")]
GROUPS = [("confidence-based", ("confidence", "margin", "entropy")), ("difference detection", ("difference",)),
          ("temporal patience", ("patience",))]


def measured_mean(cfg, sx, measured: dict, seg_m, head_m) -> tuple[float, float]:
    """Mean instructions and MACs per inference on a stream from the deployed parts' QEMU counts."""
    from mcuforge.eenn.decisions import simulate

    segs = [measured["segments"][k] for k in sorted(measured["segments"], key=int)]
    heads = [measured["heads"][k] for k in sorted(measured["heads"], key=int)]
    overhead = measured.get("decision_overhead", {}).get("mean", 0.0)
    exit_u = [sx.u[f"cut{c}/{a}"] for c, a in cfg.exits] + [sx.u["final"]]
    instr, macs = [], []
    for o in simulate(cfg.decision, exit_u):
        instr.append(sum(segs[: o.exit + 1]) + sum(heads[h] for h in o.heads) + overhead)
        macs.append(sum(seg_m[: o.exit + 1]) + sum(head_m[h] for h in o.heads))
    return float(np.mean(instr)), float(np.mean(macs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    # Chosen on validation with a 1-point budget: the held-out voices and recordings of the test
    # streams cost up to a few points more than validation, and the constraint is 2 points on test.
    ap.add_argument("--max-loss", type=float, default=1.0, help="accuracy points allowed on the validation stream")
    ap.add_argument("--level", type=float, default=0.9,
                    help="the loss must stay within --max-loss at this quantile of a scene bootstrap on validation")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "eenn.json"))
    ap.add_argument("--models-dir", default="out/eenn", help="where the trained models are (else out/NAME, trained)")
    ap.add_argument("--cases", default=",".join(m for m, _ in CASES))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from mcuforge.eenn.augment import augmented_for, load_backbone
    from mcuforge.eenn.cost import ENERGY_MODEL, candidate_costs
    from mcuforge.eenn.measure import measure_exit_costs
    from mcuforge.eenn.search import choose, evaluate, precompute, search, single_exit, to_network
    from mcuforge.eenn.streams import make_stream

    os.environ.setdefault("MCUFORGE_NO_PROGRESS", "1")
    results = {"trials_per_search": args.trials, "max_loss_points": args.max_loss, "bound_level": args.level,
               "energy_model": ENERGY_MODEL,
               "instructions": "exact, Cortex-M4 on QEMU, deployed parts (measure_exit_costs) + decision overhead",
               "cases": []}
    wanted = args.cases.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="mcuforge-eenn-bench-"))
    for model, stream_name in CASES:
        if model not in wanted:
            continue
        src = Path(args.models_dir) / model
        src = str(src) if (src / "model.pt").is_file() else model
        t0 = time.perf_counter()
        bb = load_backbone(src)
        aug = augmented_for(src)
        cache = Path(bb.source) / "eenn_candidates"
        costs = candidate_costs(aug, cache)
        val = precompute(aug, make_stream(stream_name, "val", bb.preset, bb.seed), bb.spec, cache)
        test = precompute(aug, make_stream(stream_name, "test", bb.preset, bb.seed), bb.spec, cache)
        t_prep = time.perf_counter() - t0
        base = single_exit()
        rows = []
        for label, kinds in [("single exit", None)] + GROUPS:
            t1 = time.perf_counter()
            if kinds is None:
                cfg, info, t_search = base, {}, 0.0
            else:
                res = search(aug, costs, val, args.trials, kinds=kinds, default_file=tmp / f"{model}.db",
                             study_name=f"{model}-{'-'.join(kinds)}", show=False,
                             enqueue=[{f"exit{k}": "none" for k in range(len(aug.cuts))}])
                cfg, info = choose(res.study, res.objectives, evaluate(base, val, costs)["accuracy"], args.max_loss,
                                   base, val=val, level=args.level)
                t_search = res.seconds
            r_val, r_test = evaluate(cfg, val, costs), evaluate(cfg, test, costs)
            net = to_network(aug, cfg, costs=costs)
            net.save(tmp / f"{model}-{len(rows)}")
            measured = measure_exit_costs(tmp / f"{model}-{len(rows)}", "cortex-m4")
            seg_i, head_i, seg_m, head_m = costs.parts(cfg.exits)
            m_instr, m_macs = measured_mean(cfg, test, measured, seg_m, head_m)
            m_instr_val, _ = measured_mean(cfg, val, measured, seg_m, head_m)
            rows.append({"mechanism": label, "config": cfg.to_json(), "describe": cfg.describe(), "choice": info,
                         "validation": {**r_val, "instructions_measured": m_instr_val},
                         "test": {**r_test, "instructions_measured": m_instr, "macs": m_macs},
                         "parts_measured": {"segments": measured["segments"], "heads": measured["heads"],
                                            "decision_overhead": measured.get("decision_overhead")},
                         "search_s": t_search, "row_s": time.perf_counter() - t1})
            print(f"  {model} {label}: {cfg.describe()} test acc {r_test['accuracy']:.2f}% "
                  f"instr {m_instr:,.0f} ({time.perf_counter() - t1:.0f} s)", file=sys.stderr)
        single = rows[0]["test"]
        for r in rows:
            r["test"]["instructions_vs_single"] = r["test"]["instructions_measured"] / single["instructions_measured"]
            r["test"]["accuracy_change_points"] = r["test"]["accuracy"] - single["accuracy"]
            r["validation"]["accuracy_change_points"] = r["validation"]["accuracy"] - rows[0]["validation"]["accuracy"]
        s = make_stream(stream_name, "test", bb.preset, bb.seed)
        results["cases"].append({"model": bb.name, "stream": stream_name, "test_samples": len(test),
                                 "val_samples": len(val), "test_scenes": s.n_scenes, "repeat_rate": s.repeat_rate,
                                 "candidates": len(aug.candidates), "cuts": len(aug.cuts), "prepare_s": t_prep,
                                 "rows": rows})

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    hdr = (f"| stream (model) | mechanism | operating point (validation) | val acc | test acc | Δ pt | "
           f"instructions / inference (M4, QEMU) | vs single | MACs / inference | search s |")
    print(hdr)
    print("|" + "---|" * 10)
    for c in results["cases"]:
        for r in c["rows"]:
            t, v = r["test"], r["validation"]
            print(f"| {c['stream']} ({c['model']}) | {r['mechanism']} | {r['describe']} | {v['accuracy']:.2f}% | "
                  f"{t['accuracy']:.2f}% | {t['accuracy_change_points']:+.2f} | {t['instructions_measured']:,.0f} | "
                  f"{t['instructions_vs_single']:.2f} | {t['macs']:,.0f} | {r['search_s']:.0f} |")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
