"""The probe models a device profile measures: search-space students, fp32 and int8.

    python -m fedge.compression.probes   # rewrites fedge/client/runtime/probes/

They span what a candidate's latency depends on (node count, convolution and linear work, 1-D
and 2-D inputs, activations, fp32 and int8 kernels), so a linear fit of their measured
latencies predicts a candidate's (fedge.compression.latency). Weights are random: latency does
not depend on them. The files are committed so `fedge profile` needs no torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from fedge.compression.export import ExportConfig, export_onnx
from fedge.compression.minify import MinifyConfig, minify
from fedge.compression.quantize import QuantizeConfig, quantize_int8
from fedge.core.models import build_student
from fedge.core.partition import PublicPool
from fedge.core.profile import INDEX, PROBE_DIR

PROBES: dict[tuple[int, ...], tuple[str, ...]] = {
    (1, 8, 8): (
        "arch:c8k3-relu",
        "arch:c16k3p-c32k3p-h64-relu",
        "arch:c32k3-c32k3p-h32-relu",
        "arch:c8k5p-c16k3-hardswish",
        "arch:c64k3p-c64k3-relu",
        "arch:c16k1-c16k3p-c16k3p-c16k3-relu",
    ),
    (1, 40): (
        "arch:c8k5-relu",
        "arch:c16k5p-c16k5p-c16k5-relu",
        "arch:c32k7p-c64k3p-h32-relu",
        "arch:c8k3p-c8k3p-c8k3p-c8k3-hardswish",
        "arch:c64k5-h16-relu",
    ),
    (64,): ("arch:h32-relu", "arch:h128-h64-relu"),
}
INT8 = QuantizeConfig("static", "qdq", True, "minmax", 64, 1.0)


def build_probes(out: Path = PROBE_DIR) -> dict[str, dict[str, object]]:
    """Write every probe (fp32 and int8) and index.json to `out`; returns the index."""
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, dict[str, object]] = {}
    rng = np.random.default_rng(0)
    for shape, specs in PROBES.items():
        pool = PublicPool(rng.normal(size=(64, *shape)).astype(np.float32))
        for number, spec in enumerate(specs):
            fp32 = export_onnx(build_student(shape, 10, spec, seed=0), shape, ExportConfig())
            int8 = quantize_int8(fp32, pool, INT8)
            for precision, model in (("fp32", fp32), ("int8", int8)):
                small = minify(model, MinifyConfig(), pool.x[:8])
                name = f"{'x'.join(map(str, shape))}-{number}-{precision}"
                (out / f"{name}.onnx").write_bytes(small)
                index[name] = {
                    "file": f"{name}.onnx",
                    "arch": spec,
                    "input_shape": list(shape),
                    "precision": precision,
                    "sha256": hashlib.sha256(small).hexdigest(),
                }
    INDEX.write_text(json.dumps({"probes": index}, indent=1) + "\n")
    return index


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    print(f"{len(build_probes())} probes written to {PROBE_DIR}")
