"""Building and loading :class:`~brivl.model.DualTower` models: ``create_model(name)``, as in open_clip's factory.

Towers come from open_clip's registry: our JSON configs in ``brivl/model_configs/`` are registered with
``open_clip.add_model_config``, so ``create_model("brivl-tiny")`` and stock names (``ViT-B-32``, with
``pretrained=`` a tag or a local file) go through the same factory. A text tower can also be a Hugging Face
encoder (``text_cfg.hf_model_name`` = a hub name or a local folder). ``create_model(folder)`` loads a model folder
written by ``DualTower.save_pretrained``, or a transformers CLIP-family folder (:mod:`brivl.hf_clip`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .hf_clip import is_hf_clip_folder, load_hf_clip
from .model import ConfigMismatchError, DualTower, UnknownModelError, load_weights

CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_model_configs(path: str | os.PathLike = CONFIG_DIR) -> None:
    """Add our JSON model configs to open_clip's registry (idempotent for the package's own dir)."""
    global _registered
    import open_clip

    if Path(path) == CONFIG_DIR:
        if _registered:
            return
        _registered = True
    open_clip.add_model_config(str(path))


def list_models() -> list[str]:
    import open_clip

    register_model_configs()
    return open_clip.list_models()


def create_model(
    name: str,
    pretrained: str | None = None,
    tokenizer: str | Callable | None = None,
    device: str | torch.device = "cpu",
    **model_kwargs,
) -> DualTower:
    """Build a :class:`DualTower` from a model folder, a registered config name, or a stock open_clip name.

    Args:
        name: a model folder (``models/brivl-emoji``), or a config name (``brivl-tiny``, ``ViT-B-32``).
        pretrained: for config names, an open_clip pretrained tag or a local weights file.
        tokenizer: a HF tokenizer folder / hub name, or a callable ``texts -> (B, L)`` ids;
            default: the folder's own tokenizer, else open_clip's tokenizer for ``name``.
    """
    import open_clip

    register_model_configs()
    folder = Path(name)
    if folder.is_dir():
        if is_hf_clip_folder(folder):  # transformers' CLIPModel / AltCLIPModel / ChineseCLIPModel layout
            return load_hf_clip(str(folder), tokenizer, device)
        return _load_folder(folder, tokenizer, device)
    if open_clip.get_model_config(name) is None:
        hint = f"{name!r} is neither a model folder nor a known model config."
        if "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
            try:  # a Hugging Face hub name (e.g. BAAI/AltCLIP) in the local cache
                return load_hf_clip(name, tokenizer, device)
            except (FileNotFoundError, UnknownModelError) as e:
                raise FileNotFoundError(f"{hint} No folder at {name}, and no Hugging Face CLIP-family model of "
                                        f"that name offline: train and export one, or check the path ({e})") from e
        if "/" in name or os.sep in name:
            raise FileNotFoundError(f"{hint} No folder at {name}: train and export one, or check the path.")
        known = ", ".join(m for m in list_models() if m.startswith("brivl")) + f" (+{len(list_models())} open_clip names)"
        raise UnknownModelError(f"{hint} Known configs: {known}. See `python -m brivl models`.")
    model_cfg = dict(open_clip.get_model_config(name))
    text_cfg = model_cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name"):  # open_clip's pretrained_text flag overrides the config's own
        model_kwargs.setdefault("pretrained_text", bool(text_cfg.get("hf_model_pretrained", True)))
    clip = open_clip.create_model(name, pretrained=pretrained, device=device, **model_kwargs)
    tok = _make_tokenizer(tokenizer, name, model_cfg)
    return DualTower(clip, tok, model_cfg, {"base": name, "pretrained": pretrained})


def _make_tokenizer(tokenizer, name: str, model_cfg: dict):
    from .tokenizer import TextTokenizer

    ctx = int(model_cfg.get("text_cfg", {}).get("context_length", 77))
    if callable(tokenizer):
        return tokenizer
    if tokenizer is not None:
        tok = TextTokenizer(tokenizer, ctx)
        _check_vocab(tok, model_cfg)
        return tok
    hf_name = model_cfg.get("text_cfg", {}).get("hf_tokenizer_name")
    if hf_name:
        return TextTokenizer(hf_name, ctx)
    if name.startswith("brivl"):
        return None  # our configs need a corpus tokenizer: the caller passes one
    import open_clip

    return open_clip.get_tokenizer(name)


def _check_vocab(tok, model_cfg: dict) -> None:
    vocab = model_cfg.get("text_cfg", {}).get("vocab_size")
    if vocab is not None and not model_cfg["text_cfg"].get("hf_model_name") and tok.vocab_size > vocab:
        raise ConfigMismatchError(
            f"tokenizer {tok.name_or_path} has {tok.vocab_size} tokens but the model's text_cfg.vocab_size is "
            f"{vocab}: retrain the tokenizer with --vocab-size {vocab} or raise vocab_size in the model config"
        )


def _load_folder(folder: Path, tokenizer, device) -> DualTower:
    import open_clip

    cfg_path = folder / "open_clip_config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{folder} is not a model folder: {cfg_path.name} is missing "
                                "(export one with `python -m brivl export`)")
    cfg = json.loads(cfg_path.read_text())
    model_cfg = cfg.get("model_cfg", cfg)
    text_cfg = model_cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name") and (folder / text_cfg["hf_model_name"]).is_dir():
        text_cfg["hf_model_name"] = str(folder / text_cfg["hf_model_name"])  # a text tower config shipped inside
        text_cfg["hf_model_pretrained"] = False
    info = json.loads((folder / "brivl.json").read_text()) if (folder / "brivl.json").exists() else {}
    with weights_loaded_next():
        clip = open_clip.create_model("local-dir:" + str(folder), load_weights=False, device=device) \
            if not text_cfg.get("hf_model_name") else _create_from_cfg(model_cfg, device)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    load_weights(clip, weights[0])
    clip.to(device)
    if tokenizer is None and info.get("tokenizer") == "hf":
        tokenizer = str(folder)
    tok = _make_tokenizer(tokenizer, info.get("base", "brivl"), model_cfg)
    return DualTower(clip, tok, model_cfg, info)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded for model" not in record.getMessage()


@contextlib.contextmanager
def weights_loaded_next():
    """Silence exactly open_clip's "No pretrained weights loaded ... Model initialized randomly." (logged on the
    root logger) while a model is built whose real weights are loaded right after: every user of a shipped
    model read it as a failure. A config name built without weights still warns."""
    drop = _DropRandomInitWarning()
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


def _create_from_cfg(model_cfg: dict, device) -> nn.Module:
    """Build an open_clip model from an in-memory config (used when the HF text path was rewritten)."""
    import open_clip

    cfg = dict(model_cfg)
    custom = cfg.pop("custom_text", False) or bool(cfg.get("text_cfg", {}).get("hf_model_name"))
    cfg.pop("quick_gelu", None)
    model_cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    return model_cls(**cfg).to(device)
