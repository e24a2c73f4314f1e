"""The LightningModule that trains a :class:`~brivl.model.DualTower` contrastively.

``loss="clip"``: in-batch symmetric InfoNCE (open_clip's ClipLoss, learnable logit scale).
``loss="moco"``: BriVL's cross-modal momentum-queue loss (momentum towers; the temperature fixed at
``temperature``, or ``temperature: null`` to learn it as the model's logit scale, like in-batch CLIP;
``mask_same_concept``: queue keys of the query's own concept are not negatives).
``learn_temperature=False`` freezes the model's logit scale at its init (1 / 0.07), in-batch or queue alike.
``hard_negatives=True`` (with ``loss="clip"``): NegCLIP (Yuksekgonul et al., 2023): the batch's hard negative
captions (``data.compose_p``: composed two-emoji images, the relation caption with the order swapped) are extra
columns of the image->text softmax (:class:`~brivl.losses.HardNegativeClipLoss`). ``swap_margin`` adds
:class:`~brivl.losses.SwapSeparationLoss` on each caption and its swapped negative and, with
``data.compose_mirror``, on each composed image and its mirror: both towers are asked to tell the orders apart.
``parallel_order_temperature`` adds :class:`~brivl.losses.ParallelOrderLoss`: a composite's caption in one language
is pulled to its caption in each other language of the batch and pushed from that language's swapped one (word
order learnt from parallel text).
"""
from __future__ import annotations

import itertools
import math

import pytorch_lightning as pl
import torch

from .data.emoji import M9
from .data.languages import resolve_for_datamodule
from .evaluate import evaluate_model, mean_over_languages
from .losses import (HardNegativeClipLoss, MomentumEncoder, MomentumQueueLoss, ParallelOrderLoss, SwapSeparationLoss,
                     make_clip_loss)
from .factory import create_model
from .model import ConfigMismatchError, DualTower


class DualTowerSystem(pl.LightningModule):
    def __init__(
        self,
        model: str = "brivl-tiny",
        tokenizer: str | None = None,
        pretrained: str | None = None,
        loss: str = "clip",
        queue_size: int = 4096,
        momentum: float = 0.99,
        temperature: float | None = 0.07,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        fused_optimizer: bool = True,
        lock_image: bool = False,
        eval_langs: list[str] = list(M9),
        hard_negatives: bool = False,
        mask_same_concept: bool = False,
        learn_temperature: bool = True,
        swap_margin: float | None = None,
        parallel_order_temperature: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if loss not in ("clip", "moco"):
            raise ValueError(f"loss must be 'clip' or 'moco', got {loss!r}")
        if mask_same_concept and loss != "moco":
            raise ValueError("mask_same_concept goes with loss='moco' (it masks the momentum queue's keys)")
        if hard_negatives and loss != "clip":
            raise ValueError("hard_negatives goes with loss='clip' (NegCLIP is in-batch InfoNCE + hard negatives)")
        if swap_margin is not None and not hard_negatives:
            raise ValueError("swap_margin needs hard_negatives: true (it separates a caption from its swapped negative)")
        if parallel_order_temperature is not None and not hard_negatives:
            raise ValueError("parallel_order_temperature needs hard_negatives: true (it ranks a caption's parallel "
                             "caption above that caption's swapped negative)")
        self.swap_loss = SwapSeparationLoss(swap_margin) if swap_margin is not None else None
        self.parallel_loss = (ParallelOrderLoss(parallel_order_temperature)
                              if parallel_order_temperature is not None else None)
        self.model: DualTower = create_model(model, pretrained=pretrained, tokenizer=tokenizer).train()
        if self.model.tokenizer is None:
            raise ValueError(f"model {model!r} needs a tokenizer: set model.tokenizer to a tokenizer folder "
                             "(e.g. data/emoji/tokenizer, built by `python -m brivl data emoji`)")
        if not learn_temperature:  # the logit scale stays at its init, 1 / 0.07 (the queue's too: temperature null)
            self.model.clip.logit_scale.requires_grad_(False)
        if lock_image:  # only the text side learns (LiT; AltCLIP's contrastive stage)
            self.model.lock_image_tower()
        self.clip_loss = None
        if loss == "moco":
            self.momentum_model = MomentumEncoder(self.model.clip, momentum)
            self.queue_loss = MomentumQueueLoss(self.model.embed_dim, queue_size, temperature or 0.07,
                                                mask_same_concept)

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "configure_preprocess"):
            mean, std = self.model.image_mean_std
            dm.configure_preprocess(self.model.image_size, mean, std)
        self.hparams.eval_langs = resolve_for_datamodule(self.hparams.eval_langs, dm)  # 'all': the covered ones
        if self.hparams.loss == "clip":
            self.clip_loss = HardNegativeClipLoss() if self.hparams.hard_negatives else make_clip_loss()
        elif stage == "fit" and dm is not None:
            self.queue_loss.check_batch(dm.hparams.batch_size * self.trainer.world_size)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another model config with one clear error (not a shape traceback)."""
        own = self.state_dict()
        bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in checkpoint["state_dict"].items()
               if k in own and v.shape != own[k].shape]
        if bad:
            k, a, b = bad[0]
            raise ConfigMismatchError(
                f"checkpoint was trained with another model config ({len(bad)} tensors differ, e.g. {k}: "
                f"checkpoint {a} vs model {b}); use the config it was trained with (its run's config.yaml)")

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        images = batch["images"]  # (B, 3, S, S)
        sets = batch["texts"]  # M caption sets (one caption per image each, in another language)
        n_sets, bsz = len(sets), len(images)
        ids = self.model.tokenize([t for texts in sets for t in texts]).to(self.device)  # (M*B, L)
        if self.hparams.loss == "clip":
            img = self.model.encode_image(images)  # (B, D)
            txt = self.model.encode_text(ids).view(n_sets, bsz, -1)  # (M, B, D)
            scale = self.model.logit_scale.exp()
            if self.hparams.hard_negatives:
                raw = batch.get("negatives") or [[]] * n_sets  # per caption set: a negative or None per row
                rows = [[b for b, n in enumerate(ns) if n] for ns in raw]  # the rows that have one
                negs = [[ns[b] for b in r] for ns, r in zip(raw, rows)]
                flat = [n for ns in negs for n in ns]
                neg = (self.model.encode_text(self.model.tokenize(flat).to(self.device)) if flat
                       else img.new_zeros(0, img.shape[1]))  # (N, D)
                starts = negative_offsets(rows)
                loss = sum(self.clip_loss(img, txt[m], neg[starts[m]:starts[m + 1]], scale)
                           for m in range(n_sets)) / n_sets
                self.log("train/hard_negatives", float(len(flat)), batch_size=bsz)
                if self.swap_loss is not None:
                    loss = loss + self.swap_separation(img, txt, neg, rows, batch.get("mirror_pairs"))
                if self.parallel_loss is not None:
                    loss = loss + self.parallel_order(txt, neg, rows)
            else:
                loss = sum(self.clip_loss(img, txt[m], scale) for m in range(n_sets)) / n_sets
            self.log("logit_scale", scale, prog_bar=False)
        else:
            if n_sets != 1:
                raise ValueError("loss='moco' takes one caption per image: set data.captions_per_image: 1")
            q_img, q_txt = self.model.encode_image(images), self.model.encode_text(ids)
            with torch.no_grad():
                self.momentum_model.update(self.model.clip)
                k_img = self.momentum_model.module.encode_image(images, normalize=True)
                k_txt = self.momentum_model.module.encode_text(ids, normalize=True)
            learnt = self.hparams.temperature is None  # the model's logit scale, learnt and clamped like CLIP's
            loss = self.queue_loss(q_img, q_txt, k_img, k_txt, self.model.logit_scale.exp() if learnt else None,
                                   batch.get("concepts"))
            self.log("logit_scale", self.model.logit_scale.exp() if learnt else 1 / self.hparams.temperature)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def swap_separation(self, img, txt, neg, rows, pairs) -> torch.Tensor:
        """The swap-separation term: captions vs their swapped negatives ``neg`` (``rows[m]``: the rows of caption
        set m that have one, in the order of ``neg``), composed images vs their mirrors (``pairs``: the batch's
        ``mirror_pairs``, (P, 2) rows, or None)."""
        cap = torch.cat([txt[m][r] for m, r in enumerate(rows)])  # (N, D)
        text_term = self.swap_loss(cap, neg)
        pairs = pairs if pairs is not None else torch.zeros(0, 2, dtype=torch.long)
        image_term = self.swap_loss(img[pairs[:, 0]], img[pairs[:, 1]])
        self.log_dict({"train/swap_text": text_term, "train/swap_image": image_term}, batch_size=len(img))
        return text_term + image_term

    def parallel_order(self, txt, neg, rows) -> torch.Tensor:
        """The parallel-order term: for every row that has a swapped negative in two caption sets m != k (a
        composite captioned in two languages), caption m is the anchor, caption k the positive and k's swapped
        caption the hard negative (``neg`` and ``rows`` as in :meth:`swap_separation`)."""
        starts = negative_offsets(rows)
        where = [{b: starts[m] + i for i, b in enumerate(r)} for m, r in enumerate(rows)]  # row -> index in neg
        anchor, positive, negative = [], [], []
        for m, k in itertools.permutations(range(len(rows)), 2):
            both = [b for b in rows[m] if b in where[k]]
            anchor.append(txt[m][both])
            positive.append(txt[k][both])
            negative.append(neg[[where[k][b] for b in both]])
        if not anchor:  # one caption set: no parallel captions
            return txt.new_zeros(())
        term = self.parallel_loss(torch.cat(anchor), torch.cat(positive), torch.cat(negative))
        self.log("train/parallel_order", term, batch_size=txt.shape[1])
        return term

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():  # CLIP's clamp of the learnable temperature (logit scale <= 100)
            self.model.clip.logit_scale.clamp_(0, math.log(100))

    # ------------------------------------------------------------------ evaluation
    def _eval_view(self, batch, prefix: str) -> dict:
        return log_retrieval(self, self.model, batch, prefix, self.hparams.eval_langs)

    def validation_step(self, batch, batch_idx):
        self._eval_view(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_view(batch, "test")

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self):
        hp = self.hparams
        return adamw_warmup_cosine(self, self.model.named_parameters(), hp.lr, hp.weight_decay, hp.betas,
                                   hp.warmup_steps, hp.fused_optimizer)


def negative_offsets(rows: list[list[int]]) -> list[int]:
    """Where each caption set's hard negatives start in the stacked negatives (``rows[m]``: the rows of set m that
    have one), and where they end: M + 1 offsets."""
    return [sum(len(r) for r in rows[:m]) for m in range(len(rows) + 1)]


def log_retrieval(module: pl.LightningModule, model, batch: dict, prefix: str, langs) -> dict:
    """Evaluate ``model`` on a whole view (``batch`` from ``ClosedViewDataset``) and log per-language R@1."""
    result = evaluate_model(model, batch["images"], batch["metas"], langs, zeroshot=False)
    for lang, m in result["languages"].items():
        module.log(f"{prefix}/t2i_R@1/{lang}", m["t2i"]["R@1"], batch_size=1)
    module.log(f"{prefix}/t2i_R@1", mean_over_languages(result, "t2i"), prog_bar=True, batch_size=1)
    module.log(f"{prefix}/i2t_R@1", mean_over_languages(result, "i2t"), batch_size=1)
    module.log(f"{prefix}/t2i_R@10", mean_over_languages(result, "t2i", "R@10"), batch_size=1)
    return result


def adamw_warmup_cosine(module: pl.LightningModule, named_parameters, lr: float, weight_decay: float,
                        betas, warmup_steps: int, fused: bool = True) -> dict:
    """AdamW (no decay on gains, biases, embeddings, logit scale) with linear warm-up then cosine to 0."""
    decay, no_decay = [], []
    for n, p in named_parameters:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embedding" in n or "logit_scale" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=tuple(betas),
                            fused=fused)  # one fused kernel per step (CPU and CUDA)
    total = max(1, int(module.trainer.estimated_stepping_batches))

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
