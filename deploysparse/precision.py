"""The precisions a model is built and validated at, declared once, with what each implies for validation.

A precision names how the backend computes (fp32, fp16, int8) and, because each rounds differently,
the tolerances validation holds the compact model to by default. Backends check a requested precision
here and validation reads its defaults here; `build --precision`, `validate --precision` and its
tolerance help, a recipe's build.precision and a sweep's precision axis are derived from
DEFAULT_TOLERANCES, so a new precision is one entry. This module imports nothing heavy: the CLI reads
it to build its options.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from deploysparse.errors import UsageError


@dataclass
class Tolerances:
    """Pass criteria; None switches a check off. An element passes when
    |compact - original| <= atol + rtol * |original| (a None bound counts as 0, both None: no check)."""

    atol: float | None = 1e-4
    rtol: float | None = 1e-3
    min_cosine: float | None = 0.999
    min_top1: float | None = None
    max_accuracy_drop: float | None = None

    @property
    def elementwise(self) -> bool:
        return self.atol is not None or self.rtol is not None


# fp32: a compact model sums the same products in another order (float32 rounding, ~1e-6 relative);
# fp16: 11-bit mantissas (~1e-3 relative per op, compounded over layers); int8: every activation is
# rounded to 1/127 of its range, so only the direction of the output and the predictions are judged.
DEFAULT_TOLERANCES: dict[str, Tolerances] = {
    "fp32": Tolerances(atol=1e-4, rtol=1e-3, min_cosine=0.999),
    "fp16": Tolerances(atol=1e-2, rtol=1e-2, min_cosine=0.995),
    "int8": Tolerances(atol=None, rtol=None, min_cosine=0.98, min_top1=0.9),
}
PRECISIONS: tuple[str, ...] = tuple(DEFAULT_TOLERANCES)
DEFAULT_PRECISION = "fp32"
# Structured sparsity patterns a build can impose on the weights beside a precision (`--sparsity`,
# a recipe's build.sparsity): 2 non-zeros in every 4, what Ampere and later tensor cores run sparse.
SPARSITY_PATTERNS: tuple[str, ...] = ("2:4",)


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS; UsageError naming them otherwise."""
    if precision not in DEFAULT_TOLERANCES:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def defaults_help(tolerance: str) -> str:
    """A tolerance's default per precision, for its option's help: `[fp32 0.0001, fp16 0.01, int8 off]`
    (one value when every precision has the same)."""
    if tolerance not in {f.name for f in fields(Tolerances)}:
        raise ValueError(f"no tolerance {tolerance!r} in Tolerances")
    values = {name: getattr(t, tolerance) for name, t in DEFAULT_TOLERANCES.items()}
    shown = {name: "off" if v is None else f"{v:g}" for name, v in values.items()}
    if len(set(shown.values())) == 1:
        return f"[{next(iter(shown.values()))}]"
    return "[" + ", ".join(f"{name} {text}" for name, text in shown.items()) + "]"
