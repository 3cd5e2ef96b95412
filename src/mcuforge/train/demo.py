"""The demo's last act: the deployed digits model adapts on the (emulated) device to rotated digits."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.table import Table

from ..ir.graph import Graph

DEMO_DOMAIN = "rotate"
DEMO_SAMPLES = 600
DEMO_POLICIES = (("full update", dict(policy="full")), ("dynamic partial, budget 0.3", dict(policy="dynamic", budget=0.3)))


def adapt_on_device(out: Path, float_graph: Graph, qgraph: Graph, seed: int = 0, lr: float = 0.01,
                    lr_halve_every: int = 200) -> dict:
    """For each policy: deploy `qgraph` with a training step for the Cortex-M4, stream DEMO_SAMPLES rotated
    digits through it on QEMU (host C only, without the ARM toolchain) and check host C == firmware."""
    from ..errors import McuforgeError, ToolchainError
    from ..targets.table import get_target
    from .codegen import generate_training_library
    from .program import TrainConfig
    from .runner import apply_state, run_train_cortex_m, run_train_host
    from .scenario import build_scenario

    sc = build_scenario(float_graph, qgraph, DEMO_DOMAIN, epochs=1, seed=seed, samples=DEMO_SAMPLES)
    target = get_target("cortex-m4")
    x, y = sc.quantize(sc.x_stream), sc.y_stream
    res = {"domain": DEMO_DOMAIN, "samples": len(x), "lr": lr, "accuracy_before": sc.accuracy(qgraph), "runs": []}
    for k, (name, kw) in enumerate(DEMO_POLICIES):
        t0 = time.perf_counter()
        lib = Path(out) / ("train_lib" if k == 0 else f"train_lib_{kw['policy']}")
        report = generate_training_library(qgraph, lib, TrainConfig(lr=lr, lr_halve_every=lr_halve_every, **kw),
                                           prefix="digits", target=target)
        host = run_train_host(lib, x, y)
        mem = report["train"]["memory"]
        run = {"name": name, **kw, "library": lib.name, "ram_plan_bytes": mem["ram"]["total_bytes"],
               "naive_ram_bytes": mem["naive_ram_bytes"]}
        try:
            m4 = run_train_cortex_m(lib, x, y, target)
        except ToolchainError as exc:
            m4 = None
            res["cortex_m4_skipped"] = str(exc)
        final = (m4 or host).final
        run["accuracy_after"] = sc.accuracy(apply_state(qgraph, report, final))
        if m4 is not None:
            if not all(a.equal(b) for a, b in zip(host.final, m4.final)):
                raise McuforgeError(f"on-device training ({name}): the Cortex-M4 firmware and host C ended with "
                                    "different weights")
            ins = np.asarray(m4.instructions, np.float64)
            run.update({"instructions_per_sample": float(ins.mean()), "instructions_min": int(ins.min()),
                        "instructions_max": int(ins.max()), "stack_train_step_bytes": m4.stats["stack_step"],
                        "estimated_ms_per_sample": target.estimate_cycles(float(ins.mean())) / target.clock_hz * 1e3,
                        "peak_ram_bytes": mem["ram"]["total_bytes"] + m4.stats["stack_step"]})
        run["seconds"] = time.perf_counter() - t0
        res["runs"].append(run)
    return res


def adaptation_table(res: dict) -> Table:
    t = Table(title=f"on-device adaptation to {res['domain']}d digits: {res['samples']} samples, one fully "
                    f"quantized SGD step each, Cortex-M4 (QEMU)", header_style="bold")
    t.add_column("what")
    for r in res["runs"]:
        t.add_column(r["name"], justify="right")
    runs = res["runs"]
    t.add_row("accuracy on rotated test digits: before -> after",
              *[f"{res['accuracy_before']:.1%} -> {r['accuracy_after']:.1%}" for r in runs])
    if all("instructions_per_sample" in r for r in runs):
        t.add_row("instructions per training sample (exact)", *[f"{r['instructions_per_sample']:,.0f}" for r in runs])
        t.add_row("estimated time per sample at 120 MHz", *[f"{r['estimated_ms_per_sample']:.1f} ms" for r in runs])
        t.add_row("training RAM: planned + step stack", *[f"{r['peak_ram_bytes']:,} B" for r in runs])
        t.add_row("firmware vs host C: final weights", *["[green]identical[/]" for _ in runs])
    else:
        t.add_row("training RAM (planned)", *[f"{r['ram_plan_bytes']:,} B" for r in runs])
    return t
