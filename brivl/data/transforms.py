"""Images to tensors: the clean render of evaluation and search (:func:`to_tensor`, :func:`to_batch`) and the
rendering-level training augmentation (:class:`TrainAugment`)."""
from __future__ import annotations

import random
from typing import Sequence

import torch


def to_tensor(image, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Clean render: composite transparency on white, resize, normalize -> (3, size, size)."""
    from PIL import Image

    image = flatten(image, (255, 255, 255))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return _normalize(image, mean, std)


def to_batch(samples: list[dict], size: int, mean, std) -> torch.Tensor:
    """Clean renders of decoded samples stacked into one (N, 3, size, size) tensor."""
    return torch.stack([to_tensor(s["image"], size, mean, std) for s in samples])


def flatten(image, background: tuple[int, int, int]):
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, background + (255,))
        canvas.alpha_composite(image)
        return canvas.convert("RGB")
    return image.convert("RGB")


def _normalize(image, mean, std) -> torch.Tensor:
    import numpy as np

    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class TrainAugment:
    """Rendering-level augmentation: random scale and position on a random light background, and, each with its
    own probability, the drawing-style changes that help a model carry a concept across styles (measured in an
    ablation on a held-out style, not assumed): ``grayscale``; ``jitter`` (brightness, contrast, saturation each
    scaled by a factor in [1 - j, 1 + j], hue rotated by up to j / 2 of the circle); ``blur`` (Gaussian, radius
    0.5-1.5 px at the render's size); ``outline`` (the drawing reduced to its dark contour lines on its own
    silhouette, a line-art style). The alpha channel (the emoji's shape) is kept by all of them."""

    def __init__(self, size: int, mean, std, scale: tuple[float, float] = (0.6, 1.0), bg_min: int = 180,
                 grayscale: float = 0.0, jitter: float = 0.0, jitter_p: float = 0.0, blur: float = 0.0,
                 outline: float = 0.0):
        self.size, self.mean, self.std, self.scale, self.bg_min = size, mean, std, scale, bg_min
        self.grayscale, self.jitter, self.jitter_p, self.blur, self.outline = grayscale, jitter, jitter_p, blur, outline

    def restyle(self, image, rng: random.Random):
        """The style changes of the augmentation, applied to an RGBA image (alpha kept)."""
        from PIL import Image, ImageEnhance, ImageFilter, ImageOps

        rgb, alpha = image.convert("RGB"), image.getchannel("A")
        if self.outline and rng.random() < self.outline:
            edges = ImageOps.invert(rgb.convert("L").filter(ImageFilter.FIND_EDGES)).point(lambda v: 0 if v < 200 else 255)
            rgb = Image.merge("RGB", [edges] * 3)
        if self.jitter_p and rng.random() < self.jitter_p:
            j = self.jitter
            for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                rgb = enhance(rgb).enhance(rng.uniform(1 - j, 1 + j))
            h, sat, v = rgb.convert("HSV").split()
            shift = round(rng.uniform(-j / 2, j / 2) * 255)
            rgb = Image.merge("HSV", (h.point(lambda x: (x + shift) % 256), sat, v)).convert("RGB")
        if self.grayscale and rng.random() < self.grayscale:
            rgb = rgb.convert("L").convert("RGB")
        if self.blur and rng.random() < self.blur:
            rgb = rgb.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5) * image.size[0] / self.size))
        out = rgb.convert("RGBA")
        out.putalpha(alpha)
        return out

    def __call__(self, image, rng: random.Random) -> torch.Tensor:
        from PIL import Image

        bg = tuple(rng.randint(self.bg_min, 255) for _ in range(3))
        s = max(1, round(self.size * rng.uniform(*self.scale)))
        if image.mode in ("RGBA", "LA", "P"):
            fg = self.restyle(image.convert("RGBA"), rng).resize((s, s), Image.Resampling.BICUBIC)
            canvas = Image.new("RGBA", (self.size, self.size), bg + (255,))
            canvas.alpha_composite(fg, (rng.randint(0, self.size - s), rng.randint(0, self.size - s)))
            return _normalize(canvas.convert("RGB"), self.mean, self.std)
        # photos: random resized crop
        w, h = image.size
        side = max(1, round(min(w, h) * rng.uniform(*self.scale)))
        x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
        crop = image.convert("RGB").crop((x0, y0, x0 + side, y0 + side)).resize((self.size, self.size))
        return _normalize(crop, self.mean, self.std)
