"""`mcuforge compress`: shrink a trained zoo model until it meets a budget on a named target.

The flow (one leader process, any number of ``--worker`` processes on the same study):

1. set-up (leader, once per study; stored in the study so that workers need no QEMU):
   channel importances by every criterion, the layer-wise sensitivity analysis, the unpruned
   model deployed for the target and measured on QEMU (instructions per layer, flash, RAM, int8
   metric), the cost model derived from it, and the smallest global pruning strength whose
   estimate meets the budget (an error if even the strongest pruning cannot);
2. search (Optuna, multi-objective: task metric vs estimated instructions vs estimated flash):
   a trial picks the criterion, the global strength alpha and small per-layer offsets; per-layer
   rates are alpha x (1 - sensitivity) (normalized) + offset; the model is pruned structurally,
   fine-tuned briefly, scored on the validation split and costed by the cost model. The first
   trial of a new study is plain global weighted pruning at the smallest budget-meeting alpha;
3. finish (leader): the best trial that meets the budgets (estimated) and --min-accuracy
   (validation) is pruned again, fine-tuned longer, exported, quantized, deployed for the target
   and MEASURED on QEMU over the whole test split (instructions, flash, RAM, int8 metric; outputs
   compared with the integer reference); the report gives before and after.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import CompressError
from .cost import CostModel, profile
from .importance import CRITERIA, channel_importance, prunable_layers
from .prune import channel_counts, prune_structured
from .sensitivity import analyse, global_rates
from .weights import apply_to_graph, index_bits, simulate

SETUP_ATTR = "compress_setup"
OFFSET = 0.15        # per-layer rate offsets the search may add to the sensitivity-driven rates
MAX_RATE = 0.9


@dataclass
class Budget:
    instructions: int | None = None
    flash: int | None = None
    ram: int | None = None
    min_quality: float | None = None   # the task metric on the validation split (accuracy, AUC; MAE: at most)

    def costs_met(self, est: dict) -> bool:
        return all(limit is None or est[k] <= limit for k, limit in
                   (("instructions", self.instructions), ("flash", self.flash), ("ram", self.ram)))

    def to_json(self) -> dict:
        return {"instructions": self.instructions, "flash": self.flash, "ram": self.ram,
                "min_quality": self.min_quality}


@dataclass
class Problem:
    """The base model, its data and task: everything a trial needs."""

    name: str
    source: str
    spec: object
    task: str
    metric: str
    higher_is_better: bool
    model: object
    example: object
    data: dict = field(default_factory=dict)   # split -> (x, y, groups)
    meta: dict = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)

    def metric_value(self, model, split: str = "val") -> float:
        from ..zoo.trainer import evaluate, predict

        x, y, groups = self.data[split]
        return float(evaluate(self.task, predict(model, x), x, y, self.meta, groups)[self.metric])

    def quality(self, model, split: str = "val") -> float:
        """The metric with higher = better (MAE negated)."""
        v = self.metric_value(model, split)
        return v if self.higher_is_better else -v

    def finetune(self, model, epochs: int, seed: int, lr_scale: float = 0.3):
        from ..zoo.trainer import LOSSES, fit

        if epochs <= 0:
            return model.eval()
        x, y, _ = self.data["train"]
        return fit(model, x, y, LOSSES[self.task], epochs, seed, lr=self.spec.lr * lr_scale, batch=self.spec.batch,
                   weight_decay=self.spec.weight_decay)

    def meets(self, value: float, minimum: float | None) -> bool:
        if minimum is None:
            return True
        return value >= minimum if self.higher_is_better else value <= minimum


def load_problem(model: str, data: str | None = None, root: str | None = None, seed: int = 0) -> Problem:
    """MODEL: a directory written by `mcuforge train` (model.pt), or a zoo name trained into out/NAME."""
    import torch

    from .. import data as datasets
    from .. import zoo
    from ..zoo.trainer import PRIMARY

    path = Path(model)
    if not (path / "model.pt").is_file():
        if model in zoo.names() and (Path("out") / model / "model.pt").is_file():
            path = Path("out") / model
        elif model in zoo.names():
            raise CompressError(f"zoo model '{model}' is not trained yet: run `mcuforge train {model}` first "
                                f"(or give the directory `mcuforge train` wrote)")
        else:
            raise CompressError(f"'{model}' is neither a directory written by `mcuforge train` (no model.pt) nor a "
                                f"zoo model ({', '.join(zoo.names())})")
    try:
        ckpt = torch.load(path / "model.pt", map_location="cpu", weights_only=False)
        spec = zoo.get(ckpt["model"])
        net = spec.build(tuple(ckpt["input_shape"]), int(ckpt["n_out"]))
        net.load_state_dict(ckpt["state_dict"])
    except zoo.ZooError:
        raise
    except Exception as exc:
        raise CompressError(f"'{path / 'model.pt'}' is not a checkpoint `mcuforge train` wrote: "
                            f"{type(exc).__name__}: {exc}") from None
    if spec.name == "sinc_kws":
        raise CompressError("sinc_kws has grouped convolutions and channel shuffles, which structured pruning "
                            "does not handle yet; compress another zoo model")
    data = data or ckpt.get("data") or spec.data
    zoo.check_data(spec, data)
    preset = ckpt.get("preset", "small")
    splits = datasets.describe()[data]["splits"]
    loaded = {}
    for split in ("train", "val", "test"):
        if split in splits:
            ds = datasets.load(data, split, preset, root=root, seed=ckpt.get("seed", seed))
            groups = ds.info.get("clip") if spec.task == "autoencoder" else None
            loaded[split] = (zoo.model_inputs(spec, ds.x), ds.y, groups)
            meta = ds.meta
    if "val" not in loaded:  # hold out a fifth of the training split for the search's metric
        x, y, g = loaded["train"]
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(x))
        cut = len(x) // 5
        va, tr = np.sort(idx[:cut]), np.sort(idx[cut:])
        loaded["val"] = (x[va], y[va], None if g is None else g[va])
        loaded["train"] = (x[tr], y[tr], None if g is None else g[tr])
    x_tr = loaded["train"][0]
    example = torch.from_numpy(np.ascontiguousarray(x_tr[:1], np.float32))
    metric = PRIMARY[spec.task]
    net.eval()
    problem = Problem(name=spec.name, source=str(path), spec=spec, task=spec.task, metric=metric,
                      higher_is_better=metric != "mae", model=net, example=example, data=loaded, meta=meta)
    problem.layers = prunable_layers(net, example)
    if not problem.layers:
        raise CompressError(f"{spec.name} has no prunable conv or linear layers")
    return problem


def calibration_set(problem: Problem, n: int = 256, seed: int = 0) -> np.ndarray:
    x = problem.data["train"][0]
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(len(x), min(n, len(x)), replace=False))]


# --- deploy and measure on the target --------------------------------------------------------------------

def _deploy(problem: Problem, model, target, lib_dir: Path, calib: np.ndarray, prefix: str | None = None,
            export_to: Path | None = None, storage: tuple[list[str], str] | None = None):
    import torch

    from ..codegen import generate
    from ..frontends import to_ir_layout
    from ..frontends.torch import from_exported
    from ..quant.ptq import quantize
    from ..zoo.trainer import c_prefix

    ep = torch.export.export(model.eval(), (problem.example,))
    if export_to is not None:
        torch.export.save(ep, export_to)
    graph = from_exported(ep, name=problem.name)
    q = quantize(graph, [to_ir_layout(graph, graph.inputs[0], calib)], method="minmax")
    if storage is not None:  # (IR layer names, weight format) of the low-sensitivity layers
        q = apply_to_graph(q, storage[0], storage[1], graph)
    report = generate(q, lib_dir, prefix=prefix or c_prefix(problem.name), target=target)
    return q, report


def bench_model(problem: Problem, model, target, lib_dir: Path, calib: np.ndarray,
                storage: tuple[list[str], str] | None = None) -> dict:
    """Deploy ``model`` for ``target`` and bench it on QEMU (per-layer instructions, flash, RAM)."""
    from ..frontends import to_ir_layout
    from ..targets.bench import bench

    q, _ = _deploy(problem, model, target, lib_dir, calib, storage=storage)
    name = q.inputs[0]
    xq = q.tensors[name].quant.quantize(to_ir_layout(q, name, problem.data["val"][0][:2]))
    return bench(lib_dir, target, [xq])


def deploy_and_measure(problem: Problem, model, target, lib_dir: Path, calib: np.ndarray,
                       split: str = "test", prefix: str | None = None, export_to: Path | None = None,
                       storage: tuple[list[str], str] | None = None) -> dict:
    """Export, quantize, generate the library for ``target`` into ``lib_dir`` and run the whole
    ``split`` on QEMU: exact instructions per inference, flash, RAM, the int8 metric from the
    firmware's outputs, and how many outputs differ from the integer reference (0 expected)."""
    from .. import reference
    from ..frontends import from_ir_layout, to_ir_layout
    from ..targets.bench import bench, run_counted
    from ..zoo.trainer import evaluate

    q, report = _deploy(problem, model, target, lib_dir, calib, prefix, export_to, storage)
    name = q.inputs[0]
    x, y, groups = problem.data[split]
    xq = q.tensors[name].quant.quantize(to_ir_layout(q, name, x))
    out_name = q.outputs[0]
    run = run_counted(lib_dir, target, [xq])
    y_fw = run.outputs[0]
    y_ref = np.concatenate([reference.run(q, [xq[i:i + 64]], mode="int")[0] for i in range(0, len(xq), 64)])
    pred = from_ir_layout(q, out_name, q.tensors[out_name].quant.dequantize(y_fw))
    b = bench(lib_dir, target, [xq[:2]])  # per-layer instructions (profiling build), flash and RAM
    return {
        "instructions": float(np.mean(run.per_sample)), "instructions_min": int(min(run.per_sample)),
        "instructions_max": int(max(run.per_sample)), "macs": int(report["totals"]["macs"]),
        "flash": int(b["flash"]["total"]), "flash_model": int(b["flash"]["model_total"]),
        "ram": int(b["ram"]["total"]), "arena": int(b["ram"]["arena"]),
        "weight_bytes": int(report["totals"]["weight_bytes"]), "params": int(report["totals"]["params"]),
        "int8": float(evaluate(problem.task, pred, x, y, problem.meta, groups)[problem.metric]),
        "float": problem.metric_value(model, split),
        "reference_mismatches": int(np.count_nonzero(y_fw != y_ref)), "outputs_compared": int(y_fw.size),
        "samples": int(len(xq)), "bench": b,
    }


# --- set-up ----------------------------------------------------------------------------------------------

def importances(problem: Problem, criteria, calib_n: int = 256, seed: int = 0) -> dict[str, dict[str, list]]:
    x, y, _ = problem.data["train"]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(x), min(calib_n, len(x)), replace=False))
    return {c: {n: v.tolist() for n, v in channel_importance(problem.model, problem.layers, c, x[idx], y[idx],
                                                             problem.task).items()}
            for c in criteria}


def estimate(problem: Problem, cost: CostModel, model) -> dict:
    return cost.estimate(profile(model, problem.example))


def smallest_alpha(problem: Problem, sens: dict, scores: dict, cost: CostModel, budget: Budget,
                   weight_bits: dict[str, int] | None = None) -> tuple[float, dict]:
    """The weakest global pruning (alpha) whose estimate meets the cost budgets (bisection), with the
    most compact weight format the search may use."""
    def est(alpha):
        pruned = prune_structured(problem.model, problem.example, global_rates(sens, alpha), scores)
        return cost.estimate(profile(pruned, problem.example), weight_bits)

    if budget.costs_met(est(0.0)):
        return 0.0, est(0.0)
    strongest = est(MAX_RATE)
    if not budget.costs_met(strongest):
        over = [f"--{k.replace('instructions', 'max-instructions')} {getattr(budget, k):,} (estimated "
                f"{strongest[k]:,} with every layer pruned by up to {MAX_RATE:.0%})"
                for k in ("instructions", "flash", "ram") if getattr(budget, k) is not None
                and strongest[k] > getattr(budget, k)]
        raise CompressError(f"the budget cannot be met by pruning {problem.name}: " + "; ".join(over))
    lo, hi = 0.0, MAX_RATE
    for _ in range(12):
        mid = (lo + hi) / 2
        if budget.costs_met(est(mid)):
            hi = mid
        else:
            lo = mid
    return hi, est(hi)


def build_setup(problem: Problem, target, budget: Budget, criteria, criterion: str, seed: int, workdir: Path,
                tolerance: float, say: Callable[[str], None], progress: Callable | None = None,
                weight_formats: tuple[str, ...] = ("int8",)) -> dict:
    say("channel importance (" + ", ".join(criteria) + ")")
    scores = importances(problem, criteria, seed=seed)
    base_q = problem.quality(problem.model)
    threshold = base_q - tolerance * abs(base_q)
    say("sensitivity analysis")
    sens = analyse(problem.model, problem.example, problem.layers,
                   {n: np.asarray(v) for n, v in scores[criterion].items()}, problem.quality, threshold,
                   progress=progress)
    say(f"measuring the unpruned model on {target.name} (QEMU)")
    calib = calibration_set(problem, seed=seed)
    base = deploy_and_measure(problem, problem.model, target, workdir / "base_lib", calib)
    # a second point for the per-layer cost fit: every prunable layer at half its channels
    half = prune_structured(problem.model, problem.example, {n: 0.5 for n in problem.layers},
                            {n: np.asarray(v) for n, v in scores[criterion].items()})
    say(f"measuring a half-width model on {target.name} (QEMU) for the cost model")
    half_bench = bench_model(problem, half, target, workdir / "half_lib", calib)
    cost = CostModel.from_bench(base["bench"], profile(problem.model, problem.example), half_bench,
                                profile(half, problem.example))
    setup_formats = {}
    for fmt in weight_formats:  # what a format costs beyond its bits: decode instructions, code, scratch RAM
        if fmt == "int8":
            continue
        say(f"measuring the unpruned model with {fmt} weights on {target.name} (QEMU)")
        low = low_bit_layers(sens)
        to_ir = {m["name"]: m["ir_name"] for m in cost.mac_layers}
        b = bench_model(problem, problem.model, target, workdir / f"{fmt}_lib", calib, ([to_ir[n] for n in low], fmt))
        plain = cost.estimate(profile(problem.model, problem.example), {n: index_bits(fmt) for n in low})
        setup_formats[fmt] = {"instructions_ratio": float(b["instructions"]["per_inference"]) / cost.instructions,
                              "flash_offset": int(b["flash"]["total"]) - plain["flash"],
                              "ram_offset": int(b["ram"]["total"]) - cost.ram}
    compact = min(index_bits(f) for f in weight_formats)
    alpha, est = smallest_alpha(problem, sens, {n: np.asarray(v) for n, v in scores[criterion].items()}, cost, budget,
                                {n: compact for n in low_bit_layers(sens)})
    base_small = {k: v for k, v in base.items() if k != "bench"}
    base_small["layers"] = [{k: r[k] for k in ("name", "op", "macs", "instructions")} for r in base["bench"]["layers"]]
    return {"version": 1, "model": problem.name, "source": problem.source, "target": target.name,
            "metric": problem.metric, "layers": problem.layers, "scores": scores, "sensitivity": sens,
            "cost": cost.to_json(), "budget": budget.to_json(), "alpha_min": alpha, "alpha_min_estimate": est,
            "criteria": list(criteria), "criterion": criterion, "base": base_small,
            "weight_formats": list(weight_formats), "low_bit_layers": low_bit_layers(sens),
            "format_costs": setup_formats,
            "channels": channel_counts(problem.model, problem.layers)}


def low_bit_layers(sens: dict) -> list[str]:
    """The layers a weight format applies to: every prunable layer but the most sensitive one (mixed
    precision by sensitivity; the classifier is not prunable and keeps int8 too)."""
    layers = sens["layers"]
    if len(layers) < 2:
        return list(layers)
    most = max(layers, key=lambda n: layers[n]["sensitivity"])
    return [n for n in layers if n != most]


def storage_of(setup: dict, fmt: str) -> tuple[list[str], str] | None:
    """(IR layer names, format) for deploying a model whose low-bit layers use ``fmt``."""
    if fmt == "int8":
        return None
    to_ir = {m["name"]: m["ir_name"] for m in setup["cost"]["mac_layers"]}
    return [to_ir[n] for n in setup["low_bit_layers"]], fmt


# --- trials ----------------------------------------------------------------------------------------------

def trial_model(problem: Problem, setup: dict, criterion: str, alpha: float, offsets: dict[str, float]):
    rates = global_rates(setup["sensitivity"], alpha, offsets, cap=MAX_RATE)
    scores = {n: np.asarray(v) for n, v in setup["scores"][criterion].items()}
    return prune_structured(problem.model, problem.example, rates, scores), rates


def make_objective(problem: Problem, setup: dict, finetune_epochs: int, seed: int, worker: str):
    cost = CostModel.from_json(setup["cost"])
    budget = Budget(**setup["budget"])
    layers = setup["layers"]

    def objective(trial):
        import torch

        torch.set_num_threads(1)
        criterion = trial.suggest_categorical("criterion", setup["criteria"])
        alpha = trial.suggest_float("alpha", setup["alpha_min"], MAX_RATE)
        offsets = {n: trial.suggest_float(f"offset_{i}", -OFFSET, OFFSET) for i, n in enumerate(layers)}
        formats = setup.get("weight_formats", ["int8"])
        fmt = trial.suggest_categorical("weight_format", formats) if len(formats) > 1 else formats[0]
        model, rates = trial_model(problem, setup, criterion, alpha, offsets)
        low = setup.get("low_bit_layers", [])
        est = cost.estimate(profile(model, problem.example), {n: index_bits(fmt) for n in low})
        extra = setup.get("format_costs", {}).get(fmt)
        if extra:  # measured on the unpruned model: decode work scales with the layers, code and scratch do not
            est = {**est, "instructions": int(est["instructions"] * extra["instructions_ratio"]),
                   "flash": est["flash"] + extra["flash_offset"], "ram": est["ram"] + extra["ram_offset"]}
        problem.finetune(model, finetune_epochs, seed)
        simulate(model, low, fmt, seed)
        value = problem.metric_value(model, "val")
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("weight_format", fmt)
        trial.set_user_attr("rates", {n: round(r, 4) for n, r in rates.items()})
        trial.set_user_attr("channels", channel_counts(model, layers))
        trial.set_user_attr("ram", est["ram"])
        trial.set_user_attr("macs", est["macs"])
        trial.set_user_attr("feasible", bool(budget.costs_met(est) and problem.meets(value, budget.min_quality)))
        return value, est["instructions"], est["flash"]

    return objective


def objectives(metric: str, higher_is_better: bool):
    from ..study import Objective

    return [Objective(metric, minimize=not higher_is_better), Objective("instructions", True), Objective("flash", True)]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_compress_study(problem: Problem, study_name: str, storage: str | None, default_file: Path, seed: int,
                        create: bool):
    from ..study import open_study

    return open_study(study_name, objectives(problem.metric, problem.higher_is_better), storage, default_file,
                      seed=seed, create=create)


def first_trial_params(setup: dict) -> dict:
    params = {"criterion": setup["criterion"], "alpha": setup["alpha_min"]}
    if len(setup.get("weight_formats", [])) > 1:
        params["weight_format"] = setup["weight_formats"][0]
    params.update({f"offset_{i}": 0.0 for i in range(len(setup["layers"]))})
    return params


def candidates(study, problem: Problem, setup: dict) -> list:
    """Finished trials that meet the budgets (estimated) and --min-accuracy (validation), best first:
    best metric, then fewest instructions."""
    from ..study import finished_trials

    done = finished_trials(study)
    ok = [t for t in done if t.user_attrs.get("feasible")]
    if not ok:
        if not done:
            raise CompressError("the study has no finished trials")
        best = max(done, key=lambda t: t.values[0] if problem.higher_is_better else -t.values[0])
        raise CompressError(f"no trial met the budget and --min-accuracy: the best {problem.metric} was "
                            f"{best.values[0]:.4g} (trial {best.number}, ~{best.values[1]:,.0f} instructions); "
                            f"relax a constraint or run more --trials")
    sign = 1 if problem.higher_is_better else -1
    return sorted(ok, key=lambda t: (-round(sign * t.values[0], 6), t.values[1]))


def finish(problem: Problem, setup: dict, trial, target, stage: Path, final_epochs: int, seed: int) -> dict:
    """Re-create the chosen trial's pruned model, fine-tune it, deploy and measure it on the target."""
    offsets = {n: trial.params.get(f"offset_{i}", 0.0) for i, n in enumerate(setup["layers"])}
    model, rates = trial_model(problem, setup, trial.params["criterion"], trial.params["alpha"], offsets)
    problem.finetune(model, final_epochs, seed)
    calib = calibration_set(problem, seed=seed)
    np.save(stage / "calib.npy", calib)
    x, y, groups = problem.data["test"]
    np.save(stage / "test_inputs.npy", x)
    np.save(stage / "test_targets.npy", y)
    fmt = trial.user_attrs.get("weight_format", "int8")
    measured = deploy_and_measure(problem, model, target, stage / "lib", calib, export_to=stage / "model.pt2",
                                  storage=storage_of(setup, fmt))
    measured["weight_format"] = fmt
    measured["val"] = problem.metric_value(model, "val")
    measured["rates"] = rates
    measured["channels"] = channel_counts(model, setup["layers"])
    return measured


def load_setup(study) -> dict | None:
    raw = study.user_attrs.get(SETUP_ATTR)
    return json.loads(raw) if raw else None


def run_compress(model: str, target_name: str, out: Path | None, data: str | None = None, budget: Budget = Budget(),
                 trials: int = 24, storage: str | None = None, study_name: str | None = None, worker: bool = False,
                 criterion: str | None = None, finetune_epochs: int = 2, final_epochs: int = 10,
                 tolerance: float = 0.05, seed: int = 0, ram_size: str | None = None, flash_size: str | None = None,
                 say: Callable[[str], None] = lambda s: None, progress: Callable | None = None,
                 show_progress: bool = True, weight_formats: tuple[str, ...] = ("int8",)) -> dict:
    """The whole `mcuforge compress` (see the module doc). Returns the result dict (also report.json)."""
    import tempfile

    import torch

    from ..outdir import staged_output_dir
    from ..study import finished_trials, pareto_plot, pareto_rows, run_trials
    from ..targets.table import get_target
    from .sensitivity import chart

    torch.set_num_threads(1)
    if criterion is not None and criterion not in CRITERIA:
        raise CompressError(f"unknown --criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    if trials < 0:
        raise CompressError("--trials must be >= 0")
    from .weights import check_formats

    weight_formats = tuple(check_formats(list(weight_formats)))
    target = get_target(target_name, ram_size, flash_size)
    if not worker and out is None:
        raise CompressError("give the output directory with -o (only --worker runs need none)")
    say(f"loading {model}")
    problem = load_problem(model, data, seed=seed)
    study_name = study_name or f"compress-{problem.name}-{target.name}"
    default_file = Path(str(out) + ".study.db") if out is not None else Path(f"{study_name}.study.db")
    if worker:
        study = open_compress_study(problem, study_name, storage, default_file, seed=os.getpid(), create=False)
        setup = load_setup(study)
        if setup is None:
            raise CompressError(f"study '{study_name}' has no set-up yet: start it without --worker first")
        _check_setup(setup, problem, target)
        ran = run_trials(study, make_objective(problem, setup, finetune_epochs, seed, worker_id()), trials,
                         label=f"trials ({worker_id()})", show=show_progress)
        return {"worker": worker_id(), "ran": ran, "finished": len(finished_trials(study)), "study": study_name}

    study = open_compress_study(problem, study_name, storage, default_file, seed=seed, create=True)
    setup = load_setup(study)
    crit = criterion or "deeplift"
    criteria = [crit] if criterion else list(CRITERIA)
    with tempfile.TemporaryDirectory(prefix="mcuforge-compress-") as tmp:
        if setup is None:
            setup = build_setup(problem, target, budget, criteria, crit, seed, Path(tmp), tolerance, say, progress,
                                weight_formats)
            study.set_user_attr(SETUP_ATTR, json.dumps(setup))
            if not study.trials:
                study.enqueue_trial(first_trial_params(setup))
        else:
            _check_setup(setup, problem, target)
            if setup["budget"] != budget.to_json() or setup.get("weight_formats", ["int8"]) != list(weight_formats):
                raise CompressError(f"study '{study_name}' was started with the budget {setup['budget']}; resume it "
                                    f"with the same constraints and --weight-formats, or use another --study")
            say("resuming the study (set-up from the study)")
        say(f"searching ({trials} trials)")
        ran = run_trials(study, make_objective(problem, setup, finetune_epochs, seed, worker_id()), trials,
                         label="trials", show=show_progress)
        objs = objectives(problem.metric, problem.higher_is_better)
        rows = pareto_rows(study, objs)
        bud = Budget(**setup["budget"])
        with staged_output_dir(out) as stage:
            # Verify by measuring: when the chosen model misses the budget on the target, the estimates are
            # corrected by the measured/estimated ratio and the next best trial within the corrected budget
            # is tried (at most three deployments).
            correction, attempts, pool = {"instructions": 1.0, "flash": 1.0, "ram": 1.0}, [], candidates(
                study, problem, setup)
            for _ in range(3):
                pick = [t for t in pool if bud.costs_met({"instructions": t.values[1] * correction["instructions"],
                                                          "flash": t.values[2] * correction["flash"],
                                                          "ram": t.user_attrs["ram"] * correction["ram"]})]
                if not pick:
                    break
                chosen = pick[0]
                pool = [t for t in pool if t.number != chosen.number]
                say(f"fine-tuning trial {chosen.number} ({final_epochs} epochs), deploying it, measuring on QEMU")
                measured = finish(problem, setup, chosen, target, stage, final_epochs, seed)
                est = {"instructions": chosen.values[1], "flash": chosen.values[2], "ram": chosen.user_attrs["ram"]}
                attempts.append({"trial": chosen.number, "estimate": est,
                                 "measured": {k: measured[k] for k in est}})
                if bud.costs_met(measured):
                    break
                correction = {k: max(correction[k], measured[k] / max(est[k], 1)) for k in est}
            chart(setup["sensitivity"], stage / "sensitivity.png", problem.metric,
                  f"{problem.name}: layer sensitivity ({setup['criterion']} ranking, validation split)")
            (stage / "sensitivity.json").write_text(json.dumps(setup["sensitivity"], indent=1))
            pareto_plot(study, objs, stage / "pareto.png", x="instructions", y=problem.metric,
                        title=f"{problem.name} on {target.name}: {problem.metric} vs estimated instructions")
            (stage / "pareto.json").write_text(json.dumps(rows, indent=1))
            base = setup["base"]
            result = {
                "model": problem.name, "source": problem.source, "target": target.name, "metric": problem.metric,
                "study": study_name, "storage": storage or f"sqlite:///{default_file.resolve()}",
                "trials_finished": len(finished_trials(study)), "trials_run_here": ran,
                "budget": setup["budget"], "attempts": attempts, "chosen_trial": chosen.number, "chosen_params": dict(chosen.params),
                "chosen_estimate": {"instructions": chosen.values[1], "flash": chosen.values[2],
                                    "ram": chosen.user_attrs.get("ram"), "val": chosen.values[0]},
                "base": base, "compressed": {k: v for k, v in measured.items() if k != "bench"},
                "speedup": base["instructions"] / measured["instructions"],
                "flash_ratio": base["flash"] / measured["flash"],
                "metric_change": measured["int8"] - base["int8"],
                "budget_met": bud.costs_met(measured),
                "pareto": rows, "finetune_epochs": finetune_epochs, "final_epochs": final_epochs,
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            (stage / "report.json").write_text(json.dumps(result, indent=1))
            (stage / "report.md").write_text(report_markdown(result, setup))
    return result


def _check_setup(setup: dict, problem: Problem, target) -> None:
    if setup["model"] != problem.name or setup["target"] != target.name or setup["layers"] != problem.layers:
        raise CompressError(f"the study was set up for {setup['model']} on {setup['target']}, not {problem.name} on "
                            f"{target.name}: use another --study")


def report_markdown(r: dict, setup: dict) -> str:
    b, c, m = r["base"], r["compressed"], r["metric"]
    lines = [f"# {r['model']} compressed for {r['target']}", "",
             f"Study `{r['study']}`, {r['trials_finished']} trials; chosen trial {r['chosen_trial']} "
             f"(criterion {r['chosen_params']['criterion']}, alpha {r['chosen_params']['alpha']:.3f}).", "",
             "| | unpruned | compressed | ratio |", "|---|--:|--:|--:|",
             f"| instructions per inference (QEMU, exact) | {b['instructions']:,.0f} | {c['instructions']:,.0f} | "
             f"{r['speedup']:.2f}x |",
             f"| MACs | {b['macs']:,} | {c['macs']:,} | {b['macs'] / c['macs']:.2f}x |",
             f"| flash (firmware) | {b['flash']:,} B | {c['flash']:,} B | {r['flash_ratio']:.2f}x |",
             f"| RAM (firmware) | {b['ram']:,} B | {c['ram']:,} B | |",
             f"| int8 {m} (test, from the firmware) | {b['int8']:.4f} | {c['int8']:.4f} | "
             f"{c['int8'] - b['int8']:+.4f} |",
             f"| float {m} (test) | {b['float']:.4f} | {c['float']:.4f} | |",
             f"| outputs differing from the integer reference | {b['reference_mismatches']} | "
             f"{c['reference_mismatches']} | |", "",
             "| layer | channels | sensitivity | max rate alone | rate | kept |", "|---|--:|--:|--:|--:|--:|"]
    for n in setup["layers"]:
        s = setup["sensitivity"]["layers"][n]
        lines.append(f"| {n} | {setup['channels'][n]} | {s['sensitivity']:.3f} | {s['max_rate']:.1f} | "
                     f"{c['rates'][n]:.2f} | {c['channels'][n]} |")
    return "\n".join(lines) + "\n"
