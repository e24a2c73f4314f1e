"""Hugging Face CLIP-family models behind the :class:`~brivl.model.DualTower` API.

``transformers``' ``CLIPModel``, ``AltCLIPModel`` (Chen et al., *AltCLIP*, 2022) and ``ChineseCLIPModel``
all expose ``get_image_features`` / ``get_text_features`` and a ``logit_scale``; :class:`HFDualTower`
wraps any of them so evaluation, training (``DualTowerSystem``), search and export treat them like
our open_clip towers. A folder is the plain ``save_pretrained`` layout (``config.json``,
``model.safetensors``, tokenizer files, ``preprocessor_config.json``) plus our ``brivl.json``, so
``transformers.AutoModel.from_pretrained(folder)`` loads what we write, and ``create_model`` loads
e.g. a local copy of ``BAAI/AltCLIP``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .data.shards import write_folder_atomically
from .model import DualTower, UnknownModelError

HF_CLIP_TYPES = ("altclip", "clip", "chinese_clip")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def is_hf_clip_folder(path: str | os.PathLike) -> bool:
    cfg = Path(path) / "config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") in HF_CLIP_TYPES


def _features(out) -> torch.Tensor:
    """transformers 4 returns a tensor, 5 a ModelOutput whose ``pooler_output`` holds the features."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def trim_padding(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop the trailing columns that are padding in every row (B, L) -> (B, L').

    Exact for right-padded input under an attention mask: masked keys get no weight, RoBERTa's positions
    count only non-pad tokens, and the pooled [CLS] state sits at column 0. Short texts (CLDR names are a
    few tokens) then cost a fraction of the full context. Not while tracing (ONNX export): the length
    would be frozen into the graph."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return ids
    used = (ids != pad_id).any(0).nonzero()
    return ids[:, : int(used[-1]) + 1] if len(used) else ids[:, :1]


class HFDualTower(DualTower):
    """A transformers CLIP-family model + tokenizer + image preprocessing (size, mean, std)."""

    def __init__(self, hf_model, tokenizer, info: dict | None = None, image_mean_std=None,
                 context_length: int | None = None):
        vcfg, tcfg = hf_model.config.vision_config, hf_model.config.text_config
        ctx = context_length or getattr(tokenizer, "context_length", None) or 77
        model_cfg = {"embed_dim": hf_model.config.projection_dim, "hf_model_type": hf_model.config.model_type,
                     "vision_cfg": {"image_size": vcfg.image_size}, "text_cfg": {"context_length": ctx}}
        super().__init__(hf_model, tokenizer, model_cfg, info)
        self._mean_std = tuple(map(tuple, image_mean_std or (OPENAI_MEAN, OPENAI_STD)))
        self.pad_id = getattr(tokenizer, "pad_id", tcfg.pad_token_id)

    @property
    def image_mean_std(self):
        return self._mean_std

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = _features(self.clip.get_image_features(pixel_values=images))  # (B, D)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        ids = trim_padding(ids, self.pad_id)  # (B, L') with L' = the longest text of the batch
        mask = (ids != self.pad_id).long()  # (B, L')
        x = _features(self.clip.get_text_features(input_ids=ids, attention_mask=mask))  # (B, D)
        return F.normalize(x, dim=-1) if normalize else x

    def text_hidden_states(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token states of the text tower ``(B, L, D_text)`` and the attention mask ``(B, L)``.

        For AltCLIP these are ``transformation(pre_LN(XLM-R states))``: the conditioning AltDiffusion's
        UNet cross-attends to (diffusers' ``RobertaSeriesModelWithTransformation``)."""
        mask = (ids != self.pad_id).long()
        out = self.clip.text_model(input_ids=ids, attention_mask=mask)
        return out.last_hidden_state, mask

    def lock_image_tower(self) -> None:
        for module in (self.clip.vision_model, self.clip.visual_projection):
            module.requires_grad_(False)

    def _write_files(self, tmp: Path) -> None:
        from transformers import CLIPImageProcessor

        self.clip.save_pretrained(tmp, safe_serialization=True)
        size, (mean, std) = self.image_size, self.image_mean_std
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                           image_mean=list(mean), image_std=list(std)).save_pretrained(tmp)
        self._write_tokenizer_and_info(tmp)

    def save_pretrained(self, out_dir: str | os.PathLike, extra_files: dict[str, Any] | None = None) -> Path:
        """``transformers``' own layout (AutoModel/AutoProcessor load it), written atomically."""
        return write_folder_atomically(out_dir, self._write_files, extra_files)


def load_hf_clip(name_or_path: str, tokenizer=None, device: str | torch.device = "cpu") -> HFDualTower:
    """A local folder (or a hub name in the offline cache) of a CLIP-family transformers model."""
    from transformers import AutoConfig, AutoModel

    from .tokenizer import TextTokenizer

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load a Hugging Face config from {name_or_path!r}: give a local folder "
                                f"or a hub name available offline ({e})") from e
    if config.model_type not in HF_CLIP_TYPES:
        raise UnknownModelError(f"{name_or_path} is a {config.model_type!r} model; a dual tower needs one of "
                                f"{', '.join(HF_CLIP_TYPES)}")
    model = AutoModel.from_pretrained(name_or_path, config=config, use_safetensors=None).to(device).eval()
    folder = Path(name_or_path)
    info = json.loads((folder / "brivl.json").read_text()) if (folder / "brivl.json").is_file() else \
        {"base": str(name_or_path)}
    tcfg = config.text_config
    ctx = info.get("context_length") or min(77, tcfg.max_position_embeddings - (tcfg.pad_token_id or 0) - 1)
    if not callable(tokenizer):
        tokenizer = TextTokenizer(tokenizer or name_or_path, ctx)
    mean_std = None
    pp = folder / "preprocessor_config.json"
    if pp.is_file():
        p = json.loads(pp.read_text())
        mean_std = (p.get("image_mean", OPENAI_MEAN), p.get("image_std", OPENAI_STD))
    return HFDualTower(model, tokenizer, info, mean_std, ctx)
