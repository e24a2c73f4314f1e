"""AltCLIP's student model: a multilingual XLM-R-like text tower next to the teacher CLIP's image tower.

Chen et al., "AltCLIP: Altering the Language Encoder in CLIP for Extended Language Capabilities", 2022.

The student is a ``transformers.AltCLIPModel``: ``text_model`` = XLM-R encoder -> ``pre_LN`` ->
``transformation`` (per token, ``(B, L, project_dim)``), its [CLS] state -> ``text_projection`` into the
teacher's embedding space; ``vision_model`` = the teacher's image tower, converted from open_clip (or
copied from a Hugging Face CLIP). It is wrapped as a :class:`brivl.hf_clip.HFDualTower`, so every
brivl tool (eval, ``DualTowerSystem``, search, export) takes it, and its folder is the plain
``AltCLIPModel`` layout that ``transformers`` (and a local copy of ``BAAI/AltCLIP``) shares.

Student text towers are named by JSON configs in ``altclip/model_configs/`` (``AltCLIPTextConfig``
fields; vocabulary and special ids come from the tokenizer), or given as a local folder: an XLM-R
(``xlm-roberta``) checkpoint initializes the encoder, as AltCLIP does with XLM-R large.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from brivl.hf_clip import HFDualTower, is_hf_clip_folder, load_hf_clip
from brivl.model import ConfigMismatchError, DualTower, UnknownModelError

from .convert import load_open_clip_vision, vision_config_from_open_clip

CONFIG_DIR = Path(__file__).parent / "model_configs"


def list_student_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _student_text_config(student: str, tok) -> tuple[dict, str | None, int]:
    """(AltCLIPTextConfig kwargs, folder of XLM-R weights to start from or None, context length)."""
    path = CONFIG_DIR / f"{student}.json"
    if path.is_file():
        cfg = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
        init = None
    elif Path(student, "config.json").is_file():
        from transformers import AutoConfig

        hf = AutoConfig.from_pretrained(student)
        if hf.model_type not in ("xlm-roberta", "roberta", "altclip_text_model"):
            raise UnknownModelError(f"{student} holds a {hf.model_type!r} model; a student text tower is an "
                                    "XLM-R-like encoder (xlm-roberta, roberta)")
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "layer_norm_eps",
                "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "vocab_size")
        cfg = {k: getattr(hf, k) for k in keys}
        cfg["project_dim"] = getattr(hf, "project_dim", hf.hidden_size)
        init = student if any(Path(student).glob("*.safetensors")) or any(Path(student).glob("*.bin")) else None
    else:
        raise UnknownModelError(f"unknown student text tower {student!r}: use a config name "
                                f"({', '.join(list_student_configs())}) or a local XLM-R folder")
    ctx = int(cfg.pop("context_length", 77))
    pad = tok.pad_id
    cfg.setdefault("vocab_size", tok.vocab_size)
    if tok.vocab_size > cfg["vocab_size"]:
        raise ConfigMismatchError(f"tokenizer has {tok.vocab_size} tokens but the student's vocab_size is "
                                  f"{cfg['vocab_size']}: use the tokenizer the student was trained with")
    cfg.setdefault("max_position_embeddings", ctx + pad + 2)  # RoBERTa positions start after the pad id
    cfg.update(pad_token_id=pad, bos_token_id=tok.hf.bos_token_id if tok.hf.bos_token_id is not None else tok.hf.cls_token_id,
               eos_token_id=tok.eos_id)
    return cfg, init, ctx


def _teacher_vision(teacher: DualTower) -> tuple[dict, callable]:
    """The teacher's image tower as (vision config kwargs, loader into an AltCLIPModel)."""
    if isinstance(teacher, HFDualTower):  # a transformers CLIP / AltCLIP: same vision module and key names
        vcfg = teacher.clip.config.vision_config.to_dict()
        keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size", "hidden_act", "layer_norm_eps")

        def load(model):
            state = {k: v for k, v in teacher.clip.state_dict().items()
                     if k.startswith("vision_model.") or k.startswith("visual_projection.")}
            model.load_state_dict(state, strict=False)
        return {k: vcfg[k] for k in keep}, load
    vcfg = vision_config_from_open_clip(teacher.clip.visual, teacher.embed_dim)
    vcfg.pop("projection_dim")
    return vcfg, lambda model: load_open_clip_vision(model, teacher.clip.visual)


def build_student(teacher: DualTower, student: str = "altclip-xlmr-tiny", tokenizer: str | None = None,
                  teacher_name: str = "") -> HFDualTower:
    """A fresh AltCLIP student: the teacher's image tower + logit scale, a new multilingual text tower.

    ``student`` may also be an existing AltCLIP folder (continue training it); its projection width must
    then equal the teacher's embedding width.
    """
    from transformers import AltCLIPConfig, AltCLIPModel

    from brivl.tokenizer import TextTokenizer

    if os.path.isdir(student) and is_hf_clip_folder(student):
        model = load_hf_clip(student, tokenizer)
        if model.embed_dim != teacher.embed_dim:
            raise ConfigMismatchError(
                f"the student {student} projects to {model.embed_dim}-d but the teacher embeds {teacher.embed_dim}-d: "
                "distillation needs equal widths (start a new student from a config, or pick a matching teacher)")
        return model
    if tokenizer is None and not Path(student, "tokenizer.json").is_file() and not Path(student, "sentencepiece.bpe.model").is_file():
        raise ValueError("the student needs a multilingual tokenizer: set tokenizer to a folder "
                         "(e.g. data/emoji/tokenizer) or a Hugging Face name such as xlm-roberta-base")
    probe = TextTokenizer(tokenizer or student, 77)
    text_cfg, init, ctx = _student_text_config(student, probe)
    tok = TextTokenizer(tokenizer or student, ctx)
    vision_cfg, load_vision = _teacher_vision(teacher)
    config = AltCLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=teacher.embed_dim,
                           logit_scale_init_value=float(teacher.logit_scale.detach()))
    model = AltCLIPModel(config)
    load_vision(model)
    if init:  # start from a pretrained XLM-R encoder (AltCLIP starts from XLM-R large)
        from transformers import AutoModel

        enc = AutoModel.from_pretrained(init)
        missing, unexpected = model.text_model.roberta.load_state_dict(enc.state_dict(), strict=False)
        if [k for k in missing if "position_ids" not in k]:
            raise ConfigMismatchError(f"{init} does not fit the student encoder: missing {missing[:4]}")
    info = {"base": "altclip", "teacher": teacher_name or teacher.info.get("name", ""), "student": student}
    return HFDualTower(model, tok, info, teacher.image_mean_std, tok.context_length)


@torch.no_grad()
def encode_prompt_states(model: HFDualTower, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning for AltDiffusion-style generation: per-token states ``(B, L, project_dim)`` + mask ``(B, L)``."""
    dev = next(model.parameters()).device
    return model.text_hidden_states(model.tokenize(texts).to(dev))
