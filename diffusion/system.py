"""AltDiffusion training as a LightningModule: denoising loss on image-caption pairs in many languages.

Recipe after AltDiffusion (Ye et al., 2023): the multilingual text tower is frozen; the UNet learns to
denoise an image at a random timestep, cross-attending to the tower's per-token states under its
attention mask (and, for a UNet with a projection class embedding, taking the tower's pooled vector
with the timestep: :func:`~diffusion.pipeline_alt_diffusion.denoiser_inputs`). The target is the added
noise (``prediction_type="epsilon"``, DDPM) or the velocity ``v = sqrt(abar) eps - sqrt(1 - abar) x0``
(``"v_prediction"``, Salimans & Ho, 2022); ``min_snr_gamma`` weights each timestep's loss by
``min(SNR, gamma) / SNR`` (epsilon) or ``min(SNR, gamma) / (SNR + 1)`` (v), Min-SNR-gamma (Hang et al.,
2023), so the many easy low-noise steps do not dominate. Captions are dropped (replaced by the empty
prompt) with probability ``caption_dropout`` so the model also learns the unconditional prediction that
classifier-free guidance needs. An exponential moving average of the UNet (``unet_ema``) is kept and is
what validation scores and export ships. ``trainable="cross_attention"`` trains only the
cross-attention keys and values (``attn2.to_k`` / ``attn2.to_v``), AltDiffusion's "concept alignment"
stage for a pretrained UNet; ``"all"`` trains the whole UNet (from scratch, as for the emoji model).
``cond_noise`` (xi > 0) perturbs each captioned sample's text states in training only, ``h + xi ||h|| u`` with
``u`` a random unit direction per token (:func:`perturb_condition`; LAFITE, Zhou et al., 2022; a fixed-variance
form of StackGAN's conditioning augmentation, Zhang et al., 2017): with ~1.4k training concepts the UNet otherwise
sees a few hundred points of text space, and the noise asks it to map their neighbourhoods, where a new name lands.

Batches come from :class:`brivl.data.datamodule.ShardDataModule` (images normalised to [-1, 1]).
Validation: the denoising loss of the EMA UNet over the whole validation view with fixed noise and
timesteps spread evenly over the schedule, so it is comparable between steps.

Training in pieces: ``init_from`` names a folder written by ``python -m diffusion export``; its EMA UNet
and ``training_state.safetensors`` (the online UNet) start this run, so runs of any length, each on a
fresh machine with only the repository, add up (:mod:`diffusion.resume`). The optimizer's moments are
not kept (they would triple the committed bytes); ``warmup_steps`` re-warms them.
"""
from __future__ import annotations

import copy
import random

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from .model import create_unet, load_text_tower, noise_scheduler, text_width
from .pipeline_alt_diffusion import denoiser_inputs, encode_texts
from .resume import fingerprint, load_training_state

TRAINABLE = ("all", "cross_attention")
PREDICTION_TYPES = ("epsilon", "v_prediction")


class AltDiffusionSystem(pl.LightningModule):
    def __init__(self, text_tower: str, unet: str, lr: float, weight_decay: float, warmup_steps: int,
                 caption_dropout: float, ema_decay: float, num_train_timesteps: int, beta_schedule: str,
                 trainable: str = "all", image_size: int | None = None,
                 val_langs: list[str] | None = None, seed: int = 0, prediction_type: str = "epsilon",
                 min_snr_gamma: float | None = None, init_from: str | None = None, cond_noise: float = 0.0):
        super().__init__()
        if trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0 (or null for plain MSE), got {min_snr_gamma}")
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout}")
        if cond_noise < 0:
            raise ValueError(f"cond_noise must be >= 0 (0 turns the conditioning noise off), got {cond_noise}")
        self.save_hyperparameters()
        self.text_encoder, self.tokenizer, self.context_length = load_text_tower(text_tower)
        self.text_encoder.requires_grad_(False)
        self.unet = create_unet(unet, text_width(self.text_encoder))
        if trainable == "cross_attention":
            for name, p in self.unet.named_parameters():
                p.requires_grad_(is_cross_attention_kv(name))
        self.unet_ema = copy.deepcopy(self.unet).requires_grad_(False).eval()
        self.noise_scheduler = noise_scheduler(num_train_timesteps, beta_schedule, prediction_type)
        self.image_size = image_size or int(self.unet.config.sample_size)
        self._rng = random.Random(seed)
        # steps and samples of the runs this one continues (init_from), and of this run so far
        self.before = {"steps": 0, "samples": 0, "legs": []}
        self.samples_seen = 0
        if init_from:
            self.before = load_training_state(init_from, self.fingerprint(), self.unet, self.unet_ema)

    def fingerprint(self) -> dict:
        """What a resume state must have been trained with (:func:`diffusion.resume.fingerprint`)."""
        hp = self.hparams
        return fingerprint(self.unet.config, hp.text_tower, hp.prediction_type, hp.num_train_timesteps,
                           hp.beta_schedule)

    # ---------------------------------------------------------------------------------------- data

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "configure_preprocess"):  # images to [-1, 1] at the UNet's size
            dm.configure_preprocess(self.image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_encoder.eval()  # frozen: no dropout
        self.unet_ema.eval()
        return self

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token states ``(B, L, D)`` and mask ``(B, L)`` of the frozen tower."""
        return encode_texts(self.tokenizer, self.text_encoder, texts, self.context_length, self.device)

    def drop_captions(self, texts: list[str]) -> list[str]:
        """Each caption replaced by the empty prompt with probability ``caption_dropout``."""
        p = self.hparams.caption_dropout
        return [("" if self._rng.random() < p else t) for t in texts]

    # ------------------------------------------------------------------------------------- training

    def denoising_loss(self, unet, images: torch.Tensor, texts: list[str], noise: torch.Tensor,
                       timesteps: torch.Tensor, cond_noise: float = 0.0) -> torch.Tensor:
        """Mean over the batch of w(t) ||target - unet(x_t, t, text)||^2 / (C H W); target = eps or v,
        w(t) = 1 or the Min-SNR-gamma weight; ``cond_noise`` > 0 perturbs the captioned rows' text states."""
        states, mask = self.encode_text(texts)  # (B, L, D), (B, L)
        if cond_noise > 0:  # the empty prompt stays exact: it is the unconditional branch of guidance
            captioned = torch.tensor([bool(t) for t in texts], device=states.device)
            states = torch.where(captioned[:, None, None], perturb_condition(states, cond_noise), states)
        sched = self.noise_scheduler
        noisy = sched.add_noise(images, noise, timesteps)  # (B, 3, S, S)
        pred = unet(noisy, timesteps, **denoiser_inputs(unet, states, mask)).sample
        if self.hparams.prediction_type == "v_prediction":
            target = sched.get_velocity(images, noise, timesteps)
        else:
            target = noise
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
        return (per_sample * self.loss_weights(timesteps)).mean()

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights ``(B,)``: ones, or Min-SNR-gamma's ``min(SNR, gamma) / SNR`` for epsilon and
        ``min(SNR, gamma) / (SNR + 1)`` for v targets, SNR = abar / (1 - abar)."""
        gamma = self.hparams.min_snr_gamma
        if gamma is None:
            return torch.ones(len(timesteps), device=timesteps.device)
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise_scheduler, timesteps).float()  # (B,)
        clipped = snr.clamp(max=gamma)
        return clipped / (snr + 1) if self.hparams.prediction_type == "v_prediction" else clipped / snr

    def training_step(self, batch, batch_idx):
        images = batch["images"]  # (B, 3, S, S) in [-1, 1]
        texts = self.drop_captions(batch["texts"][0])
        noise = torch.randn_like(images)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(images),), device=self.device)
        loss = self.denoising_loss(self.unet, images, texts, noise, t, self.hparams.cond_noise)
        self.samples_seen += len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        step = self.before["steps"] + self.global_step  # a resumed run continues the EMA at full decay
        update_ema(self.unet_ema, self.unet, ema_decay_at(self.hparams.ema_decay, step))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["altdiffusion"] = {"before": self.before, "samples_seen": self.samples_seen}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("altdiffusion") or {}
        self.before = saved.get("before", self.before)
        self.samples_seen = int(saved.get("samples_seen", 0))

    def validation_step(self, batch, batch_idx):
        images, metas = batch["images"].to(self.device), batch["metas"]
        langs = self.hparams.val_langs or ["en"]
        texts = [caption_in(m, langs[i % len(langs)]) for i, m in enumerate(metas)]
        gen = torch.Generator().manual_seed(self.hparams.seed)
        n, steps = len(images), self.noise_scheduler.config.num_train_timesteps
        noise = torch.randn(images.shape, generator=gen).to(self.device)
        t = (torch.arange(n) * steps // max(1, n)).to(self.device)  # spread evenly over the schedule
        total = 0.0
        for i in range(0, n, 256):
            sl = slice(i, i + 256)
            total += float(self.denoising_loss(self.unet_ema, images[sl], texts[sl], noise[sl], t[sl])) * len(t[sl])
        self.log("val/loss", total / n, prog_bar=True, batch_size=n)

    def configure_optimizers(self):
        params = [p for p in self.unet.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warm = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def perturb_condition(states: torch.Tensor, xi: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``h + xi ||h|| u`` for every token state ``h`` of ``states`` (B, L, D), ``u`` uniform on the unit sphere:
    a perturbation of relative size ``xi`` in a random direction (LAFITE's text-feature perturbation)."""
    u = torch.randn(states.shape, generator=generator, device="cpu").to(states.device, states.dtype)  # (B, L, D)
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return states + xi * states.norm(dim=-1, keepdim=True) * u


def is_cross_attention_kv(name: str) -> bool:
    """The cross-attention key/value projections of a diffusers UNet (``...attn2.to_k.weight`` etc.)."""
    return ".attn2.to_k." in name or ".attn2.to_v." in name


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA decay at optimizer step ``step``: warmed up as (1 + step) / (10 + step), capped at ``decay``."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter (buffers copied)."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def caption_in(meta: dict, lang: str) -> str:
    """The sample's first caption in ``lang`` (else in English, else any)."""
    caps = meta.get("captions") or {}
    for key in (lang, "en", *sorted(caps)):
        if caps.get(key):
            return caps[key][0]
    return ""
