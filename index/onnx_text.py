"""Export a model's text tower to ONNX (``ids -> L2-normalised features``) with its ``tokenizer.json``.

The query path then needs neither torch nor transformers: :mod:`index.textenc` tokenizes with the
``tokenizers`` library (truncation and padding to the model's context length with its pad id, the same
ids as ``model.tokenize``) and runs the graph with onnxruntime.

The export is checked before anything is written: token ids from ``tokenizer.json`` must equal
``model.tokenize`` on a multilingual probe set (empty, long, mixed-script and emoji strings included),
and the ONNX features must match ``model.encode_text`` within ``atol``. A model whose tokenizer has no
``tokenizers`` form (e.g. open_clip's own BPE) or whose graph does not export raises
:class:`ExportError`; the index then works through the torch path.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from .common import ONNX_NAME, TOKENIZER_NAME, atomic_write_bytes

PROBES = ["cat", "一只猫", "猫の顔", "고양이 얼굴", "кошка", "قطة", "gatto nero", "chat noir", "gato", "red heart ❤️",
          "Cœur Rouge", "  spaced   words  ", "", "x" * 300, "🐱🐶 emoji only", "ÉCOLE ﬁ ligature", "12:30 pm",
          "a " * 80]


class ExportError(RuntimeError):
    pass


def backend_tokenizer(model):
    """The ``tokenizers.Tokenizer`` behind ``model.tokenize`` (a copy), its pad id and pad token."""
    from tokenizers import Tokenizer

    tok = getattr(model, "tokenizer", None)
    hf = getattr(tok, "hf", tok)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"the model's tokenizer ({type(tok).__name__}) has no tokenizers.Tokenizer form")
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    pad_id = getattr(tok, "pad_id", None)
    if pad_id is None:
        pad_id = getattr(hf, "pad_token_id", None) or 0
    pad_token = getattr(hf, "pad_token", None) or copy.id_to_token(pad_id) or "<pad>"
    return copy, int(pad_id), str(pad_token)


def configure(tokenizer, context_length: int, pad_id: int, pad_token: str):
    """Truncate and pad to the context length, as ``TextTokenizer`` (padding="max_length") does."""
    tokenizer.enable_truncation(max_length=context_length)
    tokenizer.enable_padding(length=context_length, pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def token_ids(tokenizer, texts) -> np.ndarray:
    return np.array([e.ids for e in tokenizer.encode_batch(list(texts))], dtype=np.int64)


def export_text_tower(model, out_dir: str | os.PathLike, atol: float = 1e-4, opset: int = 17) -> dict:
    """Write ``text.onnx`` + ``tokenizer.json`` into ``out_dir``; returns the ``text_encoder`` entry of
    ``index.json``. Raises :class:`ExportError` when the export would not reproduce the model."""
    import torch

    out_dir = Path(out_dir)
    ref_ids = model.tokenize(PROBES)
    context_length = int(ref_ids.shape[1])
    tok, pad_id, pad_token = backend_tokenizer(model)
    configure(tok, context_length, pad_id, pad_token)
    ids = token_ids(tok, PROBES)
    if ids.shape != tuple(ref_ids.shape) or not np.array_equal(ids, ref_ids.numpy()):
        bad = next(i for i in range(len(PROBES)) if ids.shape[1:] != ref_ids.shape[1:]
                   or not np.array_equal(ids[i], ref_ids[i].numpy()))
        raise ExportError(f"tokenizer.json does not reproduce model.tokenize (first difference on {PROBES[bad]!r})")

    class TextTower(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m.encode_text(input_ids, normalize=True)

    was_training = model.training
    model.eval()
    onnx_path = out_dir / ONNX_NAME
    tmp = out_dir / f".{ONNX_NAME}.tmp{os.getpid()}"
    tower = TextTower(model).eval()  # a new Module is in training mode: export restores that mode after
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            want = model.encode_text(ref_ids, normalize=True).float().numpy()
            torch.onnx.export(tower, (ref_ids[:2],), str(tmp), input_names=["input_ids"],
                              output_names=["features"], opset_version=opset, dynamo=False,
                              dynamic_axes={"input_ids": {0: "batch"}, "features": {0: "batch"}})
        import onnxruntime as ort

        got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
        err = float(np.abs(got - want).max())
        if not np.isfinite(err) or err > atol:
            raise ExportError(f"ONNX text features differ from torch by {err:.2e} (> {atol:g})")
        os.replace(tmp, onnx_path)
    except ExportError:
        raise
    except Exception as e:  # an unsupported op, an exporter failure: the index keeps the torch path
        raise ExportError(f"torch.onnx.export failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    atomic_write_bytes(out_dir / TOKENIZER_NAME, tok.to_str().encode("utf-8"))
    return {"onnx": ONNX_NAME, "tokenizer": TOKENIZER_NAME, "context_length": context_length, "pad_id": pad_id,
            "pad_token": pad_token, "dim": int(want.shape[1]), "max_abs_diff": err, "opset": opset}


def describe(cfg: dict) -> str:
    return json.dumps({k: cfg[k] for k in ("context_length", "pad_id", "dim", "max_abs_diff") if k in cfg})
