"""`mcuforge eenn`: augment a trained model with exits, search exits/decision/mapping, write the network."""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import McuforgeError
from .network import LinkModel


def _pct(v: float) -> str:
    return f"{v:.2f}%"


def run(model: str, data: str | None, out: Path | None, trials: int, storage: str | None, study: str | None,
        worker: bool, targets_text: str, max_loss: float, kinds_text: str | None, seed: int,
        console: Console, err_console: Console) -> dict | None:
    from ..outdir import staged_output_dir
    from ..study import pareto_plot, pareto_rows
    from .augment import augmented_for, load_backbone
    from .cost import ENERGY_MODEL, candidate_costs, devices, parse_targets
    from .decisions import KINDS
    from .search import SEARCH_KINDS, choose, evaluate, precompute, search, single_exit, to_network
    from .streams import make_stream, stream_for_data

    targets = parse_targets(targets_text)
    kinds = tuple(k.strip() for k in kinds_text.split(",")) if kinds_text else SEARCH_KINDS
    bad = [k for k in kinds if k not in KINDS or k == "none"]
    if bad or not kinds:
        raise McuforgeError(f"--kinds: unknown decision mechanism {', '.join(bad) or '(none)'}; "
                            f"choose from {', '.join(SEARCH_KINDS)}")
    if out is None and not (worker and storage):
        raise McuforgeError("give an output directory with -o (a --worker with --storage needs none)")
    default_file = Path(f"{out}.study.db") if out else Path("eenn.study.db")

    t0 = time.perf_counter()
    with err_console.status("preparing") as status:
        phase = lambda s: status.update(s)  # noqa: E731
        bb = load_backbone(model, data, on_phase=phase)
        stream_kind = stream_for_data(bb.data)
        aug = augmented_for(model, data, on_phase=phase)
        cache = Path(bb.source) / "eenn_candidates"
        phase("counting instructions of every layer on QEMU Cortex-M4")
        costs = candidate_costs(aug, cache)
        phase(f"exit outputs on the {stream_kind} streams (int8 reference)")
        val = precompute(aug, make_stream(stream_kind, "val", bb.preset, bb.seed), bb.spec, cache)
        test = precompute(aug, make_stream(stream_kind, "test", bb.preset, bb.seed), bb.spec, cache)
    t_prep = time.perf_counter() - t0
    link = LinkModel()
    base = single_exit(targets[0])
    base_val, base_test = evaluate(base, val, costs, link), evaluate(base, test, costs, link)
    enqueue = [{f"exit{k}": "none" for k in range(len(aug.cuts))}]  # the single exit, as a reference point
    res = search(aug, costs, val, trials, targets, kinds, link, storage, study, default_file, worker, seed,
                 enqueue=enqueue)
    if worker:
        console.print(f"[green]ran[/] {res.ran} trial(s) of study {res.study.study_name} in {res.seconds:.1f} s")
        return None
    cfg, info = choose(res.study, res.objectives, base_val["accuracy"], max_loss, base, val=val)
    r_val, r_test = evaluate(cfg, val, costs, link), evaluate(cfg, test, costs, link)
    rows = pareto_rows(res.study, res.objectives)
    summary = {
        "model": bb.name, "data": bb.data, "stream": stream_kind, "targets": targets, "kinds": list(kinds),
        "max_loss_points": max_loss, "chosen": cfg.to_json(), "chosen_describe": cfg.describe(), "choice": info,
        "validation": {"single_exit": base_val, "chosen": r_val}, "test": {"single_exit": base_test, "chosen": r_test},
        "search": {"study": res.study.study_name, "trials_run": res.ran, "search_s": res.seconds,
                   "prepare_s": t_prep},
        "energy_model": ENERGY_MODEL, "devices": {t: devices()[t].__dict__ for t in targets},
        "link": link.to_json(), "instruction_counts": "exact per-layer counts on QEMU Cortex-M4 (mcuforge bench)",
    }
    net = to_network(aug, cfg, link, costs, meta={"search": summary})
    with staged_output_dir(out) as stage:
        net.save(stage)
        (stage / "pareto.json").write_text(json.dumps(rows, indent=1, default=str))
        (stage / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        objs = [o.name for o in res.objectives]
        pareto_plot(res.study, res.objectives, stage / "pareto.png", x=objs[1], y="accuracy",
                    title=f"{bb.name} early exits on the {stream_kind} validation stream")

    cand = Table(title=f"{bb.name}: candidate exits (validation stream accuracy)", header_style="bold")
    for c in ("cut", "tensor", "shape", "backbone MACs before", *aug.meta.get("archs", [])):
        cand.add_column(c, justify="right" if c != "tensor" else "left")
    for k, c in enumerate(aug.cuts):
        accs = [_pct(100 * float((val.u[f"cut{k}/{a}"].argmax(1) == val.y).mean())) for a in aug.meta["archs"]]
        cand.add_row(str(k), c.tensor, "x".join(map(str, c.shape[1:])), f"{c.macs_before:,}", *accs)
    console.print(cand)
    pt = Table(title=f"Pareto front ({len(rows)} of {trials} trials, validation stream)", header_style="bold")
    for c in ("trial", *[o.name for o in res.objectives], "configuration"):
        pt.add_column(c, justify="left" if c == "configuration" else "right")
    for r in rows[:12]:
        pt.add_row(str(r["trial"]), *[f"{r[o.name]:,.2f}" for o in res.objectives], r.get("describe", ""))
    console.print(pt)
    t = Table(title=f"chosen: {cfg.describe()}", header_style="bold")
    for c in ("stream", "configuration", "accuracy", "instructions / inference", "MACs / inference", "latency ms",
              "energy uJ"):
        t.add_column(c, justify="left" if c in ("stream", "configuration") else "right")
    for split, a, b in (("validation", base_val, r_val), ("test", base_test, r_test)):
        for label, r in (("single exit", a), ("early exits", b)):
            t.add_row(split, label, _pct(r["accuracy"]), f"{r['instructions']:,.0f}", f"{r['macs']:,.0f}",
                      f"{r['latency_ms']:.3f}", f"{r['energy_uj']:.1f}")
    console.print(t)
    if info.get("trial") is None:
        console.print(f"no trial stays within {max_loss:g} points of the single exit on validation (at the 90% scene "
                      f"bootstrap bound): the single exit is kept")
    else:
        console.print(f"chosen: trial {info['trial']}, the cheapest within {max_loss:g} points of the single exit on "
                      f"validation; loss bound {info['loss_bound']['points']:.2f} points at the "
                      f"{info['loss_bound']['level']:.0%} quantile of a "
                      f"bootstrap over the stream's scenes")
    saving = 1 - r_test["instructions"] / base_test["instructions"]
    console.print(f"test stream: {saving:.1%} fewer instructions per inference than the single exit, "
                  f"accuracy {r_test['accuracy'] - base_test['accuracy']:+.2f} points. Instructions: exact per-layer "
                  f"counts on QEMU Cortex-M4; time/energy: {ENERGY_MODEL}.")
    console.print(f"[green]wrote[/] {out}/: eenn.json, segment*.mcf, head*.mcf, pareto.json, pareto.png, summary.json"
                  f"\nnext: mcuforge deploy {out} -o {out}/lib --target cortex-m4")
    return summary
