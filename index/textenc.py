"""Text queries -> normalised embeddings, without torch: ``tokenizers`` + onnxruntime.

:class:`OnnxTextEncoder` reads ``text.onnx`` and ``tokenizer.json`` from an index folder (written by
:mod:`index.onnx_text`); :class:`TorchTextEncoder` is the fallback for an index without them (it loads
the model recorded in ``index.json`` with torch: seconds, not milliseconds).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .common import UserError


class OnnxTextEncoder:
    kind = "onnx"

    def __init__(self, index_dir: str | os.PathLike, cfg: dict, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        index_dir = Path(index_dir)
        self.tokenizer = Tokenizer.from_file(str(index_dir / cfg["tokenizer"]))
        self.tokenizer.enable_truncation(max_length=int(cfg["context_length"]))
        self.tokenizer.enable_padding(length=int(cfg["context_length"]), pad_id=int(cfg["pad_id"]),
                                      pad_token=cfg.get("pad_token", "<pad>"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(index_dir / cfg["onnx"]), opts, providers=["CPUExecutionProvider"])
        shape = self.session.get_outputs()[0].shape
        self.dim = shape[-1] if isinstance(shape[-1], int) else int(cfg.get("dim", 0))

    def tokenize(self, texts: list[str]) -> np.ndarray:
        return np.array([e.ids for e in self.tokenizer.encode_batch(list(texts))], dtype=np.int64)  # (B, L)

    def __call__(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        out = [self.session.run(None, {"input_ids": self.tokenize(texts[i:i + batch_size])})[0]
               for i in range(0, len(texts), batch_size)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)


class TorchTextEncoder:
    kind = "torch"

    def __init__(self, model):
        self.model = model
        self.dim = int(model.embed_dim)

    def __call__(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        return self.model.embed_texts(list(texts), batch_size=batch_size).numpy().astype(np.float32)


def has_onnx(index_dir: str | os.PathLike, info: dict) -> bool:
    cfg = info.get("text_encoder") or {}
    return bool(cfg) and all((Path(index_dir) / cfg[k]).is_file() for k in ("onnx", "tokenizer"))


def onnx_encoder(index_dir, info: dict, threads: int | None = None) -> OnnxTextEncoder:
    try:
        enc = OnnxTextEncoder(index_dir, info["text_encoder"], threads=threads)
    except Exception as e:  # a corrupt graph or tokenizer file
        raise UserError(f"cannot load the ONNX text encoder of {index_dir} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}): re-run `python -m index export-onnx`") from e
    if enc.dim and enc.dim != info["dim"]:
        raise UserError(f"{index_dir}: text.onnx gives {enc.dim}-d features but the index holds {info['dim']}-d "
                        "vectors (built by another model): re-run `python -m index export-onnx`")
    return enc
