"""open_clip ViT image tower -> Hugging Face CLIP vision transformer (the image side of ``AltCLIPModel``).

AltCLIP keeps the teacher CLIP's image tower as is; our teachers are open_clip models, so the student's
``AltCLIPModel`` gets the teacher's ViT converted weight by weight. The two implementations compute the
same function (pre-LN blocks, class token pooled after ``ln_post``, bias-free patch conv and
projection); ``tests/test_altclip.py`` checks the converted tower against open_clip within 1e-5.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class UnsupportedTowerError(ValueError):
    pass


def vision_config_from_open_clip(visual: nn.Module, embed_dim: int) -> dict:
    """``AltCLIPVisionConfig`` kwargs of an open_clip ``VisionTransformer`` (refuses variants HF lacks)."""
    name = type(visual).__name__
    if name != "VisionTransformer":
        raise UnsupportedTowerError(f"only ViT image towers convert to a Hugging Face CLIP vision model, got {name}")
    blocks = visual.transformer.resblocks
    block = blocks[0]
    problems = []
    if getattr(visual, "attn_pool", None) is not None or visual.pool_type != "tok":
        problems.append("pooling other than the class token")
    if getattr(visual, "final_ln_after_pool", False):
        problems.append("final_ln_after_pool")
    if not isinstance(block.ls_1, nn.Identity):
        problems.append("layer scale")
    if visual.conv1.bias is not None:
        problems.append("patch conv bias")
    act = type(block.mlp.gelu).__name__
    if act not in ("GELU", "QuickGELU"):
        problems.append(f"activation {act}")
    if problems:
        raise UnsupportedTowerError("cannot convert this open_clip ViT: " + ", ".join(problems))
    width = visual.conv1.out_channels
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
    patch = visual.patch_size[0] if isinstance(visual.patch_size, (tuple, list)) else visual.patch_size
    return {
        "hidden_size": width,
        "intermediate_size": block.mlp.c_fc.out_features,
        "num_hidden_layers": len(blocks),
        "num_attention_heads": block.attn.num_heads,
        "image_size": int(size),
        "patch_size": int(patch),
        "hidden_act": "quick_gelu" if act == "QuickGELU" else "gelu",
        "layer_norm_eps": block.ln_1.eps,
        "projection_dim": embed_dim,
    }


def vision_state_from_open_clip(visual: nn.Module, prefix: str = "vision_model.") -> dict:
    """State dict for ``AltCLIPModel`` (``vision_model.*`` and ``visual_projection.weight``)."""
    sd = {k: v.detach().clone() for k, v in visual.state_dict().items()}
    out = {
        prefix + "embeddings.class_embedding": sd["class_embedding"],
        prefix + "embeddings.patch_embedding.weight": sd["conv1.weight"],
        prefix + "embeddings.position_embedding.weight": sd["positional_embedding"],
        prefix + "pre_layrnorm.weight": sd["ln_pre.weight"],
        prefix + "pre_layrnorm.bias": sd["ln_pre.bias"],
        prefix + "post_layernorm.weight": sd["ln_post.weight"],
        prefix + "post_layernorm.bias": sd["ln_post.bias"],
        "visual_projection.weight": sd["proj"].T.contiguous(),  # x @ proj == Linear(weight=proj.T)
    }
    for i in range(len(visual.transformer.resblocks)):
        src, dst = f"transformer.resblocks.{i}.", f"{prefix}encoder.layers.{i}."
        q, k, v = sd[src + "attn.in_proj_weight"].chunk(3)
        qb, kb, vb = sd[src + "attn.in_proj_bias"].chunk(3)
        out.update({
            dst + "self_attn.q_proj.weight": q, dst + "self_attn.q_proj.bias": qb,
            dst + "self_attn.k_proj.weight": k, dst + "self_attn.k_proj.bias": kb,
            dst + "self_attn.v_proj.weight": v, dst + "self_attn.v_proj.bias": vb,
            dst + "self_attn.out_proj.weight": sd[src + "attn.out_proj.weight"],
            dst + "self_attn.out_proj.bias": sd[src + "attn.out_proj.bias"],
            dst + "layer_norm1.weight": sd[src + "ln_1.weight"], dst + "layer_norm1.bias": sd[src + "ln_1.bias"],
            dst + "layer_norm2.weight": sd[src + "ln_2.weight"], dst + "layer_norm2.bias": sd[src + "ln_2.bias"],
            dst + "mlp.fc1.weight": sd[src + "mlp.c_fc.weight"], dst + "mlp.fc1.bias": sd[src + "mlp.c_fc.bias"],
            dst + "mlp.fc2.weight": sd[src + "mlp.c_proj.weight"], dst + "mlp.fc2.bias": sd[src + "mlp.c_proj.bias"],
        })
    return out


@torch.no_grad()
def load_open_clip_vision(hf_model: nn.Module, visual: nn.Module) -> None:
    """Copy an open_clip ViT into an ``AltCLIPModel``'s image side (every vision tensor must be set)."""
    state = vision_state_from_open_clip(visual)
    own = hf_model.state_dict()
    vision_keys = {k for k in own if k.startswith("vision_model.") or k == "visual_projection.weight"}
    vision_keys = {k for k in vision_keys if not k.endswith("position_ids")}
    missing = sorted(vision_keys - set(state))
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or bad or set(state) - set(own):
        raise UnsupportedTowerError(f"open_clip -> HF vision conversion mismatch: missing {missing[:3]}, "
                                    f"shapes {bad[:3]}, unknown {sorted(set(state) - set(own))[:3]}")
    hf_model.load_state_dict(state, strict=False)
