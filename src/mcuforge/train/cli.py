"""`mcuforge deploy --train` options and `mcuforge train-on-device`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..errors import InputError
from .program import TrainConfig, resolve_trainable


def training_config(graph, trainable: str | None, budget: float | None, policy: str | None, lr: float,
                    momentum: float, rounding: str, loss: str | None, lr_halve_every: int, seed: int,
                    min_step_budget: float = 0.3) -> TrainConfig:
    """deploy's training options -> TrainConfig. --budget alone means the dynamic policy."""
    if policy is None:
        policy = "dynamic" if budget is not None else "full"
    if budget is not None and policy != "dynamic":
        raise InputError("--budget applies to the dynamic policy (--train-policy dynamic)")
    if loss is None:
        loss = "ce"
    cfg = TrainConfig(loss=loss, lr=lr, momentum=momentum, rounding=rounding, seed=seed, policy=policy,
                      budget=1.0 if budget is None else budget, trainable=resolve_trainable(graph, trainable),
                      lr_halve_every=lr_halve_every, min_step_budget=min_step_budget)
    cfg.validate()
    return cfg


def load_samples(graph, data: Path, labels: Path | None, what: str = "--data") -> tuple[np.ndarray, np.ndarray]:
    """(int8 inputs in the IR layout, labels) from an .npz (x, y) or an .npy of inputs plus --labels."""
    from ..runner import prepare_input

    if not data.is_file():
        raise InputError(f"{what} file '{data}' does not exist")
    try:
        if data.suffix == ".npz":
            with np.load(data, allow_pickle=False) as z:
                keys = set(z.files)
                xk = next((k for k in ("x", "inputs") if k in keys), None)
                yk = next((k for k in ("y", "labels", "targets") if k in keys), None)
                if xk is None or yk is None:
                    raise InputError(f"{what} '{data}' must hold arrays 'x' and 'y' (has {', '.join(sorted(keys))})")
                x, y = z[xk], z[yk]
        else:
            x = np.load(data, allow_pickle=False)
            if labels is None:
                raise InputError(f"{what} '{data}' is an .npy of inputs: give the labels with --labels Y.npy "
                                 "(or pass an .npz with arrays x and y)")
            if not labels.is_file():
                raise InputError(f"--labels file '{labels}' does not exist")
            y = np.load(labels, allow_pickle=False)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{what} '{data}' is not a readable numpy file ({exc})") from None
    if len(x) != len(y):
        raise InputError(f"{what}: {len(x)} inputs but {len(y)} labels")
    return prepare_input(graph, graph.inputs[0], x), y


def run_train_on_device(lib: Path, data: Path, labels: Path | None, target: str, epochs: int, every: int | None,
                        eval_data: Path | None, save_lib: Path | None, save_ir: Path | None, json_out: Path | None,
                        ram: str | None, flash: str | None, console: Console) -> dict:
    from ..ir.serialize import save_graph
    from ..runner import load_library
    from ..targets.table import is_target, unknown_target_message
    from .runner import apply_state, run_train_cortex_m, run_train_host, run_train_reference, train_report

    report = train_report(lib)
    graph = load_library(lib)
    tr = report["train"]
    if target not in ("reference", "host") and not is_target(target):
        raise InputError(unknown_target_message(target, ("reference", "host")))
    x, y = load_samples(graph, data, labels)
    if tr["loss"] == "ce":
        y = np.asarray(y).astype(np.int64)
    else:
        y = graph.tensors[graph.outputs[0]].quant.quantize(np.asarray(y, np.float32)) if y.dtype != np.int8 else y
    if epochs > 1:
        x, y = np.concatenate([x] * epochs), np.concatenate([y] * epochs)
    n = len(x)
    if n == 0:
        raise InputError("no training samples")
    every = every or max(1, n // 10)
    ev = load_samples(graph, eval_data, None, "--eval") if eval_data is not None else None

    with console.status(f"training {n} samples on {target} ..."):
        if target == "reference":
            run, _ = run_train_reference(lib, x, y, dump_every=every)
        elif target == "host":
            run = run_train_host(lib, x, y, dump_every=every)
        else:
            run = run_train_cortex_m(lib, x, y, target, dump_every=every, ram=ram, flash=flash)

    def evaluate(state) -> float | None:
        if ev is None or tr["loss"] != "ce":
            return None
        from .. import reference

        g = apply_state(graph, report, state) if state is not None else graph
        return float(np.mean(np.argmax(reference.run(g, [ev[0]])[0].reshape(len(ev[0]), -1), -1) == ev[1]))

    rows = []
    correct = (run.preds == y) if tr["loss"] == "ce" else None
    for d, state in enumerate(run.states):
        end = min((d + 1) * every, n)
        start = end - min(every, end)
        rows.append({"step": end, "train_accuracy_window": None if correct is None else float(correct[start:end].mean()),
                     "eval_accuracy": evaluate(state)})
    result = {"library": str(lib), "target": target, "samples": n, "policy": tr["policy"],
              "eval_accuracy_before": evaluate(None), "checkpoints": rows, "seconds": run.seconds,
              "memory_plan": tr["memory"]["ram"]}
    if run.instructions is not None:
        from ..targets.bench import memory_breakdown

        ins = np.asarray(run.instructions)
        mem = memory_breakdown(run.firmware, report)
        result["instructions_per_sample"] = {"mean": float(ins.mean()), "min": int(ins.min()), "max": int(ins.max())}
        result["ram"] = {"firmware_total": mem["ram"]["total"], "stack_train_step": run.stats["stack_step"],
                         "peak_used": mem["ram"]["total"] - mem["ram"]["stack_reserved"] + run.stats["stack_peak"]}
        result["flash"] = mem["flash"]["total"]

    table = Table(title=f"{report['model']}: on-device training ({tr['policy']}, {n} samples, {target})",
                  header_style="bold")
    for col in ("step", "accuracy on the last samples (before their step)", "eval accuracy"):
        table.add_column(col, justify="right")
    if result["eval_accuracy_before"] is not None:
        table.add_row("0", "", f"{result['eval_accuracy_before']:.2%}")
    for r in rows:
        table.add_row(str(r["step"]), "" if r["train_accuracy_window"] is None else f"{r['train_accuracy_window']:.2%}",
                      "" if r["eval_accuracy"] is None else f"{r['eval_accuracy']:.2%}")
    console.print(table)
    if run.instructions is not None:
        i = result["instructions_per_sample"]
        console.print(f"instructions per training sample (exact, QEMU): {i['mean']:,.0f} ({i['min']:,} .. {i['max']:,}); "
                      f"RAM: firmware {result['ram']['firmware_total']:,} B, training step stack "
                      f"{result['ram']['stack_train_step']:,} B; flash {result['flash']:,} B")
    console.print(f"training RAM plan: {tr['memory']['ram']['total_bytes']:,} B (arena {tr['memory']['ram']['arena_bytes']:,} B"
                  f", accumulators {tr['memory']['ram']['accumulator_bytes']:,} B, trainable weights "
                  f"{tr['memory']['ram']['weights_bytes']:,} B)")
    adapted = apply_state(graph, report, run.final)
    if save_ir is not None:
        save_graph(adapted, save_ir)
        console.print(f"[green]wrote[/] {save_ir} (the adapted int8 graph)")
    if save_lib is not None:
        from ..targets.table import target_from_json
        from .codegen import generate_training_library

        tgt = target_from_json(report.get("target"))
        generate_training_library(adapted, save_lib, TrainConfig.from_json(tr["config"]), prefix=report["prefix"],
                                  target=None if tgt.is_generic else tgt)
        console.print(f"[green]wrote[/] {save_lib}/ (the library with the adapted weights; it can keep training)")
    if json_out is not None:
        from ..outdir import write_json_file

        write_json_file(json_out, result)
    return result


RAM_LABELS = {
    "arena_bytes": "arena: activations kept for the backward pass, errors (int8); shared with inference",
    "accumulator_bytes": "gradient accumulators (int32)",
    "weights_bytes": "trainable weights (int8, RAM)",
    "biases_bytes": "trainable biases (int32, RAM)",
    "requant_shifts_bytes": "requantization shifts (RAM: they follow the weight scales)",
    "adapt_exponents_bytes": "weight-scale exponents and clip counters",
    "momentum_bytes": "momentum buffers",
    "scratch_bytes": "training scratch (gradient row, channel statistics, patch columns)",
    "plan_state_bytes": "dynamic plan state (importance estimates)",
    "kernel_scratch_bytes": "inference kernel scratch",
}


def policy_text(tr: dict) -> str:
    """What a training library updates per step, in words (report.json's train section)."""
    text = f"{tr['policy']} update of {len(tr['layers'])} layers"
    cfg = tr.get("config", {})
    if tr["policy"] == "dynamic" and cfg.get("budget") is not None:
        text += f", budget {cfg['budget']:g} of the backward MACs"
        if cfg["budget"] < cfg.get("min_step_budget", 0):
            text += (f" spent in loss-gated steps of {cfg['min_step_budget']:g} on the samples with the largest "
                     f"loss")
    return text


def training_memory_table(report: dict) -> Table:
    tr = report["train"]
    mem = tr["memory"]
    table = Table(title=f"training memory ({policy_text(tr)})", header_style="bold")
    table.add_column("RAM")
    table.add_column("bytes", justify="right")
    for k, label in RAM_LABELS.items():
        if mem["ram"].get(k):
            table.add_row(label, f"{mem['ram'][k]:,}")
    table.add_row("[bold]total (planned; plus stack)[/]", f"[bold]{mem['ram']['total_bytes']:,}[/]")
    table.add_row("naive layout (every activation, error and accumulator in its own buffer)",
                  f"{mem['naive_ram_bytes']:,}")
    table.add_row("flash: training constants + initial values of the RAM parameters",
                  f"{mem['flash']['training_constants_bytes']:,} + {mem['flash']['ram_initial_values_bytes']:,}")
    return table
