"""`mcuforge deploy/run/bench` on early-exit networks: the commands' work and their tables."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..errors import InputError
from ..targets.table import format_size, get_target
from .codegen import generate_eenn
from .network import EarlyExitNetwork
from .runner import load_eenn_report, load_network


def is_eenn_dir(path: Path) -> bool:
    return path.is_dir() and (path / "eenn.json").is_file()


def parts_table(report: dict, title: str) -> Table:
    table = Table(title=title, header_style="bold")
    for col, just in (("part", "left"), ("C prefix", "left"), ("MACs", "right"), ("arena B", "right"),
                      ("scratch B", "right"), ("constants B", "right")):
        table.add_column(col, justify=just)
    for p in report["eenn"]["parts"]:
        table.add_row(p["what"], p["prefix"], f"{p['macs']:,}", f"{p['arena_bytes']:,}", f"{p['scratch_bytes']:,}",
                      f"{p['const_bytes']:,}")
    return table


def memory_line(report: dict) -> str:
    m, t = report["memory"], report["totals"]
    tgt = report["target"]
    fits = ""
    if tgt["name"] != "generic":
        ram = m["arena_bytes"] + m["scratch_bytes"] + m["runtime_bytes"] + m["state_bytes"]
        fits = (f"; {ram / tgt['ram_bytes']:.1%} of {tgt['name']}'s {format_size(tgt['ram_bytes'])} RAM, "
                f"constants {t['const_bytes'] / tgt['flash_bytes']:.1%} of its flash, before code and stack")
    return (f"{report['name']} ({tgt['name']}): shared arena {m['arena_bytes']:,} B (largest part + cut tensor; "
            f"separate buffers would take {m['unplanned_bytes']:,} B), kernel scratch {m['scratch_bytes']:,} B, "
            f"runtime {m['runtime_bytes']} B, stream state {m['state_bytes']} B, constants {t['const_bytes']:,} B"
            + fits)


def deploy_eenn(model_dir: Path, out: Path, name: str, target: str | None, ram, flash, console: Console) -> dict:
    net = EarlyExitNetwork.load(model_dir)
    if target is None and (ram or flash):
        raise InputError("--ram and --flash describe a target: name it with --target (e.g. --target cortex-m4)")
    tgt = get_target(target, ram, flash) if target else None
    report = generate_eenn(net, out, name=name, target=tgt)
    d = net.decision
    console.print(f"early-exit network: {net.n_exits} exits, {len(net.classes) or '?'} classes, decision {d.kind} "
                  f"{d.thresholds}")
    if report["kind"] == "eenn":
        console.print(parts_table(report, f"{report['name']}: parts (one library, {report['target']['name']})"))
        console.print(memory_line(report))
        console.print(f"[green]wrote[/] {out}/ ({name}_eenn.h: {name}_invoke(state, input, &exit_taken); parts, "
                      "kernels, Makefile, CMakeLists.txt, report.md)")
        return report
    for dev in report["devices"]:
        sub = load_eenn_report(out / dev["dir"])
        console.print(parts_table(sub, f"device {dev['device']}: {dev['target']}, segments "
                                       f"{dev['segments'][0]}..{dev['segments'][-1]} ({out / dev['dir']})"))
        console.print(memory_line(sub))
    links = Table(title="links (bytes per forwarded inference)", header_style="bold")
    for col in ("link", "after segment", "forward B (header + cut)", "reply B", "time ms", "energy uJ"):
        links.add_column(col, justify="left" if col == "link" else "right")
    for ln in report["links"]:
        links.add_row(f"device {ln['from']} -> {ln['to']}", str(ln["after_segment"]), f"{ln['forward_bytes']:,}",
                      str(ln["reply_bytes"]), f"{ln['time_s'] * 1e3:.2f}", f"{ln['energy_j'] * 1e6:.2f}")
    console.print(links)
    console.print(f"[green]wrote[/] {out}/ (one library per device, report.json; protocol in the headers)")
    return report


def stream_input(lib: Path, x: np.ndarray) -> np.ndarray:
    from ..runner import prepare_input

    g = load_network(lib).segments[0]
    return prepare_input(g, g.inputs[0], x)


def run_eenn(lib: Path, x: np.ndarray, target: str, console: Console) -> np.ndarray:
    """The stream's (class, exit taken) per sample, as an (N, 2) int32 array."""
    from .runner import run_chain_host, run_stream

    report = load_eenn_report(lib)
    xq = stream_input(lib, x)
    if report["kind"] == "eenn-devices":
        if target != "host":
            raise InputError("a multi-device deployment runs chained on the host (--target host); measure each "
                             "device on its emulator with `mcuforge bench`")
        r = run_chain_host(lib, xq)
        pairs = np.stack([r.cls, r.exits], axis=1).astype(np.int32)
        per_link = r.link_bytes.mean(axis=0)
        console.print("bytes per inference over the links (mean): " +
                      ", ".join(f"device {i} -> {i + 1}: {b:,.1f}" for i, b in enumerate(per_link)))
    else:
        r = run_stream(lib, xq, target)
        pairs = np.stack([r.cls, r.exits], axis=1).astype(np.int32)
    counts = Counter(pairs[:, 1].tolist())
    console.print(f"{len(pairs)} samples; exits taken: " +
                  ", ".join(f"exit {k}: {counts.get(k, 0)}" for k in range(int(report.get('n_exits') or
                                                                                report['eenn']['n_exits']))))
    return pairs


def bench_eenn(lib: Path, target: str | None, ram, flash, x: np.ndarray | None, samples: int, json_out: Path | None,
               console: Console) -> dict:
    from ..targets.cortex_m import resolve_target
    from .measure import measure_exit_costs, measure_library

    report = load_eenn_report(lib)
    if report["kind"] == "eenn-devices":
        if target or ram or flash or x is not None:
            raise InputError("a multi-device deployment is measured on each device's own target: leave out "
                             "--target, --ram, --flash and --input")
        result = measure_exit_costs(lib)
        for dev in result["devices"]:
            if dev.get("parts"):
                console.print(_parts_costs_table(dev, f"device {dev['device']} on {dev['target']['name']}"))
            else:
                console.print(f"device {dev['device']} ({dev['target']}): {dev['note']}")
    else:
        tgt = resolve_target(report, target, ram, flash)
        xq = stream_input(lib, x) if x is not None else None
        result = measure_library(lib, tgt, xq, samples)
        console.print(_parts_costs_table(result, f"{report['name']} on {tgt.name}"))
        exits = Table(title="stop at exit k, end to end (exact instructions)", header_style="bold")
        for col in ("exit", "MACs", "instructions", "of which decision", f"time at {tgt.clock_hz / 1e6:g} MHz",
                    "stack B"):
            exits.add_column(col, justify="right")
        for e in result["exits"]:
            exits.add_row(str(e["exit"]), f"{e['macs']:,}", f"{e['instructions']:,.0f}",
                          f"{e['decision_overhead']:,.0f}", f"{e['time_ms']:.3f} ms", str(e["stack_bytes"]))
        console.print(exits)
    if json_out is not None:
        from ..outdir import write_json_file

        write_json_file(json_out, result)
        console.print(f"[green]wrote[/] {json_out}")
    return result


def _parts_costs_table(result: dict, title: str) -> Table:
    table = Table(title=f"{title}: instructions per part (exact, QEMU)", header_style="bold")
    for col in ("part", "MACs", "instructions", "per MAC"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for p in result["parts"]:
        table.add_row(p["part"], f"{p['macs']:,}", f"{p['instructions']:,.0f}",
                      f"{p['per_mac']:.2f}" if p["per_mac"] else "")
    return table
