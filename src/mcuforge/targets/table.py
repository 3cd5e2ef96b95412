"""The Cortex-M targets: cores, the QEMU machines that emulate them, and named boards.

A target is a core (compiler flags, DSP/FPU, a CPI factor for time estimates),
the RAM and flash the linker script gives the program, a clock, and the QEMU
machine that runs it (with that machine's memory map). Cores come with a
representative default size and clock; boards are aliases with their real
sizes; ``--ram`` / ``--flash`` override either.

    >>> t = get_target("nucleo-l4r5zi")
    >>> t.core.name, t.ram, t.flash, t.clock_hz
    ('cortex-m4', 655360, 2097152, 120000000)

Op emitters see the target as ``CodegenContext.target`` (``GENERIC`` when a
library is generated for no particular target) and may choose kernel variants
by its features, e.g. ``ctx.target.has_dsp``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from ..errors import InputError


@dataclass(frozen=True)
class Machine:
    """A QEMU machine and the memory the firmware is linked into (secure aliases on TrustZone parts)."""

    name: str
    description: str
    flash_origin: int
    flash_size: int  # the largest program/weights region the machine has at flash_origin
    ram_origin: int
    ram_size: int
    emulated_core: str  # what QEMU actually emulates there
    vectors_origin: int | None = None  # where the core fetches its vector table, if not at flash_origin


@dataclass(frozen=True)
class Core:
    name: str
    arch: str
    cflags: tuple[str, ...]
    has_dsp: bool  # ARMv7E-M/v8-M DSP extension (SMLAD, SXTB16, SSAT ...)
    has_fpu: bool
    has_mve: bool
    cpi: float  # estimated cycles per instruction for int8 kernel code (see estimate_cycles)
    machine: str | None  # QEMU machine name, None if it cannot be emulated here
    default_ram: int
    default_flash: int
    default_clock_hz: int
    note: str = ""


@dataclass(frozen=True)
class Board:
    name: str
    core: str
    ram: int
    flash: int
    clock_hz: int
    description: str
    aliases: tuple[str, ...] = ()
    cflags: tuple[str, ...] | None = None  # replaces the core's flags (e.g. a single-precision FPU)


@dataclass(frozen=True)
class Target:
    """A resolved target: what the code generator, the firmware builder and bench use."""

    name: str  # as the user named it (canonical board or core name)
    core: Core
    ram: int
    flash: int
    clock_hz: int
    machine: Machine | None
    board: str | None = None
    description: str = ""
    cflags: tuple[str, ...] = field(default=())

    @property
    def has_dsp(self) -> bool:
        return self.core.has_dsp

    @property
    def has_fpu(self) -> bool:
        return self.core.has_fpu

    @property
    def has_mve(self) -> bool:
        return self.core.has_mve

    @property
    def is_generic(self) -> bool:
        return self.name == "generic"

    def estimate_cycles(self, instructions: float) -> float:
        """Cycles = executed instructions x the core's CPI factor (an estimate: QEMU models no timing)."""
        return instructions * self.core.cpi

    def to_json(self) -> dict:
        return {
            "name": self.name, "core": self.core.name, "board": self.board, "description": self.description,
            "cflags": list(self.cflags), "has_dsp": self.has_dsp, "has_fpu": self.has_fpu, "has_mve": self.has_mve,
            "ram_bytes": self.ram, "flash_bytes": self.flash, "clock_hz": self.clock_hz, "cpi": self.core.cpi,
            "qemu_machine": self.machine.name if self.machine else None,
        }


K, M = 1024, 1024 * 1024

MACHINES: dict[str, Machine] = {m.name: m for m in (
    Machine("microbit", "BBC micro:bit, nRF51822", 0x00000000, 256 * K, 0x20000000, 16 * K, "cortex-m0"),
    Machine("mps2-an385", "ARM MPS2 AN385 (Cortex-M3)", 0x00000000, 4 * M, 0x20000000, 4 * M, "cortex-m3"),
    Machine("mps2-an386", "ARM MPS2 AN386 (Cortex-M4)", 0x00000000, 4 * M, 0x20000000, 4 * M, "cortex-m4"),
    Machine("mps2-an500", "ARM MPS2 AN500 (Cortex-M7)", 0x00000000, 4 * M, 0x20000000, 4 * M, "cortex-m7"),
    # SSE-200/300 boot in the secure state: code and data at the secure aliases (address bit 28).
    Machine("mps2-an505", "ARM MPS2 AN505 (Cortex-M33, secure state)", 0x10000000, 4 * M, 0x38000000, 4 * M,
            "cortex-m33"),
    # AN547: vector table in ITCM (0x10000000), code and weights in the 2 MB SRAM, data in the 4 MB ISRAM.
    Machine("mps3-an547", "ARM MPS3 AN547 (Cortex-M55, SSE-300, secure state)", 0x11000000, 2 * M, 0x31000000,
            4 * M, "cortex-m55", vectors_origin=0x10000000),
)}

_NOFP = ("-mfloat-abi=soft",)
CORES: dict[str, Core] = {c.name: c for c in (
    Core("cortex-m0plus", "armv6-m", ("-mcpu=cortex-m0plus", "-mthumb", *_NOFP), False, False, False, 1.6,
         "microbit", 32 * K, 256 * K, 48_000_000,
         "emulated on the micro:bit's Cortex-M0 (same ARMv6-M instruction set), whose 16 KB RAM and 256 KB "
         "flash limit what can run"),
    Core("cortex-m3", "armv7-m", ("-mcpu=cortex-m3", "-mthumb", *_NOFP), False, False, False, 1.4,
         "mps2-an385", 64 * K, 512 * K, 72_000_000),
    Core("cortex-m4", "armv7e-m", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
         True, True, False, 1.4, "mps2-an386", 256 * K, 1 * M, 120_000_000),
    Core("cortex-m7", "armv7e-m", ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
         True, True, False, 0.9, "mps2-an500", 512 * K, 2 * M, 400_000_000),
    Core("cortex-m33", "armv8-m.main", ("-mcpu=cortex-m33", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
         True, True, False, 1.35, "mps2-an505", 256 * K, 1 * M, 110_000_000),
    Core("cortex-m55", "armv8.1-m.main", ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"),
         True, True, True, 1.1, "mps3-an547", 512 * K, 2 * M, 250_000_000),
)}

BOARDS: dict[str, Board] = {b.name: b for b in (
    Board("nucleo-l4r5zi", "cortex-m4", 640 * K, 2 * M, 120_000_000,
          "ST NUCLEO-L4R5ZI (STM32L4R5ZI), the MLPerf Tiny reference board", ("stm32l4r5", "stm32l4r5zi")),
    Board("stm32f746-disco", "cortex-m7", 320 * K, 1 * M, 216_000_000,
          "ST 32F746G-DISCOVERY (STM32F746NG, single-precision FPU)", ("stm32f746", "disco-f746ng"),
          ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16")),
    Board("stm32h743", "cortex-m7", 512 * K, 2 * M, 480_000_000,
          "ST STM32H743 (NUCLEO-H743ZI2): 512 KB AXI SRAM, the largest contiguous bank of its 1 MB",
          ("nucleo-h743zi",)),
    Board("stm32f411", "cortex-m4", 128 * K, 512 * K, 100_000_000, "ST STM32F411 (Black Pill, NUCLEO-F411RE)",
          ("blackpill-f411",)),
    Board("stm32f103", "cortex-m3", 20 * K, 64 * K, 72_000_000, "ST STM32F103C8 (Blue Pill)", ("bluepill",)),
    Board("nrf52840", "cortex-m4", 256 * K, 1 * M, 64_000_000, "Nordic nRF52840 (nRF52840-DK, Arduino Nano 33 BLE)",
          ("nrf52840-dk", "nano33ble")),
    Board("nrf5340", "cortex-m33", 512 * K, 1 * M, 128_000_000, "Nordic nRF5340, application core",
          ("nrf5340-dk",)),
    Board("lpc55s69", "cortex-m33", 320 * K, 640 * K, 150_000_000, "NXP LPC55S69 (LPCXpresso55S69)"),
    Board("stm32u585", "cortex-m33", 768 * K, 2 * M, 160_000_000,
          "ST STM32U585 (B-U585I-IOT02A): SRAM1-3, contiguous, of its 784 KB"),
    Board("rp2040", "cortex-m0plus", 264 * K, 2 * M, 133_000_000,
          "Raspberry Pi RP2040 (Pico: 2 MB QSPI flash)", ("pico", "raspberry-pi-pico")),
    Board("samd21", "cortex-m0plus", 32 * K, 256 * K, 48_000_000, "Microchip ATSAMD21G18 (Arduino Zero)",
          ("arduino-zero",)),
    Board("corstone-300", "cortex-m55", 4 * M, 2 * M, 250_000_000,
          "Arm Corstone-300 (MPS3 AN547) as QEMU models it: 2 MB SRAM for code and weights, 4 MB ISRAM for data",
          ("an547", "mps3-an547")),
)}

# A library generated for no particular target: portable C, no ISA extensions assumed.
GENERIC_CORE = Core("generic", "c99", (), False, False, False, 1.0, None, 0, 0, 0, "portable C for any compiler")
GENERIC = Target("generic", GENERIC_CORE, 0, 0, 0, None, description="portable C99, any compiler")

_ALIASES = {a: b.name for b in BOARDS.values() for a in b.aliases}
_CORE_ALIASES = {c.removeprefix("cortex-"): c for c in CORES} | {"cortex-m0+": "cortex-m0plus", "m0+": "cortex-m0plus"}


def target_names() -> list[str]:
    """Canonical names: cores first, then boards."""
    return list(CORES) + list(BOARDS)


def is_target(name: str) -> bool:
    key = name.strip().lower()
    return key in CORES or key in BOARDS or key in _ALIASES or key in _CORE_ALIASES


def parse_size(text: str | int | None, what: str = "size") -> int | None:
    """'256K', '1M', '640KB', '2MiB', '65536' -> bytes (K = 1024)."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise InputError(f"cannot read {what} '{text}': write bytes or a number with K or M, e.g. 256K or 1M")
    value = float(m.group(1)) * {"": 1, "k": K, "m": M}[m.group(2).lower()]
    if value != int(value) or value <= 0:
        raise InputError(f"{what} '{text}' must be a positive whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    if n % M == 0:
        return f"{n // M} MB"
    if n % K == 0:
        return f"{n // K} KB"
    return f"{n:,} B"


def unknown_target_message(name: str, extra: tuple[str, ...] = ()) -> str:
    choices = ", ".join([*extra, *target_names()])
    return f"unknown target '{name}'; choose one of: {choices}"


def get_target(name: str, ram: str | int | None = None, flash: str | int | None = None,
               clock_hz: int | None = None) -> Target:
    """Resolve a core or board name (case-insensitive, aliases allowed) and optional size overrides."""
    key = name.strip().lower()
    key = _CORE_ALIASES.get(key, _ALIASES.get(key, key))
    if key == "generic":
        return GENERIC
    if key in BOARDS:
        b = BOARDS[key]
        core = CORES[b.core]
        t = Target(b.name, core, b.ram, b.flash, b.clock_hz, MACHINES.get(core.machine or ""), board=b.name,
                   description=b.description, cflags=b.cflags or core.cflags)
    elif key in CORES:
        core = CORES[key]
        t = Target(core.name, core, core.default_ram, core.default_flash, core.default_clock_hz,
                   MACHINES.get(core.machine or ""), description=f"generic {core.name}", cflags=core.cflags)
    else:
        raise InputError(unknown_target_message(name))
    ram_b, flash_b = parse_size(ram, "--ram"), parse_size(flash, "--flash")
    return dataclasses.replace(t, ram=ram_b or t.ram, flash=flash_b or t.flash, clock_hz=clock_hz or t.clock_hz)


def target_from_json(d: dict | None) -> Target:
    """The target recorded in a report.json (GENERIC if none)."""
    if not d or d.get("name") in (None, "generic"):
        return GENERIC
    return get_target(d["name"], d.get("ram_bytes"), d.get("flash_bytes"), d.get("clock_hz"))
