"""Zoo benchmark: train every model on its data set, deploy it, and report accuracy and costs.

    .venv/bin/python benchmarks/zoo.py [--preset tiny|small|full] [--models sinc_kws,ds_cnn]
                                       [--epochs N] [--work out/bench-zoo] [--json benchmarks/results/zoo.json]

Per model/data pair: float and int8 test metric (accuracy; MAE in deg C for regression;
AUC for the autoencoder), parameters, MACs, flash (report.json const_bytes), arena,
training wall time, and whether host C equals the integer reference on a batch.
Results are merged into the JSON file by (model, data, preset), so runs of subsets add up.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mcuforge import zoo
from mcuforge.zoo.trainer import PRIMARY

ROOT = Path(__file__).resolve().parent


def run_one(model: str, data: str | None, preset: str, epochs: int | None, work: Path, seed: int,
            console: Console, reuse: bool = False) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out = work / f"{model}-{preset}"
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=True) as progress:
        task = progress.add_task(model, total=None, info="")
        if not (reuse and (out / "model.pt2").is_file()):
            zoo.train(model, data=data, preset=preset, out=out, epochs=epochs, seed=seed,
                      on_phase=lambda s: progress.update(task, description=f"{model}: {s}", total=None, info=""),
                      on_step=lambda s, t, loss: progress.update(task, total=t, completed=s,
                                                                 info=f"loss {loss:.4f}"))
        progress.update(task, description=f"{model}: deploying and evaluating int8", total=None, info="")
        m = zoo.deploy_and_evaluate(out, host_samples=32)
    key = PRIMARY[m["task"]]
    return {
        "model": model, "data": m["data"], "preset": preset, "task": m["task"], "metric": key,
        "float": m["float"]["test"].get(key), "int8": m["int8"]["test"].get(key),
        "float_test": m["float"]["test"], "int8_test": m["int8"]["test"], "float_val": m["float"].get("val"),
        "float_other_splits": {k: v for k, v in m["float"].items() if k not in ("test", "val")},
        "params": m["params"], "macs": m["deployed"]["macs"], "flash_bytes": m["deployed"]["const_bytes"],
        "arena_bytes": m["deployed"]["arena_bytes"], "train_s": round(m["timings"]["train_s"], 1),
        "epochs": m["epochs"], "samples": m["samples"],
        "c_vs_reference_mismatches": m["int8"]["c_vs_reference_mismatches"],
    }


def _fmt(metric: str, v) -> str:
    if v is None:
        return "-"
    return f"{v:.2%}" if metric in ("accuracy", "auc") else f"{v:.2f} °C"


def table(rows: list[dict]) -> Table:
    t = Table(title="mcuforge zoo (host-trained float vs int8 numpy reference; C == reference checked)",
              header_style="bold")
    for c, j in (("model", "left"), ("data", "left"), ("preset", "left"), ("metric", "left"), ("float", "right"),
                 ("int8", "right"), ("params", "right"), ("MACs", "right"), ("flash B", "right"),
                 ("arena B", "right"), ("train s", "right"), ("C==ref", "center")):
        t.add_column(c, justify=j)
    for r in rows:
        t.add_row(r["model"], r["data"], r["preset"], r["metric"] + (" (MAE)" if r["metric"] == "mae" else ""),
                  _fmt(r["metric"], r["float"]), _fmt(r["metric"], r["int8"]), f"{r['params']:,}",
                  f"{r['macs']:,}", f"{r['flash_bytes']:,}", f"{r['arena_bytes']:,}", f"{r['train_s']:.0f}",
                  "yes" if r["c_vs_reference_mismatches"] == 0 else "[red]NO[/]")
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "full"])
    ap.add_argument("--models", default=",".join(n for n in zoo.names() if n != "digits_cnn"),
                    help="comma-separated zoo models (default: all but digits_cnn)")
    ap.add_argument("--data", default=None, help="data set for all models (default: each model's)")
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("out/bench-zoo"), help="training directories")
    ap.add_argument("--json", type=Path, default=ROOT / "results" / "zoo.json")
    ap.add_argument("--reuse", action="store_true", help="deploy and evaluate models already trained in --work")
    args = ap.parse_args(argv)
    console = Console(width=None if Console().is_terminal else 160)
    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        t0 = time.perf_counter()
        rows.append(run_one(model, args.data, args.preset, args.epochs, args.work, args.seed, console,
                            args.reuse))
        console.print(f"{model}: {_fmt(rows[-1]['metric'], rows[-1]['float'])} float, "
                      f"{_fmt(rows[-1]['metric'], rows[-1]['int8'])} int8 ({time.perf_counter() - t0:.0f} s)")
    console.print(table(rows))
    old = json.loads(args.json.read_text()) if args.json.is_file() else {"results": []}
    keyf = lambda r: (r["model"], r["data"], r["preset"])  # noqa: E731
    merged = {keyf(r): r for r in old.get("results", [])}
    merged.update({keyf(r): r for r in rows})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": f"{platform.machine()}, {platform.python_version()}",
                                     "results": sorted(merged.values(), key=keyf)}, indent=1) + "\n")
    console.print(f"wrote {args.json}")
    return 1 if any(r["c_vs_reference_mismatches"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
