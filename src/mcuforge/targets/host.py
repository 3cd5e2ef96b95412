"""Build a generated library with the system C compiler and run a batch in one process.

The runner reads all samples from a binary file (the int8 inputs of each sample
one after another), invokes the model once per sample and writes the int8
outputs likewise. Builds are cached per source hash (see cache_dir()), so
repeated runs do not recompile.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ToolchainError
from ..codegen.emit import load_report
from .batch import check_inputs, read_outputs, write_inputs

CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]
SANITIZE_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-g", "-fno-omit-frame-pointer",
                  "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]

RUNNER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include "{prefix}.h"

int main(int argc, char **argv) {{
    FILE *fin, *fout;
    long n, i;
    int j;
    if (argc != 4) {{ fprintf(stderr, "usage: runner IN OUT N\n"); return 2; }}
    fin = fopen(argv[1], "rb");
    fout = fopen(argv[2], "wb");
    n = atol(argv[3]);
    if (!fin || !fout) {{ fprintf(stderr, "cannot open files\n"); return 2; }}
    {prefix}_init();
    for (i = 0; i < n; ++i) {{
        for (j = 0; j < {PREFIX}_NUM_INPUTS; ++j) {{
            size_t size = (size_t){prefix}_input_info(j)->size;
            if (fread({prefix}_input(j), 1, size, fin) != size) {{ fprintf(stderr, "short input\n"); return 3; }}
        }}
        {prefix}_invoke();
        for (j = 0; j < {PREFIX}_NUM_OUTPUTS; ++j) {{
            size_t size = (size_t){prefix}_output_info(j)->size;
            if (fwrite({prefix}_output(j), 1, size, fout) != size) {{ fprintf(stderr, "short write\n"); return 3; }}
        }}
    }}
    fclose(fin);
    fclose(fout);
    return 0;
}}
"""


def find_compiler() -> str:
    cc = os.environ.get("CC", "cc")
    path = shutil.which(cc) or shutil.which("gcc")
    if path is None:
        raise ToolchainError(f"no C compiler found ('{cc}'): install gcc (apt-get install gcc) or set CC")
    return path


def cache_dir() -> Path:
    """Where compiled runners are kept (MCUFORGE_CACHE, else ~/.cache/mcuforge)."""
    base = os.environ.get("MCUFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mcuforge")
    return Path(base)


def compile_with_main(lib_dir: str | Path, main_name: str, main_src: bytes, flags: list[str], what: str,
                      headers_beside: dict[str, bytes] | None = None) -> Path:
    """Compile the library's sources with one runner main (and the headers it includes from beside it)
    into a cached host executable, keyed by all of them, the compiler and the flags; `what` names it in
    the cache and in errors."""
    headers_beside = headers_beside or {}
    lib_dir = Path(lib_dir)
    sources = sorted(lib_dir.glob("*.c"))
    headers = sorted(lib_dir.glob("*.h"))
    cc = find_compiler()
    h = hashlib.sha256(main_src + " ".join([cc] + flags).encode())
    for p in sources + headers:
        h.update(p.name.encode() + p.read_bytes())
    for name, text in sorted(headers_beside.items()):
        h.update(name.encode() + text)
    build = cache_dir() / "host"
    exe = build / f"{what.replace(' ', '-')}-{h.hexdigest()[:16]}"
    if exe.exists():
        return exe
    build.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=build) as tmp:
        main_c = Path(tmp) / main_name
        main_c.write_bytes(main_src)
        for name, text in headers_beside.items():
            (Path(tmp) / name).write_bytes(text)
        out = Path(tmp) / "runner"
        cmd = [cc, *flags, "-I", str(lib_dir), *map(str, sources), str(main_c), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ToolchainError(f"host build of the {what} failed ({' '.join(cmd[:1] + flags)}):\n"
                                 f"{proc.stderr.strip()[-4000:]}")
        os.replace(out, exe)
    return exe


def build_firmware_main(lib_dir: str | Path, main_name: str, what: str, sanitize: bool = False) -> Path:
    """A runner main of targets/firmware/ (they also build for the host with -DMF_HOST) with the library."""
    from .cortex_m import FIRMWARE_DIR, FIRMWARE_HEADERS

    flags = [*(SANITIZE_FLAGS if sanitize else CFLAGS), "-DMF_HOST"]
    return compile_with_main(lib_dir, main_name, (FIRMWARE_DIR / main_name).read_bytes(), flags, what,
                             {name: (FIRMWARE_DIR / name).read_bytes() for name in FIRMWARE_HEADERS})


def build_runner(lib_dir: str | Path, sanitize: bool = False) -> Path:
    prefix = load_report(Path(lib_dir))["prefix"]
    runner_src = RUNNER_C.format(prefix=prefix, PREFIX=prefix.upper())
    return compile_with_main(lib_dir, "runner_main.c", runner_src.encode(), SANITIZE_FLAGS if sanitize else CFLAGS,
                             "runner")


def run_executable(cmd: list[str], cwd, what: str, sanitize: bool, timeout: float) -> subprocess.CompletedProcess:
    """Run a compiled host runner (ASan/UBSan options set, leaks ignored); a timeout, a non-zero exit or,
    in a sanitizer build, any report on stderr is a ToolchainError naming ``what``."""
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"{what} timed out after {timeout} s") from None
    if proc.returncode != 0:
        raise ToolchainError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr.strip()[-4000:]}")
    if sanitize and proc.stderr.strip():
        raise ToolchainError(f"sanitizer reported problems:\n{proc.stderr.strip()[-4000:]}")
    return proc


def run_host(lib_dir: str | Path, inputs: list[np.ndarray], sanitize: bool = False,
             timeout: float = 600) -> list[np.ndarray]:
    """Run int8 inputs (each [N, ...]) through the compiled library; returns int8 outputs [N, ...]."""
    lib_dir = Path(lib_dir)
    report = load_report(lib_dir)
    n = check_inputs(report, inputs)
    exe = build_runner(lib_dir, sanitize)
    with tempfile.TemporaryDirectory() as tmp:
        fin, fout = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        write_inputs(inputs, fin)
        run_executable([str(exe), str(fin), str(fout), str(n)], None, "host run", sanitize, timeout)
        return read_outputs(report, fout, n, "host runner")
