"""What an op's C emitter can ask for while the model source is generated."""

from __future__ import annotations

import re

import numpy as np

from ..ir.graph import Graph
from ..targets.table import GENERIC, Target
from .planner import MemoryPlan

CTYPES = {"int8": "int8_t", "int16": "int16_t", "int32": "int32_t"}


def c_identifier(text: str) -> str:
    ident = re.sub(r"[^0-9A-Za-z_]", "_", text)
    return ident if ident and not ident[0].isdigit() else "t_" + ident


def c_initializer(values, per_line: int = 20) -> str:
    vals = [str(int(v)) for v in np.asarray(values).ravel()]
    rows = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    return "{\n    " + ",\n    ".join(rows) + "\n}"


class CodegenContext:
    """State of one generation; `target` (a targets.table.Target, GENERIC when none was named) lets
    emitters choose kernel variants, e.g. `if ctx.target.has_dsp: ...`."""

    def __init__(self, graph: Graph, plan: MemoryPlan, prefix: str, target: Target | None = None) -> None:
        self.graph, self.plan, self.prefix = graph, plan, prefix
        self.target = target or GENERIC
        self.decls: list[str] = []
        self.const_bytes = 0  # flash taken by weights, tables and layer parameters
        self._idents: set[str] = set()
        self._const_ids: dict[str, str] = {}
        self.kernel_files: list[str] = []  # extra files from ops/kernels a variant needs (e.g. DSP kernels)
        self.scratch_bytes = 0  # one static scratch buffer shared by the layers (im2col); RAM beside the arena

    def ident(self, base: str) -> str:
        name = c_identifier(f"{self.prefix}_{base}")
        ident, i = name, 1
        while ident in self._idents:
            ident, i = f"{name}_{i}", i + 1
        self._idents.add(ident)
        return ident

    def decl(self, code: str) -> None:
        self.decls.append(code)

    def array(self, base: str, values, ctype: str) -> str:
        """A static const array in flash; returns its identifier."""
        values = np.asarray(values).ravel()
        ident = self.ident(base)
        self.decl(f"static const {ctype} {ident}[{max(1, values.size)}] = {c_initializer(values)};")
        self.const_bytes += values.size * int(re.search(r"(\d+)", ctype).group(1)) // 8
        return ident

    def const(self, tensor: str) -> str:
        """The C array holding a constant tensor (emitted once)."""
        if tensor not in self._const_ids:
            t = self.graph.tensors[tensor]
            self._const_ids[tensor] = self.array(tensor, t.data, CTYPES[t.dtype])
        return self._const_ids[tensor]

    def buf(self, tensor: str) -> str:
        """Pointer to a tensor: in the arena, or the const array of a constant."""
        if self.graph.tensors[tensor].is_const:
            return self.const(tensor)
        return f"({self.prefix}_arena.bytes + {self.plan.offsets[tensor]})"

    def use_kernel_files(self, *names: str) -> None:
        """Copy these files of ops/kernels into the library (sources are compiled, headers included)."""
        for name in names:
            if name not in self.kernel_files:
                self.kernel_files.append(name)

    def scratch(self, nbytes: int) -> str:
        """A word-aligned scratch buffer of at least `nbytes` for one layer's call (shared by all layers,
        sized for the largest request, reported as memory.scratch_bytes); returns its C expression."""
        self.scratch_bytes = max(self.scratch_bytes, (int(nbytes) + 3) // 4 * 4)
        return f"{self.prefix}_scratch"
