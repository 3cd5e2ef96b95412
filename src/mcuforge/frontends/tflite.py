"""TFLite importer: an int8 .tflite flatbuffer -> a quantized mcuforge graph.

The flatbuffer is read with the schema that the PyPI package ``tflite-micro``
ships (``schema_py_generated``, object API). The graph keeps TFLite's layout
(NHWC, batch first), its tensors' quantization and its integer semantics:

* CONV_2D (incl. grouped), DEPTHWISE_CONV_2D (-> conv2d with groups = C, weight
  [1,KH,KW,C*m] -> [C*m,KH,KW,1]), FULLY_CONNECTED, AVERAGE_POOL_2D, MAX_POOL_2D,
  ADD, MUL, SOFTMAX, CONCATENATION, RESHAPE, SQUEEZE, PAD/PADV2, MEAN, TRANSPOSE
  map to the IR op of the same meaning; SAME padding becomes explicit pads and
  fused activations become act_min/act_max.
* LOGISTIC, TANH, RELU, RELU6, RELU_N1_TO_1, LEAKY_RELU become table ops with
  ``table_method: "tflm"`` (the table is TFLM's integer kernel, quant/tflm_tables.py).
* QUANTIZE int8 -> int8 becomes ``quantize``; a float32 -> int8 QUANTIZE on a graph
  input and an int8 -> float32 DEQUANTIZE on a graph output become the graph's
  input/output quantization (``meta["io"][name]["source_dtype"] = "float32"``).

Anything else -- another op, a float model, int16 activations -- is an error that
says which operator (by index) and what to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import GraphError, ModelFormatError, UnsupportedOpError
from ..ir.graph import Graph, QuantParams, Tensor

SUPPORTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD", "MUL",
             "RESHAPE", "SQUEEZE", "PAD", "PADV2", "MEAN", "CONCATENATION", "SOFTMAX", "LOGISTIC", "TANH",
             "RELU", "RELU6", "RELU_N1_TO_1", "LEAKY_RELU", "QUANTIZE", "DEQUANTIZE", "TRANSPOSE")

FLOAT_MODEL_HINT = ("quantize it to int8 first (TFLite converter with a representative dataset and "
                    "inference_input_type/inference_output_type int8), or deploy the float source model "
                    "with --calib")


def schema():
    """The flatbuffer schema module (generated Python, object API) shipped by tflite-micro."""
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
    except ImportError as exc:  # pragma: no cover - a broken installation
        raise ModelFormatError(f"reading and writing .tflite files needs the 'tflite-micro' package "
                               f"(pip install tflite-micro): {exc}") from None
    return schema_py_generated


def builtin_names() -> dict[int, str]:
    fb = schema()
    return {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}


def type_names() -> dict[int, str]:
    fb = schema()
    return {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}


NP_TYPES = {"FLOAT32": np.float32, "INT8": np.int8, "INT32": np.int32, "INT16": np.int16, "UINT8": np.uint8,
            "INT64": np.int64}

ACTIVATIONS = {0: (None, None), 1: (0.0, None), 2: (-1.0, 1.0), 3: (0.0, 6.0)}
ACTIVATION_NAMES = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


def same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite SAME padding for one spatial dimension: (before, after)."""
    eff = (k - 1) * dilation + 1
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def read_model(data: bytes, where: str = "model"):
    fb = schema()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFormatError(f"'{where}' is not a TFLite flatbuffer (file identifier 'TFL3' missing)")
    try:
        return fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
    except Exception as exc:  # flatbuffers raises assorted errors on truncated data
        raise ModelFormatError(f"'{where}' is a corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from None


class _Importer:
    def __init__(self, model, where: str, name: str) -> None:
        self.model, self.where = model, where
        self.fb = schema()
        self.ops = builtin_names()
        self.types = type_names()
        if not model.subgraphs:
            raise ModelFormatError(f"'{where}' has no subgraph")
        if len(model.subgraphs) > 1:
            raise UnsupportedOpError(f"'{where}' has {len(model.subgraphs)} subgraphs: mcuforge imports "
                                     "single-subgraph models (no control flow)")
        self.sg = model.subgraphs[0]
        self.g = Graph(name)
        self.names: dict[int, str] = {}  # tflite tensor index -> IR tensor name
        self.alias: dict[int, int] = {}  # boundary QUANTIZE/DEQUANTIZE: tensor -> tensor it stands for
        self.io: dict[str, dict] = {}

    # -- tensors ------------------------------------------------------------------
    def ttype(self, i: int) -> str:
        return self.types.get(self.sg.tensors[i].type, f"type {self.sg.tensors[i].type}")

    def shape(self, i: int) -> tuple[int, ...]:
        t = self.sg.tensors[i]
        return tuple(int(d) for d in (t.shape if t.shape is not None else []))

    def data(self, i: int) -> np.ndarray | None:
        t = self.sg.tensors[i]
        buf = self.model.buffers[t.buffer] if self.model.buffers and t.buffer < len(self.model.buffers) else None
        if buf is None or buf.data is None or len(buf.data) == 0:
            if buf is not None and getattr(buf, "offset", 0):
                raise ModelFormatError(f"'{self.where}': tensor {i} keeps its data outside the flatbuffer "
                                       "(models over 2 GB are not supported)")
            return None
        dtype = NP_TYPES.get(self.ttype(i))
        if dtype is None:
            raise UnsupportedOpError(f"'{self.where}': constant tensor {i} has unsupported type {self.ttype(i)}")
        raw = np.asarray(buf.data, dtype=np.uint8).tobytes()
        return np.frombuffer(raw, dtype=dtype).reshape(self.shape(i)).copy()

    def quant(self, i: int, axis_map=None) -> QuantParams | None:
        q = self.sg.tensors[i].quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            return None
        scale = np.asarray(q.scale, np.float32)
        zp = np.asarray(q.zeroPoint if q.zeroPoint is not None else np.zeros(len(scale)), np.int64)
        if len(zp) == 1 and len(scale) > 1:
            zp = np.full(len(scale), zp[0])
        if len(scale) == 1:
            return QuantParams(scale, zp[:1], None)
        axis = int(q.quantizedDimension)
        return QuantParams(scale, zp, axis if axis_map is None else axis_map(axis))

    def tensor_label(self, i: int) -> str:
        raw = self.sg.tensors[i].name
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
        return text

    def short_name(self, i: int, default: str) -> str:
        text = self.tensor_label(i).split(";")[0]
        text = "".join(ch if ch.isalnum() or ch in "_" else "_" for ch in text.split("/")[-1] or text)
        return text.strip("_")[:40] or default

    def act(self, op_index: int, i: int) -> str:
        """The IR name of activation tensor i (int8, defined already)."""
        i = self.alias.get(i, i)
        if i in self.names:
            return self.names[i]
        if self.data(i) is not None:
            return self.const(op_index, i, "const")
        raise GraphError(f"'{self.where}': operator {op_index} reads tensor {i} "
                         f"('{self.tensor_label(i)}') before any operator writes it")

    def const(self, op_index: int, i: int, role: str, data: np.ndarray | None = None, axis_map=None,
              shape: tuple[int, ...] | None = None) -> str:
        arr = self.data(i) if data is None else data
        if arr is None:
            raise UnsupportedOpError(f"'{self.where}': operator {op_index}: input tensor {i} "
                                     f"('{self.tensor_label(i)}') must be a constant ({role})")
        dtype = {np.dtype(np.int8): "int8", np.dtype(np.int32): "int32", np.dtype(np.int16): "int16",
                 np.dtype(np.float32): "float32"}.get(arr.dtype)
        if dtype is None:
            raise UnsupportedOpError(f"'{self.where}': operator {op_index}: constant tensor {i} has "
                                     f"unsupported type {arr.dtype}")
        if shape is not None:
            arr = arr.reshape(shape)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        name = self.g.unique_name(f"{self.node_base}_{role}")
        self.g.add_tensor(Tensor(name, arr.shape, dtype, self.quant(i, axis_map), arr))
        return name

    def new_act(self, i: int, shape: tuple[int, ...] | None = None, quant_from: int | None = None) -> str:
        """Declare the IR tensor for tflite activation tensor i (output of the current operator)."""
        ttype = self.ttype(i)
        if ttype != "INT8":
            self.fail_type(i, ttype)
        q = self.quant(quant_from if quant_from is not None else i)
        if q is None:
            raise ModelFormatError(f"'{self.where}': int8 tensor {i} ('{self.tensor_label(i)}') has no "
                                   "quantization parameters")
        shp = self.shape(i) if shape is None else shape
        if not shp or shp[0] != 1:
            shp = (1,) + tuple(shp)
        name = self.g.unique_name(f"{self.node_base}_out")
        self.g.add_tensor(Tensor(name, shp, "int8", q))
        self.names[i] = name
        return name

    def fail_type(self, i: int, ttype: str, op_index: int | None = None) -> None:
        where = f"operator {op_index}: " if op_index is not None else ""
        if ttype == "FLOAT32":
            raise ModelFormatError(f"'{self.where}': {where}tensor {i} ('{self.tensor_label(i)}') is float32: "
                                   f"this is a float TFLite model; mcuforge deploys int8 models: {FLOAT_MODEL_HINT}")
        raise UnsupportedOpError(f"'{self.where}': {where}tensor {i} ('{self.tensor_label(i)}') has type "
                                 f"{ttype}: mcuforge imports int8 activations only")

    # -- graph ------------------------------------------------------------------------
    def run(self) -> Graph:
        sg = self.sg
        ops = sg.operators or []
        codes = [self.op_name(op) for op in ops]
        consumers: dict[int, list[int]] = {}
        for k, op in enumerate(ops):
            for t in op.inputs if op.inputs is not None else []:
                consumers.setdefault(int(t), []).append(k)
        skip: set[int] = set()
        # Graph inputs: int8, or float32 consumed only by a QUANTIZE (boundary quantization).
        for i in sg.inputs:
            i = int(i)
            ttype = self.ttype(i)
            if ttype == "FLOAT32":
                users = consumers.get(i, [])
                if len(users) == 1 and codes[users[0]] == "QUANTIZE" and \
                        self.ttype(int(ops[users[0]].outputs[0])) == "INT8":
                    k = users[0]
                    skip.add(k)
                    out = int(ops[k].outputs[0])
                    self.node_base = self.short_name(i, "input")
                    name = self.declare_input(out, label_from=i)
                    self.io[name] = {"torch_shape": list(self._user_shape(i)), "perm": None,
                                     "ir_shape": list(self.g.tensors[name].shape), "source_dtype": "float32"}
                    continue
                self.fail_type(i, ttype)
            if ttype != "INT8":
                self.fail_type(i, ttype)
            self.node_base = self.short_name(i, "input")
            name = self.declare_input(i)
            self.io[name] = {"torch_shape": list(self._user_shape(i)), "perm": None,
                             "ir_shape": list(self.g.tensors[name].shape)}
        # Graph outputs produced by a DEQUANTIZE: the int8 tensor before it is the output.
        out_map: dict[int, tuple[int, str]] = {}
        for o in sg.outputs:
            o = int(o)
            if self.ttype(o) == "FLOAT32":
                k = next((k for k, op in enumerate(ops) if op.outputs is not None and o in list(op.outputs)), None)
                if k is not None and codes[k] == "DEQUANTIZE":
                    skip.add(k)
                    out_map[o] = (int(ops[k].inputs[0]), "float32")
                    continue
                self.fail_type(o, "FLOAT32")
            out_map[o] = (o, "int8")
        for k, op in enumerate(ops):
            if k in skip:
                continue
            self.convert(k, op, codes[k])
        outputs = []
        for o in sg.outputs:
            src, dtype = out_map[int(o)]
            if src not in self.names:
                raise GraphError(f"'{self.where}': graph output tensor {o} is never computed")
            name = self.names[src]
            if name in outputs or name in self.g.inputs:
                raise UnsupportedOpError(f"'{self.where}': graph output tensor {o} is a graph input or "
                                         "repeated output")
            outputs.append(name)
            entry = {"torch_shape": list(self._user_shape(int(o))), "perm": None,
                     "ir_shape": list(self.g.tensors[name].shape)}
            if dtype == "float32":
                entry["source_dtype"] = "float32"
            self.io[name] = entry
        self.g.outputs = outputs
        for name, entry in self.io.items():
            entry["perm"] = list(range(len(entry["ir_shape"]))) if len(entry["torch_shape"]) == len(
                entry["ir_shape"]) else None
            if entry["perm"] is None:  # a batch-less tflite shape: the user's arrays gain a batch axis
                entry["torch_shape"] = list(entry["ir_shape"])
                entry["perm"] = list(range(len(entry["ir_shape"])))
        self.g.meta["io"] = self.io
        self.g.meta["quantization"] = {"scheme": "tflite-int8", "method": "imported"}
        self.g.meta["source"] = {"format": "tflite", "file": self.where,
                                 "description": _text(self.model.description), "version": int(self.model.version)}
        self.g.prune()
        try:
            self.g.validate()
        except GraphError as exc:
            raise GraphError(f"'{self.where}': the imported graph is inconsistent: {exc}") from None
        return self.g

    def _user_shape(self, i: int) -> tuple[int, ...]:
        return self.shape(i)

    def declare_input(self, i: int, label_from: int | None = None) -> str:
        q = self.quant(i)
        if q is None:
            raise ModelFormatError(f"'{self.where}': int8 input tensor {i} has no quantization parameters")
        shp = self.shape(i)
        if not shp or shp[0] != 1:
            shp = (1,) + shp
        name = self.g.unique_name(self.short_name(label_from if label_from is not None else i, "input"))
        self.g.add_tensor(Tensor(name, shp, "int8", q))
        self.g.inputs.append(name)
        self.names[i] = name
        return name

    def op_name(self, op) -> str:
        oc = self.model.operatorCodes[op.opcodeIndex]
        code = max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))
        if code == self.fb.BuiltinOperator.CUSTOM:
            custom = oc.customCode.decode() if isinstance(oc.customCode, bytes) else oc.customCode
            return f"CUSTOM({custom})"
        return self.ops.get(code, f"builtin {code}")

    # -- operators --------------------------------------------------------------------
    def convert(self, k: int, op, name: str) -> None:
        if name not in SUPPORTED:
            raise UnsupportedOpError(f"'{self.where}': operator {k} ({name}) is not supported by mcuforge's "
                                     f"TFLite importer (supported: {', '.join(SUPPORTED)})")
        ins = [int(t) for t in (op.inputs if op.inputs is not None else [])]
        outs = [int(t) for t in (op.outputs if op.outputs is not None else [])]
        self.node_base = self.g.unique_name(f"{name.lower()}_{k}")
        self.k, self.opname = k, name
        for t in outs:
            if self.ttype(t) != "INT8":
                self.fail_type(t, self.ttype(t), k)
        for t in ins:
            if t >= 0 and self.ttype(t) == "FLOAT32":
                self.fail_type(t, "FLOAT32", k)
        getattr(self, "op_" + name.lower())(k, op, ins, outs)

    def opts(self, op):
        return op.builtinOptions

    def add(self, op: str, inputs: list[str], out: int, out_shape=None, quant_from=None, **attrs) -> str:
        y = self.new_act(out, out_shape, quant_from)
        self.g.add_node(op, inputs, [y], name=self.node_base, **attrs)
        return y

    def fused(self, k: int, op) -> dict:
        o = self.opts(op)
        fa = int(getattr(o, "fusedActivationFunction", 0) or 0) if o is not None else 0
        if fa not in ACTIVATIONS:
            raise UnsupportedOpError(f"'{self.where}': operator {k} ({self.opname}) has fused activation "
                                     f"{ACTIVATION_NAMES.get(fa, fa)}, which mcuforge does not support")
        lo, hi = ACTIVATIONS[fa]
        return {"act_min": lo, "act_max": hi}

    def spatial(self, op, x_shape, kh, kw, dil=(1, 1)):
        o = self.opts(op)
        sh, sw = int(o.strideH), int(o.strideW)
        if int(o.padding) == self.fb.Padding.SAME:
            pt, pb = same_pads(x_shape[1], kh, sh, dil[0])
            pl, pr = same_pads(x_shape[2], kw, sw, dil[1])
        else:
            pt = pb = pl = pr = 0
        return [sh, sw], [pt, pb, pl, pr]

    def bias(self, k: int, ins: list[int], o: int) -> list[str]:
        if len(ins) > 2 and ins[2] >= 0:
            b = self.data(ins[2])
            if b is None:
                raise UnsupportedOpError(f"'{self.where}': operator {k} ({self.opname}): the bias must be a constant")
            if b.dtype != np.int32:
                raise UnsupportedOpError(f"'{self.where}': operator {k} ({self.opname}): bias of type {b.dtype} "
                                         "(int8 models have int32 biases)")
            return [self.const(k, ins[2], "b", axis_map=lambda a: 0)]
        return []

    def check_weight(self, k: int, i: int) -> None:
        if self.ttype(i) != "INT8":
            raise UnsupportedOpError(f"'{self.where}': operator {k} ({self.opname}): weights of type "
                                     f"{self.ttype(i)} (mcuforge imports int8 weights)")
        q = self.quant(i)
        if q is None or np.any(q.zero_point != 0):
            raise UnsupportedOpError(f"'{self.where}': operator {k} ({self.opname}): weights must be "
                                     "symmetrically quantized (zero point 0)")

    def op_conv_2d(self, k, op, ins, outs):
        x = self.act(k, ins[0])
        xs = self.g.tensors[x].shape
        self.check_weight(k, ins[1])
        w = self.const(k, ins[1], "w", axis_map=lambda a: a)
        o, kh, kw, cg = self.g.tensors[w].shape
        if xs[3] % cg:
            raise GraphError(f"'{self.where}': operator {k} (CONV_2D): {xs[3]} input channels do not "
                             f"divide into filters of depth {cg}")
        opt = self.opts(op)
        dil = [int(opt.dilationHFactor or 1), int(opt.dilationWFactor or 1)]
        stride, pads = self.spatial(op, xs, kh, kw, dil)
        self.add("conv2d", [x, w] + self.bias(k, ins, o), outs[0], stride=stride, dilation=dil, pads=pads,
                 groups=xs[3] // cg, **self.fused(k, op))

    def op_depthwise_conv_2d(self, k, op, ins, outs):
        x = self.act(k, ins[0])
        xs = self.g.tensors[x].shape
        self.check_weight(k, ins[1])
        wdata = self.data(ins[1])
        if wdata is None:
            raise UnsupportedOpError(f"'{self.where}': operator {k} (DEPTHWISE_CONV_2D): weights must be constant")
        _, kh, kw, oc = wdata.shape
        w = self.const(k, ins[1], "w", data=np.ascontiguousarray(wdata.transpose(3, 1, 2, 0)),
                       axis_map=lambda a: 0 if a == 3 else a)
        c = xs[3]
        if oc % c:
            raise GraphError(f"'{self.where}': operator {k} (DEPTHWISE_CONV_2D): {oc} outputs for {c} channels")
        opt = self.opts(op)
        dil = [int(opt.dilationHFactor or 1), int(opt.dilationWFactor or 1)]
        stride, pads = self.spatial(op, xs, kh, kw, dil)
        self.add("conv2d", [x, w] + self.bias(k, ins, oc), outs[0], stride=stride, dilation=dil, pads=pads,
                 groups=c, **self.fused(k, op))

    def op_fully_connected(self, k, op, ins, outs):
        x = self.act(k, ins[0])
        self.check_weight(k, ins[1])
        w = self.const(k, ins[1], "w", axis_map=lambda a: 0)
        o, depth = self.g.tensors[w].shape
        xs = self.g.tensors[x].shape
        size = int(np.prod(xs))
        if size % depth:
            raise GraphError(f"'{self.where}': operator {k} (FULLY_CONNECTED): input {xs} does not divide "
                             f"into rows of {depth}")
        rows = size // depth
        out_shape = self.shape(outs[0])
        if xs[-1] != depth or (xs[:-1] + (o,) != tuple(out_shape) and len(xs) != 2):
            flat = (1, depth) if rows == 1 else (1, rows, depth)
            r = self.g.unique_name(f"{self.node_base}_flat")
            self.g.add_tensor(Tensor(r, flat, "int8", self.g.tensors[x].quant))
            self.g.add_node("reshape", [x], [r], name=self.g.unique_name(f"{self.node_base}_flatten"),
                            shape=list(flat))
            x = r
        fc_shape = self.g.tensors[x].shape[:-1] + (o,)
        want = out_shape if out_shape and out_shape[0] == 1 else (1,) + tuple(out_shape)
        if tuple(want) == fc_shape:
            self.add("fully_connected", [x, w] + self.bias(k, ins, o), outs[0], **self.fused(k, op))
            return
        base = self.node_base
        tmp = self.g.unique_name(f"{base}_rows")
        self.g.add_tensor(Tensor(tmp, fc_shape, "int8", self.quant(outs[0])))
        self.g.add_node("fully_connected", [x, w] + self.bias(k, ins, o), [tmp], name=base, **self.fused(k, op))
        self.node_base = self.g.unique_name(f"{base}_reshape")
        self.add("reshape", [tmp], outs[0], shape=list(want))

    def _pool(self, k, op, ins, outs, ir_op):
        x = self.act(k, ins[0])
        xs = self.g.tensors[x].shape
        opt = self.opts(op)
        kh, kw = int(opt.filterHeight), int(opt.filterWidth)
        stride, pads = self.spatial(op, xs, kh, kw)
        qx, qy = self.g.tensors[x].quant, self.quant(outs[0])
        if not qx.same_as(qy):
            raise UnsupportedOpError(f"'{self.where}': operator {k} ({self.opname}): input and output "
                                     "quantization differ (TFLite pools keep the input's)")
        extra = {"count_include_pad": False} if ir_op == "avg_pool2d" else {}
        self.add(ir_op, [x], outs[0], kernel=[kh, kw], stride=stride, pads=pads, **extra, **self.fused(k, op))

    def op_average_pool_2d(self, k, op, ins, outs):
        self._pool(k, op, ins, outs, "avg_pool2d")

    def op_max_pool_2d(self, k, op, ins, outs):
        self._pool(k, op, ins, outs, "max_pool2d")

    def _binary(self, k, op, ins, outs, ir_op):
        a, b = self.act(k, ins[0]), self.act(k, ins[1])
        for t in (a, b):
            if self.g.tensors[t].dtype != "int8":
                raise UnsupportedOpError(f"'{self.where}': operator {k} ({self.opname}): operand '{t}' is "
                                         f"{self.g.tensors[t].dtype}, not int8")
        self.add(ir_op, [a, b], outs[0], **self.fused(k, op))

    def op_add(self, k, op, ins, outs):
        self._binary(k, op, ins, outs, "add")

    def op_mul(self, k, op, ins, outs):
        self._binary(k, op, ins, outs, "mul")

    def _reshape_to_output(self, k, ins, outs):
        x = self.act(k, ins[0])
        shape = self.shape(outs[0])
        shape = shape if shape and shape[0] == 1 else (1,) + shape
        if int(np.prod(shape)) != self.g.tensors[x].size:
            raise GraphError(f"'{self.where}': operator {k} ({self.opname}): cannot reshape "
                             f"{self.g.tensors[x].shape} to {shape}")
        if not self.g.tensors[x].quant.same_as(self.quant(outs[0])):
            raise UnsupportedOpError(f"'{self.where}': operator {k} ({self.opname}) changes the quantization")
        self.add("reshape", [x], outs[0], shape=list(shape))

    def op_reshape(self, k, op, ins, outs):
        self._reshape_to_output(k, ins, outs)

    def op_squeeze(self, k, op, ins, outs):
        self._reshape_to_output(k, ins, outs)

    def op_transpose(self, k, op, ins, outs):
        x = self.act(k, ins[0])
        perm = self.data(ins[1])
        if perm is None:
            raise UnsupportedOpError(f"'{self.where}': operator {k} (TRANSPOSE): the permutation must be constant")
        self.add("transpose", [x], outs[0], perm=[int(p) for p in perm.ravel()])

    def op_pad(self, k, op, ins, outs):
        x = self.act(k, ins[0])
        pads = self.data(ins[1])
        if pads is None:
            raise UnsupportedOpError(f"'{self.where}': operator {k} ({self.opname}): paddings must be constant")
        q = self.quant(outs[0])
        if not self.g.tensors[x].quant.same_as(q):
            raise UnsupportedOpError(f"'{self.where}': operator {k} ({self.opname}): input and output "
                                     "quantization differ")
        value = 0.0
        if len(ins) > 2 and ins[2] >= 0:
            c = self.data(ins[2])
            if c is None or c.dtype != np.int8:
                raise UnsupportedOpError(f"'{self.where}': operator {k} (PADV2): the padding value must be an "
                                         "int8 constant")
            value = float((int(c.ravel()[0]) - q.zp) * np.float64(q.s))
        flat = [int(v) for v in pads.reshape(-1)]
        rank = len(self.g.tensors[x].shape)
        if len(flat) == 2 * (rank - 1):  # a batch-less tflite tensor
            flat = [0, 0] + flat
        self.add("pad", [x], outs[0], pads=flat, value=value)

    def op_padv2(self, k, op, ins, outs):
        self.op_pad(k, op, ins, outs)

    def op_mean(self, k, op, ins, outs):
        x = self.act(k, ins[0])
        axes = self.data(ins[1])
        if axes is None:
            raise UnsupportedOpError(f"'{self.where}': operator {k} (MEAN): the axes must be constant")
        rank = len(self.shape(ins[0]))
        axes = sorted({int(a) % rank for a in axes.ravel()})
        if 0 in axes:
            raise UnsupportedOpError(f"'{self.where}': operator {k} (MEAN): averaging over the batch axis")
        keep = bool(getattr(self.opts(op), "keepDims", False))
        self.add("mean", [x], outs[0], axes=axes, keepdims=keep)

    def op_concatenation(self, k, op, ins, outs):
        xs = [self.act(k, i) for i in ins]
        opt = self.opts(op)
        if self.fused(k, op) != {"act_min": None, "act_max": None}:
            raise UnsupportedOpError(f"'{self.where}': operator {k} (CONCATENATION) with a fused activation")
        rank = len(self.g.tensors[xs[0]].shape)
        axis = int(opt.axis)
        axis = axis + rank if axis < 0 else axis
        q = self.quant(outs[0])
        for x in xs:
            if not self.g.tensors[x].quant.same_as(q):
                raise UnsupportedOpError(f"'{self.where}': operator {k} (CONCATENATION): inputs quantized "
                                         "differently from the output (TFLM requires them equal)")
        self.add("concat", xs, outs[0], axis=axis)

    def op_softmax(self, k, op, ins, outs):
        x = self.act(k, ins[0])
        q = self.quant(outs[0])
        if q.s != np.float32(1.0 / 256) or q.zp != -128:
            raise UnsupportedOpError(f"'{self.where}': operator {k} (SOFTMAX): int8 output quantization must "
                                     f"be (1/256, -128), got ({q.s}, {q.zp})")
        self.add("softmax", [x], outs[0], beta=float(self.opts(op).beta))

    def _table(self, k, ins, outs, ir_op, **attrs):
        x = self.act(k, ins[0])
        self.add(ir_op, [x], outs[0], table_method="tflm", **attrs)

    def op_logistic(self, k, op, ins, outs):
        self._table(k, ins, outs, "sigmoid")

    def op_tanh(self, k, op, ins, outs):
        self._table(k, ins, outs, "tanh")

    def op_relu(self, k, op, ins, outs):
        self._table(k, ins, outs, "clamp", min=0.0, max=None, tflm_op="RELU")

    def op_relu6(self, k, op, ins, outs):
        self._table(k, ins, outs, "clamp", min=0.0, max=6.0, tflm_op="RELU6")

    def op_relu_n1_to_1(self, k, op, ins, outs):
        self._table(k, ins, outs, "clamp", min=-1.0, max=1.0, tflm_op="RELU_N1_TO_1")

    def op_leaky_relu(self, k, op, ins, outs):
        self._table(k, ins, outs, "leaky_relu", alpha=float(np.float32(self.opts(op).alpha)))

    def op_quantize(self, k, op, ins, outs):
        if self.ttype(ins[0]) != "INT8":
            raise UnsupportedOpError(f"'{self.where}': operator {k} (QUANTIZE) from {self.ttype(ins[0])} inside "
                                     "the graph: only int8 -> int8 requantization, or float -> int8 on a graph "
                                     "input, is supported")
        x = self.act(k, ins[0])
        self.add("quantize", [x], outs[0])

    def op_dequantize(self, k, op, ins, outs):
        raise UnsupportedOpError(f"'{self.where}': operator {k} (DEQUANTIZE) inside the graph: only a DEQUANTIZE "
                                 "producing a graph output is supported")


def _text(v) -> str:
    if v is None:
        return ""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def from_tflite_bytes(data: bytes, name: str = "model", where: str = "model") -> Graph:
    model = read_model(data, where)
    return _Importer(model, where, name).run()


def load_tflite(path: str | Path) -> Graph:
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"model file '{path}' does not exist")
    data = path.read_bytes()
    return from_tflite_bytes(data, name=path.stem, where=str(path))


__all__ = ["SUPPORTED", "load_tflite", "from_tflite_bytes", "read_model", "same_pads", "schema"]
