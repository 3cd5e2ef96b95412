"""The numpy twin of on-device fully quantized training: the specification of every
integer the generated C training step computes (docs/training.md has the equations).

    trainer = FQTTrainer(qgraph, TrainConfig(lr=0.01, policy="dynamic", budget=0.2))
    pred = trainer.step(x_int8, label)     # one SGD step on one sample; the prediction before it
    adapted = trainer.export_graph()       # the graph with the trained weights (deployable)

Forward: the ops' integer references (the inference semantics), keeping every activation.
Backward: int8 errors with run-time power-of-two scales, int8 x int8 -> int32 gradients,
SGD on int8 weights with stochastic or nearest rounding, per-channel weight-scale doubling
when weights outgrow int8. Dynamic partial updates choose, per step, which layers and
channels to update under a MAC budget; below the minimum step budget, which samples get a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..ir.graph import Graph, QuantParams
from ..ops import get_op
from ..ops.softmax import softmax_int8, softmax_params
from . import fixed as fx
from .program import EST_CLAMP, UNSEEN_EST, Gate, Geometry, Layer, Program, TrainConfig, build_program


# --- convolution pieces (float64 arithmetic on integers: exact below 2^53) -------------------------

def _index_grid(g: Geometry):
    rows = (np.arange(g.out_h) * g.stride_h)[:, None] + np.arange(g.k_h) * g.dil_h  # [OH, KH] padded coords
    cols = (np.arange(g.out_w) * g.stride_w)[:, None] + np.arange(g.k_w) * g.dil_w  # [OW, KW]
    return rows, cols


def patches(xc: np.ndarray, g: Geometry) -> np.ndarray:
    """[P, KH, KW, C] windows of xc [H, W, C] (zero padding)."""
    xp = np.pad(xc.astype(np.float64), ((g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right), (0, 0)))
    rows, cols = _index_grid(g)
    p = xp[rows[:, None, :, None], cols[None, :, None, :], :]  # [OH, OW, KH, KW, C]
    return p.reshape(g.positions, g.k_h, g.k_w, g.in_c)


def weight_grad(e: np.ndarray, pat: np.ndarray, g: Geometry) -> np.ndarray:
    """G[o, ky, kx, c] = sum_p e[p, o] * (x - zp)[p at tap (ky, kx), group(o) * cg + c]."""
    P, G = g.positions, g.groups
    E = e.reshape(P, G, g.og).astype(np.float64)
    pt = pat.reshape(P, g.k_h * g.k_w, G, g.cg)
    out = np.einsum("pgo,pkgc->gokc", E, pt, optimize=True)
    return out.reshape(g.out_c, g.k_h, g.k_w, g.cg).astype(np.int64)


def input_grad(e2: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    """acc[iy, ix, c] = sum over (p, o, tap) reading input (iy, ix, c) of e2[p, o] * w[o, tap, c]."""
    P, G = g.positions, g.groups
    E = e2.reshape(P, G, g.og).astype(np.float64)
    W = w.reshape(G, g.og, g.k_h, g.k_w, g.cg).astype(np.float64)
    contrib = np.einsum("pgo,goyxc->pyxgc", E, W, optimize=True).reshape(g.out_h, g.out_w, g.k_h, g.k_w, g.in_c)
    hp, wp = g.in_h + g.pad_top + g.pad_bottom, g.in_w + g.pad_left + g.pad_right
    grid = np.zeros((hp, wp, g.in_c), np.float64)
    rows, cols = _index_grid(g)
    R = np.broadcast_to(rows[:, None, :, None], (g.out_h, g.out_w, g.k_h, g.k_w))
    C = np.broadcast_to(cols[None, :, None, :], (g.out_h, g.out_w, g.k_h, g.k_w))
    np.add.at(grid, (R.ravel(), C.ravel()), contrib.reshape(-1, g.in_c))
    return grid[g.pad_top:g.pad_top + g.in_h, g.pad_left:g.pad_left + g.in_w].astype(np.int64)


def _as_hwc(a: np.ndarray, g: Geometry, channels: int) -> np.ndarray:
    return a.reshape(g.in_h if channels == g.in_c else g.out_h, -1, channels)


# --- state ----------------------------------------------------------------------------------------

@dataclass
class LayerState:
    w: np.ndarray  # int8 [O, K] (the weight tensor flattened per output channel)
    b: np.ndarray  # int64 [O] (int32 values); zeros when the layer has no bias
    a: np.ndarray  # int64 [O]: doublings of each channel's weight scale
    vw: np.ndarray | None  # momentum (int32, weight LSB x 2^FRAC_BITS)
    vb: np.ndarray | None  # momentum of the bias (bias LSB)
    sat: np.ndarray | None = None  # clipped weight updates per channel since its last scale doubling
    est: int = UNSEEN_EST  # importance estimate (log2, Q8)
    seen: bool = False


@dataclass
class StepInfo:
    """What one step did (for tests, statistics and the benchmark's cost model)."""

    pred: int
    deep: int  # -1: the loss gate skipped the backward
    taken: list[int]
    updated_channels: list[int] = field(default_factory=list)
    macs: int = 0  # backward MACs actually spent (weight gradients + error propagation)


class FQTTrainer:
    def __init__(self, graph: Graph, config: TrainConfig | None = None, program: Program | None = None) -> None:
        self.config = config or TrainConfig()
        self.prog = program or build_program(graph, self.config)
        self.graph = graph.copy()
        self.step_count = 0
        self.state: list[LayerState] = []
        mom = self.config.momentum > 0
        for L in self.prog.layers:
            w = self.graph.tensors[L.weight].data.reshape(L.O, L.K).copy()
            b = (self.graph.tensors[L.bias].data.astype(np.int64).copy() if L.bias
                 else np.zeros(L.O, np.int64))
            self.state.append(LayerState(w, b, np.zeros(L.O, np.int64),
                                         np.zeros((L.O, L.K), np.int64) if mom else None,
                                         np.zeros(L.O, np.int64) if mom else None, np.zeros(L.O, np.int64)))
        self.beta_q15 = int(np.floor(self.config.momentum * fx.Q15 + 0.5))
        self.gate_state = [0, 0]  # loss gate: threshold (Q16 log2), saved budget (MACs)
        self.last: StepInfo | None = None
        jof = {b.node: b.J for b in self.prog.backward}
        self._jprod = {c.tensor: jof[self.graph.producer(c.tensor).name]
                       for b in self.prog.backward for c in b.contribs}

    # -- graph sync ---------------------------------------------------------------------------------
    def _sync(self, j: int) -> None:
        """Write layer j's state into the working graph (weights, bias, scales = s_w0 2^a)."""
        L, S = self.prog.layers[j], self.state[j]
        wt = self.graph.tensors[L.weight]
        wt.data = S.w.reshape(wt.shape).copy()
        scale = (L.s_w0 * np.exp2(S.a.astype(np.float64))).astype(np.float32)
        wt.quant = QuantParams(scale, np.zeros(L.O, np.int64), 0)
        if L.bias:
            bt = self.graph.tensors[L.bias]
            bt.data = S.b.astype(np.int32).copy()
            bt.quant = QuantParams((np.float64(L.s_x) * scale.astype(np.float64)).astype(np.float32),
                                   np.zeros(L.O, np.int64), 0)

    def export_graph(self) -> Graph:
        """The quantized graph with the trained weights, biases and weight scales."""
        g = self.graph.copy()
        g.meta = dict(g.meta)
        g.meta["training"] = {"steps": self.step_count, "config": self.config.to_json(),
                              "adapted_channels": int(sum(int((S.a > 0).sum()) for S in self.state))}
        return g

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        g = self.graph
        vals = {g.inputs[0]: x}
        for node in g.nodes:
            xs = [None if t == "" else (g.tensors[t].data if g.tensors[t].is_const else vals[t]) for t in node.inputs]
            for t, y in zip(node.outputs, get_op(node.op, node).run_int(node, g, xs)):
                vals[t] = y
        return vals

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Inference on a batch (int8, IR layout) with the current weights."""
        from .. import reference

        return reference.run(self.graph, [x], mode="int")[0]

    # -- the step -------------------------------------------------------------------------------------
    def _check_x(self, x: np.ndarray) -> np.ndarray:
        shape = self.graph.tensors[self.prog.input].shape
        x = np.asarray(x)
        if x.shape == shape[1:]:
            x = x[None]
        if x.shape != shape or x.dtype != np.int8:
            raise InputError(f"a training sample must be int8 of shape {shape}, got {x.dtype} {x.shape}")
        return x

    def loss_grad(self, vals: dict[str, np.ndarray], label) -> np.ndarray:
        p = self.prog
        if p.config.loss == "ce":
            label = int(label)
            if not 0 <= label < p.num_classes:
                raise InputError(f"label {label} is not a class of the model (0..{p.num_classes - 1})")
            if p.softmax_final:
                prob = vals[p.output].reshape(-1).astype(np.int64)
            else:
                z = vals[p.logits]
                prm = softmax_params(1.0, self.graph.tensors[p.logits].quant.s)
                prob = softmax_int8(z.reshape(1, -1), *prm).reshape(-1).astype(np.int64)
            g = prob + 128
            g[label] -= 256
            return g
        t = np.asarray(label)
        y = vals[p.output]
        if t.dtype != np.int8 or t.size != y.size:
            raise InputError(f"an MSE target must be int8 with {y.size} values (the output's quantization)")
        return y.reshape(-1).astype(np.int64) - t.reshape(-1).astype(np.int64)

    def plan(self) -> tuple[int, list[int]]:
        """(deepest visited layer, channels taken per layer) for this step."""
        p, cfg = self.prog, self.config
        J = p.num_layers
        if cfg.policy == "full":
            return J - 1, [L.O for L in p.layers]
        if cfg.policy == "bias":
            return J - 1, [0] * J
        return plan_dynamic([S.est for S in self.state], p.layers, p.step_macs)

    def step(self, x: np.ndarray, label) -> int:
        p, cfg = self.prog, self.config
        x = self._check_x(x)
        vals = self.forward(x)
        logits = vals[p.logits].reshape(-1)
        pred = int(np.argmax(logits)) if cfg.loss == "ce" else 0
        g = self.loss_grad(vals, label)
        err: dict[str, np.ndarray] = {}
        xexp: dict[str, int] = {}
        e, k = fx.normalize(g)
        err[p.logits], xexp[p.logits] = e.reshape(vals[p.logits].shape), k
        if p.gate is None or gate_step(g, self.gate_state, p.gate, p.budget_macs):
            deep, taken = self.plan()
        else:
            deep, taken = -1, [0] * p.num_layers
        info = StepInfo(pred, deep, list(taken))
        pending: dict[str, list[tuple[np.ndarray, int]]] = {}
        sched = -min(self.step_count // cfg.lr_halve_every, 24) if cfg.lr_halve_every else 0

        def contribute(t: str, acc: np.ndarray, x_base: int) -> None:
            e_c, k_c = fx.normalize(acc)
            pending.setdefault(t, []).append((e_c.reshape(self.graph.tensors[t].shape), x_base + k_c))

        def finalize(t: str) -> None:
            parts = pending.pop(t)
            et = p.errors[t]
            if len(parts) == 1:
                err[t], xexp[t] = parts[0]
                return
            e0, x0 = parts[0]
            acc = e0.astype(np.int64) * 256
            for (e_c, x_c), c in zip(parts[1:], et.contribs[1:]):
                acc = fx.sat32(acc + fx.mulshift(e_c, c.m, c.s + x_c - x0))
            e_m, k_m = fx.normalize(acc)
            err[t], xexp[t] = e_m, x0 - 8 + k_m

        for bn in p.backward:
            if deep < bn.J:
                continue
            if bn.out in pending:
                finalize(bn.out)
            y = vals[bn.out]
            ey = err[bn.out].astype(np.int64)
            if bn.mask is not None:
                ey = apply_mask(ey, y, bn.mask)
            xy = xexp[bn.out]
            needs = [c for c in bn.contribs if deep >= self._J_of_producer(c.tensor)]
            if bn.op in ("conv2d", "fully_connected"):
                gm = bn.geom
                ey2 = ey.reshape(gm.positions, gm.out_c)
                S = self.state[bn.layer] if bn.layer is not None else None
                if needs:
                    a = S.a if S is not None else np.zeros(gm.out_c, np.int64)
                    amax = int(a.max())
                    reff = fx.rdbpot(bn.r0, amax - a)
                    w = (S.w if S is not None else self.graph.tensors[self.graph.node(bn.node).inputs[1]].data)
                    acc = input_grad(fx.rescale_q15(ey2, reff[None, :]), w, gm)
                    contribute(needs[0].tensor, acc.reshape(-1), xy + amax)
                    info.macs += gm.macs
                if bn.layer is not None:
                    xin = vals[self.graph.node(bn.node).inputs[0]]
                    info.macs += self._update_layer(bn.layer, ey2, xin, xy, sched, taken[bn.layer], deep, info)
            elif bn.op == "max_pool2d":
                xin = vals[self.graph.node(bn.node).inputs[0]]
                acc = maxpool_backward(xin, ey, self.graph.node(bn.node).attrs)
                for c in needs:
                    contribute(c.tensor, acc.reshape(-1), xy)
            elif bn.op == "avg_pool2d":
                acc = avgpool_backward(ey, self.graph.tensors[self.graph.node(bn.node).inputs[0]].shape,
                                       self.graph.node(bn.node).attrs)
                for c in needs:
                    contribute(c.tensor, acc.reshape(-1), xy)
            else:  # reshape, add: the error passes unchanged
                for c in needs:
                    contribute(c.tensor, ey.reshape(-1), xy)
        for j, S in enumerate(self.state):
            if j > deep >= 0:  # a skipped step examined nothing: no layer's estimate ages
                S.est = min(S.est + cfg.age_q8, EST_CLAMP)
        self.step_count += 1
        self.last = info
        return pred

    def _J_of_producer(self, t: str) -> int:
        """J of the node producing t (t's error is needed iff that node runs)."""
        return self._jprod[t]

    def _update_layer(self, j: int, ey: np.ndarray, xin: np.ndarray, xy: int, sched: int, taken: int, deep: int,
                      info: StepInfo) -> int:
        """Weight and bias updates of layer j from its masked output error ey [P, O]; returns the MACs."""
        p, cfg = self.prog, self.config
        L, S = p.layers[j], self.state[j]
        gm = L.geom
        A = np.abs(ey).sum(axis=0)
        Gb = ey.sum(axis=0)
        xc = xin.reshape(gm.in_h, gm.in_w, gm.in_c).astype(np.int64) - L.zp_x
        if cfg.policy == "dynamic":
            sx = int(np.abs(xc).sum())
            imp = importance(A, sx, L.imp_c, xy)
            fresh = int(np.clip(imp.max(), -EST_CLAMP, EST_CLAMP))
            S.est = fresh if not S.seen else int(fx.ema_step(S.est, fresh))
            S.seen = True
            sel = select_top(imp, taken)
            bias_sel = np.ones(L.O, bool) if cfg.bias_visited else sel
        elif cfg.policy == "bias":
            sel, bias_sel = np.zeros(L.O, bool), np.ones(L.O, bool)
        else:
            sel, bias_sel = np.ones(L.O, bool), np.ones(L.O, bool)
        macs = 0
        shift_a = xy + sched - S.a  # per channel
        # weights
        n_adapt = np.zeros(L.O, np.int64)
        if sel.any():
            o_idx = np.nonzero(sel)[0]
            G = weight_grad(ey, patches(xc, gm), gm).reshape(L.O, L.K)[o_idx]
            macs = gm.positions * gm.k * len(o_idx)
            d = fx.mulshift(G, L.um[o_idx, None], (L.us[o_idx] + shift_a[o_idx] + fx.FRAC_BITS)[:, None])
            if S.vw is not None:
                v = fx.sat32(((S.vw[o_idx] * self.beta_q15 + (1 << 14)) >> 15) + d)
                S.vw[o_idx] = v
                d = v
            if cfg.rounding == "stochastic":
                idx = L.wbase + o_idx[:, None] * L.K + np.arange(L.K)[None, :]
                r = (fx.prng(cfg.seed, self.step_count, idx) >> np.uint64(32 - fx.FRAC_BITS)).astype(np.int64)
            else:
                r = np.int64(1 << (fx.FRAC_BITS - 1))
            q = (d + r) >> fx.FRAC_BITS
            w32 = S.w[o_idx].astype(np.int64) - q
            m = np.abs(w32).max(axis=1)
            n = np.zeros(len(o_idx), np.int64)
            # hysteresis: clipped updates accumulate; the scale doubles once they reach adapt_after
            sat = np.minimum(S.sat[o_idx] + (np.abs(w32) > fx.W_MAX).sum(axis=1), 1 << 30)
            ready = sat >= cfg.adapt_after
            cap = np.where(ready, cfg.max_adapt - S.a[o_idx], 0)
            while True:
                grow = (fx.rdbpot(m, n) > fx.W_MAX) & (n < cap)
                if not grow.any():
                    break
                n = n + grow
            S.sat[o_idx] = np.where(n > 0, 0, sat)
            S.w[o_idx] = np.clip(fx.rdbpot(w32, n[:, None]), -fx.W_MAX, fx.W_MAX).astype(np.int8)
            if S.vw is not None:
                S.vw[o_idx] = fx.rdbpot(S.vw[o_idx], n[:, None])
            n_adapt[o_idx] = n
            info.updated_channels.append(len(o_idx))
        else:
            info.updated_channels.append(0)
        # biases (before the scale changes: the step is in the old bias units)
        if L.bias and bias_sel.any():
            o_idx = np.nonzero(bias_sel)[0]
            db = fx.mulshift(Gb[o_idx], L.vm[o_idx], L.vs[o_idx] + shift_a[o_idx])
            if S.vb is not None:
                v = fx.sat32(((S.vb[o_idx] * self.beta_q15 + (1 << 14)) >> 15) + db)
                S.vb[o_idx] = v
                db = v
            S.b[o_idx] = np.clip(S.b[o_idx] - db, -L.blim, L.blim)
        if n_adapt.any():
            S.b = fx.rdbpot(S.b, n_adapt)
            if S.vb is not None:
                S.vb = fx.rdbpot(S.vb, n_adapt)
            S.a = S.a + n_adapt
        self._sync(j)
        return macs


# --- the other ops' backward -------------------------------------------------------------------------

def maxpool_backward(x: np.ndarray, e: np.ndarray, attrs: dict) -> np.ndarray:
    """Each output's error goes to the first maximum of its window (scan order ky, kx); int32 sums."""
    _, h, w, c = x.shape
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = attrs["kernel"], attrs["stride"], attrs["pads"]
    _, oh, ow, _ = e.shape
    acc = np.zeros((h, w, c), np.int64)
    xx = x[0].astype(np.int64)
    ee = e.reshape(oh, ow, c).astype(np.int64)
    for oy in range(oh):
        for ox in range(ow):
            best = np.full(c, -1000, np.int64)
            by = np.zeros(c, np.int64)
            bx = np.zeros(c, np.int64)
            for ky in range(kh):
                iy = oy * sh - pt + ky
                if iy < 0 or iy >= h:
                    continue
                for kx in range(kw):
                    ix = ox * sw - pl + kx
                    if ix < 0 or ix >= w:
                        continue
                    v = xx[iy, ix]
                    better = v > best
                    best = np.where(better, v, best)
                    by = np.where(better, iy, by)
                    bx = np.where(better, ix, bx)
            np.add.at(acc, (by, bx, np.arange(c)), ee[oy, ox])
    return acc


def avgpool_backward(e: np.ndarray, in_shape: tuple[int, ...], attrs: dict) -> np.ndarray:
    """Every input position receives the sum of the errors of the windows that contain it (the
    1/count is in the static scale)."""
    _, h, w, c = in_shape
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = attrs["kernel"], attrs["stride"], attrs["pads"]
    _, oh, ow, _ = e.shape
    acc = np.zeros((h + pt + pb, w + pl + pr, c), np.int64)
    ee = e.reshape(oh, ow, c).astype(np.int64)
    for oy in range(oh):
        for ox in range(ow):
            acc[oy * sh:oy * sh + kh, ox * sw:ox * sw + kw] += ee[oy, ox]
    return acc[pt:pt + h, pl:pl + w]


def apply_mask(e: np.ndarray, y: np.ndarray, mask: tuple[int, int, int, int]) -> np.ndarray:
    """The error where the output y sat at a clamp bound is zeroed, unless the bound is only int8
    saturation (pass flag) and the error points back into the range (program._mask)."""
    lo, hi, pass_lo, pass_hi = mask
    keep = ((y > lo) | (bool(pass_lo) & (e < 0))) & ((y < hi) | (bool(pass_hi) & (e > 0)))
    return np.where(keep, e, 0)


# --- dynamic partial updates -------------------------------------------------------------------------

def importance(A: np.ndarray, sx: int, imp_c: np.ndarray, x_y: int) -> np.ndarray:
    """Q8 log2 of channel o's first-order loss decrease per MAC of its update, eta |g_o|^2 / (P K):
    2 (log2(sum_p |e[p,o]|) + log2(sum |x - zp|) + error exponent) + static part."""
    base = 2 * (fx.ilog2_q8(A) + int(fx.ilog2_q8(sx)) + 256 * x_y) + imp_c
    return np.where((np.asarray(A) > 0) & (sx > 0), base, fx.NEG)


def select_top(imp: np.ndarray, n: int) -> np.ndarray:
    """The n channels of highest importance (ties: lower index first)."""
    O = len(imp)
    sel = np.zeros(O, bool)
    if n >= O:
        sel[:] = True
    elif n > 0:
        order = np.lexsort((np.arange(O), -np.asarray(imp, np.int64)))
        sel[order[:n]] = True
    return sel


def gate_step(g: np.ndarray, state: list[int], gate: Gate, budget: int) -> bool:
    """Whether this sample (loss gradient g, before normalization) gets a backward pass. Its L1 norm (log2,
    Q16) reaches the threshold state[0] or not; the threshold rises by up or falls by down (not below 0),
    settling where about budget / step_macs of the samples reach it. state[1] saves budget MACs per step (at
    most cap); a sample that reached the threshold gets a step if the saved budget covers step_macs."""
    s = min(int(np.abs(np.asarray(g, np.int64)).sum()), fx.INT32_MAX)
    want = s > 0 and int(fx.ilog2_q8(s)) * 256 >= state[0]
    state[0] = state[0] + gate.up if want else max(state[0] - gate.down, 0)
    state[1] = min(state[1] + budget, gate.cap)
    if not want or state[1] < gate.step_macs:
        return False
    state[1] -= gate.step_macs
    return True


def plan_dynamic(est: list[int], layers: list[Layer], budget: int) -> tuple[int, list[int]]:
    """Fractional knapsack on the layers' importance estimates, each lowered by the static penalty of the
    error propagation needed to reach the layer (log2((prop + cost) / cost), Q8): in that order, each layer
    gets as many output channels as the budget has MACs left for, after the propagation down to the
    deepest layer chosen so far (or this one). Returns (deepest visited layer, channels taken per layer);
    the top layer is always visited (its error is the loss gradient)."""
    J = len(layers)
    order = sorted(range(J), key=lambda j: (-(est[j] - layers[j].penalty), j))
    taken = [0] * J
    deep, wsum = 0, 0
    for j in order:
        nd = max(deep, j)
        rem = budget - layers[nd].prop - wsum
        if rem <= 0:
            continue
        n = min(rem // layers[j].cwc, layers[j].O)
        if n >= 1:
            taken[j] = n
            deep, wsum = nd, wsum + n * layers[j].cwc
    return deep, taken
