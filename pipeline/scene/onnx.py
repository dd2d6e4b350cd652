"""The scene backbone on ONNX Runtime: the same weights, exported once per process, run on the CPU.

On a small CPU machine ONNX Runtime's kernels (NCHWc convolutions, fused conv + batch norm +
activation) run EfficientNet-Lite0 about three times faster than eager PyTorch at the same thread
count, with logits equal to ~1e-5 (``tests/test_scene.py`` checks the top categories agree), so
``classify.runtime: auto`` uses it whenever the device is the CPU and the ``onnx`` and
``onnxruntime`` packages are installed (the ``[train]`` extra has both).

The export is made in memory from the loaded torch backbone (~0.6 s, once per process and
model key), with the embedding as a second output, so there is no exported file to go stale.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
import threading
import warnings

import numpy as np

from pipeline.errors import ModelError

log = logging.getLogger(__name__)

OPSET = 17
RUNTIMES = ("auto", "torch", "onnxruntime")


def available() -> bool:
    """Whether ``onnx`` (the exporter needs it) and ``onnxruntime`` are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def resolve_runtime(runtime: str, device: str) -> str:
    """``auto`` → ``onnxruntime`` on the CPU when installed, else ``torch``; ``device`` is already resolved."""
    if runtime not in RUNTIMES:
        raise ModelError(f"classify.runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    on_cpu = device == "cpu"
    if runtime == "auto":
        return "onnxruntime" if on_cpu and available() else "torch"
    if runtime == "onnxruntime":
        if not on_cpu:
            raise ModelError(f"classify.runtime onnxruntime runs on the CPU only; classify.device is {device!r}")
        if not available():
            raise ModelError("classify.runtime onnxruntime needs the onnx and onnxruntime packages: pip install -e '.[train]'")
    return runtime


def _export_bytes(backbone) -> bytes:
    """ONNX bytes of ``backbone`` for one photo, all shapes static, outputs ``(logits, embedding)``.

    Static shapes let ONNX Runtime fold the TF-style "same" padding into the convolutions (a
    dynamic batch axis leaves 5 Pad ops and their shape arithmetic: 16 % slower); on the CPU a
    batch of one is its fastest form anyway, and it makes every photo's output independent of its
    batch-mates (checked in ``tests/test_scene.py``).
    """
    import torch

    body = copy.deepcopy(backbone.net).eval()
    name = next((n for n, m in backbone.net.named_children() if m is backbone.head), None)
    if name is None:
        raise ModelError(f"{backbone.spec.name}: the classifier head is not a direct child of the network")
    head = getattr(body, name)
    setattr(body, name, torch.nn.Identity())  # the body now ends at the head's input: the embedding

    class WithEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = body, head

        def forward(self, x):
            emb = self.body(x)
            return self.head(emb), emb

    size = backbone.spec.preprocess.crop
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, once per process
        torch.onnx.export(
            WithEmbedding().eval(),
            (torch.zeros(1, 3, size, size),),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=["x"],
            output_names=["logits", "embedding"],
        )
    return buf.getvalue()


class OnnxBackbone:
    """``run(x) -> (logits, embedding)`` on float32 NCHW arrays, through one ONNX Runtime session."""

    def __init__(self, backbone, threads: int) -> None:
        import onnxruntime as ort

        self.spec, self.dim = backbone.spec, backbone.dim
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.use_deterministic_compute = True
        # idle compute threads sleep instead of spinning, so the DataLoader's decode workers get the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(_export_bytes(backbone), options, providers=["CPUExecutionProvider"])
        log.info("%s on onnxruntime %s (%d threads)", self.spec.name, ort.__version__, threads)

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x``: float32 (N, 3, H, W) → logits (N, classes), embeddings (N, dim); one photo per call."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = [self.session.run(None, {"x": x[k : k + 1]}) for k in range(x.shape[0])]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


_SESSIONS: dict[tuple[str, int], OnnxBackbone] = {}
_LOCK = threading.Lock()  # chunks run in threads; the exporter is not re-entrant


def cached_session(backbone, threads: int) -> OnnxBackbone:
    """One session per model key and thread count per process, shared by the chunks running in it.

    ``InferenceSession.run`` may be called from several threads at once; with one intra-op thread
    each call computes in its caller's thread, so concurrent chunks run in parallel.
    """
    key = (backbone.spec.key, threads)
    with _LOCK:
        if key not in _SESSIONS:
            _SESSIONS[key] = OnnxBackbone(backbone, threads)
        return _SESSIONS[key]
