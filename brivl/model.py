"""The dual-tower model (BriVL / WenLan two towers, CLIP-style), built on open_clip.

Huo et al., "WenLan: Bridging Vision and Language by Large-Scale Multi-Modal Pre-Training", 2021.

Towers come from open_clip's registry: our JSON configs in ``brivl/model_configs/`` are registered
with ``open_clip.add_model_config`` so ``create_model("brivl-tiny")`` and stock names
(``ViT-B-32``, with ``pretrained=`` a tag or a local file) go through the same factory. A text tower
can also be a Hugging Face encoder (``text_cfg.hf_model_name`` = a hub name or a local folder).

A model folder (``save_pretrained`` / ``from_pretrained``) is open_clip's ``local-dir:`` layout plus a
tokenizer: ``open_clip_config.json``, ``open_clip_model.safetensors``, ``tokenizer.json`` & co,
``brivl.json`` (tokenizer kind, context length, languages), and optionally ``eval.json`` / ``config.yaml``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.shards import write_folder_atomically  # noqa: F401 (re-exported)

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


class UnknownModelError(ValueError):
    pass


class ConfigMismatchError(ValueError):
    pass


class DualTower(nn.Module):
    """Image tower + text tower + tokenizer. ``forward`` returns normalized features and the logit scale."""

    def __init__(self, clip: nn.Module, tokenizer: Callable[[Sequence[str]], torch.Tensor] | None,
                 model_cfg: dict, info: dict | None = None):
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.info = dict(info or {})

    # ---------------------------------------------------------------- properties
    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def image_size(self) -> int:
        size = self.model_cfg["vision_cfg"].get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def context_length(self) -> int:
        return int(self.model_cfg.get("text_cfg", {}).get("context_length", 77))

    @property
    def image_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        pp = getattr(self.clip.visual, "preprocess_cfg", {}) or {}
        return tuple(pp.get("mean", OPENAI_DATASET_MEAN)), tuple(pp.get("std", OPENAI_DATASET_STD))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    # ---------------------------------------------------------------- encoders
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.clip.encode_image(images, normalize=normalize)  # (B, D)

    def encode_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.clip.encode_text(ids, normalize=normalize)  # (B, D)

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer; pass tokenizer= to create_model/from_pretrained")
        return self.tokenizer(texts)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "image_features": self.encode_image(images),  # (B, D)
            "text_features": self.encode_text(ids),  # (B, D)
            "logit_scale": self.clip.logit_scale.exp(),
        }

    def lock_image_tower(self) -> None:
        """Freeze the image tower (LiT / AltCLIP stage 2: only the text side learns)."""
        self.clip.lock_image_tower(unlocked_groups=0, freeze_bn_stats=False)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 512) -> torch.Tensor:
        """Normalized text embeddings (N, D) on CPU, float32."""
        if isinstance(texts, str):
            texts = [texts]
        dev = next(self.parameters()).device
        out = [self.encode_text(self.tokenize(texts[i:i + batch_size]).to(dev)).float().cpu()
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Normalized image embeddings (N, D) of preprocessed image tensors (N, 3, H, W)."""
        dev = next(self.parameters()).device
        out = [self.encode_image(images[i:i + batch_size].to(dev)).float().cpu()
               for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    # ---------------------------------------------------------------- I/O
    def save_pretrained(self, out_dir: str | os.PathLike, extra_files: dict[str, Any] | None = None) -> Path:
        """Write the model folder atomically (a temp folder renamed into place)."""
        return write_folder_atomically(out_dir, self._write_files, extra_files)

    def _write_files(self, tmp: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.clip.state_dict().items()}
        save_file(state, tmp / "open_clip_model.safetensors")
        mean, std = self.image_mean_std
        model_cfg = json.loads(json.dumps(self.model_cfg))
        if model_cfg.get("text_cfg", {}).get("hf_model_name"):  # ship the HF text tower's config inside
            self.clip.text.transformer.config.save_pretrained(tmp / "hf_text")
            model_cfg["text_cfg"]["hf_model_name"] = "hf_text"
            if hasattr(self.tokenizer, "save_pretrained"):
                model_cfg["text_cfg"].pop("hf_tokenizer_name", None)
        cfg = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(mean), "std": list(std),
                                                               "size": self.image_size}}
        (tmp / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        self._write_tokenizer_and_info(tmp)

    def _write_tokenizer_and_info(self, tmp: Path) -> None:
        info = dict(self.info)
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(tmp)
            info["tokenizer"] = "hf"
        info["context_length"] = self.context_length
        (tmp / "brivl.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "DualTower":
        return create_model(str(path), device=device)


def _load_state_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict, turning key/shape mismatches into one clear error (not a shape traceback)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch " + ", ".join(f"{k}: file {a} vs model {b}" for k, a, b in shapes[:4]))
        if missing:
            parts.append(f"missing {missing[:4]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}")
        raise ConfigMismatchError(
            f"weights in {source} do not fit this model config ({'; '.join(parts)}). "
            "The checkpoint was trained with another model config: load it with the config it was saved with "
            "(the model folder's open_clip_config.json, or the run's config.yaml)."
        )
    module.load_state_dict(state)


def load_weights(module: nn.Module, path: str | os.PathLike) -> None:
    """Load safetensors (preferred) or a weights-only torch file into ``module`` with checked shapes."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    _load_state_checked(module, state, path)


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
        from .hf_clip import is_hf_clip_folder, load_hf_clip

        if is_hf_clip_folder(folder):  # transformers' CLIPModel / AltCLIPModel / ChineseCLIPModel layout
            return load_hf_clip(str(folder), tokenizer, device)
        return _load_folder(folder, tokenizer, device)
    if open_clip.get_model_config(name) is None:
        hint = f"{name!r} is neither a model folder nor a known model config."
        if "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
            from .hf_clip import load_hf_clip

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


def similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (N_text, N_image) of normalized features."""
    return F.normalize(text_features, dim=-1) @ F.normalize(image_features, dim=-1).T
