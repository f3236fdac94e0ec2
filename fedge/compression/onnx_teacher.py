"""A teacher read back from its fp32 ONNX file, usable wherever the stages expect a torch module."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedge.compression.export import INPUT_NAME, OUTPUT_NAME
from fedge.core.ort import make_session

CHUNK = 256  # samples per onnxruntime call (its arena keeps the largest call's activations)


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
        """Teacher logits for a batch (no gradient), in chunks of at most CHUNK samples.

        A whole public pool in one call would hold every layer's activations for every sample
        at once (Fashion-MNIST's 17,500: 4 GB); a batch up to CHUNK is one call, as before.
        """
        batch = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        chunks = [
            self.session.run([OUTPUT_NAME], {INPUT_NAME: batch[i : i + CHUNK]})[0]
            for i in range(0, max(len(batch), 1), CHUNK)  # an empty batch: one empty call
        ]
        return torch.from_numpy(chunks[0] if len(chunks) == 1 else np.concatenate(chunks))
