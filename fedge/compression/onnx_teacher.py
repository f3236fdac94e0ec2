"""A teacher read back from its fp32 ONNX file, usable wherever the stages expect a torch module."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedge.compression.export import INPUT_NAME, OUTPUT_NAME
from fedge.core.ort import make_session


class OnnxTeacher(nn.Module):
    """Forward-only teacher: logits from onnxruntime.

    Distillation and fine-tuning never backprop into the teacher, so `fedge compress` can re-run
    compression from a finished run's teacher.onnx.
    """

    def __init__(self, model_bytes: bytes) -> None:
        super().__init__()
        self.session = make_session(model_bytes)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
            raise ValueError(
                f"not a fedge teacher: inputs {inputs}, outputs {outputs}; expected input "
                f"{INPUT_NAME!r} and output {OUTPUT_NAME!r}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits for a batch (no gradient)."""
        batch = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return torch.from_numpy(logits)
