"""INT8 schemes, declared once: what a quantised artefact holds, chosen for the backend and the CPU.

An int8 model is only worth building if the runtime that runs it has fast kernels for exactly its
format, and the formats differ:

- ONNX Runtime on x86 multiplies uint8 activations by int8 weights (U8S8): VNNI (`vpdpbusd`) and AMX
  tiles accumulate those products in 32 bits. Int8 activations (S8S8) are shifted to uint8 on the fly
  and land on slower kernels: measured on this project's Xeon (AMX), a ResNet-50-shaped net ran 2.9x
  faster than fp32 as U8S8 and 1.15x as symmetric S8S8, and MobileNetV2 1.8x faster as U8S8 but
  1.6x *slower* as S8S8 (one thread, batch 1, a loaded machine: docs/benchmarks.md).
- x86 without VNNI (AVX2, AVX-512 before Cascade Lake) multiplies uint8 x int8 pairs into 16-bit sums
  (`vpmaddubsw`) that saturate when both operands are large, so weights keep 7 bits (`reduce_range`):
  on an AVX2 EPYC a digits CNN kept 0.980 top-1 with 7-bit weights and 0.942 with 8-bit
  (docs/benchmarks.md). With VNNI or AMX the sums are 32-bit and all 8 bits are kept.
- ONNX Runtime on ARM has both S8S8 and U8S8 kernels (SDOT/UDOT, I8MM); which is faster depends on
  the core, so the build times both and keeps the faster (`SchemeChoice.candidates`).
- TensorRT reads explicit Q/DQ and requires zero point 0: symmetric int8 activations and per-channel
  int8 weights over the full range (`TENSORRT`).

The choice is made from the CPU's features (`CpuFeatures`, read from /proc/cpuinfo), never from a
constant, and the scheme and the reason are recorded in the build metadata. The artefact is built
for the CPU that built it: an artefact built with 8-bit weights on a VNNI CPU and run on a CPU
without VNNI may lose accuracy there; rebuild on (or for) the target.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploysparse.errors import UsageError

CPUINFO = Path("/proc/cpuinfo")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")  # ONNX Runtime's calibrators
CALIBRATION_CHOICES = ("auto", *CALIBRATION_METHODS)  # auto: the best agreement on held-out data
INT8_LAYERS = ("auto", "all")  # auto: layers measured slower (or least accurate) in int8 stay float
SHOWN_LAYERS = 5  # float layers `build` names (all are in the metadata)

# The flags that decide an int8 kernel, x86 (`flags`) and ARM (`Features`), as /proc/cpuinfo names them.
_X86_VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")
_INT8_FLAGS = ("avx2", "avx512f", "avx512bw", *_X86_VNNI, "asimddp", "i8mm", "sve")


@dataclass(frozen=True)
class QuantScheme:
    """What a static QDQ model holds: the integer types, how weights are scaled, which calibration
    set the activation ranges, and which nodes stay float.

    activations: "uint8" (asymmetric, any zero point) or "int8"; weights are always int8 and
    symmetric. `symmetric` makes the activations' zero point 0 too (TensorRT requires it).
    `reduce_range`: weights in 7 bits, for x86 CPUs without VNNI (module doc).
    """

    activations: str = "uint8"
    weights: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    symmetric: bool = False
    calibration: str = "minmax"
    excluded_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.activations not in ("uint8", "int8") or self.weights != "int8":
            raise ValueError(
                f"activations uint8|int8 and int8 weights, got {self.activations}/{self.weights}"
            )
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(f"calibration must be one of {CALIBRATION_METHODS}, got {self.calibration!r}")
        if self.symmetric and self.activations != "int8":
            raise ValueError("symmetric (zero point 0) activations are int8")

    @property
    def name(self) -> str:
        """U8S8 or S8S8: activations then weights, as ONNX Runtime's documentation names them."""
        return ("U8" if self.activations == "uint8" else "S8") + "S8"

    def replace(self, **changes: object) -> QuantScheme:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for people: 'U8S8 QDQ, per-channel 8-bit weights, minmax calibration'."""
        zero = ", zero point 0" if self.symmetric else ""
        granularity = "per-channel" if self.per_channel else "per-tensor"
        bits = 7 if self.reduce_range else 8
        return f"{self.name} QDQ{zero}, {granularity} {bits}-bit weights, {self.calibration} calibration"

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "format": "QDQ",
            "activations": self.activations,
            "weights": self.weights,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "symmetric": self.symmetric,
            "calibration": self.calibration,
            "excluded_nodes": list(self.excluded_nodes),
        }


# What TensorRT parses into a strongly typed int8 network: zero point 0 everywhere, per-channel weights.
TENSORRT = QuantScheme(activations="int8", per_channel=True, reduce_range=False, symmetric=True)


@dataclass(frozen=True)
class Int8Options:
    """How `build --precision int8` decides: which layers run int8 and how the ranges are calibrated.

    layers: "auto" keeps in float the layers whose int8 kernel measured slower than fp32, and (when
    the held-out agreement falls short) those with the largest quantisation error; "all" quantises
    every layer ONNX Runtime can. calibration: one of CALIBRATION_METHODS, or "auto" for the one whose
    model agrees best with fp32 on a held-out part of the calibration data. judge: inputs to judge
    those choices by instead (agreement with fp32 needs no labels): `run` passes its validation
    data, which usually holds more samples than a fifth of the calibration set; then every
    calibration sample calibrates.
    """

    layers: str = "auto"
    calibration: str = "auto"
    judge: str | os.PathLike[str] | Mapping[str, np.ndarray] | None = field(
        default=None, compare=False, hash=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.layers not in INT8_LAYERS:
            raise UsageError(f"--int8-layers must be one of {', '.join(INT8_LAYERS)}, got {self.layers!r}")
        if self.calibration not in CALIBRATION_CHOICES:
            raise UsageError(
                f"--calib-method must be one of {', '.join(CALIBRATION_CHOICES)}, got {self.calibration!r}"
            )


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's architecture and the /proc/cpuinfo flags that decide which int8 kernels it has."""

    machine: str  # platform.machine(): x86_64, AMD64, aarch64, arm64, ...
    flags: frozenset[str]

    @classmethod
    def parse(cls, cpuinfo: str, machine: str) -> CpuFeatures:
        """From the text of /proc/cpuinfo: the first `flags` (x86) or `Features` (ARM) line."""
        match = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
        return cls(machine, frozenset(match.group(1).split()) if match else frozenset())

    @classmethod
    def of_this_machine(cls) -> CpuFeatures:
        try:
            text = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""  # no /proc (macOS, Windows): the architecture alone decides
        return cls.parse(text, platform.machine())

    @property
    def x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i686", "i386")

    @property
    def arm(self) -> bool:
        return self.machine.lower() in ("aarch64", "arm64") or self.machine.lower().startswith("armv8")

    @property
    def vnni(self) -> bool:
        """x86 int8 dot products into 32-bit sums: AVX512-VNNI, AVX-VNNI or AMX-INT8."""
        return self.x86 and any(flag in self.flags for flag in _X86_VNNI)

    def int8_flags(self) -> list[str]:
        """The flags present that matter for int8 (recorded in the build metadata)."""
        return [flag for flag in _INT8_FLAGS if flag in self.flags]

    def to_json(self) -> dict:
        return {"machine": self.machine, "int8_flags": self.int8_flags()}


@dataclass(frozen=True)
class SchemeChoice:
    """The schemes worth building for a runtime on a CPU, and why. One candidate: the features decide;
    several: the build times each on this CPU and keeps the fastest."""

    candidates: tuple[QuantScheme, ...]
    reason: str


def onnxruntime_cpu_scheme(cpu: CpuFeatures) -> SchemeChoice:
    """The int8 scheme for ONNX Runtime's CPU provider on `cpu` (module doc: why each)."""
    u8s8 = QuantScheme(activations="uint8", per_channel=True)
    if cpu.x86 and cpu.vnni:
        found = ", ".join(flag for flag in cpu.int8_flags() if flag in _X86_VNNI)
        return SchemeChoice(
            (u8s8,),
            f"x86 with {found}: ONNX Runtime's U8S8 kernels accumulate int8 products in 32 bits, so "
            "weights keep all 8 bits (S8S8 would be shifted to U8 on the fly, on slower kernels)",
        )
    if cpu.x86:
        return SchemeChoice(
            (u8s8.replace(reduce_range=True),),
            "x86 without VNNI: U8S8 kernels sum pairs of products in 16 bits (vpmaddubsw), which saturate "
            "with full-range weights, so weights keep 7 bits (reduce_range)",
        )
    if cpu.arm:
        s8s8 = QuantScheme(activations="int8", per_channel=True, symmetric=True)
        return SchemeChoice(
            (s8s8, u8s8),
            "ARM: ONNX Runtime has S8S8 and U8S8 kernels (SDOT/UDOT"
            + (", I8MM" if "i8mm" in cpu.flags else "")
            + "); both were timed on this CPU and the faster kept",
        )
    return SchemeChoice(
        (u8s8.replace(reduce_range=True),),
        f"{cpu.machine or 'unknown architecture'}: U8S8 with 7-bit weights, the scheme every ONNX Runtime "
        "CPU kernel runs without saturating",
    )


def summary_lines(quantization: dict) -> list[str]:
    """What `build` prints about an int8 build, from its metadata (`quantization`): the scheme and why,
    the calibration method, the layers kept float, fp32 against int8 as timed, and the finding."""
    latency, layers, calibration = (
        quantization["latency"],
        quantization["layers"],
        quantization["calibration"],
    )
    lines = [
        f"int8 scheme: {quantization['description']} ({quantization['reason']})",
        f"calibration: {calibration['method']}, chosen by {calibration['chosen_by']}",
    ]
    if quantization["opset"]["note"]:
        lines.append(quantization["opset"]["note"])
    lines.append(f"layers: {layers['note']}")
    if layers["float"]:
        shown = "; ".join(f"{layer['node']} ({layer['reason']})" for layer in layers["float"][:SHOWN_LAYERS])
        more = len(layers["float"]) - SHOWN_LAYERS
        lines.append(f"kept in float: {shown}" + (f"; {more} more in the metadata" if more > 0 else ""))
    speedup = quantization["speedup"]
    lines.append(
        f"latency on this CPU at batch {latency['batch']}: fp32 {latency['fp32_ms']:.3f} ms, "
        f"int8 {latency['int8_ms']:.3f} ms" + (f" ({speedup:.2f}x)" if speedup else "")
    )
    if quantization["finding"]:
        lines.append(quantization["finding"])
    return lines
