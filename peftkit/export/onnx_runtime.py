"""ONNX folders (`peftkit merge RUN --format onnx`) under `peftkit predict` and `peftkit eval`: an
ONNX Runtime session behind the forward() the tasks already call, so their own decoding
(Task.predict) and the evaluation Trainer run unchanged.

    tokenizer / eval collator ──▶ OnnxModel.forward(input_ids, attention_mask, token_type_ids, labels)
        ──▶ onnxruntime.InferenceSession.run ──▶ logits (a torch tensor)
        labels given (eval): + Task.logits_loss, the loss of the task's transformers head

torch-free at import (merge's --format check reads it); the model class is export/onnx_model.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from peftkit.errors import PeftkitError, UsageError

if TYPE_CHECKING:  # loaded at call time: it imports torch
    from peftkit.export.onnx_model import OnnxModel

REQUIRES = ("onnx", "onnxscript", "onnxruntime")   # the `onnx` extra
GRAPH = "model.onnx"     # beside it: model.onnx.data when the weights pass protobuf's 2 GiB
OUTPUT = "logits"
# CUDA where onnxruntime-gpu is installed (benchmarks/gpu_check.sh), else the CPU
PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def require(modules=REQUIRES, what: str = "ONNX export") -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"{what} needs {', '.join(missing)}, which is not installed: "
                         "pip install 'peftkit[onnx]'")


def session(path: Path, providers=PROVIDERS):
    """An InferenceSession on the graph, with torch's thread count (set_threads, OMP_NUM_THREADS):
    ONNX Runtime would otherwise take every core beside whatever else runs. `providers`: those
    installed are used in this order."""
    require(("onnxruntime",), "running an ONNX folder")
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: its warnings concern graph rewrites it chose
    available = ort.get_available_providers()
    try:
        return ort.InferenceSession(str(path), options,
                                    providers=[p for p in providers if p in available])
    except Exception as exc:  # onnxruntime's own exception classes (InvalidProtobuf, Fail, ...)
        raise PeftkitError(f"{path}: onnxruntime cannot load it ({str(exc).strip()[:300]}); write "
                           "the folder again with peftkit merge RUN --format onnx") from None


def onnx_model(folder: Path, task, trust_remote_code: bool = False) -> OnnxModel:
    """The folder's graph, checked against SHA256SUMS first. A folder without one is refused:
    peftkit always writes it, and a changed graph would otherwise run without a word."""
    from transformers import AutoConfig

    from peftkit.export.onnx_model import OnnxModel
    from peftkit.rundir import CHECKSUMS
    from peftkit.weight_files import verify

    if not verify(folder, CHECKSUMS):
        raise UsageError(f"{folder}: no {CHECKSUMS} beside {GRAPH}, so nothing says the graph is "
                         "the one peftkit wrote; write the folder again with peftkit merge RUN "
                         "--format onnx")
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    return OnnxModel(session(folder / GRAPH), config, task, OUTPUT).eval()
