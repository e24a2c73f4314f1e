"""The dual-tower model (BriVL / WenLan two towers, CLIP-style), built on open_clip.

Huo et al., "WenLan: Bridging Vision and Language by Large-Scale Multi-Modal Pre-Training", 2021.

:class:`DualTower` wraps an open_clip model (its image and text towers, a tokenizer, the config it was built
from) behind one API: encode, embed, forward for the contrastive losses, ``save_pretrained``. Building and
loading one (registry names, stock open_clip names, model folders, Hugging Face CLIP-family folders) is
:func:`brivl.factory.create_model`.

A model folder (``save_pretrained``, loaded by ``create_model(folder)``) is open_clip's ``local-dir:`` layout plus
a tokenizer: ``open_clip_config.json``, ``open_clip_model.safetensors``, ``tokenizer.json`` & co, ``brivl.json``
(tokenizer kind, context length, languages), and optionally ``eval.json`` / ``config.yaml``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.shards import write_folder_atomically

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
            raise RuntimeError("this model has no tokenizer; pass tokenizer= to brivl.factory.create_model")
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


def similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (N_text, N_image) of normalized features."""
    return F.normalize(text_features, dim=-1) @ F.normalize(image_features, dim=-1).T
