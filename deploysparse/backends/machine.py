"""The machine a latency was measured on: what makes two measurements comparable, and what only
explains them.

A latency in milliseconds is a property of the model *and* the machine: the same model ran 2x apart
on an Intel and an AMD host of this project (docs/benchmarks.md), and a kernel library picks other
code paths with AVX-512, VNNI or AMX. `fingerprint` records what decides the kernels and their
speed (CPU model, usable cores, kernel-relevant instruction sets, backend versions, threads);
`deploysparse check` compares absolute milliseconds only between equal fingerprints.
`conditions` records what explains a noisy figure without deciding comparability (which CPUs the
process was pinned to, the load average around the measurement).
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path

# Instruction sets that decide which kernels a CPU backend runs (x86: ONNX Runtime/MLAS, oneDNN;
# Arm: the NEON dot-product, SVE and i8mm paths). Other /proc/cpuinfo flags (virtualisation,
# security mitigations) differ between hosts of one kind without changing a kernel.
KERNEL_FLAGS = frozenset(
    {
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "avx_vnni",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
        "asimd",
        "asimdhp",
        "asimddp",
        "sve",
        "sve2",
        "i8mm",
        "bf16",
    }
)


@cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name ('Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz'), else the platform's."""
    match = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or platform.machine()


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    return len(affinity()) or os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU model and the cores this process may use, e.g. 'Intel Xeon ... (2 cores)'."""
    return f"{cpu_model()} ({usable_cores()} cores)"


def affinity() -> list[int]:
    """The CPUs this process may run on ([] where the platform cannot say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return []


def cpu_flags() -> list[str]:
    """The kernel-relevant instruction sets of the CPU (x86 `flags`, Arm `Features`), sorted."""
    match = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", _cpuinfo(), re.MULTILINE)
    return sorted(KERNEL_FLAGS.intersection(match.group(1).split())) if match else []


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none): how busy the machine was."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def fingerprint(device: str, backends: Mapping[str, str], threads: int | None) -> dict:
    """What must match for two latencies in milliseconds to be comparable (report.json's
    `latency.fingerprint`): `device` as the backend names it, `backends` name -> version, and the
    intra-op `threads` the timed runners used."""
    return {
        "arch": platform.machine(),
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "cpu_flags": cpu_flags(),
        "device": device,
        "backends": dict(sorted(backends.items())),
        "threads": threads,
    }
