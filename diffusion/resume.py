"""Training in pieces: a small resume state beside an exported AltDiffusion pipeline.

A CPU run here can be stopped at any time and the next one may start on a fresh machine with only the
repository. So ``python -m diffusion export`` also writes, into the model folder,

* ``training_state.safetensors``: the online (non-EMA) UNet weights in float16 (half the bytes; the
  rounding, once per leg, is far below one optimizer step's change), and
* ``training_state.json``: the steps and samples of every leg so far and a fingerprint of what they were
  trained with (the UNet config, the text tower's weights, the objective and the noise schedule),

and ``init_from: <folder>`` in a training config starts the next leg from them: the folder's EMA UNet
(``unet/``) becomes the run's EMA, the online weights its UNet. A state whose fingerprint differs from
the run's config is refused before anything is trained or written.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

STATE_WEIGHTS = "training_state.safetensors"
STATE_INFO = "training_state.json"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tower_weights_sha256(text_tower: str) -> str:
    """The hash of a text-tower folder's weights (so a retrained tower with the same name is caught)."""
    folder = Path(text_tower)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return file_sha256(files[0]) if files else str(text_tower)


def fingerprint(unet_config, text_tower: str, prediction_type: str, num_train_timesteps: int,
                beta_schedule: str) -> dict:
    """What two legs of one run must share, as plain JSON values."""
    unet = {k: v for k, v in dict(unet_config).items() if not k.startswith("_")}
    return json.loads(json.dumps({"unet": unet, "text_tower_sha256": tower_weights_sha256(text_tower),
                                  "prediction_type": prediction_type, "num_train_timesteps": num_train_timesteps,
                                  "beta_schedule": beta_schedule}, default=list))


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two fingerprints."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} vs {vb!r}")
    return out


def load_training_state(folder: str | Path, expected: dict, unet: torch.nn.Module, unet_ema: torch.nn.Module) -> dict:
    """Load a resume state into ``unet`` (online) and ``unet_ema``; return its history
    (``steps``, ``samples``, ``legs``). Raises ``ValueError`` if it was trained with another config."""
    from safetensors.torch import load_file

    folder = Path(folder)
    info_path, weights = folder / STATE_INFO, folder / STATE_WEIGHTS
    ema_path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    missing = [p.name for p in (info_path, weights, ema_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} holds no resume state (missing {', '.join(missing)}): give a folder "
                                "written by `python -m diffusion export`, or drop init_from to start afresh")
    info = json.loads(info_path.read_text())
    diff = differences(info.get("fingerprint") or {}, expected)
    if diff:
        raise ValueError(f"the resume state in {folder} was trained with another config ({'; '.join(diff[:4])}): "
                         "resume with the config it was trained with, or start a new run without init_from")
    for module, path in ((unet, weights), (unet_ema, ema_path)):
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        module.load_state_dict(state, strict=True)
    return {"steps": int(info["steps"]), "samples": int(info["samples"]), "legs": list(info.get("legs") or [])}


def training_state_files(unet_state: dict, fp: dict, before: dict, steps: int, samples: int, leg: dict) -> dict:
    """The files a model folder gets: ``{name: bytes or JSON-able}`` (``write_folder_atomically``'s extras)."""
    from safetensors.torch import save

    half = {k: v.detach().to(torch.float16).contiguous() for k, v in unet_state.items()}
    legs = [*before.get("legs", []), {**leg, "steps": steps, "samples": samples}]
    info = {"fingerprint": fp, "steps": int(before.get("steps", 0)) + steps,
            "samples": int(before.get("samples", 0)) + samples, "legs": legs}
    return {STATE_WEIGHTS: save(half), STATE_INFO: info}
