"""ONNX export of the VAE's inference graph, verified against torch before it is used.

The graph has inputs ``x`` and ``mask`` and outputs ``mean`` and ``logvar``, all float32
[batch, window, channels] with a dynamic batch. It is produced by torch's ``torch.export``
based exporter (``dynamo=True``, the default since torch 2.9) with weights embedded, and is
deterministic (z = mu). :func:`export_checked` fails loudly with :class:`ExportError` unless
onnxruntime reproduces torch's outputs on the given real windows within ``tolerance``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from edge.bundle import INPUT_NAMES, OUTPUT_NAMES
from training.errors import ExportError
from training.model import VAE

__all__ = ["DEFAULT_OPSET", "ExportResult", "export_checked", "export_onnx", "onnx_parity"]

log = logging.getLogger(__name__)
DEFAULT_OPSET = 18


@dataclass(frozen=True)
class ExportResult:
    onnx_bytes: bytes
    opset: int
    exporter: str
    max_abs_diff: float  # onnxruntime vs torch on the check windows


def export_onnx(model: VAE, opset: int = DEFAULT_OPSET) -> bytes:
    """Serialise ``model.forward`` (eval mode) to ONNX bytes; ExportError on failure."""
    cfg = model.cfg
    model.eval()
    example = torch.zeros(2, cfg.window, cfg.channels)
    batch = torch.export.Dim("batch", min=1)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example, torch.ones_like(example)),
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes={"x": {0: batch}, "mask": {0: batch}},
                verbose=False,
            )
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        data: bytes = program.model_proto.SerializeToString()
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(f"ONNX export failed: {exc}\n{sink.getvalue()[-2000:]}") from exc
    return data


def onnx_parity(
    onnx_bytes: bytes, model: VAE, x: NDArray[np.float32], mask: NDArray[np.float32]
) -> float:
    """Max abs difference between onnxruntime and torch outputs on ``(x, mask)`` [B, W, C]."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        got = session.run(list(OUTPUT_NAMES), {"x": x, "mask": mask})
    except Exception as exc:  # onnxruntime raises untyped errors
        raise ExportError(f"onnxruntime cannot run the exported graph: {exc}") from exc
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(mask))
    return max(
        float(np.max(np.abs(np.asarray(g, np.float64) - w.numpy().astype(np.float64))))
        for g, w in zip(got, want, strict=True)
    )


def export_checked(
    model: VAE,
    x: NDArray[np.float32],
    mask: NDArray[np.float32],
    *,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
) -> ExportResult:
    """Export and verify on real windows ``(x, mask)``; ExportError if the diff > tolerance."""
    if x.ndim != 3 or x.shape[0] < 1:
        raise ExportError(f"parity check needs a batch of windows [B, W, C], got {x.shape}")
    data = export_onnx(model, opset)
    diff = onnx_parity(data, model, x.astype(np.float32), mask.astype(np.float32))
    if not diff <= tolerance:
        raise ExportError(
            f"onnxruntime differs from torch by {diff:.3g} (> {tolerance:g}) on "
            f"{x.shape[0]} real windows; the exported graph is not trustworthy"
        )
    log.info("export.parity_ok", extra={"max_abs_diff": diff, "windows": int(x.shape[0])})
    return ExportResult(
        onnx_bytes=data, opset=opset, exporter="torch.onnx dynamo", max_abs_diff=diff
    )
