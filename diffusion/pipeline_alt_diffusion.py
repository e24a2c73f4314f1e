"""AltDiffusion text-to-image pipeline: a diffusion UNet conditioned on a multilingual AltCLIP text tower.

AltDiffusion (Ye et al., 2023, "AltDiffusion: A Multilingual Text-to-Image Diffusion Model") is Stable
Diffusion with its English CLIP text encoder replaced by the AltCLIP text tower (XLM-R + a linear
``transformation`` over every token's last hidden state, ``transformers.AltCLIPTextModel``), so a
prompt in any language the tower knows conditions the UNet's cross-attention.

This is one readable file in the diffusers style: components registered with ``register_modules`` (so
``save_pretrained`` / ``from_pretrained`` round-trip), ``check_inputs``, ``encode_prompt``,
``prepare_latents`` and a ``__call__`` with numbered steps. Differences from diffusers' deprecated
``AltDiffusionPipeline``:

* the text tower's attention mask is passed to the tower *and* to the UNet (``encoder_attention_mask``),
  so padding tokens are never attended to and a prompt gives the same image whatever it is padded to;
* the VAE is optional: without one the UNet denoises pixels (``in_channels`` 3), which is what the small
  models trained on the emoji data use; with one it is latent diffusion as in Stable Diffusion;
* the tokenizer's length is a pipeline config value (``tokenizer_max_length``), stored in
  ``model_index.json``, not taken from the tokenizer's often unset ``model_max_length``.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Callable

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

logger = logging.get_logger(__name__)


def encode_texts(tokenizer, text_encoder, texts: list[str], max_length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> the tower's projected per-token states ``(B, L, D)`` and the attention mask ``(B, L)``,
    truncated to ``max_length`` and padded to the longest text of the batch (what the UNet cross-attends to,
    in training and sampling)."""
    from brivl.hf_clip import trim_padding

    tok = tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    # the columns that are padding in every row are dropped: exact under the mask (masked keys get no weight in
    # the tower or in the UNet's cross-attention, positions count only real tokens), and a short prompt then
    # costs its own length instead of max_length in every cross-attention of every step
    ids = trim_padding(tok.input_ids, tokenizer.pad_token_id)  # (B, L') with L' <= max_length
    mask = tok.attention_mask[:, : ids.shape[1]]
    return token_states(text_encoder, ids.to(device), mask.to(device)), mask.to(device)


def denoiser_inputs(unet, states: torch.Tensor, mask: torch.Tensor) -> dict:
    """The text inputs of one UNet call, in training and sampling alike: the per-token states and mask for
    cross-attention and, for a UNet built with ``class_embed_type="projection"``, the pooled text vector
    ``states[:, 0]`` (the AltCLIP towers' pooled output, the vector their contrastive head projects) added
    to the timestep embedding, as Imagen and unCLIP add a pooled text embedding."""
    kwargs = {"encoder_hidden_states": states, "encoder_attention_mask": mask}
    if getattr(unet.config, "class_embed_type", None) == "projection":
        kwargs["class_labels"] = states[:, 0]  # (B, D)
    return kwargs


def token_states(text_encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The projected per-token states ``(B, L, D)`` the UNet cross-attends to: the first output of both
    AltCLIP text towers (``AltCLIPTextModel.last_hidden_state`` is ``transformation(pre_LN(h))``;
    ``RobertaSeriesModelWithTransformation.projection_state`` is ``transformation(h)``, whose
    ``last_hidden_state`` is the raw XLM-R output and would be the wrong tensor)."""
    return text_encoder(input_ids=ids, attention_mask=mask)[0]


class AltDiffusionPipeline(DiffusionPipeline):
    """Text-to-image generation with a multilingual text tower.

    Components: ``text_encoder`` (``transformers.AltCLIPTextModel``, or diffusers'
    ``RobertaSeriesModelWithTransformation`` of the released AltDiffusion checkpoints: per-token states
    of width ``unet.config.cross_attention_dim``, see :func:`token_states`), ``tokenizer``, ``unet``
    (``UNet2DConditionModel``), ``scheduler`` (any diffusers noise scheduler; swap with
    ``Scheduler.from_config(pipe.scheduler.config)``) and the optional ``vae`` (``AutoencoderKL``).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae"]

    def __init__(self, text_encoder, tokenizer, unet, scheduler, vae=None, tokenizer_max_length: int = 77):
        super().__init__()
        width = getattr(text_encoder.config, "project_dim", None) or text_encoder.config.hidden_size
        if width != unet.config.cross_attention_dim:
            raise ValueError(f"the text encoder gives {width}-d token states but the UNet cross-attends to "
                             f"{unet.config.cross_attention_dim}-d ones: pair a UNet built for this text tower")
        latent_channels = vae.config.latent_channels if vae is not None else 3
        if unet.config.in_channels != latent_channels:
            raise ValueError(f"the UNet takes {unet.config.in_channels} channels but "
                             f"{'the VAE gives' if vae is not None else 'pixel space (no VAE) has'} {latent_channels}")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.register_to_config(tokenizer_max_length=int(tokenizer_max_length))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained``, which also reads the released AltDiffusion layout (``BAAI/AltDiffusion``,
        ``-m9``, ``-m18``; a local folder or a hub name already in the local cache). That layout declares its
        text encoder as diffusers' ``RobertaSeriesModelWithTransformation``, a class current diffusers no longer
        resolves by name, so it is built here from its parts; its safety checker and feature extractor are
        not used. ``torch_dtype`` is honoured on that path too."""
        folder = _local_folder(pretrained_model_name_or_path)
        index = json.loads((folder / "model_index.json").read_text()) if folder is not None else {}
        if (index.get("text_encoder") or [None])[-1] != "RobertaSeriesModelWithTransformation":
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        import diffusers
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
            RobertaSeriesModelWithTransformation)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        parts = dict(text_encoder=RobertaSeriesModelWithTransformation.from_pretrained(folder / "text_encoder"),
                     tokenizer=tokenizer, unet=UNet2DConditionModel.from_pretrained(folder / "unet"),
                     scheduler=getattr(diffusers, index["scheduler"][1]).from_pretrained(folder / "scheduler"),
                     vae=AutoencoderKL.from_pretrained(folder / "vae") if (index.get("vae") or [None])[0] else None)
        pipe = cls(**parts, tokenizer_max_length=min(77, int(tokenizer.model_max_length)))
        return pipe.to(dtype=kwargs["torch_dtype"]) if kwargs.get("torch_dtype") else pipe

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along a side (1 without a VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @property
    def default_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    # ------------------------------------------------------------------------------------------ inputs

    def check_inputs(self, prompt, height: int, width: int, num_inference_steps: int, guidance_scale: float,
                     negative_prompt=None, num_images_per_prompt: int = 1) -> list[str]:
        """The prompts as a list; a clear ``ValueError`` for anything the loop would fail on later."""
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {type(prompt).__name__}")
        # an empty prompt is allowed: it asks for an unconditional sample (the model was trained with dropped captions)
        if negative_prompt is not None:
            neg = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if not isinstance(neg, (list, tuple)) or len(neg) not in (1, len(prompts)):
                raise ValueError(f"negative_prompt must be a string or a list of {len(prompts)} strings")
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise ValueError(f"{name} must be a positive multiple of {multiple} (the VAE and UNet downsampling), "
                                 f"got {value}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        return list(prompts)

    @torch.no_grad()
    def encode_prompt(self, prompt: list[str], device, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, negative_prompt=None):
        """Per-token text states ``(B*n, L, D)`` and their mask ``(B*n, L)``; with guidance, the negative
        (default: the empty prompt) rows come first: ``(2*B*n, L, D)``."""
        texts = list(prompt)
        self.warn_if_truncated(texts)
        if do_classifier_free_guidance:
            neg = negative_prompt if negative_prompt is not None else ""
            neg = [neg] * len(texts) if isinstance(neg, str) else list(neg) * (len(texts) // len(neg))
            texts = neg + texts
        states, mask = encode_texts(self.tokenizer, self.text_encoder, texts, self.config.tokenizer_max_length,
                                    device)  # (B', L, D), (B', L)
        states = states.to(self.unet.dtype).repeat_interleave(num_images_per_prompt, dim=0)
        return states, mask.repeat_interleave(num_images_per_prompt, dim=0)

    def warn_if_truncated(self, texts: list[str]) -> None:
        """A warning naming the prompts longer than ``tokenizer_max_length`` tokens (they are cut there)."""
        limit = self.config.tokenizer_max_length
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False).input_ids]
        long = [(t, n) for t, n in zip(texts, lengths) if n > limit]
        if long:
            logger.warning(f"{len(long)} prompt(s) longer than the text tower's {limit} tokens were truncated to "
                           f"{limit}, e.g. {long[0][0][:60]!r} ({long[0][1]} tokens)")

    def prepare_latents(self, batch_size: int, height: int, width: int, dtype, device, generator=None,
                        latents: torch.Tensor | None = None) -> torch.Tensor:
        """Start noise ``(B, C, h, w)`` scaled by the scheduler's ``init_noise_sigma``."""
        s = self.vae_scale_factor
        shape = (batch_size, self.unet.config.in_channels, height // s, width // s)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"{len(generator)} generators for a batch of {batch_size} images: give one per image")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents of shape {tuple(latents.shape)}, expected {shape}")
        return latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (or pixels) -> images in [0, 1], ``(B, 3, H, W)``."""
        if self.vae is not None:
            latents = latents / self.vae.config.scaling_factor
            latents = self.vae.decode(latents.to(self.vae.dtype)).sample
        return (latents.float() / 2 + 0.5).clamp(0, 1)

    # -------------------------------------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end: Callable[[int, int, torch.Tensor], None] | None = None):
        """Generate ``num_images_per_prompt`` images per prompt.

        ``guidance_scale`` > 1 turns on classifier-free guidance against ``negative_prompt`` (default the
        empty prompt); ``output_type`` is ``"pil"``, ``"np"`` (``(B, H, W, 3)`` floats in [0, 1]) or ``"pt"``
        (``(B, 3, H, W)``)."""
        # 1. check inputs
        height, width = height or self.default_size, width or self.default_size
        prompts = self.check_inputs(prompt, height, width, num_inference_steps, guidance_scale, negative_prompt,
                                    num_images_per_prompt)
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        batch = len(prompts) * num_images_per_prompt

        # 2. encode the prompts (negative rows first with guidance)
        states, mask = self.encode_prompt(prompts, device, num_images_per_prompt, do_cfg, negative_prompt)

        # 3. timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # 4. start noise (stochastic samplers, DDPM and SDE-DPM-Solver++, draw their step noise from the same
        #    generators, so an image depends only on its own seed, not on the batch it is made in)
        latents = self.prepare_latents(batch, height, width, states.dtype, device, generator, latents)
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters \
            else {}

        # 5. denoise
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_in = torch.cat([latents] * 2) if do_cfg else latents  # (2B or B, C, h, w)
            model_in = self.scheduler.scale_model_input(model_in, t)
            noise = self.unet(model_in, t, **denoiser_inputs(self.unet, states, mask)).sample
            if do_cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(noise, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                callback_on_step_end(i, int(t), latents)

        # 6. decode
        images = self.decode(latents)  # (B, 3, H, W) in [0, 1]
        self.maybe_free_model_hooks()
        if output_type == "pt":
            out = images
        else:
            out = images.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
            if output_type == "pil":
                out = self.numpy_to_pil(out)
        return ImagePipelineOutput(images=out) if return_dict else (out,)


def _local_folder(name_or_path) -> Path | None:
    """A pipeline folder on disk: the path itself, or a hub name's snapshot in the local cache (no download)."""
    folder = Path(name_or_path)
    if not (folder / "model_index.json").is_file():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(name_or_path), local_files_only=True))
        except Exception:  # not a folder, not cached: diffusers' own from_pretrained says so
            return None
    return folder if (folder / "model_index.json").is_file() else None
