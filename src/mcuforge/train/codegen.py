"""C generation of the training step: `<prefix>_train_step(input, label)` in the model's library.

`TrainExtension` plugs into codegen.emit.render_sources:

* plan(): the training memory plan (train/memory.py); inference uses the same arena layout,
  so the training forward pass is `<prefix>_invoke()` itself;
* emit(): trainable conv/fc layers read their weights, biases and requantization shifts from
  RAM arrays (initialized from flash by the start-up code, .data) through the portable kernels;
  the other layers keep their constants in flash and their (DSP) kernels;
* finish(): the training constants (integer multipliers from mcuforge.train.program), the state,
  the step function (loss gradient, dynamic plan, backward, updates) and the API;
* report(): report.json's "train" section: RAM and flash per buffer kind, costs, the layers.
"""

from __future__ import annotations

import numpy as np

from ..codegen.context import CodegenContext, c_initializer
from ..errors import DoesNotFitError
from ..ir.graph import Graph, Node
from ..ops import get_op
from ..ops.softmax import softmax_params
from ..targets.table import format_size
from .memory import TrainPlan, plan_training
from .program import UNSEEN_EST, EST_CLAMP, Program, TrainConfig, build_program

STACK_RESERVE = 4096 + 1024  # what the Cortex-M firmware reserves for stack and heap (targets/cortex_m.py)


def _geom_init(g) -> str:
    return (f"{{ {g.in_h}, {g.in_w}, {g.in_c}, {g.out_h}, {g.out_w}, {g.out_c}, {g.k_h}, {g.k_w}, "
            f"{g.stride_h}, {g.stride_w}, {g.dil_h}, {g.dil_w}, {g.pad_top}, {g.pad_left}, {g.groups}, ")


class TrainExtension:
    def __init__(self, graph: Graph, config: TrainConfig, target=None) -> None:
        from dataclasses import replace

        from .program import resolve_trainable

        if config.trainable is None:
            config = replace(config, trainable=resolve_trainable(graph, None))
        self.graph = graph
        self.config = config
        self.prog: Program = build_program(graph, config)
        self.target = target
        self.tplan: TrainPlan | None = None
        self.ram: dict[str, dict[str, str]] = {}  # node -> {"w", "b", "shift"} identifiers
        self.ram_bytes: dict[str, int] = {"weights": 0, "biases": 0, "requant_shifts": 0, "adapt_exponents": 0,
                                          "momentum": 0, "scratch": 0, "plan_state": 0}
        self.flash_init_bytes = 0  # initial values of the RAM parameters (flash, .data)
        self.flash_train_bytes = 0  # training constants (flash)

    # -- hooks ----------------------------------------------------------------------------------------
    def plan(self, graph: Graph):
        self.tplan = plan_training(graph, self.prog)
        return self.tplan.plan

    def _ram_array(self, ctx: CodegenContext, base: str, values, ctype: str, kind: str) -> str:
        values = np.asarray(values).ravel()
        ident = ctx.ident(base)
        size = values.size * {"int8_t": 1, "int32_t": 4}[ctype]
        ctx.decl(f"/* trainable: RAM, initialized from flash */\nstatic {ctype} {ident}[{max(1, values.size)}] = "
                 f"{c_initializer(values)};")
        self.ram_bytes[kind] += size
        self.flash_init_bytes += size
        return ident

    def emit(self, node: Node, graph: Graph, ctx: CodegenContext) -> str | None:
        try:
            L = self.prog.layer(node.name)
        except KeyError:
            return None
        op = get_op(node.op, node)
        x, y = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        mult, shift, (lo, hi) = op.requant(node, graph)
        dsp = ctx.target.has_dsp and (node.op == "fully_connected" or int(node.attrs["groups"]) == 1)
        wdata = graph.tensors[node.inputs[1]].data.ravel()
        if dsp:  # mf_train_dsp.c reads the last group of 4 of a row as a whole word: 4 bytes of padding
            wdata = np.concatenate([wdata, np.zeros(4, np.int8)])
        w_id = self._ram_array(ctx, node.inputs[1], wdata, "int8_t", "weights")
        b_id = (self._ram_array(ctx, L.bias, graph.tensors[L.bias].data, "int32_t", "biases") if L.bias else "NULL")
        s_id = self._ram_array(ctx, node.name + "_shift", shift, "int32_t", "requant_shifts")
        m_id = ctx.array(node.name + "_mult", mult, "int32_t")
        self.ram[node.name] = {"w": w_id, "b": b_id, "shift": s_id}
        p = ctx.ident(node.name + "_p")
        if dsp:
            g = L.geom
            self.col_words = max(getattr(self, "col_words", 0), 4 * -(-g.k // 4))
            ctx.use_kernel_files("mf_dsp.h", "mf_train.h", "mf_train_dsp.c")
            ctx.decl(f"static const mf_t_fwd_params {p} = {{ {g.in_h}, {g.in_w}, {g.in_c}, {g.out_h}, {g.out_w}, "
                     f"{g.out_c}, {g.k_h}, {g.k_w}, {g.stride_h}, {g.stride_w}, {g.dil_h}, {g.dil_w}, {g.pad_top}, "
                     f"{g.pad_left}, {x.quant.zp}, {y.quant.zp}, {lo}, {hi}, {m_id}, {s_id} }};")
            return (f"mf_t_conv_fwd_dsp(&{p}, {ctx.buf(node.inputs[0])}, {w_id}, {b_id}, {ctx.buf(node.outputs[0])}, "
                    f"{ctx.prefix}_t_col);")
        if node.op == "conv2d":
            a = node.attrs
            ctx.decl(
                f"static const mf_conv_params {p} = {{\n"
                f"  {x.shape[1]}, {x.shape[2]}, {x.shape[3]}, {y.shape[1]}, {y.shape[2]}, {y.shape[3]},\n"
                f"  {L.geom.k_h}, {L.geom.k_w}, {a['stride'][0]}, {a['stride'][1]}, "
                f"{a['dilation'][0]}, {a['dilation'][1]}, {a['pads'][0]}, {a['pads'][2]}, {a['groups']},\n"
                f"  {-x.quant.zp}, {y.quant.zp}, {lo}, {hi}, {m_id}, {s_id}\n}};")
            return f"mf_conv2d_s8(&{p}, {ctx.buf(node.inputs[0])}, {w_id}, {b_id}, {ctx.buf(node.outputs[0])});"
        rows = int(np.prod(x.shape[:-1]))
        ctx.decl(f"static const mf_fc_params {p} = {{ {rows}, {L.geom.in_c}, {L.O}, "
                 f"{-x.quant.zp}, {y.quant.zp}, {lo}, {hi}, {m_id}, {s_id} }};")
        return f"mf_fc_s8(&{p}, {ctx.buf(node.inputs[0])}, {w_id}, {b_id}, {ctx.buf(node.outputs[0])});"

    # -- the step ---------------------------------------------------------------------------------------
    def finish(self, ctx: CodegenContext) -> dict:
        prog, cfg, graph, tp = self.prog, self.config, self.graph, self.tplan
        pre = ctx.prefix
        PRE = pre.upper()
        ctx.use_kernel_files("mf_train.h", "mf_train.c")
        const0 = ctx.const_bytes
        if prog.config.loss == "ce" and not prog.softmax_final and "softmax" not in {n.op for n in graph.nodes}:
            ctx.use_kernel_files("mf_softmax.c")
        J = prog.num_layers
        arena = f"{pre}_arena.bytes"

        def E(key: str) -> str:
            return f"({arena} + {tp.err_offset[key]})"

        def ACC(key: str) -> str:
            return f"({pre}_t_acc + {tp.acc_offset[key] // 4})"

        xvars: dict[str, str] = {}

        def X(key: str) -> str:
            if key not in xvars:
                xvars[key] = f"x{len(xvars)}"
            return xvars[key]

        decls: list[str] = []
        if getattr(self, "col_words", 0):
            # declared before the layers' code (which uses it): at the head of the declarations
            ctx.decls.insert(0, f"/* two pixels' int16 patch columns for the trainable layers' DSP forward kernel */\n"
                                f"static uint32_t {pre}_t_col[{self.col_words}];")
            self.ram_bytes["scratch"] += 4 * self.col_words
        decls.append(f"/* int32 gradient accumulators (kept apart from the int8 arena: no aliasing) */\n"
                     f"static int32_t {pre}_t_acc[{max(1, tp.acc_size // 4)}];")
        max_k = max(L.K for L in prog.layers)
        max_o = max([L.O for L in prog.layers] + [b.geom.out_c for b in prog.backward if b.geom])
        dynamic = cfg.policy == "dynamic"
        decls.append(f"static int32_t {pre}_t_row[{max_k}];  /* one channel's weight gradient */\n"
                     f"static int32_t {pre}_t_abs[{max_o}], {pre}_t_sum[{max_o}];\n"
                     f"static uint8_t {pre}_t_sel[{max_o}];\nstatic uint32_t {pre}_t_step;")
        self.ram_bytes["scratch"] += 4 * max_k + 9 * max_o + 4
        if any(b.layer is not None and b.contribs for b in prog.backward):
            decls.append(f"static int32_t {pre}_t_reff[{max_o}];  /* input-error rescaling ratios */")
            self.ram_bytes["scratch"] += 4 * max_o
        if dynamic:
            decls.append(f"static int32_t {pre}_t_imp[{max_o}], {pre}_t_taken[{J}], {pre}_t_order[{J}];")
            self.ram_bytes["scratch"] += 4 * max_o + 8 * J
        beta = int(np.floor(cfg.momentum * 32768 + 0.5))
        decls.append(f"static const mf_t_opts {pre}_t_opts = {{ {cfg.seed & 0xFFFFFFFF}u, "
                     f"{1 if cfg.rounding == 'stochastic' else 0}, {beta} }};")
        layer_ids: list[str] = []
        geom_ids: dict[str, str] = {}
        for L in prog.layers:
            ids = self.ram[L.node]
            arr = {k: ctx.array(f"{L.node}_t_{k}", getattr(L, k), "int32_t")
                   for k in ("um", "us", "vm", "vs", "r0", "imp_c")}
            adapt, sat = ctx.ident(L.node + "_t_adapt"), ctx.ident(L.node + "_t_sat")
            decls.append(f"static int32_t {adapt}[{L.O}], {sat}[{L.O}];")
            self.ram_bytes["adapt_exponents"] += 8 * L.O
            vw = vb = "NULL"
            if cfg.momentum > 0:
                vw, vb = ctx.ident(L.node + "_t_vw"), (ctx.ident(L.node + "_t_vb") if L.bias else "NULL")
                decls.append(f"static int32_t {vw}[{L.O * L.K}];")
                self.ram_bytes["momentum"] += 4 * L.O * L.K
                if L.bias:
                    decls.append(f"static int32_t {vb}[{L.O}];")
                    self.ram_bytes["momentum"] += 4 * L.O
            lid = ctx.ident(L.node + "_t_layer")
            decls.append(
                f"static const mf_t_layer {lid} = {{ {ids['w']}, {ids['b']}, {ids['shift']}, {adapt}, {sat}, {vw}, "
                f"{vb},\n  {arr['um']}, {arr['us']}, {arr['vm']}, {arr['vs']}, {arr['r0']}, {arr['imp_c']},\n"
                f"  {L.K}, {L.O}, {L.blim}, {cfg.max_adapt}, {cfg.adapt_after}, {L.wbase}u }};")
            layer_ids.append(lid)
        decls.append(f"static const mf_t_layer *const {pre}_t_layers[{J}] = {{ {', '.join('&' + i for i in layer_ids)} }};")
        for b in prog.backward:
            if b.geom is not None:
                gid = ctx.ident(b.node + "_t_geom")
                decls.append(f"static const mf_t_geom {gid} = {_geom_init(b.geom)}{-b.zp_x} }};")
                geom_ids[b.node] = gid
        if dynamic:
            decls.append(f"static int32_t {pre}_t_est[{J}] = {c_initializer([UNSEEN_EST] * J)};\n"
                         f"static uint8_t {pre}_t_seen[{J}];")
            self.ram_bytes["plan_state"] += 5 * J
            if prog.gate is not None:
                decls.append(f"static int32_t {pre}_t_gate[2];  /* loss gate: threshold, saved budget */")
                self.ram_bytes["plan_state"] += 8
            plan_arr = {k: ctx.array(f"t_plan_{k}", v, "int32_t") for k, v in
                        (("prop", [L.prop for L in prog.layers]), ("cwc", [L.cwc for L in prog.layers]),
                         ("pen", [L.penalty for L in prog.layers]),
                         ("o", [L.O for L in prog.layers]))}

        body: list[str] = []
        a = body.append
        lt = graph.tensors[prog.logits]
        n_in = graph.tensors[prog.input].size
        a(f"    if ({'label < 0 || label >= ' + str(prog.num_classes) if cfg.loss == 'ce' else '!target'}) return -1;")
        a(f"    memcpy({ctx.buf(prog.input)}, input, {n_in});")
        a(f"    {pre}_invoke();")
        if cfg.loss == "ce":
            a(f"    pred = mf_t_argmax({ctx.buf(prog.logits)}, {prog.num_classes});")
            if prog.softmax_final:
                a(f"    mf_t_ce_grad({ctx.buf(prog.output)}, {lt.size}, label, {ACC(prog.logits)});")
            else:
                mult, ls, dmin = softmax_params(1.0, lt.quant.s)
                prob = f"({arena} + {tp.prob_offset})"
                a(f"    mf_softmax_s8({ctx.buf(prog.logits)}, {prob}, 1, {lt.size}, {mult}, {ls}, {dmin});")
                a(f"    mf_t_ce_grad({prob}, {lt.size}, label, {ACC(prog.logits)});")
        else:
            a(f"    mf_t_mse_grad({ctx.buf(prog.output)}, target, {lt.size}, {ACC(prog.logits)});")
        a(f"    {X(prog.logits)} = mf_t_normalize({ACC(prog.logits)}, {E(prog.logits)}, {lt.size});")
        if cfg.lr_halve_every:
            a(f"    sched = -(int32_t)MF_MIN({pre}_t_step / {cfg.lr_halve_every}u, 24u);")
        gate = prog.gate if dynamic else None
        if dynamic:
            plan = (f"mf_t_plan({J}, {pre}_t_est, {plan_arr['pen']}, {plan_arr['prop']}, {plan_arr['cwc']}, "
                    f"{plan_arr['o']}, {prog.step_macs}, {pre}_t_taken, {pre}_t_order)")
            if gate is not None:
                # a skipped sample runs no backward node (deep = -1) but passes every profiling mark
                a(f"    deep = mf_t_gate({ACC(prog.logits)}, {lt.size}, {pre}_t_gate, {prog.budget_macs}, "
                  f"{gate.step_macs}, {gate.cap}, {gate.up}, {gate.down})\n        ? {plan} : -1;")
            else:
                a(f"    deep = {plan};")
        a("    MF_LAYER_MARK(-1); /* profiling builds: end of the loss and plan (-1: not an inference layer) */")
        self.phases = ["loss and plan"]
        jprod = {b.node: b.J for b in prog.backward}

        def needs(c) -> str | None:
            """C condition under which contribution c is computed (None: always)."""
            jp = jprod[graph.producer(c.tensor).name]
            return f"deep >= {jp}" if dynamic and jp > 0 else None

        def target_key(c) -> str:
            et = prog.errors[c.tensor]
            return f"{c.tensor}@{et.contribs.index(c)}" if et.multi else c.tensor

        for b in prog.backward:
            node = graph.node(b.node)
            a(f"    /* {b.node}: {b.op} */")
            cond = f"deep >= {b.J}" if dynamic and (b.J > 0 or gate is not None) else None
            ind = "        " if cond else "    "
            if cond:
                a(f"    if ({cond}) {{")
            et = prog.errors[b.out]
            if et.multi:
                n = et.size
                k0 = f"{b.out}@0"
                a(f"{ind}mf_t_merge({ACC(b.out)}, {E(k0)}, {n}, 0, 0, 1);")
                for i, c in enumerate(et.contribs[1:], start=1):
                    ki = f"{b.out}@{i}"
                    a(f"{ind}mf_t_merge({ACC(b.out)}, {E(ki)}, {n}, {c.m}, {c.s} + {X(ki)} - {X(k0)}, 0);")
                a(f"{ind}{X(b.out)} = {X(k0)} - 8 + mf_t_normalize({ACC(b.out)}, {E(b.out)}, {n});")
            yt = graph.tensors[b.out]
            xo = X(b.out)
            if b.op in ("conv2d", "fully_connected"):
                gm = b.geom
                trainable = b.layer is not None
                if b.mask is not None:
                    stats = f"{pre}_t_abs, {pre}_t_sum" if trainable else "NULL, NULL"
                    a(f"{ind}mf_t_mask({E(b.out)}, {ctx.buf(b.out)}, {gm.positions}, {gm.out_c}, {b.mask[0]}, "
                      f"{b.mask[1]}, {b.mask[2]}, {b.mask[3]}, {stats});")
                for c in b.contribs:
                    key, cnd = target_key(c), needs(c)
                    i2 = ind + ("    " if cnd else "")
                    if cnd:
                        a(f"{ind}if ({cnd}) {{")
                    n_x = graph.tensors[c.tensor].size
                    if trainable:
                        L = prog.layers[b.layer]
                        a(f"{i2}amax = mf_t_reff({pre}_t_layers[{L.j}]->r0, {pre}_t_layers[{L.j}]->adapt, {L.O}, "
                          f"{pre}_t_reff);")
                        w, reff = self.ram[b.node]["w"], f"{pre}_t_reff"
                    else:
                        a(f"{i2}amax = 0;")
                        w = ctx.const(node.inputs[1])
                        reff = ctx.array(b.node + "_t_r0", b.r0, "int32_t")
                    a(f"{i2}mf_t_input_grad(&{geom_ids[b.node]}, {E(b.out)}, {w}, {reff}, {ACC(key)});")
                    a(f"{i2}{X(key)} = {xo} + amax + mf_t_normalize({ACC(key)}, {E(key)}, {n_x});")
                    if cnd:
                        a(f"{ind}}}")
                if trainable:
                    L = prog.layers[b.layer]
                    lid = f"{pre}_t_layers[{L.j}]"
                    xin = ctx.buf(node.inputs[0])
                    xe = f"{xo} + sched"
                    if dynamic:
                        a(f"{ind}sx = mf_t_abs_sum({xin}, {graph.tensors[node.inputs[0]].size}, {-L.zp_x});")
                        a(f"{ind}fresh = mf_t_importance({pre}_t_abs, {L.O}, sx, {lid}->imp_c, {xo}, {pre}_t_imp);")
                        a(f"{ind}if (!{pre}_t_seen[{L.j}]) {{ {pre}_t_est[{L.j}] = fresh; {pre}_t_seen[{L.j}] = 1; }}")
                        a(f"{ind}else {pre}_t_est[{L.j}] += (fresh - {pre}_t_est[{L.j}]) >> 2;")
                        a(f"{ind}mf_t_select({pre}_t_imp, {L.O}, {pre}_t_taken[{L.j}], {pre}_t_sel, "
                          f"{1 if cfg.bias_visited else 0});")
                    else:
                        bits = 3 if cfg.policy == "full" else 2
                        a(f"{ind}memset({pre}_t_sel, {bits}, {L.O});")
                    a(f"{ind}mf_t_update(&{geom_ids[b.node]}, {lid}, &{pre}_t_opts, {E(b.out)}, {xin}, {pre}_t_sel, "
                      f"{pre}_t_abs, {pre}_t_sum, {xe}, {pre}_t_step, {pre}_t_row);")
            else:
                if b.mask is not None:
                    a(f"{ind}mf_t_mask({E(b.out)}, {ctx.buf(b.out)}, {yt.size}, 1, {b.mask[0]}, {b.mask[1]}, "
                      f"{b.mask[2]}, {b.mask[3]}, NULL, NULL);")
                for c in b.contribs:
                    key, cnd = target_key(c), needs(c)
                    i2 = ind + ("    " if cnd else "")
                    if cnd:
                        a(f"{ind}if ({cnd}) {{")
                    n_x = graph.tensors[c.tensor].size
                    if b.op in ("max_pool2d", "avg_pool2d") and b.direct:
                        pid = self._pool_params(ctx, node)
                        fn = "mf_t_maxpool_backward8" if b.op == "max_pool2d" else "mf_t_avgpool_backward8"
                        xarg = f"{ctx.buf(node.inputs[0])}, " if b.op == "max_pool2d" else ""
                        a(f"{i2}{fn}(&{pid}, {xarg}{E(b.out)}, {E(key)});")
                        a(f"{i2}{X(key)} = {xo};")
                    elif b.op in ("max_pool2d", "avg_pool2d"):
                        pid = self._pool_params(ctx, node)
                        if b.op == "max_pool2d":
                            a(f"{i2}mf_t_maxpool_backward(&{pid}, {ctx.buf(node.inputs[0])}, {E(b.out)}, {ACC(key)});")
                        else:
                            a(f"{i2}mf_t_avgpool_backward(&{pid}, {E(b.out)}, {ACC(key)});")
                        a(f"{i2}{X(key)} = {xo} + mf_t_normalize({ACC(key)}, {E(key)}, {n_x});")
                    else:  # reshape, add: the (masked) error passes unchanged
                        a(f"{i2}memcpy({E(key)}, {E(b.out)}, {n_x});")
                        a(f"{i2}{X(key)} = {xo};")
                    if cnd:
                        a(f"{ind}}}")
            if cond:
                a("    }")
            a("    MF_LAYER_MARK(-1);")
            self.phases.append(f"backward {b.node} ({b.op})")
        if dynamic:
            a(f"    for (j = deep + 1; j < {J} && deep >= 0; ++j) {pre}_t_est[j] = MF_MIN({pre}_t_est[j] + "
              f"{cfg.age_q8}, {EST_CLAMP});")
        a(f"    ++{pre}_t_step;")
        a("    return pred;")

        locals_ = [f"int32_t deep = {J - 1}, pred = 0, sched = 0, amax = 0;"]
        if dynamic:
            locals_.append("int32_t sx = 0, fresh = 0, j;")
        if xvars:
            locals_.append("int32_t " + ", ".join(f"{v} = 0" for v in xvars.values()) + ";")
        sig = (f"int {pre}_train_step(const int8_t *input, int32_t label)" if cfg.loss == "ce"
               else f"int {pre}_train_step(const int8_t *input, const int8_t *target)")
        step_fn = (f"/* One SGD step on one sample (mcuforge.train: {cfg.policy} update"
                   + (f", budget {cfg.budget:g} of the full backward's MACs" if dynamic else "")
                   + (f"; steps of {cfg.min_step_budget:g} for the samples with the largest loss" if gate else "")
                   + "). */\n"
                   + sig + " {\n" + "\n".join("    " + s for s in locals_) + "\n"
                   + "    (void)amax;\n    (void)deep;\n    (void)sched;\n" + "\n".join(body) + "\n}")
        api = f"""uint32_t {pre}_train_steps(void) {{
    return {pre}_t_step;
}}

int {pre}_train_layer(int j, int8_t **weights, int32_t **bias, int32_t **adapt, int32_t *out_channels,
                      int32_t *per_channel) {{
    const mf_t_layer *L;
    if (j < 0 || j >= {J}) return -1;
    L = {pre}_t_layers[j];
    *weights = L->w;
    *bias = L->bias;
    *adapt = L->adapt;
    *out_channels = L->O;
    *per_channel = L->K;
    return 0;
}}"""
        block = ("/* ---- on-device training (mcuforge.train; docs/training.md) ---- */\n" + "\n".join(decls)
                 + "\n\n" + step_fn + "\n\n" + api)
        label = "int32_t label" if cfg.loss == "ce" else "const int8_t *target"
        header = f"""/* On-device training (deploy --train): {cfg.policy} update of {J} layer(s), {cfg.loss} loss.
 * {pre}_train_step() runs the model forward on `input` (int8, as {pre}_input(0) takes it), then one
 * fully quantized SGD step: """ + ("`label` is the class index (0.." + str(prog.num_classes - 1) + ")"
                                    if cfg.loss == "ce" else "`target` is the int8 output the model should give") + f""".
 * Returns the class the model predicted before the step (0 for MSE), or -1 for a bad label (no step).
 * It uses the arena: write the input again before {pre}_invoke(). Trained weights live in RAM and
 * inference uses them at once. */
#define {PRE}_TRAIN_LAYERS {J}
int {pre}_train_step(const int8_t *input, {label});
/* Steps done since start-up. */
uint32_t {pre}_train_steps(void);
/* The trained parameters of layer j (0 = nearest the loss): weights [out_channels][per_channel] int8,
 * biases [out_channels] int32 (NULL without bias), and per channel the number of times its weight
 * scale doubled (real weight = scale0 * 2^adapt * w). Returns 0, or -1 for a bad j. */
int {pre}_train_layer(int j, int8_t **weights, int32_t **bias, int32_t **adapt, int32_t *out_channels,
                      int32_t *per_channel);"""
        glue = f"""/* generated by mcuforge: the training runner's view of the training API */
#include "{pre}.h"
#define MF_TRAIN_STEP {pre}_train_step
#define MF_TRAIN_LAYER {pre}_train_layer
#define MF_TRAIN_LAYERS {J}
#define MF_TRAIN_INPUT_SIZE {n_in}
#define MF_TRAIN_LOSS_CE {1 if cfg.loss == 'ce' else 0}
#define MF_TRAIN_LABEL_SIZE {4 if cfg.loss == 'ce' else graph.tensors[prog.output].size}
#define MF_TRAIN_INIT {pre}_init
"""
        self.flash_train_bytes = ctx.const_bytes - const0
        ctx.const_bytes += self.flash_init_bytes
        self._check_fit(ctx)
        return {"blocks": [block], "header": [header], "files": {"mf_train_api.h": glue}}

    def _pool_params(self, ctx: CodegenContext, node: Node) -> str:
        g = self.graph
        x, y = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        a = node.attrs
        pid = ctx.ident(node.name + "_t_pool")
        ctx.decl(f"static const mf_pool_params {pid} = {{ {x.shape[1]}, {x.shape[2]}, {x.shape[3]}, {y.shape[1]}, "
                 f"{y.shape[2]}, {a['kernel'][0]}, {a['kernel'][1]}, {a['stride'][0]}, {a['stride'][1]}, "
                 f"{a['pads'][0]}, {a['pads'][2]}, {1 if a.get('count_include_pad') else 0}, {x.quant.zp}, -128, 127 }};")
        return pid

    # -- costs and memory ---------------------------------------------------------------------------------
    def memory(self, ctx: CodegenContext) -> dict:
        tp = self.tplan
        kinds = tp.summary()["buffer_bytes_by_kind"]
        ram = {
            "arena_bytes": tp.plan.arena_size,
            "accumulator_bytes": tp.acc_size,
            **{f"{k}_bytes": v for k, v in self.ram_bytes.items()},
            "kernel_scratch_bytes": ctx.scratch_bytes,
        }
        ram["total_bytes"] = sum(ram.values())
        naive = tp.naive_bytes + sum(self.ram_bytes.values()) + ctx.scratch_bytes
        return {
            "ram": ram,
            "arena_buffers_bytes_by_kind": kinds,
            "kept_activation_bytes": sum(self.graph.tensors[t].nbytes for t in tp.kept),
            "kept_activations": tp.kept,
            "naive_ram_bytes": naive,
            "naive_arena_bytes": tp.naive_bytes,
            "inference_arena_bytes": tp.inference_arena,
            "flash": {"training_constants_bytes": self.flash_train_bytes,
                      "ram_initial_values_bytes": self.flash_init_bytes},
        }

    def _check_fit(self, ctx: CodegenContext) -> None:
        t = self.target
        if t is None or getattr(t, "is_generic", True):
            return
        mem = self.memory(ctx)
        need = mem["ram"]["total_bytes"] + STACK_RESERVE
        if need > t.ram:
            parts = ", ".join(f"{k.replace('_bytes', '').replace('_', ' ')} {v:,} B" for k, v in mem["ram"].items()
                              if k != "total_bytes" and v)
            raise DoesNotFitError(
                f"training does not fit {t.name}: it needs {need:,} B of RAM ({parts}, plus {STACK_RESERVE:,} B stack "
                f"and heap) and {t.name} has {format_size(t.ram)} (over by {need - t.ram:,} B). Train fewer layers "
                f"(--trainable last:K), drop momentum, or use a target with more RAM (--ram)")
        if ctx.const_bytes > t.flash:
            raise DoesNotFitError(f"training does not fit {t.name}: constants take {ctx.const_bytes:,} B of flash and "
                                  f"{t.name} has {format_size(t.flash)}")

    def report(self, ctx: CodegenContext) -> dict:
        prog, cfg = self.prog, self.config
        return {"train": {
            "config": cfg.to_json(),
            "loss": cfg.loss, "policy": cfg.policy, "num_classes": prog.num_classes,
            "logits": prog.logits, "softmax_final": prog.softmax_final,
            "layers": [{"j": L.j, "node": L.node, "weight": L.weight, "bias": L.bias, "out_channels": L.O,
                        "per_channel": L.K, "update_cost_macs": L.cw, "propagation_macs": L.prop,
                        "s_w0": [float(v) for v in L.s_w0]} for L in prog.layers],
            "backward_macs_full": prog.full_macs, "budget_macs": prog.budget_macs,
            "forward_macs": prog.forward_macs,
            "profile_phases": getattr(self, "phases", []),
            "memory": self.memory(ctx),
        }}


def generate_training_library(graph: Graph, out_dir, config: TrainConfig, prefix: str = "model", target=None,
                              extra_report: dict | None = None) -> dict:
    """The model's C library with `<prefix>_train_step` (atomically written); returns the report."""
    from ..codegen.emit import generate

    return generate(graph, out_dir, prefix=prefix, target=target, extension=TrainExtension(graph, config, target),
                    extra_report=extra_report)
