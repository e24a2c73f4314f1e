"""The parts of an AltDiffusion model: the frozen multilingual text tower, a UNet from a JSON config, the
noise schedule, and the pipeline that puts them together.

* :func:`load_text_tower` reads an AltCLIP folder (``transformers.AltCLIPModel``, e.g.
  ``models/altclip-emoji`` or a local copy of ``BAAI/AltCLIP``) and returns its text tower
  (``AltCLIPTextModel``: XLM-R + ``transformation`` over every token), tokenizer and context length.
* :func:`create_unet` builds a ``UNet2DConditionModel`` from a registry name (``model_configs/*.json``,
  open_clip style) or loads a folder (``from_pretrained``), with ``cross_attention_dim`` set to the
  text tower's width.
* :func:`build_pipeline` assembles an :class:`~diffusion.pipeline_alt_diffusion.AltDiffusionPipeline`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

CONFIG_DIR = Path(__file__).with_name("model_configs")


def list_unet_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_text_tower(folder: str | os.PathLike):
    """(``AltCLIPTextModel`` in eval mode, tokenizer, context length) of an AltCLIP model folder."""
    from transformers import AltCLIPModel, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json): give an AltCLIP folder such "
                                "as models/altclip-emoji")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != "altclip":
        raise ValueError(f"{folder} holds a {model_type!r} model; AltDiffusion conditions on an AltCLIP text tower")
    text = AltCLIPModel.from_pretrained(folder).text_model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    info = folder / "brivl.json"
    ctx = json.loads(info.read_text()).get("context_length") if info.is_file() else None
    ctx = int(ctx or min(77, text.config.max_position_embeddings - text.config.pad_token_id - 1))
    return text, tokenizer, ctx


def text_width(text_encoder) -> int:
    return int(getattr(text_encoder.config, "project_dim", None) or text_encoder.config.hidden_size)


def create_unet(name_or_path: str, cross_attention_dim: int):
    """A fresh UNet from ``model_configs/<name>.json`` (or a JSON file), or a trained one from a folder."""
    from diffusers import UNet2DConditionModel

    path = Path(name_or_path)
    if path.is_dir():
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet" if (path / "unet").is_dir() else None)
        if unet.config.cross_attention_dim != cross_attention_dim:
            raise ValueError(f"the UNet in {path} cross-attends to {unet.config.cross_attention_dim}-d states but "
                             f"the text tower gives {cross_attention_dim}-d ones")
        return unet
    cfg_path = path if path.suffix == ".json" and path.is_file() else CONFIG_DIR / f"{name_or_path}.json"
    if not cfg_path.is_file():
        raise ValueError(f"unknown UNet {name_or_path!r}: give a folder, a JSON file or one of "
                         f"{', '.join(list_unet_configs())}")
    cfg = {k: v for k, v in json.loads(cfg_path.read_text()).items() if not k.startswith("_")}
    if cfg.get("class_embed_type") == "projection":  # the pooled text vector (denoiser_inputs)
        cfg["projection_class_embeddings_input_dim"] = cross_attention_dim
    return UNet2DConditionModel(cross_attention_dim=cross_attention_dim, **cfg)


def noise_scheduler(num_train_timesteps: int, beta_schedule: str, prediction_type: str = "epsilon"):
    """The training schedule (DDPM); sampling uses DDIM from the same config."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         prediction_type=prediction_type, clip_sample=True)


# sampler name -> (diffusers scheduler class, config overrides); all read the training schedule's config.
# Few-step samplers use "trailing" timesteps, so the first step is t = T - 1, the pure-noise level the sampler
# starts from (Lin et al., 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"); "leading"
# starts at t = T - T/steps. On the val concepts (n = 74, en + zh, 20 steps, guidance 5, leg-1 model) mean R@10
# went 0.284 (DPM-Solver++ 2M, leading) -> 0.304 (trailing) -> 0.365 (SDE-DPM-Solver++ 2M, trailing).
# DDIM does not clip: diffusers' DDIM clamps the predicted x0 to [-1, 1] but keeps the noise derived from the
# unclipped one, and under strong guidance the two disagree (benchmarks/generate.py, n = 50 seen concepts, 25
# steps, guidance 7.5: R@10 0.060 with clipping, 0.540 without). DDPM's posterior uses the clipped x0 throughout.
TRAILING = {"timestep_spacing": "trailing"}
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {**TRAILING, "clip_sample": False}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, **TRAILING}),
    "dpm++sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                                 **TRAILING}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", TRAILING),
    "unipc": ("UniPCMultistepScheduler", TRAILING),
}


def set_scheduler(pipe, name: str):
    """Swap the pipeline's sampler for ``name`` (one of :data:`SCHEDULERS`), keeping the noise schedule."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config, **overrides)
    return pipe


def build_pipeline(text_encoder, tokenizer, unet, scheduler_config, tokenizer_max_length: int, vae=None):
    """An AltDiffusionPipeline sampling with DDIM over the training schedule."""
    from diffusers import DDIMScheduler

    from .pipeline_alt_diffusion import AltDiffusionPipeline

    return AltDiffusionPipeline(text_encoder, tokenizer, unet, DDIMScheduler.from_config(scheduler_config), vae=vae,
                                tokenizer_max_length=tokenizer_max_length)
