"""Images -> embedding shards: ``python -m index embed --model DIR --data SOURCE --out EMB_DIR``.

Input (``--data``): a data folder of WebDataset shards with ``manifest.json`` (``--view`` picks splits;
one output shard per input shard), a single ``.tar`` shard, or a plain folder of images (grouped into
shards of ``--files-per-shard`` images by sorted path; captions from same-stem ``.txt``/``.json`` files as
in ``python -m brivl data import``, keys = sha1 of the relative path, so a folder embedded directly and
the same folder imported first get the same keys and ids).

Output, per input shard ``NAME``::

    NAME.emb.npy     (n, d) float32 or float16, L2-normalised image embeddings
    NAME.ids.npy     (n,) int64 ids (:func:`index.common.key_to_id` of the sample keys)
    NAME.meta.jsonl  one item per row: id, key, caption, language, captions {lang: [...]}, source, extra

plus ``embed.json`` (the model: name, path, dim, and a probe text embedding that identifies it; dtype;
data). Each file is written atomically and ``NAME.emb.npy`` last, so a shard is finished exactly when its
three files exist: a re-run skips finished shards (resume after an interruption) and refuses to mix in
embeddings of another model.

Encoding runs through Lightning's ``Trainer.predict`` (a ``LightningModule`` whose ``predict_step`` calls
the model's ``embed_images``) with a ``BasePredictionWriter`` per rank: shards are dealt to ranks (and to
data-loader workers) round-robin, each rank writes the shards it encoded, so several GPUs or nodes need
no gathering step; on a CPU-only machine the same path runs with one device. Undecodable images are
skipped and counted, never fatal.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common import UserError, atomic_save_npy, atomic_write_bytes, atomic_write_json, key_to_id, now_iso

log = logging.getLogger(__name__)

EMBED_INFO = "embed.json"
PROBE_TEXT = "a photo of a cat 一只猫"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
SKIP_META = ("captions", "keywords", "names")


# ------------------------------------------------------------------------------------------- inputs


@dataclass
class InputShard:
    """One unit of work and of output: a tar shard, or a group of image files of a folder."""

    name: str
    tar: str | None = None
    files: list = field(default_factory=list)  # (key, absolute path, captions) for a folder

    def count_images(self) -> int:
        if self.tar is None:
            return len(self.files)
        with tarfile.open(self.tar) as tar:
            return sum(1 for m in tar if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES))


def list_inputs(data: str | os.PathLike, view: str = "closed", files_per_shard: int = 1000) -> list[InputShard]:
    """The input shards of ``data`` (see the module docstring)."""
    data = Path(data)
    if not data.exists():
        raise UserError(f"--data {data} not found: give a data folder (manifest.json + shards), a .tar shard "
                        "or a folder of images")
    if data.is_file():
        if data.suffix != ".tar":
            raise UserError(f"--data {data} is a file but not a .tar shard")
        return [InputShard(data.stem, tar=str(data.resolve()))]
    if (data / "manifest.json").is_file():
        from brivl.data.views import STYLE_PREFIX, view_shards

        if STYLE_PREFIX in view:
            raise UserError(f"--view {view}: index embed reads whole shards, so it takes splits (closed, test, "
                            "train+val), not styles; every style of a multi-style build is indexed")
        try:
            shards = view_shards(data, view)
        except ValueError as e:
            raise UserError(str(e)) from e
        names = [Path(s).stem for s in shards]
        if len(set(names)) != len(names):
            raise UserError(f"{data} has several shards with the same name: {names}")
        return [InputShard(Path(s).stem, tar=str(Path(s).resolve())) for s in shards]
    from brivl.data.importer import _pairs_from_folder

    root = data.resolve()
    pairs = _pairs_from_folder(root, "und")
    if not pairs:
        raise UserError(f"{data} has no manifest.json and no images ({', '.join(IMAGE_SUFFIXES)})")
    if files_per_shard <= 0:
        raise UserError(f"--files-per-shard must be > 0, got {files_per_shard}")
    files = sorted(((hashlib.sha1(p.relative_to(root).as_posix().encode("utf-8")).hexdigest()[:16], str(p), caps)
                    for p, caps in pairs.items()), key=lambda f: f[1])
    return [InputShard(f"files-{i // files_per_shard:06d}", files=files[i:i + files_per_shard])
            for i in range(0, len(files), files_per_shard)]


def item_of(key: str, meta: dict, source: str) -> dict:
    """The metadata row of a sample: caption = the English one if any, else the first language's."""
    caps = {lang: list(v) for lang, v in (meta.get("captions") or {}).items() if v}
    lang = "en" if "en" in caps else next(iter(caps), None)
    extra = {k: v for k, v in meta.items() if k not in SKIP_META and isinstance(v, (str, int, float, bool))}
    return {"id": key_to_id(key), "key": key, "caption": caps[lang][0] if lang else None, "language": lang,
            "captions": caps, "source": source, "extra": extra}


def iter_items(shard: InputShard, stats: dict):
    """``(PIL image, item)`` of every decodable sample of a shard; failures counted in ``stats``."""
    from PIL import Image

    if shard.tar is not None:
        from brivl.data.shards import DecodeStats, iter_samples

        ds = DecodeStats()
        for s in iter_samples([shard.tar], ds):
            yield s["image"], item_of(s["key"], s["meta"], f"{shard.tar}#{s['key']}")
        for reason, n in ds.skipped.items():
            stats[reason] = stats.get(reason, 0) + n
        return
    for key, path, caps in shard.files:
        try:
            with Image.open(path) as im:
                im.load()
                image = im.copy()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            log.warning("skipping %s: cannot decode the image (%s)", path, type(e).__name__)
            stats["undecodable image"] = stats.get("undecodable image", 0) + 1
            continue
        yield image, item_of(key, {"captions": caps}, path)


# ------------------------------------------------------------------------------------------ outputs


def shard_paths(out_dir: Path, name: str) -> tuple[Path, Path, Path]:
    return out_dir / f"{name}.emb.npy", out_dir / f"{name}.ids.npy", out_dir / f"{name}.meta.jsonl"


def is_finished(out_dir: Path, name: str) -> bool:
    return all(p.is_file() for p in shard_paths(out_dir, name))


def write_shard(out_dir: Path, name: str, emb: np.ndarray, items: list[dict], dtype: str) -> None:
    """Metadata, ids, then embeddings (the 'finished' marker), each atomically."""
    emb_p, ids_p, meta_p = shard_paths(out_dir, name)
    lines = "".join(json.dumps(it, ensure_ascii=False, sort_keys=True) + "\n" for it in items)
    atomic_write_bytes(meta_p, lines.encode("utf-8"))
    atomic_save_npy(ids_p, np.array([it["id"] for it in items], dtype=np.int64))
    atomic_save_npy(emb_p, np.asarray(emb, dtype=dtype))


def finished_shards(emb_dir: str | os.PathLike) -> list[str]:
    emb_dir = Path(emb_dir)
    return sorted(p.name[:-len(".emb.npy")] for p in emb_dir.glob("*.emb.npy") if is_finished(emb_dir, p.name[:-8]))


def read_shard(emb_dir: str | os.PathLike, name: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    emb_p, ids_p, meta_p = shard_paths(Path(emb_dir), name)
    emb, ids = np.load(emb_p), np.load(ids_p)
    items = [json.loads(line) for line in meta_p.read_text(encoding="utf-8").splitlines() if line]
    if not (len(emb) == len(ids) == len(items)) or any(int(i) != it["id"] for i, it in zip(ids, items)):
        raise UserError(f"embedding shard {name} in {emb_dir} is inconsistent ({len(emb)} vectors, {len(ids)} ids, "
                        f"{len(items)} metadata rows): delete its files and re-run `python -m index embed`")
    return emb, ids, items


# -------------------------------------------------------------------------------------------- model


def describe_model(model, path: str | None) -> dict:
    """What identifies a model for an index: name, path, dim, image size and a probe text embedding."""
    probe = model.embed_texts([PROBE_TEXT])[0].tolist()
    return {"name": (model.info or {}).get("name") or (Path(path).name if path else None),
            "path": str(Path(path).resolve()) if path and Path(path).exists() else path,
            "dim": int(model.embed_dim), "image_size": int(model.image_size),
            "probe_text": PROBE_TEXT, "probe": [round(float(v), 6) for v in probe]}


def load_model(path: str):
    from brivl.factory import create_model
    from brivl.model import ConfigMismatchError, UnknownModelError

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip's "No pretrained weights loaded" before our weights are loaded
    try:
        return create_model(str(path)).eval()
    except (FileNotFoundError, UnknownModelError, ConfigMismatchError) as e:
        raise UserError(f"cannot load model {path}: {e}") from e
    finally:
        root.setLevel(level)


# ---------------------------------------------------------------------------------------- lightning


def _lightning_parts():
    """The LightningModule, the prediction writer and the dataset (built on first use: lazy imports)."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import BasePredictionWriter

    from brivl.data.transforms import to_tensor

    class ShardBatches(torch.utils.data.IterableDataset):
        """Batches of one shard at a time; shards dealt round-robin to (rank, worker)."""

        def __init__(self, shards, size, mean, std, batch_size, rank, world):
            self.shards, self.size, self.mean, self.std = shards, size, mean, std
            self.batch_size, self.rank, self.world = batch_size, rank, world

        def _batch(self, shard, images, items, last, stats):
            x = torch.stack([to_tensor(im, self.size, self.mean, self.std) for im in images]) if images else \
                torch.empty(0, 3, self.size, self.size)
            return {"images": x, "shard": shard.name, "items": items, "last": last, "skipped": dict(stats)}

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            wid, nw = (info.id, info.num_workers) if info else (0, 1)
            slot, slots = self.rank * nw + wid, self.world * nw
            for i, shard in enumerate(self.shards):
                if i % slots != slot:
                    continue
                stats: dict = {}
                images, items = [], []
                for image, item in iter_items(shard, stats):
                    images.append(image)
                    items.append(item)
                    if len(images) == self.batch_size:
                        yield self._batch(shard, images, items, False, stats)
                        images, items = [], []
                yield self._batch(shard, images, items, True, stats)

    class EmbedModule(pl.LightningModule):
        def __init__(self, model, shards, batch_size, num_workers):
            super().__init__()
            self.model, self.shards = model, shards
            self.batch_size, self.num_workers = batch_size, num_workers

        def predict_dataloader(self):
            mean, std = self.model.image_mean_std
            ds = ShardBatches(self.shards, self.model.image_size, mean, std, self.batch_size,
                              self.trainer.global_rank, self.trainer.world_size)
            return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.num_workers)

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            x = batch["images"]
            emb = self.model.embed_images(x).numpy() if len(x) else np.zeros((0, self.model.embed_dim), np.float32)
            return {"emb": emb, "items": batch["items"], "shard": batch["shard"], "last": batch["last"],
                    "skipped": batch["skipped"]}

    class ShardWriter(BasePredictionWriter):
        """Collects one shard's batches and writes the shard when its last batch arrives."""

        def __init__(self, out_dir, dtype, progress):
            super().__init__(write_interval="batch")
            self.out_dir, self.dtype, self.progress = Path(out_dir), dtype, progress
            self.pending: dict[str, tuple[list, list]] = {}
            self.written: dict[str, dict] = {}

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                               dataloader_idx=0):
            embs, items = self.pending.setdefault(prediction["shard"], ([], []))
            embs.append(prediction["emb"])
            items.extend(prediction["items"])
            if self.progress is not None:
                self.progress.update(len(prediction["items"]))
            if prediction["last"]:
                emb = np.concatenate(embs) if embs else np.zeros((0, pl_module.model.embed_dim), np.float32)
                write_shard(self.out_dir, prediction["shard"], emb, items, self.dtype)
                self.written[prediction["shard"]] = {"count": len(items), "skipped": prediction["skipped"]}
                del self.pending[prediction["shard"]]

    return EmbedModule, ShardWriter


def predict_shards(model, shards: list[InputShard], out_dir: Path, dtype: str = "float32", batch_size: int = 256,
                   accelerator: str = "auto", devices="auto", num_nodes: int = 1, num_workers: int = 0,
                   precision=None, progress: bool = True, strategy: str = "auto") -> dict:
    """Encode ``shards`` with ``Trainer.predict`` and write them to ``out_dir``; returns ({name: counts} of the
    shards this process wrote, its rank, the world size)."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*predict_dataloader.*")
    warnings.filterwarnings("ignore", ".*infer the batch indices.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    import pytorch_lightning as pl
    from tqdm.auto import tqdm

    EmbedModule, ShardWriter = _lightning_parts()
    bar = tqdm(total=sum(s.count_images() for s in shards), desc="embed", unit="img", disable=not progress)
    writer = ShardWriter(out_dir, dtype, bar)
    kwargs = {"precision": precision} if precision else {}
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy, logger=False,
                         callbacks=[writer], enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False, **kwargs)
    try:
        trainer.predict(EmbedModule(model, shards, batch_size, num_workers), return_predictions=False)
    finally:
        bar.close()
    return writer.written, trainer.global_rank, trainer.world_size


def check_embed_info(old: dict, new: dict, out_dir) -> None:
    """Refuse to add shards of another model or dtype to an embedding folder."""
    from .common import same_model

    why = same_model(old.get("model") or {}, new["model"])
    if why:
        raise UserError(f"{out_dir} holds embeddings of another model ({why}): use another --out")
    if old.get("dtype") != new["dtype"]:
        raise UserError(f"{out_dir} holds {old.get('dtype')} embeddings, not {new['dtype']}: use the same --dtype "
                        "or another --out")


def run_embed(model_path: str, data: str, out: str, view: str = "closed", dtype: str = "float32",
              batch_size: int = 256, files_per_shard: int = 1000, accelerator: str = "auto", devices="auto",
              num_nodes: int = 1, num_workers: int = 0, precision=None, progress: bool = True,
              model=None, strategy: str = "auto") -> dict:
    """The ``embed`` command; returns a summary ``{"done", "skipped_shards", "count", ...}``."""
    if dtype not in ("float32", "float16"):
        raise UserError(f"--dtype must be float32 or float16, got {dtype}")
    if batch_size <= 0:
        raise UserError(f"--batch-size must be > 0, got {batch_size}")
    shards = list_inputs(data, view, files_per_shard)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")
    model = model if model is not None else load_model(model_path)
    info = {"model": describe_model(model, model_path), "dtype": dtype, "data": str(Path(data).resolve()),
            "view": view, "shards": [s.name for s in shards], "created": now_iso()}
    info_path = out_dir / EMBED_INFO
    if info_path.is_file():
        old = json.loads(info_path.read_text(encoding="utf-8"))
        check_embed_info(old, info, out_dir)
        info["shards"] = list(dict.fromkeys(old.get("shards", []) + info["shards"]))
        info["created"] = old.get("created", info["created"])
    todo = [s for s in shards if not is_finished(out_dir, s.name)]
    if int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0:
        atomic_write_json(info_path, info)
    written, rank, world = predict_shards(model, todo, out_dir, dtype, batch_size, accelerator, devices, num_nodes,
                                          num_workers, precision, progress, strategy) if todo else ({}, 0, 1)
    skipped = {}
    for w in written.values():
        for reason, n in w["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    return {"shards": len(shards), "done": len(written), "resumed": len(shards) - len(todo),
            "count": sum(w["count"] for w in written.values()), "skipped": skipped, "out": str(out_dir),
            "rank": rank, "world_size": world}  # with several processes: this process's share
