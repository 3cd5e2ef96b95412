"""`mcuforge demo`: the whole flow on built-in data, in seconds.

Trains a small CNN on sklearn's 8x8 digits, exports it with torch.export,
imports it, quantizes it to int8 on the training split, generates the C
library, compiles it with the host compiler, runs it over the whole test split
and compares float, int8 reference and C results.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table


def digits_split(seed: int = 0, test_fraction: float = 0.3):
    """sklearn digits as float32 N,1,8,8 in [0, 1], stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    return train_test_split(x, d.target.astype(np.int64), test_size=test_fraction, random_state=seed,
                            stratify=d.target)


def digits_cnn():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(32, 10),
    )


def train_classifier(model, x: np.ndarray, y: np.ndarray, epochs: int, seed: int, progress=None,
                     lr: float = 3e-3, batch: int = 64):
    """Cross-entropy training with the zoo's loop (mcuforge.zoo.trainer.fit)."""
    from .zoo.trainer import fit

    return fit(model, x, y, "ce", epochs, seed, lr=lr, batch=batch, progress=progress)


def run_on_cortex_m4(lib: Path, xq: np.ndarray, y_ref: np.ndarray, labels: np.ndarray) -> dict:
    """The whole test split on the emulated Cortex-M4 in one QEMU run, every inference's instructions counted."""
    from .errors import ToolchainError
    from .targets.bench import memory_breakdown, run_counted
    from .targets.table import get_target

    target = get_target("cortex-m4")
    t0 = time.perf_counter()
    try:
        run = run_counted(lib, target, [xq])
    except ToolchainError as exc:  # no cross compiler or QEMU: the host results stand alone
        return {"skipped": str(exc)}
    y = run.outputs[0]
    mem = memory_breakdown(run.firmware, run.report)
    instr = float(np.mean(run.per_sample))
    macs = run.report["totals"]["macs"]
    return {
        "target": target.name, "qemu_machine": target.machine.name, "clock_hz": target.clock_hz,
        "accuracy": float(np.mean(np.argmax(y, axis=-1) == labels)),
        "vs_reference_mismatches": int(np.count_nonzero(y != y_ref)),
        "instructions_per_inference": instr,
        "instructions_min": int(min(run.per_sample)), "instructions_max": int(max(run.per_sample)),
        "instructions_per_mac": instr / macs if macs else None,
        "estimated_ms": target.estimate_cycles(instr) / target.clock_hz * 1e3, "cpi": target.core.cpi,
        "flash_bytes": mem["flash"]["total"], "flash_model_bytes": mem["flash"]["model_total"],
        "ram_bytes": mem["ram"]["total"], "arena_bytes": mem["ram"]["arena"],
        "stack_inference_bytes": run.stats["stack_invoke"],
        "build_and_run_s": time.perf_counter() - t0,
    }


def run_demo(out: Path, epochs: int = 20, seed: int = 0, console: Console | None = None) -> dict:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import reference
    from .cli import layers_table, memory_table
    from .codegen.emit import write_library
    from .frontends import from_ir_layout, to_ir_layout
    from .frontends.torch import from_exported
    from .outdir import staged_output_dir
    from .quant.ptq import quantize
    from .targets.host import run_host

    console = console or Console()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    x_train, x_test, y_train, y_test = digits_split(seed)
    console.print(f"[bold]digits[/]: {len(x_train)} training and {len(x_test)} test images, 8x8, 10 classes")

    with staged_output_dir(out) as stage:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[info]}"), console=console, transient=True) as progress:
            task = progress.add_task("training", total=epochs, info="")
            model = train_classifier(digits_cnn(), x_train, y_train, epochs, seed,
                                     lambda e, loss: progress.update(task, completed=e, info=f"loss {loss:.3f}"))
        timings["train_s"] = time.perf_counter() - t0

        with torch.no_grad():
            logits_torch = model(torch.from_numpy(x_test)).numpy()
        ep = torch.export.export(model, (torch.from_numpy(x_train[:1]),))
        torch.export.save(ep, stage / "model.pt2")
        graph = from_exported(ep, name="digits_cnn")
        name = graph.inputs[0]

        # The IR's float semantics must reproduce torch before quantization means anything.
        logits_ir = from_ir_layout(graph, graph.outputs[0],
                                   reference.run(graph, [to_ir_layout(graph, name, x_test)], mode="float")[0])
        float_gap = float(np.abs(logits_ir - logits_torch).max())

        t1 = time.perf_counter()
        qgraph = quantize(graph, [to_ir_layout(graph, name, x_train)])
        lib = stage / "lib"
        lib.mkdir()
        # Generated for the Cortex-M4 (DSP kernels); the host build emulates the DSP intrinsics exactly.
        from .targets.table import get_target

        report = write_library(qgraph, lib, prefix="digits", target=get_target("cortex-m4"))
        timings["quantize_and_generate_s"] = time.perf_counter() - t1

        xq = qgraph.tensors[name].quant.quantize(to_ir_layout(qgraph, name, x_test))
        y_ref = reference.run(qgraph, [xq], mode="int")[0]
        t2 = time.perf_counter()
        y_c = run_host(lib, [xq])[0]
        timings["host_build_and_run_s"] = time.perf_counter() - t2
        mismatches = int(np.count_nonzero(y_ref != y_c))
        m4 = run_on_cortex_m4(lib, xq, y_ref, y_test)
        # the deployed model adapts on the device to rotated digits (mcuforge.train; docs/training.md)
        from .train.demo import adapt_on_device

        t3 = time.perf_counter()
        adaptation = adapt_on_device(stage / "train_lib", graph, qgraph, seed)
        timings["on_device_training_s"] = time.perf_counter() - t3

        acc = lambda logits: float(np.mean(np.argmax(logits, axis=-1) == y_test))  # noqa: E731
        summary = {
            "data": {"train": len(x_train), "test": len(x_test)},
            "float_accuracy": acc(logits_torch),
            "int8_reference_accuracy": acc(y_ref),
            "c_accuracy": acc(y_c),
            "c_vs_reference_mismatches": mismatches,
            "outputs_compared": int(y_ref.size),
            "torch_vs_ir_float_max_abs_diff": float_gap,
            "macs": report["totals"]["macs"],
            "params": report["totals"]["params"],
            "weight_bytes": report["totals"]["weight_bytes"],
            "const_bytes": report["totals"]["const_bytes"],
            "arena_bytes": report["memory"]["arena_bytes"],
            "timings": timings,
            "cortex_m4": m4,
            "on_device_training": adaptation,
        }
        np.save(stage / "test_inputs.npy", x_test)
        np.save(stage / "test_labels.npy", y_test)
        (stage / "summary.json").write_text(json.dumps(summary, indent=1))

    console.print(layers_table(report["layers"], "digits_cnn (int8)"))
    results = Table(title="results on the test split", header_style="bold")
    results.add_column("what")
    results.add_column("value", justify="right")
    results.add_row("float accuracy (torch)", f"{summary['float_accuracy']:.2%}")
    results.add_row("int8 reference accuracy (numpy)", f"{summary['int8_reference_accuracy']:.2%}")
    results.add_row("C accuracy (host gcc)", f"{summary['c_accuracy']:.2%}")
    results.add_row("C vs reference: differing outputs",
                    f"[{'green' if mismatches == 0 else 'red'}]{mismatches}[/] of {y_ref.size:,}")
    if "skipped" not in m4:
        bad = m4["vs_reference_mismatches"]
        results.add_row("C accuracy (Cortex-M4 firmware, QEMU)", f"{m4['accuracy']:.2%}")
        results.add_row("Cortex-M4 vs reference: differing outputs",
                        f"[{'green' if bad == 0 else 'red'}]{bad}[/] of {y_ref.size:,}")
    results.add_row("torch vs IR float: max |diff|", f"{float_gap:.2e}")
    console.print(results)
    console.print(memory_table(report))
    if "skipped" in m4:
        console.print(f"[yellow]Cortex-M4 run skipped:[/] {m4['skipped']}")
    else:
        cm = Table(title=f"on {m4['target']} (QEMU {m4['qemu_machine']}; `mcuforge bench` for per-layer counts)",
                   header_style="bold")
        cm.add_column("what")
        cm.add_column("value", justify="right")
        spread = ("" if m4["instructions_min"] == m4["instructions_max"]
                  else f" ({m4['instructions_min']:,} .. {m4['instructions_max']:,})")
        cm.add_row("instructions per inference (exact, mean over the test split)",
                   f"{m4['instructions_per_inference']:,.0f}{spread}")
        cm.add_row("instructions per MAC", f"{m4['instructions_per_mac']:.2f}")
        cm.add_row(f"estimated time at {m4['clock_hz'] / 1e6:g} MHz (CPI {m4['cpi']}, an estimate)",
                   f"{m4['estimated_ms']:.2f} ms")
        cm.add_row("flash: firmware total (model code + constants)",
                   f"{m4['flash_bytes']:,} B ({m4['flash_model_bytes']:,} B)")
        cm.add_row("RAM: firmware total (arena, stack used by one inference)",
                   f"{m4['ram_bytes']:,} B ({m4['arena_bytes']:,} B, {m4['stack_inference_bytes']:,} B)")
        console.print(cm)
    from .train.demo import adaptation_table

    console.print(adaptation_table(adaptation))
    console.print(f"[green]wrote[/] {out}/: model.pt2, lib/ (C library digits.h/.c, report.md), train_lib/ (the "
                  "library with digits_train_step), summary.json")
    if "cortex_m4_skipped" in adaptation:
        console.print(f"[yellow]on-device training ran on the host only:[/] {adaptation['cortex_m4_skipped']}")
    if mismatches or m4.get("vs_reference_mismatches"):
        from .errors import McuforgeError

        where = "host C" if mismatches else "the Cortex-M4 firmware"
        raise McuforgeError(f"{where} and the integer reference differ in "
                            f"{mismatches or m4['vs_reference_mismatches']} outputs")
    return summary
