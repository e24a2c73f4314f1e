"""Contrastive losses for the dual tower.

* In-batch symmetric InfoNCE: open_clip's ``ClipLoss`` (features gathered across DDP ranks).
* NegCLIP's hard negatives (Yuksekgonul et al., 2023): the same InfoNCE, with extra captions (the order or the
  attribute of a caption swapped) as columns of the image->text softmax only.
* BriVL's cross-modal momentum-queue loss (Huo et al., 2021, after MoCo, He et al., 2020):
  momentum copies of both towers give keys; an image-key queue and a text-key queue hold the last K
  keys; InfoNCE both ways over 1 positive (the momentum key of the pair) + K queue negatives.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def make_clip_loss() -> nn.Module:
    """open_clip's ClipLoss set up for the current process group (global negatives under DDP)."""
    from open_clip.loss import ClipLoss

    rank, world = dist_info()
    return ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world)


class HardNegativeClipLoss(nn.Module):
    """Symmetric InfoNCE where each image is also scored against ``negatives`` ``(N, D)``: hard negative captions
    (NegCLIP). Text->image is the plain in-batch term; image->text has the batch's texts and the negatives as
    columns. Under DDP the local rows meet every rank's texts / images (gathered with their gradients, open_clip's
    ``gather_features``) plus this rank's negatives. With no negatives on one process it equals ``ClipLoss``."""

    def forward(self, image: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
        rank, world = dist_info()
        all_image, all_text = image, text
        if world > 1:
            from open_clip.loss import gather_features

            all_image, all_text = gather_features(image, text, local_loss=True, gather_with_grad=True, rank=rank,
                                                  world_size=world)
        labels = torch.arange(len(image), device=image.device) + rank * len(image)
        logits_i2t = logit_scale * image @ torch.cat([all_text, negatives]).T  # (B, world * B + N)
        logits_t2i = logit_scale * text @ all_image.T  # (B, world * B)
        return (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)) / 2


class SwapSeparationLoss(nn.Module):
    """A hinge on the cosine of each embedding and its order-swapped twin: ``mean relu(cos(x, x_swap) - margin)``.

    forward(x, x_swap): (P, D) L2-normalized rows, pair by pair ("A left of B" and "B left of A", or the composed
    images A|B and B|A). In-batch InfoNCE with the swapped twins as hard negatives (NegCLIP) sits at a saddle when
    both towers are order-blind: the gradient that separates the two images is proportional to how far apart the
    two captions are, and the other way round, so neither moves. This term moves each tower on its own. A
    margin-ranking term with hard negatives, in the spirit of VSE++ (Faghri et al., 2018), applied within one
    modality. No pairs: 0.
    """

    def __init__(self, margin: float):
        super().__init__()
        if not -1.0 <= margin < 1.0:
            raise ValueError(f"margin must be in [-1, 1) (a cosine), got {margin}")
        self.margin = margin

    def forward(self, x: torch.Tensor, x_swap: torch.Tensor) -> torch.Tensor:
        if len(x) == 0:
            return x.new_zeros(())
        return F.relu((x * x_swap).sum(dim=-1) - self.margin).mean()


class ParallelOrderLoss(nn.Module):
    """Parallel captions of one composed image agree on the order: ``mean softplus((a.n - a.p) / tau)``.

    forward(anchor, positive, negative): (P, D) L2-normalized rows; ``anchor`` a relation caption in one language
    ("Bの左にA", A left of B), ``positive`` the same relation in another language ("A to the left of B"),
    ``negative`` that language's order-swapped caption ("B to the left of A"). It is InfoNCE over one positive and
    one hard negative (cross-entropy of the two logits ``[a.p, a.n] / tau`` with the positive as label), teacher
    learning's parallel-text signal (AltCLIP, Chen et al., 2022) applied to word order. Why: a tower that reads
    "first name = left" in seven of the m9 templates applies it to ja and ko, whose templates name the reference
    first; the image side (A|B vs B|A, cosine ~0.9) gives that a weak signal, parallel text a direct one.
    No triples: 0.
    """

    def __init__(self, temperature: float):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        if len(anchor) == 0:
            return anchor.new_zeros(())
        pos, neg = (anchor * positive).sum(-1), (anchor * negative).sum(-1)  # (P,), (P,)
        return F.softplus((neg - pos) / self.temperature).mean()


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """Gather a tensor from every rank (no gradient): keys to enqueue."""
    rank, world = dist_info()
    if world == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


class MomentumEncoder(nn.Module):
    """An EMA copy of a module, never trained by gradients: ``k = m * k + (1 - m) * q``."""

    def __init__(self, module: nn.Module, momentum: float):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.module = copy.deepcopy(module)
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        for k, q in zip(self.module.parameters(), online.parameters()):
            k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)
        for k, q in zip(self.module.buffers(), online.buffers()):
            k.copy_(q)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class MomentumQueueLoss(nn.Module):
    """BriVL's cross-modal momentum-queue InfoNCE.

    forward(q_img, q_txt, k_img, k_txt): queries from the online towers (B, D), keys from the momentum
    towers (B, D), all L2-normalized. Image queries are scored against their text key (positive) and the
    text-key queue (negatives); text queries against their image key and the image-key queue. The
    global batch of keys is then enqueued. Queue slots not yet filled are masked out.

    The logits are divided by ``temperature`` (BriVL's fixed value), or multiplied by ``logit_scale`` when
    forward is given one: the online model's learnable scale, as in-batch CLIP learns it, so that an
    in-batch vs queue comparison does not differ in how its temperature is set.

    ``mask_same_concept``: forward also takes ``concepts`` (B,), an integer label per sample (the emoji id),
    and queue keys of the query's own concept are masked out of its negatives. On a small dataset a queue larger
    than the number of concepts nearly always holds a key of the query's concept, a *false negative* the loss
    pushes away (false-negative elimination, as in Huynh et al., 2022, "Boosting Contrastive Self-Supervised
    Learning with False Negative Cancellation"; here the labels are known, not detected).
    """

    def __init__(self, embed_dim: int, queue_size: int = 4096, temperature: float = 0.07,
                 mask_same_concept: bool = False):
        super().__init__()
        if queue_size <= 0:
            raise ValueError(f"queue_size must be > 0, got {queue_size}")
        self.queue_size = queue_size
        self.temperature = temperature
        self.mask_same_concept = mask_same_concept
        self.register_buffer("image_queue", torch.zeros(queue_size, embed_dim))
        self.register_buffer("text_queue", torch.zeros(queue_size, embed_dim))
        if mask_same_concept:
            self.register_buffer("concept_queue", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def check_batch(self, global_batch: int) -> None:
        if self.queue_size % global_batch:
            raise ValueError(
                f"queue_size {self.queue_size} must be a multiple of the global batch {global_batch} "
                f"(batch per device x devices x nodes); e.g. queue_size={global_batch * max(1, self.queue_size // global_batch)}"
            )

    def _infonce(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, scale,
                 same: torch.Tensor | None = None) -> torch.Tensor:
        logits = torch.cat([(q * k).sum(dim=-1, keepdim=True), q @ queue.T], dim=1) * scale  # (B, 1 + K)
        if self.filled < self.queue_size:  # mask after scaling: -inf * scale has a NaN gradient
            empty = torch.arange(1 + self.queue_size, device=q.device) > self.filled
            logits = logits.masked_fill(empty, float("-inf"))
        if same is not None:  # (B, K): queue keys of the query's own concept are not negatives
            logits = logits.masked_fill(F.pad(same, (1, 0)), float("-inf"))
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))

    @torch.no_grad()
    def _enqueue(self, k_img: torch.Tensor, k_txt: torch.Tensor, concepts: torch.Tensor | None) -> None:
        k_img, k_txt = concat_all_gather(k_img), concat_all_gather(k_txt)
        n = k_img.shape[0]
        self.check_batch(n)
        p = int(self.ptr)
        self.image_queue[p:p + n] = k_img
        self.text_queue[p:p + n] = k_txt
        if self.mask_same_concept:
            self.concept_queue[p:p + n] = concat_all_gather(concepts)
        self.ptr.fill_((p + n) % self.queue_size)
        self.filled.fill_(min(self.queue_size, int(self.filled) + n))

    def forward(self, q_img, q_txt, k_img, k_txt, logit_scale: torch.Tensor | None = None,
                concepts: torch.Tensor | None = None) -> torch.Tensor:
        k_img, k_txt = k_img.detach(), k_txt.detach()
        scale = 1.0 / self.temperature if logit_scale is None else logit_scale
        same = None
        if self.mask_same_concept:
            if concepts is None:
                raise ValueError("mask_same_concept=True needs forward(..., concepts=labels (B,)): the batch's "
                                 "'concepts' (brivl.data.ShardDataModule gives them)")
            same = concepts.to(self.concept_queue.device)[:, None] == self.concept_queue[None, :]  # (B, K)
        loss_i2t = self._infonce(q_img, k_txt, self.text_queue.clone().detach(), scale, same)
        loss_t2i = self._infonce(q_txt, k_img, self.image_queue.clone().detach(), scale, same)
        if self.training:
            self._enqueue(k_img, k_txt, concepts)
        return (loss_i2t + loss_t2i) / 2
