"""bench: latency percentiles per batch, report fields, static batches skipped, dynamic H/W at a given shape."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploysparse.backends.yardstick import write_yardstick
from deploysparse.bench import benchmark, benchmark_side_by_side
from deploysparse.cli import main
from deploysparse.errors import UsageError
from deploysparse.report.schema import Fingerprint, LatencyPoint, TimingConditions


def _model(path, batch="N", height=16, width=16):
    weight = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, height, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, height, width])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_benchmark_reports_percentiles_per_batch(tmp_path):
    report = benchmark(_model(tmp_path / "m.onnx"), batches=(1, 4), warmup=2, iters=20, threads=1)
    payload = report.to_json()
    assert {"backend", "version", "device", "threads", "results"} <= set(payload)
    assert payload["backend"] == "onnxruntime" and payload["threads"] == 1
    assert [r["batch"] for r in payload["results"]] == [1, 4]
    for result in payload["results"]:
        assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]
        assert result["throughput_per_s"] > 0


def test_benchmark_warms_up_until_settled_and_says_how_long(tmp_path):
    result = benchmark(_model(tmp_path / "m.onnx"), batches=(1,), warmup=2, iters=5).results[0]
    assert result.warmup_calls >= 10  # two windows of 5 at least, to judge whether calls settled
    assert isinstance(result.warmup_settled, bool)


def test_side_by_side_keeps_every_call_of_every_round_and_the_machine(tmp_path):
    """Two models timed in 3 rounds of 4 calls per batch size: each round is a run with its calls,
    the points are report.json's, and the fingerprint and conditions are recorded."""
    a, b = _model(tmp_path / "a.onnx"), _model(tmp_path / "b.onnx")
    measured = benchmark_side_by_side(
        {"original": (a, "onnxruntime"), "compact": (b, "onnxruntime")},
        batches=(1, 2),
        warmup=1,
        iters=4,
        rounds=3,
        threads=1,
    )
    assert list(measured.models) == ["original", "compact"]
    for points in measured.models.values():
        assert [p.batch for p in points] == [1, 2]
        for point in points:
            parsed = LatencyPoint.model_validate(point.to_json())
            assert len(parsed.runs) == 3 and all(len(run.samples_ms) == 4 for run in parsed.runs)
            assert parsed.samples() == [run.samples_ms for run in parsed.runs]
            assert parsed.warmup_calls is not None and parsed.warmup_calls >= 10
            pooled = np.concatenate(parsed.samples())
            assert parsed.p50_ms == pytest.approx(float(np.percentile(pooled, 50)), rel=1e-3)
    fingerprint = Fingerprint.model_validate(measured.fingerprint)
    assert fingerprint.threads == 1 and fingerprint.backends == {
        "onnxruntime": fingerprint.backends["onnxruntime"]
    }
    assert fingerprint.device.startswith("CPU: ") and fingerprint.cores >= 1
    conditions = TimingConditions.model_validate(measured.conditions)
    assert (conditions.rounds, conditions.iters, conditions.warmup) == (3, 4, 1)
    assert conditions.affinity and len(conditions.load_average) == 2


def test_the_yardstick_is_timed_on_inputs_of_its_own_shape(tmp_path):
    """A model with another input (the yardstick's 16x32x32) is timed beside one of 3x8x8 when
    named in own_inputs; the others still share their inputs."""
    measured = benchmark_side_by_side(
        {
            "original": (_model(tmp_path / "a.onnx"), "onnxruntime"),
            "yardstick": (write_yardstick(tmp_path), "onnxruntime"),
        },
        batches=(1, 2),
        warmup=0,
        iters=2,
        rounds=2,
        threads=1,
        own_inputs={"yardstick"},
    )
    points = [LatencyPoint.model_validate(p.to_json()) for p in measured.models["yardstick"]]
    assert [p.batch for p in points] == [1, 2] and all(len(p.runs) == 2 for p in points)


def test_side_by_side_refuses_a_batch_a_model_cannot_run(tmp_path):
    with pytest.raises(UsageError, match="static batch of 1"):
        benchmark_side_by_side(
            {
                "original": (_model(tmp_path / "a.onnx"), "onnxruntime"),
                "compact": (_model(tmp_path / "s.onnx", batch=1), "onnxruntime"),
            },
            batches=(1, 8),
            warmup=0,
            iters=2,
            rounds=1,
        )


def test_static_batch_model_skips_the_batches_it_cannot_take(tmp_path):
    path = _model(tmp_path / "static.onnx", batch=1)
    report = benchmark(path, batches=(1, 8), warmup=0, iters=2)
    assert [r.batch for r in report.results] == [1]
    assert [s.to_json() for s in report.skipped] == [
        {"batch": 8, "reason": "input 'x' has a static batch of 1"}
    ]
    # none of the batches asked for fits: the model's own batch is timed, and the others named
    only = benchmark(path, batches=(8,), warmup=0, iters=2)
    assert [r.batch for r in only.results] == [1] and [s.batch for s in only.skipped] == [8]


def test_dynamic_height_and_width_bench_at_the_given_shape(tmp_path):
    path = _model(tmp_path / "hw.onnx", height="H", width="W")
    with pytest.raises(UsageError, match=r"input 'x' has dynamic dims at axes \[2, 3\].*--input-shape"):
        benchmark(path, warmup=0, iters=1)
    report = benchmark(path, warmup=0, iters=2, input_shapes={"": (2, 3, 24, 40)})
    assert [r.batch for r in report.results] == [2]  # the batch of the shape given
    assert report.to_json()["input_shapes"] == {"shapes": {"x": [2, 3, 24, 40]}, "source": "--input-shape"}
    given = benchmark(path, batches=(1, 4), warmup=0, iters=2, input_shapes={"x": (1, 3, 8, 8)})
    assert [r.batch for r in given.results] == [1, 4]


def test_cli_bench_json_and_exit_code(tmp_path, capsys):
    path = _model(tmp_path / "m.onnx")
    assert main(["bench", str(path), "--batch", "1,2", "--warmup", "1", "--iters", "5", "--json"]) is None
    payload = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in payload["results"]] == [1, 2]
    assert payload["input_shapes"] == {"shapes": {"x": [1, 3, 16, 16]}, "source": "model"}
    assert (
        main(["bench", str(_model(tmp_path / "s.onnx", batch=1)), "--batch", "1,8", "--iters", "2"]) is None
    )
    out = capsys.readouterr().out
    assert "skipped batch 8: input 'x' has a static batch of 1" in out
    assert "inputs: x 1x3x16x16 (from model)" in out
    hw = str(_model(tmp_path / "hw.onnx", height="H", width="W"))
    assert main(["bench", hw, "--input-shape", "x:1x3x32x48", "--iters", "2", "--json"]) is None
    assert json.loads(capsys.readouterr().out)["input_shapes"]["shapes"] == {"x": [1, 3, 32, 48]}
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", hw, "--input-shape", "1x3x32"])
    assert exit_info.value.code == 2
    assert "error: --input-shape: 1x3x32 has 3 dims, but input 'x' has rank 4" in capsys.readouterr().err
