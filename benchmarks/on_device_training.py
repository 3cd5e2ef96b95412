"""On-device training benchmark: the digits CNN (trained in float, deployed int8) adapted on device to a
shifted domain.

Rows: float32 fine-tuning (PyTorch, same layers, samples and order), FQT full update, FQT static last-k,
FQT bias-only, FQT dynamic partial updates at several budgets. Columns: accuracy on the shifted test
split before/after, instructions per training sample on Cortex-M4 (exact, QEMU; the forward pass, which
every step needs, and the rest), peak training RAM, flash. Every FQT row runs the whole stream on the
numpy twin and on the Cortex-M4 firmware, and checks that both end with identical weights.

    .venv/bin/python benchmarks/on_device_training.py [--domains rotate,sensor] [--epochs 1] [--lr 0.01]
        [--lr-halve-every 300] [--budgets 0.5,0.3,0.2,0.1] [--min-step-budget 0.3] [--seeds 3]
        [--qemu-steps N] [--no-qemu]
        [--json benchmarks/results/on_device_training.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mcuforge.targets.table import get_target  # noqa: E402
from mcuforge.train.codegen import generate_training_library  # noqa: E402
from mcuforge.train.program import TrainConfig, resolve_trainable  # noqa: E402
from mcuforge.train.runner import apply_state, run_train_cortex_m, run_train_reference  # noqa: E402
from mcuforge.train.scenario import build_scenario, digits_model, float_finetune  # noqa: E402


def forward_instructions(lib: Path, target, x: np.ndarray) -> float:
    """Instructions of one inference (= the training step's forward pass) of the same library."""
    from mcuforge.targets.bench import run_counted

    return float(np.mean(run_counted(lib, target, [x]).per_sample))


def twin_accuracy(sc, cfg: TrainConfig) -> float:
    from mcuforge.train.fqt import FQTTrainer

    tr = FQTTrainer(sc.qgraph, cfg)
    x = sc.quantize(sc.x_stream)
    for i in range(len(x)):
        tr.step(x[i:i + 1], sc.y_stream[i])
    return sc.accuracy(tr.graph)


def spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)),
            "values": [float(v) for v in values]}


def fqt_row(name: str, sc, cfg: TrainConfig, target, work: Path, qemu: bool, qemu_steps: int | None) -> dict:
    from mcuforge.targets.bench import memory_breakdown

    lib = work / name.replace(" ", "_").replace(".", "")
    report = generate_training_library(sc.qgraph, lib, cfg, prefix="digits", target=target)
    x = sc.quantize(sc.x_stream)
    y = sc.y_stream
    t0 = time.perf_counter()
    ref, trainer = run_train_reference(lib, x, y)
    twin_s = time.perf_counter() - t0
    adapted = apply_state(sc.qgraph, report, ref.final)
    mem = report["train"]["memory"]
    row = {
        "row": name, "policy": cfg.policy, "budget": cfg.budget if cfg.policy == "dynamic" else None,
        "trainable": cfg.trainable,
        "accuracy_before": sc.accuracy(sc.qgraph), "accuracy_after": sc.accuracy(adapted),
        "accuracy_clean_after": sc.accuracy(adapted, clean=True),
        "prequential_accuracy": float(np.mean(ref.preds == y)),
        "adapted_channels": int(sum(int((S.a > 0).sum()) for S in trainer.state)),
        "ram_plan_bytes": mem["ram"]["total_bytes"], "ram_plan": mem["ram"],
        "naive_ram_bytes": mem["naive_ram_bytes"], "arena_bytes": mem["ram"]["arena_bytes"],
        "naive_arena_bytes": mem["naive_arena_bytes"], "inference_arena_bytes": mem["inference_arena_bytes"],
        "twin_seconds": twin_s,
    }
    if qemu:
        n = len(x) if qemu_steps is None else min(qemu_steps, len(x))
        run = run_train_cortex_m(lib, x[:n], y[:n], target)
        if n == len(x):
            row["qemu_equals_twin"] = all(a.equal(b) for a, b in zip(ref.final, run.final)) and bool(
                np.array_equal(run.preds, ref.preds))
        else:
            ref_n, _ = run_train_reference(lib, x[:n], y[:n])
            row["qemu_equals_twin"] = all(a.equal(b) for a, b in zip(ref_n.final, run.final))
        ins = np.asarray(run.instructions, np.float64)
        fwd = forward_instructions(lib, target, x[:4])
        mb = memory_breakdown(run.firmware, report)
        row.update({
            "qemu_steps": n, "instructions_per_sample": float(ins.mean()), "instructions_min": int(ins.min()),
            "instructions_max": int(ins.max()), "forward_instructions": fwd,
            "backward_instructions_per_sample": float(ins.mean()) - fwd,
            "stack_train_step_bytes": run.stats["stack_step"],
            "peak_ram_bytes": mem["ram"]["total_bytes"] + run.stats["stack_step"],
            "firmware_ram_bytes": mb["ram"]["total"], "flash_bytes": mb["flash"]["total"],
            "flash_model_bytes": mb["flash"]["model_total"], "qemu_seconds": run.seconds,
        })
    return row


def run_domain(domain: str, args, fg, qg, work: Path, target) -> dict:
    sc = build_scenario(fg, qg, domain, epochs=args.epochs, seed=0)
    others = [build_scenario(fg, qg, domain, epochs=args.epochs, seed=0, order_seed=s) for s in range(1, args.seeds)]
    layers = resolve_trainable(qg, "all")
    last_k = resolve_trainable(qg, f"last:{args.last_k}")
    rows = []
    t0 = time.perf_counter()
    fl = float_finetune(sc, layers, args.lr, lr_halve_every=args.lr_halve_every)
    accs = [fl["accuracy_after"]] + [float_finetune(o, layers, args.lr, lr_halve_every=args.lr_halve_every)
                                     ["accuracy_after"] for o in others]
    rows.append({"row": "float32 fine-tuning (PyTorch), all layers", "policy": "float32",
                 "accuracy_before": fl["accuracy_before"], "accuracy_after": float(np.mean(accs)),
                 "accuracy_after_seeds": spread(accs),
                 "accuracy_clean_after": fl["accuracy_clean_after"], "seconds": time.perf_counter() - t0})
    base = dict(lr=args.lr, seed=args.seed, lr_halve_every=args.lr_halve_every, min_step_budget=args.min_step_budget)
    configs = [("FQT full", TrainConfig(**base, trainable=layers)),
               (f"FQT static last-{args.last_k}", TrainConfig(**base, trainable=last_k)),
               ("FQT bias-only", TrainConfig(**base, policy="bias", trainable=layers))]
    for b in args.budgets:
        configs.append((f"FQT dynamic {b:g}", TrainConfig(**base, policy="dynamic", budget=b, trainable=layers)))
    for name, cfg in configs:
        print(f"  {domain}: {name} ...", flush=True)
        rows.append(fqt_row(f"{domain} {name}", sc, cfg, target, work, not args.no_qemu, args.qemu_steps))
        rows[-1]["row"] = name
        accs = [rows[-1]["accuracy_after"]] + [twin_accuracy(o, cfg) for o in others]
        rows[-1]["accuracy_after_first_order"] = rows[-1]["accuracy_after"]
        rows[-1]["accuracy_after"] = float(np.mean(accs))
        rows[-1]["accuracy_after_seeds"] = spread(accs)
    return {"domain": domain, "samples": len(sc.x_stream), "test_samples": len(sc.y_test),
            "int8_accuracy_clean": sc.accuracy(qg, clean=True), "int8_accuracy_shifted": sc.accuracy(qg),
            "rows": rows}


def markdown(res: dict) -> str:
    out = []
    for d in res["domains"]:
        full = next(r for r in d["rows"] if r["row"] == "FQT full")
        out += [f"### domain `{d['domain']}`: {d['samples']} adaptation samples, {d['test_samples']} test samples "
                f"(int8 model: {d['int8_accuracy_clean']:.1%} on clean digits, {d['int8_accuracy_shifted']:.1%} "
                f"shifted)", "",
                f"| row | accuracy before | after (mean of {res['seeds']} orders; min..max) | instructions / sample (M4) "
                "| of which forward | vs full | peak training RAM | flash |",
                "|---|--:|--:|--:|--:|--:|--:|--:|"]
        for r in d["rows"]:
            ins = r.get("instructions_per_sample")
            fmt_i = f"{ins:,.0f}" if ins else "-"
            fwd = f"{r['forward_instructions']:,.0f}" if r.get("forward_instructions") else "-"
            ratio = (f"{full['instructions_per_sample'] / ins:.2f}x" if ins and full.get("instructions_per_sample")
                     else "-")
            ram = f"{r['peak_ram_bytes']:,} B" if r.get("peak_ram_bytes") else (
                f"{r['ram_plan_bytes']:,} B" if r.get("ram_plan_bytes") else "-")
            flash = f"{r['flash_bytes']:,} B" if r.get("flash_bytes") else "-"
            sp = r.get("accuracy_after_seeds")
            rng = f" ({sp['min']:.1%}..{sp['max']:.1%})" if sp and len(sp["values"]) > 1 else ""
            out.append(f"| {r['row']} | {r['accuracy_before']:.1%} | {r['accuracy_after']:.1%}{rng} | {fmt_i} | {fwd} | "
                       f"{ratio} | {ram} | {flash} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", default="rotate,sensor")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--lr-halve-every", type=int, default=300)
    ap.add_argument("--budgets", default="0.5,0.3,0.2,0.1")
    ap.add_argument("--min-step-budget", type=float, default=0.3, help="dynamic: smaller budgets go to the samples "
                    "with the largest loss (0: every sample gets a smaller step)")
    ap.add_argument("--last-k", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0x5EED1234, help="stochastic rounding seed")
    ap.add_argument("--seeds", type=int, default=3, help="stream orders to average accuracy over (instructions: "
                    "the first)")
    ap.add_argument("--qemu-steps", type=int, default=None, help="count instructions on the first N steps only")
    ap.add_argument("--no-qemu", action="store_true", help="accuracy only (the numpy twin)")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "out" / "bench_training")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "on_device_training.json")
    args = ap.parse_args()
    args.budgets = [float(b) for b in args.budgets.split(",") if b]
    t0 = time.perf_counter()
    fg, qg = digits_model(args.model_dir)
    target = get_target("cortex-m4")
    res = {"model": "digits_cnn (demo)", "target": target.to_json(), "lr": args.lr,
           "lr_halve_every": args.lr_halve_every, "min_step_budget": args.min_step_budget, "epochs": args.epochs,
           "seeds": args.seeds, "domains": []}
    with tempfile.TemporaryDirectory() as tmp:
        for dom in args.domains.split(","):
            res["domains"].append(run_domain(dom, args, fg, qg, Path(tmp), target))
    res["seconds"] = time.perf_counter() - t0
    md = markdown(res)
    print(md)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.json} ({res['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
