"""The int8 build on ONNX Runtime: decided by measurement on the machine that builds, and honest about it.

An int8 model is not faster by itself: it is faster when the CPU has kernels for its format
(`backends/quantize.py` picks the scheme from the CPU's features) and when each layer's int8 kernel
beats its fp32 one (a depthwise conv, a tiny conv or the first conv often does not). So the build:

1. holds out every fifth calibration sample (`split_held_out`) and calibrates on the rest, or, given
   judge data (`run`'s validation inputs, at most MAX_JUDGED samples, at least MIN_HELD_OUT),
   calibrates on every calibration sample and judges on those: 51 held-out samples of 256 cannot
   tell an agreement of 0.985 from 1.0 (one disagreement is 0.98), a few hundred can;
2. calibrates with each method asked for (minmax, percentile, entropy) and keeps the one whose model
   agrees best with fp32 on the held-out samples (top-1 agreement for class scores, else cosine);
3. on ARM, where both S8S8 and U8S8 kernels exist, times both schemes and keeps the faster;
4. with `--int8-layers auto`, profiles fp32 against int8 layer by layer (ONNX Runtime's profiler,
   interleaved) and builds two mixed models beside the all-int8 one: *without-slower* keeps float the
   layers whose int8 kernel was slower (and, when the held-out agreement is below AGREEMENT_TARGET,
   the layers reading the worst-quantised activations, one at a time, each kept float only if the
   agreement improves); *profitable-only* runs int8 only in the convs and dense layers it made
   clearly faster;
5. times fp32 and every int8 candidate interleaved (backends/timing.py) and keeps the fastest that
   reaches the target (the best agreement when none does);
6. says plainly, in `finding`, when int8 is not faster than fp32 on this machine; with
   `--int8-layers auto` that is the limit of mixed precision by measurement (no layer set pays), so
   the build publishes the fp32 model, every layer listed float, rather than a slower int8 one
   (a 1 ms classifier of many small layers, where each quantise/dequantise step costs more than
   its int8 kernel saves, is the usual case); `--int8-layers all` publishes int8 regardless.

Every decision and figure goes into the build metadata (`quantization`), so the report can show
which scheme was built and why, which layers stayed float and why, and how fast each model ran.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from deploysparse import progress
from deploysparse.agreement import Agreement, agreement
from deploysparse.backends.base import Backend
from deploysparse.backends.machine import usable_cores
from deploysparse.backends.onnxruntime import quantizer
from deploysparse.backends.onnxruntime.build import calibration_batches
from deploysparse.backends.quantize import (
    CALIBRATION_METHODS,
    CpuFeatures,
    Int8Options,
    QuantScheme,
    onnxruntime_cpu_scheme,
)
from deploysparse.calibration import InputSpec, sample_count
from deploysparse.modelio import load_model, save_model
from deploysparse.profiling import side_by_side_rows

HELD_OUT_EVERY = 5  # every fifth calibration sample is held out to judge the choices
MIN_HELD_OUT = 10  # fewer held-out samples judge nothing: minmax and speed alone decide
AGREEMENT_TARGET = 0.99  # held-out top-1 agreement (or cosine) an int8 model should reach
MAX_JUDGED = 1000  # judge samples used at most: each candidate model runs on all of them
MAX_ACCURACY_EXCLUSIONS = 3  # layers tried in float for accuracy, worst-quantised first
TIMING_BATCH = 1  # the latency a deployment sees first; recorded with the figures
PROFILE_WARMUP, PROFILE_RUNS = 3, 10
# A layer stays float for speed only when its int8 kernel is clearly slower: keeping it float adds a
# DequantizeLinear before and a QuantizeLinear after it, and per-layer times carry timing noise.
SLOWER_BY = 1.2
KERNELS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # where int8 arithmetic can pay for its conversions
MIN_SHARE = 0.01  # of the fp32 model's time: a kernel below it gains less than its conversions cost
SQNR_SAMPLES, SQNR_GROUP = 4, 32  # held-out samples and tensors per pass when ranking quantisation error


@dataclass
class Int8Result:
    """The QDQ model the build keeps, its scheme, and the metadata's `quantization` (module doc)."""

    model: Path
    scheme: QuantScheme
    metadata: dict = field(default_factory=dict)


def split_held_out(
    feeds: Mapping[str, np.ndarray], specs: list[InputSpec]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(calibration, held-out): every HELD_OUT_EVERY-th sample held out (data sorted by class keeps
    every class on both sides), in whole static batches; no held-out part below MIN_HELD_OUT."""
    n = sample_count(feeds)
    unit = specs[0].batch_dim if isinstance(specs[0].batch_dim, int) else 1
    held = np.arange(n) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    kept = np.flatnonzero(held)[: (int(held.sum()) // unit) * unit]
    if len(kept) < max(MIN_HELD_OUT, unit) or n - len(kept) < unit:
        return dict(feeds), {}
    mask = np.zeros(n, dtype=bool)
    mask[kept] = True
    return {k: v[~mask] for k, v in feeds.items()}, {k: v[mask] for k, v in feeds.items()}


def first_samples(
    feeds: Mapping[str, np.ndarray], specs: list[InputSpec], limit: int
) -> dict[str, np.ndarray]:
    """The first `limit` samples of `feeds`, in whole static batches."""
    unit = specs[0].batch_dim if isinstance(specs[0].batch_dim, int) else 1
    keep = (min(sample_count(feeds), limit) // unit) * unit
    return {name: value[:keep] for name, value in feeds.items()} if keep else {}


def build_int8(
    backend: Backend,
    source: Path,
    specs: list[InputSpec],
    feeds: Mapping[str, np.ndarray],
    work: Path,
    options: Int8Options,
    cpu: CpuFeatures | None = None,
    judge_feeds: Mapping[str, np.ndarray] | None = None,
) -> Int8Result:
    """Quantise `source` for ONNX Runtime on this CPU as the module doc describes; scratch files in
    `work`. `judge_feeds`: inputs to judge the choices on instead of held-out calibration samples."""
    cpu = cpu or CpuFeatures.of_this_machine()
    choice = onnxruntime_cpu_scheme(cpu)
    judged = first_samples(judge_feeds, specs, MAX_JUDGED) if judge_feeds is not None else {}
    if judged and sample_count(judged) >= MIN_HELD_OUT:
        calib, held_out, kind = dict(feeds), judged, "validation"
    else:  # no judge data, or too little to judge by: hold out part of the calibration set
        (calib, held_out), kind = split_held_out(feeds, specs), "held-out calibration"
    batches = calibration_batches(specs, calib, source)
    judge = _Judge(backend, specs, held_out, source, kind)
    prepared = quantizer.prepare(source, work / "prepared.onnx", batches, choice.candidates[0].per_channel)
    ranges = _Ranges(prepared, batches, work)

    methods = _methods(options.calibration, bool(judge.batches))
    scheme = choice.candidates[0]
    scores: dict[str, Agreement | None] = {}
    for method in methods:
        trial = scheme.replace(calibration=method)
        scores[method] = judge.score(_quantize(prepared, ranges, trial, work / f"int8-{method}.onnx").path)
    method = max(methods, key=lambda m: scores[m].key() if scores[m] else (0.0, 0.0))

    batch = specs[0].batch_dim if isinstance(specs[0].batch_dim, int) else TIMING_BATCH
    timer = backend.timer(batch)
    timing_feeds = {name: np.ascontiguousarray(value[:batch]) for name, value in feeds.items()}
    scheme_ms: dict[str, float] = {}
    if len(choice.candidates) > 1:  # the features leave it open: time each scheme here
        trials = [
            _quantize(prepared, ranges, c.replace(calibration=method), work / f"int8-{c.name}.onnx")
            for c in choice.candidates
        ]
        with progress.progress("timing int8 schemes"):
            times = timer.interleaved_ms([t.path for t in trials], feeds=timing_feeds)
        scheme_ms = {t.scheme.name: ms for t, ms in zip(trials, times, strict=True)}
        scheme = min(zip(trials, times, strict=True), key=lambda pair: pair[1])[0].scheme
    every = _quantize(prepared, ranges, scheme.replace(calibration=method), work / "int8-all.onnx")
    variants = [_Variant("all", every, [], judge.score(every.path))]
    if options.layers == "auto":
        variants += _mixed_variants(backend, judge, prepared, ranges, variants[0], timing_feeds, work)

    models = {"fp32": source, **{f"int8_{v.name}": v.model.path for v in variants}}
    with progress.progress("timing int8 against fp32"):
        times = dict(
            zip(models, timer.interleaved_ms(list(models.values()), feeds=timing_feeds), strict=True)
        )
    for variant in variants:
        variant.ms = times[f"int8_{variant.name}"]
    kept = _choose(variants)
    float_wins = options.layers == "auto" and not kept.ms < times["fp32"]
    published_ms = times["fp32"] if float_wins else kept.ms
    layers = {
        "mode": options.layers,
        "kept": "none" if float_wins else kept.name,
        "quantized": 0
        if float_wins
        else len(quantizer.quantized_nodes(onnx.load(str(kept.model.path), load_external_data=False))),
        "float": _every_layer_float(variants[0]) if float_wins else kept.float_layers,
        "variants": [v.to_json() for v in variants],
        "note": _layers_note(options.layers, kept, variants, times["fp32"] if float_wins else None),
    }
    metadata = {
        "scheme": kept.model.scheme.to_json(),
        "description": kept.model.scheme.describe(),
        "reason": choice.reason,
        "cpu": cpu.to_json(),
        "scheme_latency_ms": scheme_ms or None,
        "opset": prepared.to_json(),
        "calibration": {
            "method": method,
            "chosen_by": _chosen_by(options.calibration, methods, judge),
            "samples": sample_count(calib),
            "held_out": judge.samples,
            "agreement": {m: (s.to_json() if s else None) for m, s in scores.items()},
        },
        "layers": layers,
        "agreement": None if float_wins else (kept.score.to_json() if kept.score else None),
        "latency": {
            "batch": batch,
            "threads": f"ONNX Runtime's default ({usable_cores()} cores)",
            "fp32_ms": times["fp32"],
            "int8_ms": published_ms,
        },
        "speedup": times["fp32"] / published_ms if published_ms > 0 else None,
        "faster": published_ms < times["fp32"],
        "finding": float_finding(times["fp32"], kept, batch)
        if float_wins
        else not_faster_finding(times["fp32"], kept.ms, batch),
    }
    if float_wins:
        return Int8Result(source, kept.model.scheme, metadata)
    return Int8Result(kept.model.path, kept.model.scheme, metadata)


def not_faster_finding(fp32_ms: float, int8_ms: float, batch: int) -> str | None:
    """The one line a build and a run print when int8 does not pay on this machine (None when it does)."""
    if int8_ms < fp32_ms:
        return None
    return (
        f"int8 is not faster than fp32 on this CPU: {int8_ms:.3f} ms against {fp32_ms:.3f} ms at batch {batch} "
        "(timed interleaved); the int8 model is built as asked, but fp32 runs faster here"
    )


def float_finding(fp32_ms: float, fastest: _Variant, batch: int) -> str:
    """The one line of an auto build that found no int8 model faster than fp32: it publishes fp32."""
    return (
        f"int8 does not pay for this model on this CPU: the fastest int8 model ({fastest.name}, "
        f"{fastest.ms:.3f} ms) is not faster than fp32 ({fp32_ms:.3f} ms) at batch {batch} (timed "
        "interleaved), so --int8-layers auto keeps every layer in float and publishes the fp32 model "
        "(--int8-layers all publishes int8 regardless)"
    )


class _Ranges:
    """Activation ranges per (method, symmetric), calibrated once each and reused by every quantisation."""

    def __init__(self, prepared: quantizer.Prepared, batches: Sequence[Mapping[str, np.ndarray]], work: Path):
        self._prepared, self._batches, self._work = prepared, batches, work
        self._files: dict[tuple[str, bool], Path] = {}

    def get(self, method: str, symmetric: bool) -> Path:
        key = (method, symmetric)
        if key not in self._files:
            target = self._work / f"ranges-{method}{'-symmetric' if symmetric else ''}.json"
            self._files[key] = quantizer.calibrate(self._prepared, self._batches, method, symmetric, target)
        return self._files[key]


def _quantize(
    prepared: quantizer.Prepared, ranges: _Ranges, scheme: QuantScheme, target: Path
) -> quantizer.Quantized:
    return quantizer.quantize(prepared, ranges.get(scheme.calibration, scheme.symmetric), scheme, target)


class _Judge:
    """Scores int8 models against fp32 on the held-out samples (fp32 outputs computed once)."""

    def __init__(
        self,
        backend: Backend,
        specs: list[InputSpec],
        held_out: Mapping[str, np.ndarray],
        source: Path,
        kind: str = "held-out calibration",
    ):
        self.backend = backend
        self.kind = kind  # what the samples are: "held-out calibration" or "validation"
        self.batches = calibration_batches(specs, held_out, source) if held_out else []
        self.samples = sum(sample_count(b) for b in self.batches)
        self._reference = self.outputs(source) if self.batches else {}

    def outputs(self, model: Path) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        with self.backend.runner(model) as runner:
            for batch in self.batches:
                for name, value in runner.run(batch).items():
                    parts.setdefault(name, []).append(value)
        return {name: np.concatenate(values) for name, values in parts.items()}

    def score(self, model: Path) -> Agreement | None:
        """Agreement with fp32 on the held-out samples; None without any."""
        return agreement(self._reference, self.outputs(model)) if self.batches else None


def _methods(asked: str, judged: bool) -> tuple[str, ...]:
    if asked != "auto":
        return (asked,)
    return CALIBRATION_METHODS if judged else ("minmax",)


def _chosen_by(asked: str, methods: Sequence[str], judge: _Judge) -> str:
    if asked != "auto":
        return "--calib-method"
    if len(methods) == 1:
        return f"minmax: fewer than {MIN_HELD_OUT} samples to hold out, so no method could be judged"
    return f"agreement with fp32 on {judge.samples} {judge.kind} samples"


@dataclass
class _Variant:
    """One choice of the layers that run int8: its QDQ model, the layers it keeps float (and why), its
    held-out agreement and its latency (ms, timed interleaved with fp32 and the other variants)."""

    name: str  # all | without-slower | profitable-only
    model: quantizer.Quantized
    float_layers: list[dict]
    score: Agreement | None
    ms: float = math.inf

    @property
    def reaches_target(self) -> bool:
        return self.score is None or self.score.figure >= AGREEMENT_TARGET

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "float_layers": len(self.float_layers),
            "ms": self.ms,
            "agreement": self.score.to_json() if self.score else None,
        }


def _choose(variants: list[_Variant]) -> _Variant:
    """The fastest variant that reaches AGREEMENT_TARGET on the held-out samples; when none does, the
    one that agrees best (ties: the faster)."""
    reaching = [v for v in variants if v.reaches_target]
    if reaching:
        return min(reaching, key=lambda v: v.ms)
    return max(variants, key=lambda v: (v.score.key() if v.score else (0.0, 0.0), -v.ms))


def _layers_note(mode: str, kept: _Variant, variants: list[_Variant], float_ms: float | None = None) -> str:
    """What the layers' choice was; `float_ms` when the fp32 model won against every int8 one."""
    if mode == "all":
        return "every layer ONNX Runtime can quantise runs int8 (--int8-layers all)"
    timed = ", ".join(f"{v.name} {v.ms:.3f} ms" for v in variants)
    if float_ms is not None:
        return f"every layer kept in float: fp32 {float_ms:.3f} ms was faster than every int8 model ({timed})"
    if len(variants) == 1:
        return "no layer measured slower in int8: every layer runs int8"
    if kept.name == "all":
        return f"every layer runs int8: no model with layers in float was faster and as accurate ({timed})"
    return f"{len(kept.float_layers)} layer(s) kept in float ({kept.name}: {timed})"


def _mixed_variants(
    backend: Backend,
    judge: _Judge,
    prepared: quantizer.Prepared,
    ranges: _Ranges,
    every: _Variant,
    feeds: Mapping[str, np.ndarray],
    work: Path,
) -> list[_Variant]:
    """The mixed-precision models worth timing, from a per-layer profile of fp32 against all-int8:
    without-slower keeps float the layers whose int8 kernel was SLOWER_BY slower (and, when the held-out
    agreement falls short, the least accurate ones); profitable-only runs int8 only in the kernels
    (conv, dense) that were SLOWER_BY faster in int8 and took at least MIN_SHARE of the fp32 time,
    which spares a model of many small layers its quantise/dequantise steps between them."""
    rows = _profile_rows(backend, prepared.path, every.model.path, feeds, work)
    quantized = set(quantizer.quantized_nodes(onnx.load(str(every.model.path), load_external_data=False)))
    ops = {
        node.name: node.op_type for node in onnx.load(str(prepared.path), load_external_data=False).graph.node
    }
    total = sum(row["ms"].get("fp32", 0.0) for row in rows) or 1.0
    slower = [
        _float_layer(row, "slower in int8")
        for row in rows
        if row["node"] in quantized
        and {"fp32", "int8"} <= set(row["ms"])
        and row["ms"]["int8"] > SLOWER_BY * row["ms"]["fp32"]
    ]
    if every.score is not None and every.score.figure < AGREEMENT_TARGET:
        slower += _least_accurate_layers(judge, prepared, ranges, every.model, slower, ops, work)
    profitable = {
        row["node"]
        for row in rows
        if ops.get(row["node"]) in KERNELS
        and {"fp32", "int8"} <= set(row["ms"])
        and row["ms"]["fp32"] >= SLOWER_BY * row["ms"]["int8"]
        and row["ms"]["fp32"] >= MIN_SHARE * total
    }
    by_node = {row["node"]: row for row in rows}
    small = [
        _float_layer(by_node[node], "int8 not worth its quantise/dequantise steps")
        if node in by_node
        else {
            "node": node,
            "op": ops.get(node, ""),
            "reason": "not profiled",
            "fp32_ms": None,
            "int8_ms": None,
        }
        for node in sorted(quantized - profitable)
    ]
    variants = []
    for name, float_layers in (("without-slower", slower), ("profitable-only", small)):
        excluded = tuple(layer["node"] for layer in float_layers)
        if not excluded or any(
            excluded == tuple(layer["node"] for layer in v.float_layers) for v in variants
        ):
            continue
        if set(excluded) >= quantized:
            continue  # nothing left in int8: that is the fp32 model
        model = _quantize(
            prepared, ranges, every.model.scheme.replace(excluded_nodes=excluded), work / f"int8-{name}.onnx"
        )
        variants.append(_Variant(name, model, float_layers, judge.score(model.path)))
    return variants


def _every_layer_float(every: _Variant) -> list[dict]:
    """The float layers of a published fp32 model: every layer the all-int8 model quantised."""
    model = onnx.load(str(every.model.path), load_external_data=False)
    ops = {node.name: node.op_type for node in model.graph.node}
    return [
        {
            "node": node,
            "op": ops.get(node, ""),
            "reason": "no int8 model was faster than fp32",
            "fp32_ms": None,
            "int8_ms": None,
        }
        for node in quantizer.quantized_nodes(model)
    ]


def _float_layer(row: dict, reason: str) -> dict:
    ms = row["ms"]
    return {
        "node": row["node"],
        "op": row["op"],
        "reason": reason,
        "fp32_ms": ms.get("fp32"),
        "int8_ms": ms.get("int8"),
    }


def _profile_rows(
    backend: Backend, fp32: Path, int8: Path, feeds: Mapping[str, np.ndarray], work: Path
) -> list[dict]:
    """Per-layer latency of fp32 and all-int8, profiled interleaved at the shape of `feeds` (the
    profiler names a fused QLinear node after its source node, so the rows line up)."""
    models = {"fp32": fp32, "int8": int8}
    fixed = {
        label: _fixed_shape(path, feeds, work / f"profile-{label}.onnx") for label, path in models.items()
    }
    with progress.progress("profiling int8 against fp32"):
        profiles = backend.profile(fixed, batch=sample_count(feeds), warmup=PROFILE_WARMUP, runs=PROFILE_RUNS)
    return side_by_side_rows(profiles)


def _fixed_shape(model: Path, feeds: Mapping[str, np.ndarray], target: Path) -> Path:
    """`model` with its inputs declared at the shapes of `feeds`: the profiler feeds random inputs at
    the declared shape, which a model with dynamic height and width does not have."""
    proto = load_model(model)
    for value in proto.graph.input:
        if value.name in feeds:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, feeds[value.name].shape, strict=True):
                dim.Clear()
                dim.dim_value = int(size)
    return save_model(proto, target)


def _least_accurate_layers(
    judge: _Judge,
    prepared: quantizer.Prepared,
    ranges: _Ranges,
    every: quantizer.Quantized,
    already: list[dict],
    ops: dict[str, str],
    work: Path,
) -> list[dict]:
    """Layers kept float for accuracy: those reading the activations int8 represents worst (lowest
    signal-to-quantisation-noise ratio on held-out samples), tried one at a time, each kept only when
    the held-out agreement improves, until it reaches AGREEMENT_TARGET."""
    excluded = tuple(layer["node"] for layer in already)
    best = judge.score(
        _quantize(
            prepared, ranges, every.scheme.replace(excluded_nodes=excluded), work / "int8-try.onnx"
        ).path
    )
    chosen: list[dict] = []
    for node, sqnr in [pair for pair in _input_sqnr(judge, every.path) if pair[0] not in excluded][
        :MAX_ACCURACY_EXCLUSIONS
    ]:
        if best is None or best.figure >= AGREEMENT_TARGET:
            break
        trial = every.scheme.replace(excluded_nodes=(*excluded, node))
        score = judge.score(_quantize(prepared, ranges, trial, work / "int8-try.onnx").path)
        if score is not None and score.key() > best.key():
            best, excluded = score, (*excluded, node)
            chosen.append(
                {
                    "node": node,
                    "op": ops.get(node, ""),
                    "reason": f"largest quantisation error (input SQNR {sqnr:.1f} dB); held-out agreement "
                    f"{best.figure:.4f} with it in float",
                    "fp32_ms": None,
                    "int8_ms": None,
                }
            )
    return chosen


def _input_sqnr(judge: _Judge, qdq: Path) -> list[tuple[str, float]]:
    """Quantised nodes by the signal-to-quantisation-noise ratio (dB) of the activation they read,
    worst first: the float tensor before its QuantizeLinear against its DequantizeLinear output, with
    ONNX Runtime's optimisations off (so both tensors exist), summed over SQNR_SAMPLES held-out samples
    read SQNR_GROUP tensors at a time (a detector's activations at full resolution are large)."""
    model = load_model(qdq)
    producer = {out: node for node in model.graph.node for out in node.output}
    pairs: dict[str, tuple[str, str]] = {}  # node -> (float tensor, dequantised tensor)
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not node.input:
            continue
        dq = producer.get(node.input[0])
        q = (
            producer.get(dq.input[0])
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input
            else None
        )
        if q is not None and q.op_type == "QuantizeLinear":
            pairs[node.name] = (q.input[0], dq.output[0])
    feeds = {
        name: np.concatenate([b[name] for b in judge.batches])[:SQNR_SAMPLES] for name in judge.batches[0]
    }
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    names = list(pairs)
    for start in range(0, len(names), SQNR_GROUP):
        group = names[start : start + SQNR_GROUP]
        tensors = sorted({t for node in group for t in pairs[node]})
        for values in judge.backend.intermediate_batches(model, feeds, tensors, batch_size=1):
            for node in group:
                raw, dequantized = (values[t].astype(np.float64) for t in pairs[node])
                signal[node] = signal.get(node, 0.0) + float(np.sum(raw * raw))
                noise[node] = noise.get(node, 0.0) + float(np.sum((raw - dequantized) ** 2))
    ranking = [
        (
            node,
            10 * math.log10(signal[node] / noise[node]) if noise[node] > 0 and signal[node] > 0 else math.inf,
        )
        for node in names
    ]
    return sorted(ranking, key=lambda pair: pair[1])
