"""Compression benchmark: XAI-guided vs magnitude pruning, weight sharing and mixed precision, and
`mcuforge compress`'s Pareto fronts on Cortex-M4.

    .venv/bin/python benchmarks/compression.py [--models ds_cnn,digits_cnn] [--reuse]
        [--finetune-epochs 2] [--json benchmarks/results/compression.json]

1. criteria: every prunable layer loses 30 / 50 / 70 % of its output channels, ranked by L1 magnitude,
   Taylor (|activation x gradient|) or DeepLIFT relevance (captum LayerDeepLift); test accuracy of the
   float model without fine-tuning and after a short fine-tune (same seed, same epochs for all);
2. weight storage (compress.storage, the int8 reference on the whole test split): int8; int4; 16- and
   4-entry codebooks by plain k-means and by relevance-weighted k-means (sample weight = the output
   channel's DeepLIFT relevance); mixed precision by sensitivity (the most sensitive prunable layer
   and the classifier at 8 bits, the others at 4); flash of the conv/fc weights (portable kernels);
3. `mcuforge compress` on Cortex-M4 with an instruction budget of half the unpruned model's: the Pareto
   front (validation metric, estimated instructions and flash) and the chosen model MEASURED on QEMU
   (instructions per inference, flash, RAM, int8 test accuracy from the firmware's outputs).

Models are the zoo's, trained with `mcuforge train MODEL --preset small` into out/compress/MODEL unless
there. --reuse takes a finished `mcuforge compress` run from out/compress/MODEL_m4 instead of running it.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mcuforge import zoo  # noqa: E402
from mcuforge.compress.importance import CRITERIA, channel_importance  # noqa: E402
from mcuforge.compress.prune import prune_structured  # noqa: E402
from mcuforge.compress.search import Budget, load_problem, run_compress  # noqa: E402

SPARSITIES = (0.3, 0.5, 0.7)


def trained(model: str, base: Path, console: Console) -> Path:
    out = base / model
    if not (out / "model.pt").is_file():
        console.print(f"training {model} (small preset) into {out}")
        zoo.train(model, preset="small", out=out)
    return out


def criteria_comparison(problem, finetune_epochs: int, seed: int = 0) -> list[dict]:
    x, y, _ = problem.data["train"]
    idx = np.sort(np.random.default_rng(seed).choice(len(x), min(256, len(x)), replace=False))
    rows = []
    for crit in CRITERIA:
        t0 = time.perf_counter()
        scores = channel_importance(problem.model, problem.layers, crit, x[idx], y[idx], problem.task)
        t_score = time.perf_counter() - t0
        for s in SPARSITIES:
            pruned = prune_structured(problem.model, problem.example, {n: s for n in problem.layers}, scores)
            before = problem.metric_value(pruned, "test")
            problem.finetune(pruned, finetune_epochs, seed)
            rows.append({"criterion": crit, "sparsity": s, "no_finetune": before,
                         "finetuned": problem.metric_value(pruned, "test"), "score_s": t_score,
                         "params": int(sum(p.numel() for p in pruned.parameters()))})
    return rows


def storage_variants(problem, sens_layers: dict | None, seed: int = 0) -> list[dict]:
    """int8 vs int4 vs weight sharing (plain / relevance-weighted) vs mixed precision, on the reference."""
    from mcuforge import reference
    from mcuforge.compress.cost import profile
    from mcuforge.compress.storage import (float_weights_of, quantize_weights_to_bits, share_weights,
                                           weight_flash_bytes, weight_layers)
    from mcuforge.frontends import from_ir_layout, to_ir_layout
    from mcuforge.frontends.torch import from_torch
    from mcuforge.quant.ptq import quantize
    from mcuforge.compress.search import calibration_set
    from mcuforge.zoo.trainer import evaluate

    fgraph = from_torch(problem.model, (problem.example,), name=problem.name)
    name = fgraph.inputs[0]
    q = quantize(fgraph, [to_ir_layout(fgraph, name, calibration_set(problem))], method="minmax")
    nodes = [n.name for n in weight_layers(q) if n.op in ("conv2d", "fully_connected")]
    torch_layers = [p.name for p in profile(problem.model, problem.example)]
    if len(nodes) != len(torch_layers):
        raise SystemExit(f"{problem.name}: {len(nodes)} IR weight layers, {len(torch_layers)} torch layers")
    to_ir = dict(zip(torch_layers, nodes))
    x, y, groups = problem.data["test"]
    xq = q.tensors[name].quant.quantize(to_ir_layout(q, name, x))

    def accuracy(g):
        out = g.outputs[0]
        yq = np.concatenate([reference.run(g, [xq[i:i + 128]], mode="int")[0] for i in range(0, len(xq), 128)])
        return float(evaluate(problem.task, from_ir_layout(g, out, g.tensors[out].quant.dequantize(yq)), x, y,
                              problem.meta, groups)[problem.metric])

    xs, ys, _ = problem.data["train"]
    idx = np.sort(np.random.default_rng(seed).choice(len(xs), min(256, len(xs)), replace=False))
    rel_ch = channel_importance(problem.model, problem.layers, "deeplift", xs[idx], ys[idx], problem.task)
    relevance = {}
    for tname, arr in rel_ch.items():
        node = next(n for n in q.nodes if n.name == to_ir[tname])
        shape = q.tensors[node.inputs[1]].shape
        # every weight of an output channel gets the channel's relevance (normalized to mean 1)
        rel = np.asarray(arr, np.float64) / max(float(np.mean(arr)), 1e-12)
        relevance[to_ir[tname]] = np.broadcast_to(rel.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()
    all_k = lambda k: {n: k for n in nodes}  # noqa: E731
    floats = float_weights_of(fgraph)
    variants = [("int8", q),
                ("int4 (all layers)", quantize_weights_to_bits(q, all_k(4), floats)),
                ("codebook 16, k-means", share_weights(q, all_k(16), seed=seed)),
                ("codebook 16, relevance-weighted", share_weights(q, all_k(16), relevance, seed=seed)),
                ("codebook 4, k-means", share_weights(q, all_k(4), seed=seed)),
                ("codebook 4, relevance-weighted", share_weights(q, all_k(4), relevance, seed=seed))]
    if sens_layers:
        most = max(sens_layers, key=lambda n: sens_layers[n]["sensitivity"])
        bits = {to_ir[t]: 4 for t in problem.layers if t != most}
        variants.append((f"mixed: 8 bits for {most} and the classifier, 4 for the rest",
                         quantize_weights_to_bits(q, bits, floats)))
    base_flash = sum(weight_flash_bytes(q).values())
    rows = []
    for label, g in variants:
        flash = sum(weight_flash_bytes(g).values())
        rows.append({"variant": label, "weight_flash": int(flash), "ratio": base_flash / flash, "int8_ref": accuracy(g)})
    return rows


def compress_run(model_dir: Path, out: Path, reuse: bool, trials: int, finetune_epochs: int,
                 final_epochs: int, budget_fraction: float, console: Console) -> dict:
    if reuse and (out / "report.json").is_file():
        return json.loads((out / "report.json").read_text())
    import tempfile

    from mcuforge.compress.search import calibration_set, deploy_and_measure as measure
    from mcuforge.targets.table import get_target

    # the budget: a fraction of the unpruned model's instructions, measured here first
    problem = load_problem(str(model_dir))

    with tempfile.TemporaryDirectory() as tmp:
        base = measure(problem, problem.model, get_target("cortex-m4"), Path(tmp) / "lib", calibration_set(problem))
    budget = int(base["instructions"] * budget_fraction)
    console.print(f"{problem.name}: unpruned {base['instructions']:,.0f} instructions; budget {budget:,}")
    return run_compress(str(model_dir), "cortex-m4", out, budget=Budget(instructions=budget), trials=trials,
                        finetune_epochs=finetune_epochs, final_epochs=final_epochs,
                        say=lambda s: console.print(f"  {s}"), show_progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="ds_cnn,digits_cnn")
    ap.add_argument("--dir", default=str(ROOT / "out" / "compress"))
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--final-epochs", type=int, default=10)
    ap.add_argument("--budget-fraction", default="ds_cnn=0.47,digits_cnn=0.7",
                    help="instruction budget as a fraction of the unpruned model's, per model")
    ap.add_argument("--reuse", action="store_true", help="reuse finished compress runs in DIR/MODEL_m4")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: criteria,storage,compress")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "compression.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    console = Console(width=140)
    base_dir = Path(args.dir)
    skip = set(filter(None, args.skip.split(",")))
    fractions = {k: float(v) for k, v in (kv.split("=") for kv in args.budget_fraction.split(",") if kv)}
    results = {"machine": platform.platform(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "models": {}}
    for model in args.models.split(","):
        t0 = time.perf_counter()
        model_dir = trained(model, base_dir, console)
        problem = load_problem(str(model_dir))
        res = {"metric": problem.metric, "base_test": problem.metric_value(problem.model, "test"),
               "test_samples": int(len(problem.data["test"][0]))}
        if "criteria" not in skip:
            res["criteria"] = criteria_comparison(problem, args.finetune_epochs)
            t = Table(title=f"{model}: test {problem.metric} with every prunable layer pruned (unpruned "
                            f"{res['base_test']:.2%}; fine-tune {args.finetune_epochs} epochs)", header_style="bold")
            for c in ("criterion", "sparsity", "no fine-tune", "fine-tuned"):
                t.add_column(c, justify="left" if c == "criterion" else "right")
            for r in res["criteria"]:
                t.add_row(r["criterion"], f"{r['sparsity']:.0%}", f"{r['no_finetune']:.2%}", f"{r['finetuned']:.2%}")
            console.print(t)
        if "compress" not in skip:
            rep = compress_run(model_dir, base_dir / f"{model}_m4", args.reuse, args.trials, args.finetune_epochs,
                               args.final_epochs, fractions.get(model, 0.5), console)
            res["compress"] = {k: rep[k] for k in ("budget", "chosen_trial", "chosen_params", "chosen_estimate",
                                                   "base", "compressed", "speedup", "flash_ratio", "metric_change",
                                                   "budget_met", "pareto", "trials_finished", "attempts")
                               if k in rep}
            b, c = rep["base"], rep["compressed"]
            t = Table(title=f"{model}: mcuforge compress on cortex-m4, budget {rep['budget']['instructions']:,} "
                            f"instructions ({rep['trials_finished']} trials)", header_style="bold")
            for col in ("", "unpruned", "compressed", "ratio"):
                t.add_column(col, justify="right")
            t.add_row("instructions (QEMU, exact)", f"{b['instructions']:,.0f}", f"{c['instructions']:,.0f}",
                      f"{rep['speedup']:.2f}x")
            t.add_row("flash", f"{b['flash']:,}", f"{c['flash']:,}", f"{rep['flash_ratio']:.2f}x")
            t.add_row("RAM", f"{b['ram']:,}", f"{c['ram']:,}", "")
            t.add_row(f"int8 test {problem.metric}", f"{b['int8']:.2%}", f"{c['int8']:.2%}",
                      f"{(c['int8'] - b['int8']) * 100:+.2f} pt")
            t.add_row("mismatches vs reference", str(b["reference_mismatches"]), str(c["reference_mismatches"]), "")
            console.print(t)
            p = Table(title=f"{model}: Pareto front (validation metric; estimated costs)", header_style="bold")
            for col in ("trial", problem.metric, "instructions", "flash", "criterion", "alpha"):
                p.add_column(col, justify="right")
            for r in rep["pareto"]:
                p.add_row(str(r["trial"]), f"{r[problem.metric]:.2%}", f"{r['instructions']:,.0f}",
                          f"{r['flash']:,.0f}", r["params"]["criterion"], f"{r['params']['alpha']:.3f}")
            console.print(p)
        if "storage" not in skip:
            sens = None
            rep_path = base_dir / f"{model}_m4" / "sensitivity.json"
            if rep_path.is_file():
                sens = json.loads(rep_path.read_text())["layers"]
            res["storage"] = storage_variants(problem, sens)
            t = Table(title=f"{model}: weight storage (int8 reference, test split)", header_style="bold")
            for col in ("variant", "weight flash B", "vs int8", f"int8 ref {problem.metric}"):
                t.add_column(col, justify="left" if col == "variant" else "right")
            for r in res["storage"]:
                t.add_row(r["variant"], f"{r['weight_flash']:,}", f"{r['ratio']:.2f}x", f"{r['int8_ref']:.2%}")
            console.print(t)
        res["wall_s"] = time.perf_counter() - t0
        results["models"][model] = res
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
