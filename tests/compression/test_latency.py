"""The latency predictor against measurement in the same run, and the timers' bookkeeping."""

import itertools

import numpy as np
from scipy.stats import spearmanr

from fedge.compression.export import ExportConfig, export_onnx
from fedge.compression.latency import fit, graph_of
from fedge.compression.probes import INT8
from fedge.compression.quantize import quantize_int8
from fedge.core.models import build_student
from fedge.core.ort import (
    blocked_latency_us,
    interleaved_latency_us,
    make_session,
    session_call,
    settled_latency_us,
)
from fedge.core.partition import PublicPool
from fedge.core.profile import PROBE_DIR, Profile, probe_index

# Not probes; from a few nodes to many, narrow to wide: several times apart in latency.
CANDIDATES = (
    "arch:c8k3p-relu",
    "arch:c16k3-c16k3p-h32-relu",
    "arch:c32k3-c32k3-c32k3p-h64-relu",
    "arch:c48k5-c48k5-c48k5-h128-hardswish",
)


def _probe_calls(rng: np.random.Generator) -> dict[str, object]:
    """A batch-1 call per shipped probe, as `fedge profile` times them."""
    calls = {}
    for name, row in probe_index().items():
        session = make_session((PROBE_DIR / str(row["file"])).read_bytes())
        x = rng.normal(size=(1, *row["input_shape"])).astype(np.float32)
        calls[f"probe {name}"] = session_call(session, x)
    return calls


def test_predicted_latency_ranks_candidates_as_measured_side_by_side(rng):
    """Probes and candidates timed in the same rotated blocks: the machine's drift hits both.

    The profile (the probes' p50s) and the candidates come from one measurement, so what is
    compared is the predictor's extrapolation from probes to candidates, not this shared
    machine's speed at two moments (benchmarks/latency_predictor.py measures both ways).
    """
    pool = PublicPool(rng.normal(size=(32, 1, 8, 8)).astype(np.float32))
    models = {}
    for spec in CANDIDATES:
        fp32 = export_onnx(build_student((1, 8, 8), 10, spec, 0), (1, 8, 8), ExportConfig())
        models[f"{spec} fp32"], models[f"{spec} int8"] = fp32, quantize_int8(fp32, pool, INT8)
    x = pool.x[:1]
    calls = _probe_calls(rng) | {n: session_call(make_session(m), x) for n, m in models.items()}
    measured = blocked_latency_us(calls, blocks=5, per_block=100)
    probes = {n.removeprefix("probe "): {1: t["p50"]} for n, t in measured.items() if "probe" in n}
    model = fit(Profile({"name": "this machine"}, 1, (1,), probes))
    names = list(models)
    predicted = np.array([model.predict_us(models[n]) for n in names])
    actual = np.array([measured[n]["p50"] for n in names])
    table = list(zip(names, predicted, actual, strict=True))
    assert spearmanr(predicted, actual)[0] >= 0.8, table
    # the level: within 3x of the measurement it was fitted beside (the shape's error is a
    # figure, not a behaviour: benchmarks/latency_predictor.py measures it)
    scale = float(np.median(actual / predicted))
    assert 1 / 3 < scale < 3, (scale, table)
    # more layers and more work read as more of both
    small, big = graph_of(models[names[0]]), graph_of(models[names[-1]])
    assert small.nodes < big.nodes and small.macs < big.macs and big.int8 and not small.int8


class FakeClock:
    """Nanoseconds that advance only when a timed call says it took some."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def calling(self, name: str, costs_ns: int | itertools.cycle, log: list[str]):
        """A call that logs `name` and takes `costs_ns` (or the cycle's next cost)."""
        costs = itertools.repeat(costs_ns) if isinstance(costs_ns, int) else costs_ns

        def call() -> None:
            log.append(name)
            self.now += next(costs)

        return call


def test_interleaved_latency_alternates_the_sides_and_reports_each_ones_time():
    clock, cpu, log = FakeClock(), FakeClock(), []
    calls = {"a": clock.calling("a", 3_000, log), "b": clock.calling("b", 7_000, log)}
    timing = interleaved_latency_us(calls, warmup=2, iters=5, clock=clock, cpu_clock=cpu)
    assert log == ["a", "b"] * 7  # warm-up, then A B A B ...
    assert timing["a"] == {"p50": 3.0, "p95": 3.0, "cpu_p50": 0.0}
    assert timing["b"]["p50"] == 7.0


def test_blocked_latency_times_consecutive_calls_and_rotates_the_blocks():
    clock, log = FakeClock(), []
    calls = {
        "a": clock.calling("a", itertools.cycle([1_000, 1_000, 9_000]), log),  # one slow in 3
        "b": clock.calling("b", 2_000, log),
    }
    timing = blocked_latency_us(calls, blocks=2, per_block=20, clock=clock)
    # each block: 10 warming calls, then 20 timed ones; the sides take turns block by block
    runs = [(name, len(list(group))) for name, group in itertools.groupby(log)]
    assert runs == [("a", 30), ("b", 30), ("a", 30), ("b", 30)]
    assert timing["a"]["p50"] == 1.0 and timing["a"]["p95"] == 9.0
    assert timing["b"] == {"p50": 2.0, "p95": 2.0}


def test_settled_latency_is_the_least_disturbed_of_its_tries():
    tries = iter([40.0, 18.0, 33.0])  # p50 of each try: a slow moment, a quiet one, slow again
    asked, pauses = [], []

    def measure(calls, **keywords):
        asked.append(keywords)
        return {n: {"p50": next(tries), "p95": 0.0} for n in calls}

    best = settled_latency_us(
        {"model": lambda: None}, tries=3, pause_s=0.5, measure=measure, sleep=pauses.append
    )
    assert best == {"model": 18.0}
    assert pauses == [0.5, 0.5]  # tries apart in time, not back to back
    assert asked == [{"blocks": 3, "per_block": 200}] * 3
