"""`mcuforge compress`: rich output around compress.search.run_compress."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table


def _fmt(v, metric: str) -> str:
    return f"{v:.2%}" if metric in ("accuracy", "auc") else f"{v:.4g}"


def pareto_table(result: dict) -> Table:
    m = result["metric"]
    t = Table(title=f"Pareto front ({result['trials_finished']} trials; validation {m}, estimated costs)",
              header_style="bold")
    for col, just in (("trial", "right"), (m, "right"), ("instructions", "right"), ("flash B", "right"),
                      ("RAM B", "right"), ("criterion", "left"), ("alpha", "right"), ("weights", "left"),
                      ("meets budget", "left")):
        t.add_column(col, justify=just)
    for r in result["pareto"]:
        mark = " *" if r["trial"] == result["chosen_trial"] else ""
        t.add_row(f"{r['trial']}{mark}", _fmt(r[m], m), f"{r['instructions']:,.0f}", f"{r['flash']:,.0f}",
                  f"{r.get('ram', 0):,}", r["params"]["criterion"], f"{r['params']['alpha']:.3f}",
                  r.get("weight_format", "int8"), "yes" if r.get("feasible") else "no")
    return t


def sensitivity_table(setup_sens: dict, metric: str) -> Table:
    t = Table(title=f"layer sensitivity (each layer pruned alone, no fine-tuning; threshold "
                    f"{_fmt(setup_sens['threshold'], metric)})", header_style="bold")
    for col in ("layer", "channels", "sensitivity", "largest rate above threshold"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for n, v in setup_sens["layers"].items():
        t.add_row(n, str(v["channels"]), f"{v['sensitivity']:.3f}", f"{v['max_rate']:.1f}")
    return t


def result_table(result: dict) -> Table:
    b, c, m = result["base"], result["compressed"], result["metric"]
    t = Table(title=f"{result['model']} on {result['target']}: measured on QEMU (test split, {c['samples']} samples)",
              header_style="bold")
    for col in ("what", "unpruned", "compressed", "ratio"):
        t.add_column(col, justify="left" if col == "what" else "right")
    t.add_row("instructions per inference (exact)", f"{b['instructions']:,.0f}", f"{c['instructions']:,.0f}",
              f"{result['speedup']:.2f}x")
    t.add_row("MACs", f"{b['macs']:,}", f"{c['macs']:,}", f"{b['macs'] / max(c['macs'], 1):.2f}x")
    t.add_row("flash (firmware total)", f"{b['flash']:,} B", f"{c['flash']:,} B", f"{result['flash_ratio']:.2f}x")
    t.add_row("RAM (firmware total)", f"{b['ram']:,} B", f"{c['ram']:,} B", f"{b['ram'] / max(c['ram'], 1):.2f}x")
    t.add_row(f"int8 {m} (firmware outputs)", _fmt(b["int8"], m), _fmt(c["int8"], m),
              f"{(c['int8'] - b['int8']) * (100 if m in ('accuracy', 'auc') else 1):+.2f}"
              + (" pt" if m in ("accuracy", "auc") else ""))
    t.add_row(f"float {m}", _fmt(b["float"], m), _fmt(c["float"], m), "")
    t.add_row("outputs != integer reference", str(b["reference_mismatches"]), str(c["reference_mismatches"]), "")
    return t


def run(model: str, data, target: str, out: Path | None, budget, trials: int, storage, study, worker: bool,
        criterion, finetune_epochs: int, final_epochs: int, tolerance: float, seed: int,
        console: Console, err_console: Console, weight_formats: tuple[str, ...] = ("int8",)) -> dict:
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .search import run_compress

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task("preparing", total=None)

        def say(text: str) -> None:
            bar.update(task, description=text, total=None, completed=0)

        def progress(done: int, total: int) -> None:
            bar.update(task, total=total, completed=done)

        result = run_compress(model, target, out, data=data, budget=budget, trials=trials, storage=storage,
                              study_name=study, worker=worker, criterion=criterion, finetune_epochs=finetune_epochs,
                              final_epochs=final_epochs, tolerance=tolerance, seed=seed, say=say, progress=progress,
                              weight_formats=weight_formats)
    if worker:
        console.print(f"worker {result['worker']}: ran {result['ran']} trials; study '{result['study']}' has "
                      f"{result['finished']} finished trials")
        return result
    sens = json.loads((out / "sensitivity.json").read_text())
    console.print(sensitivity_table(sens, result["metric"]))
    console.print(pareto_table(result))
    console.print(result_table(result))
    note = "[green]meets the budget[/]" if result["budget_met"] else "[bold yellow]misses the budget[/]"
    console.print(f"chosen: trial {result['chosen_trial']} ({note}, measured); study '{result['study']}' at "
                  f"{result['storage']}")
    console.print(f"[green]wrote[/] {out}/: lib/ (deployed for {result['target']}), model.pt2, calib.npy, "
                  f"report.md, report.json, sensitivity.png, pareto.png, pareto.json")
    if not result["budget_met"]:
        from . import CompressError

        raise CompressError("the chosen model, measured on QEMU, misses the budget that its estimate met: "
                            "tighten the budget a little and resume (--study)")
    return result
