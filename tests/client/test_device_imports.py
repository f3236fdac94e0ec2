"""The device runtime imports only what a device without the training extras has (read, not run)."""

import ast
import sys
from pathlib import Path

import fedge

PACKAGE = Path(fedge.__file__).parent
# ai_edge_litert and tflite_micro: a tflite node's interpreters (the litert extra), imported
# only inside the functions that run a tflite artifact.
THIRD_PARTY = {"numpy", "onnxruntime", "cryptography", "uvicorn", "ai_edge_litert", "tflite_micro"}
DEVICE_SAFE_CORE = {
    "bundle_format", "bounded", "manifest", "onnx_scan", "ort", "profile", "io", "litert"
}  # fmt: skip


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {f"{node.module}.{a.name}" if node.module == "fedge.core" else node.module
                      for a in node.names}  # fmt: skip
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def _refused(name: str) -> bool:
    root = name.split(".")[0]
    if root == "fedge":
        parts = name.split(".")
        if parts[:3] == ["fedge", "client", "runtime"]:
            return False
        return not (parts[:2] == ["fedge", "core"] and parts[2] in DEVICE_SAFE_CORE)
    return root not in THIRD_PARTY and root not in sys.stdlib_module_names


def test_the_device_runtime_and_the_core_it_uses_import_no_torch_flwr_or_onnx():
    modules = sorted((PACKAGE / "client" / "runtime").glob("*.py"))
    modules += [PACKAGE / "core" / f"{name}.py" for name in sorted(DEVICE_SAFE_CORE)]
    refused = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in modules
        for name in _imports(path)
        if _refused(name)
    }
    assert not refused
    assert len(modules) > 15  # the glob found the runtime
