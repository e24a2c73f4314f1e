"""A Lightning checkpoint as a small, pickle-free resume state that can be committed between sittings.

A run longer than one sitting on these CPUs must go on from what the repository holds, on a fresh machine. A
Lightning ``last.ckpt`` is a pickle (never to be unpickled from a repository) and carries the AdamW moments in
float32 (three times the weights). :func:`pack_checkpoint` writes it as

* ``state.safetensors``: every tensor of the checkpoint, the weights exact (float32), the AdamW moments
  (``exp_avg``, ``exp_avg_sq``) in bfloat16 (float32's range, so small second moments do not flush to zero as
  in float16; two fifths of the file's bytes saved), and
* ``state.json``: everything else (loop progress, LR scheduler, callback and datamodule state, hyperparameters)
  as plain JSON with the tensors referenced by name,

and :func:`unpack_checkpoint` rebuilds a ``.ckpt`` that ``trainer.fit(ckpt_path=...)`` resumes from: the same
step, schedule and data position, the moments rounded once to bfloat16 (tested: the rebuilt checkpoint equals
the original but for that rounding).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from .data.shards import atomic_write_bytes, atomic_write_json

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
MOMENT_KEYS = ("exp_avg", "exp_avg_sq")


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor], moments_dtype: torch.dtype) -> Any:
    """JSON-able skeleton of a checkpoint; tensors go to ``tensors`` under their path."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().clone()  # a copy each: callbacks keep one score tensor under several names
        ref = {"$tensor": path, "dtype": str(t.dtype).removeprefix("torch.")}
        if path.rsplit("/", 1)[-1] in MOMENT_KEYS and t.is_floating_point():
            t = t.to(moments_dtype)
        tensors[path] = t
        return ref
    if isinstance(obj, dict):
        return {"$dict": [[_encode(k, f"{path}/#key", tensors, moments_dtype),
                           _encode(v, f"{path}/{k}", tensors, moments_dtype)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        kind = "$list" if isinstance(obj, list) else "$tuple"
        return {kind: [_encode(v, f"{path}/{i}", tensors, moments_dtype) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot pack a {type(obj).__name__} at {path or '/'} of the checkpoint (only tensors, "
                    "containers and plain values are kept)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "$tensor" in obj:
            return tensors[obj["$tensor"]].to(getattr(torch, obj["dtype"]))
        if "$dict" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["$dict"]}
        if "$list" in obj:
            return [_decode(v, tensors) for v in obj["$list"]]
        if "$tuple" in obj:
            return tuple(_decode(v, tensors) for v in obj["$tuple"])
        raise ValueError(f"unknown entry in a packed checkpoint: {sorted(obj)}")
    return obj


def pack_checkpoint(ckpt: str | os.PathLike, out_dir: str | os.PathLike, extra: dict | None = None,
                    moments_dtype: torch.dtype = torch.bfloat16) -> dict:
    """Write ``ckpt`` (a Lightning checkpoint written by this machine's own run) into ``out_dir`` as
    ``state.safetensors`` + ``state.json`` (each through a temp file and a rename); ``extra`` (plain JSON, e.g.
    the legs so far) is kept beside it. Returns the JSON written."""
    from safetensors.torch import save

    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    tensors: dict[str, torch.Tensor] = {}
    info = {"global_step": ck.get("global_step"), "epoch": ck.get("epoch"),
            "moments_dtype": str(moments_dtype).removeprefix("torch."), "extra": extra or {},
            "checkpoint": _encode(ck, "", tensors, moments_dtype)}
    out = Path(out_dir)
    atomic_write_bytes(out / STATE_TENSORS, save(tensors))
    atomic_write_json(out / STATE_JSON, info)
    return info


def read_state(state_dir: str | os.PathLike) -> dict:
    """The ``state.json`` of a packed checkpoint (one-line error when the folder holds none)."""
    path = Path(state_dir) / STATE_JSON
    if not path.is_file() or not (Path(state_dir) / STATE_TENSORS).is_file():
        raise FileNotFoundError(f"{state_dir} holds no packed checkpoint ({STATE_JSON} + {STATE_TENSORS}); "
                                "write one with brivl.resume.pack_checkpoint")
    return json.loads(path.read_text())


def unpack_checkpoint(state_dir: str | os.PathLike, out_ckpt: str | os.PathLike) -> dict:
    """Rebuild a Lightning checkpoint from a packed state; returns the state's JSON."""
    from safetensors.torch import load_file

    info = read_state(state_dir)
    ck = _decode(info["checkpoint"], load_file(str(Path(state_dir) / STATE_TENSORS)))
    buf = io.BytesIO()
    torch.save(ck, buf)
    atomic_write_bytes(out_ckpt, buf.getvalue())
    return info
