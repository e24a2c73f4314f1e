#!/usr/bin/env bash
# Re-train the shipped models from their configs and export them to models/<name>/.
#
#   bash scripts/train_shipped.sh STAGE...      # stages run in the order given:
#     brivl        configs/brivl-emoji.yaml (2400 steps)          -> runs/export/brivl-emoji-2400
#                  + configs/brivl-emoji-continue.yaml (1500)      -> runs/export/brivl-emoji-3900
#                  + configs/brivl-emoji-continue2.yaml (1200)     -> models/brivl-emoji
#     teacher      configs/altclip-teacher-en.yaml (English only)  -> models/clip-emoji-en
#     distill      AltCLIP stage 1 (teacher learning, no images)   -> models/altclip-emoji-distill
#     contrastive  AltCLIP stage 2 (image tower locked)            -> models/altclip-emoji
#     scratch      the from-scratch baseline, stage 2's budget     -> models/altclip-scratch
#     scratch-fair the fair from-scratch baseline: the teacher's 2000 English steps + stage 2's 300 m9 steps,
#                  both towers trained (configs/ablation/altclip-scratch-fair.yaml) -> models/altclip-scratch-fair
#     m18          stage 1 on 18 languages                         -> runs/export/altclip-emoji-distill-m18
#     distill-all  stage 1 in every covered language (102), its own 16k tokenizer -> models/altclip-emoji-all-distill
#     distill-all-more  one more stage-1 leg (10000 steps, warm restart) from models/altclip-emoji-all-distill
#                  -> models/altclip-emoji-all-distill (repeat it; run contrastive-all after the last leg)
#     contrastive-all  stage 2 on it, every covered language        -> models/altclip-emoji-all
#     distill-all-wide  the capacity arm: leg 1 of distill-all with a student twice as wide (altclip-xlmr-small)
#                  -> runs/export/altclip-emoji-all-distill-wide
#     distill-all-wide-more  one more stage-1 leg of the wide student (10000 steps, warm restart) from
#                  runs/export/altclip-emoji-all-distill-wide, exported over it (brivl.json lists the legs)
#     contrastive-all-wide  stage 2 (contrastive-all's recipe) on that wide student
#                  (configs/ablation/altclip-contrastive-all-wide.yaml) -> runs/export/altclip-emoji-all-wide
#     brivl3       configs/brivl-emoji3.yaml: three styles, family split (data/emoji-3) -> models/brivl-emoji3
#     brivl3-more  + configs/brivl-emoji3-continue.yaml: 1500 more steps from models/brivl-emoji3 (warm restart),
#                  exported over it (brivl.json lists both legs)
#     teacher3 distill3 contrastive3  the AltCLIP pipeline on the three-style data (configs/altclip-*-emoji3.yaml)
#                  -> models/clip-emoji3-en, models/altclip-emoji3-distill, models/altclip-emoji3
#     distill3-more  one more stage-1 leg (10000 steps, warm restart) from models/altclip-emoji3-distill
#                  -> models/altclip-emoji3-distill (then contrastive3 again)
#     contrastive3-unlocked  stage 2 with the image tower trained too (configs/ablation/altclip-contrastive-emoji3-unlocked.yaml)
#                  -> runs/export/altclip-emoji3-unlocked
#     scratch-fair3  its fair baseline (configs/ablation/altclip-scratch-fair-emoji3.yaml) -> models/altclip-scratch-fair-emoji3
#     heldout      the held-out style ablation: noto+twemoji only, without and with style augmentations
#                  (configs/ablation/heldout-openmoji*.yaml) -> runs/export/heldout-openmoji{,-aug}
#     heldout-aug  its second arm alone (with style augmentations)
#     heldout-full the held-out style protocol at brivl3's budget and recipe: noto+twemoji only
#                  (configs/brivl-emoji3.yaml + configs/ablation/heldout-openmoji-full.yaml) -> runs/export/heldout-openmoji-full
#     negclip      the NegCLIP ablation: 300 more steps of models/brivl-emoji with and without composed items and
#                  hard negatives (configs/ablation/negclip*.yaml) -> runs/export/negclip{,-control}
#     negclip-control-900  the control (no composites) for 900 steps, like-for-like with the 900-step arms
#                  (configs/ablation/negclip-control-900.yaml) -> runs/export/negclip-control-900
#     negclip-mirror  the same with each composite's mirror in its batch (hard negative images too)
#                  (configs/ablation/negclip-mirror.yaml) -> runs/export/negclip-mirror
#     negclip-swapsep  the mirror arm plus a swap-separation hinge on captions and images
#                  (configs/ablation/negclip-swapsep.yaml) -> runs/export/negclip-swapsep
#     negclip-parallel  the swap-separation arm plus the parallel-caption order term
#                  (configs/ablation/negclip-parallel.yaml) -> runs/export/negclip-parallel
#     negclip-parallel-low  the parallel arm at compose_p 0.1 for 900 steps (the same composites, 3x the singles)
#                  (configs/ablation/negclip-parallel-low.yaml) -> runs/export/negclip-parallel-low
#     negclip-parallel-p05  the same at compose_p 0.05 (configs/ablation/negclip-parallel-p05.yaml)
#                  -> runs/export/negclip-parallel-p05
#     negclip-wise  WiSE-FT (brivl wise-ft) between models/brivl-emoji and the low-share arm at alpha 0.25 / 0.5 /
#                  0.75 -> runs/export/negclip-parallel-low-wise-ALPHA (no training; needs negclip-parallel-low)
#     diffusion    one leg of AltDiffusion (configs/altdiffusion-emoji-cpu.yaml, MAX_TIME long), resumed from
#                  models/altdiffusion-emoji when it holds a resume state -> models/altdiffusion-emoji
#                  (repeat it: each leg adds to the last; training_state.json counts steps and samples)
#     diffusion3   one leg of the same recipe on the three-style build, family split, its own tower
#                  (configs/altdiffusion-emoji3-cpu.yaml, data/emoji-3, models/altclip-emoji3)
#                  -> runs/export/altdiffusion-emoji3 (repeat it like diffusion)
#
# On a 2-core CPU each image-text run takes about 2-4 s a step (brivl: about 4-5 h in all); a GPU is
# picked up by accelerator: auto. Environment:
#   PY=python (the interpreter)  WORKERS=1 (data workers)  EVAL=1 (write eval.json at export; 0 = skip)
#   BEST=1 (also export the val-selected checkpoint, best-step=N.ckpt, to runs/export/<name>-step-N)
#   EXTRA="..." (more LightningCLI arguments for every fit)  MAX_TIME=00:01:35:00 (one diffusion leg, DD:HH:MM:SS)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-1}
EVAL=${EVAL:-1}
EXTRA=${EXTRA:-}

latest_run() {  # newest runs/<name>/version_N
  ls -d "runs/$1"/version_* 2>/dev/null | sort -t_ -k2 -n | tail -1
}

# fit_export CLI EXPORTER RUN_NAME OUT "EXPORT_ARGS" [fit args]...   (stage-1 checkpoints export with altclip)
fit_export() {
  local cli=$1 exporter=$2 run=$3 out=$4 export_args=$5; shift 5
  echo "=== $cli fit $* ($(date +%T))"
  $PY -m "$cli" fit "$@" $EXTRA
  local v; v=$(latest_run "$run")
  [ -f "$v/checkpoints/last.ckpt" ] || { echo "no checkpoint in $v" >&2; exit 1; }
  local eval_args=(); [ "$EVAL" = 1 ] && eval_args=(--eval-data "${EVAL_DATA:-data/emoji}")
  # shellcheck disable=SC2086
  $PY -m "$exporter" export --ckpt "$v/checkpoints/last.ckpt" --config "$v/config.yaml" --out "$out" \
    "${eval_args[@]}" $export_args
  # BEST=1: the val-selected checkpoint too (best-step=N.ckpt), for the ablation rows: runs/export/<name>-step-N
  local best; best=$(ls "$v"/checkpoints/best-step=*.ckpt 2>/dev/null | head -1 || true)  # none: save_top_k 0
  if [ "${BEST:-0}" = 1 ] && [ -n "$best" ]; then
    local step=${best##*best-step=}; step=${step%.ckpt}
    # shellcheck disable=SC2086
    $PY -m "$exporter" export --ckpt "$best" --config "$v/config.yaml" --out "runs/export/$(basename "$out")-step-$step" \
      "${eval_args[@]}" $export_args
  fi
}

need() {  # need FOLDER FILE STAGE: a stage that starts from another stage's output says which one to run first
  [ -f "$1/$2" ] || { echo "no $1: run $3 first" >&2; exit 1; }
}

warm_restart() {  # WARM=(...): the next stage-1 leg starts from the exported student FOLDER (weights, tokenizer)
  need "$1" config.json "$2"
  WARM=(--model.init_args.student "$1" --model.init_args.tokenizer "$1")
}

diffusion_leg() {  # diffusion_leg RUN_NAME OUT [fit args]...: one leg of MAX_TIME, resumed from OUT's resume state
  local run=$1 out=$2; shift 2
  local resume=() state=$out/training_state.json
  # each resumed leg gets its own seed (the number of legs so far) so it does not replay leg 1's batches
  if [ -f "$state" ]; then
    resume=(--model.init_args.init_from "$out"
      --seed_everything "$($PY -c "import json,sys; print(len(json.load(open(sys.argv[1]))['legs']))" "$state")")
  fi
  EVAL=0 fit_export diffusion diffusion "$run" "$out" "" "$@" "${resume[@]}" \
    --trainer.max_time "${MAX_TIME:-00:01:35:00}" --data.init_args.num_workers "$WORKERS"
}

need_emoji3() {  # the three-style build with the concept-family split (README, issue 14)
  [ -f data/emoji-3/manifest.json ] || $PY -m brivl data emoji --out data/emoji-3 \
    --styles noto twemoji openmoji --split-by family
}

[ $# -gt 0 ] || { sed -n '2,${/^#/!q;p}' "$0"; exit 2; }  # the header above
for stage in "$@"; do
  case $stage in
    brivl) EVAL=0 fit_export brivl brivl brivl-emoji runs/export/brivl-emoji-2400 "" --config configs/brivl-emoji.yaml \
        --data.num_workers "$WORKERS"
      EVAL=0 fit_export brivl brivl brivl-emoji-continue runs/export/brivl-emoji-3900 "" \
        --config configs/brivl-emoji.yaml --config configs/brivl-emoji-continue.yaml --data.num_workers "$WORKERS"
      fit_export brivl brivl brivl-emoji-continue2 models/brivl-emoji "" --config configs/brivl-emoji.yaml \
        --config configs/brivl-emoji-continue2.yaml --data.num_workers "$WORKERS" ;;
    teacher) fit_export brivl brivl altclip-teacher-en models/clip-emoji-en "--langs en" --config configs/brivl-emoji.yaml \
        --config configs/altclip-teacher-en.yaml --data.num_workers "$WORKERS" ;;
    distill) fit_export altclip altclip altclip-distill models/altclip-emoji-distill "" --config configs/altclip-distill.yaml ;;
    contrastive) fit_export altclip brivl altclip-contrastive models/altclip-emoji "" --config configs/altclip-contrastive.yaml \
        --data.init_args.num_workers "$WORKERS" ;;
    scratch) fit_export brivl brivl altclip-scratch models/altclip-scratch "" --config configs/brivl-emoji.yaml \
        --config configs/ablation/altclip-scratch.yaml --data.num_workers "$WORKERS" ;;
    scratch-fair) fit_export brivl brivl altclip-scratch-fair models/altclip-scratch-fair "" \
        --config configs/brivl-emoji.yaml --config configs/ablation/altclip-scratch-fair.yaml --data.num_workers "$WORKERS" ;;
    m18) fit_export altclip altclip altclip-distill-m18 runs/export/altclip-emoji-distill-m18 \
        "--langs en zh es fr ru ar ja ko it th hi uk tr vi pl nl pt de" \
        --config configs/altclip-distill.yaml --config configs/ablation/altclip-distill-m18.yaml ;;
    distill-all) [ -f data/emoji/tokenizer-all/tokenizer.json ] || \
        $PY -m brivl tokenizer --data data/emoji --langs all --vocab-size 16000 --out data/emoji/tokenizer-all
      fit_export altclip altclip altclip-distill-all models/altclip-emoji-all-distill "--langs all" \
        --config configs/altclip-distill.yaml --config configs/altclip-distill-all.yaml ;;
    distill-all-more) warm_restart models/altclip-emoji-all-distill distill-all
      fit_export altclip altclip altclip-distill-all models/altclip-emoji-all-distill "--langs all" \
        --config configs/altclip-distill.yaml --config configs/altclip-distill-all.yaml "${WARM[@]}" ;;
    distill-all-wide) fit_export altclip altclip altclip-distill-all-wide runs/export/altclip-emoji-all-distill-wide "--langs all" \
        --config configs/altclip-distill.yaml --config configs/altclip-distill-all.yaml \
        --config configs/ablation/altclip-distill-all-wide.yaml ;;
    distill-all-wide-more) warm_restart runs/export/altclip-emoji-all-distill-wide distill-all-wide
      fit_export altclip altclip altclip-distill-all-wide runs/export/altclip-emoji-all-distill-wide "--langs all" \
        --config configs/altclip-distill.yaml --config configs/altclip-distill-all.yaml \
        --config configs/ablation/altclip-distill-all-wide.yaml "${WARM[@]}" ;;
    contrastive-all-wide) need runs/export/altclip-emoji-all-distill-wide config.json distill-all-wide
      fit_export altclip brivl altclip-contrastive-all-wide runs/export/altclip-emoji-all-wide "--langs all" \
        --config configs/altclip-contrastive.yaml --config configs/altclip-contrastive-all.yaml \
        --config configs/ablation/altclip-contrastive-all-wide.yaml --data.init_args.num_workers "$WORKERS" ;;
    contrastive-all) fit_export altclip brivl altclip-contrastive-all models/altclip-emoji-all "--langs all" \
        --config configs/altclip-contrastive.yaml --config configs/altclip-contrastive-all.yaml \
        --data.init_args.num_workers "$WORKERS" ;;
    brivl3) need_emoji3
      EVAL_DATA=data/emoji-3 fit_export brivl brivl brivl-emoji3 models/brivl-emoji3 "" --config configs/brivl-emoji.yaml \
        --config configs/brivl-emoji3.yaml --data.num_workers "$WORKERS" ;;
    brivl3-more) need_emoji3; need models/brivl-emoji3 brivl.json brivl3
      EVAL_DATA=data/emoji-3 fit_export brivl brivl brivl-emoji3-continue models/brivl-emoji3 "" --config configs/brivl-emoji.yaml \
        --config configs/brivl-emoji3.yaml --config configs/brivl-emoji3-continue.yaml --data.num_workers "$WORKERS" ;;
    teacher3) need_emoji3; EVAL_DATA=data/emoji-3 fit_export brivl brivl altclip-teacher-en-emoji3 models/clip-emoji3-en "--langs en" \
        --config configs/brivl-emoji.yaml --config configs/altclip-teacher-en.yaml \
        --config configs/altclip-teacher-en-emoji3.yaml --data.num_workers "$WORKERS" ;;
    distill3) need_emoji3; EVAL_DATA=data/emoji-3 fit_export altclip altclip altclip-distill-emoji3 models/altclip-emoji3-distill "" \
        --config configs/altclip-distill.yaml --config configs/altclip-distill-emoji3.yaml ;;
    distill3-more) need_emoji3; warm_restart models/altclip-emoji3-distill distill3
      EVAL_DATA=data/emoji-3 fit_export altclip altclip altclip-distill-emoji3 models/altclip-emoji3-distill "" \
        --config configs/altclip-distill.yaml --config configs/altclip-distill-emoji3.yaml "${WARM[@]}" ;;
    contrastive3) need_emoji3; EVAL_DATA=data/emoji-3 fit_export altclip brivl altclip-contrastive-emoji3 models/altclip-emoji3 "" \
        --config configs/altclip-contrastive.yaml --config configs/altclip-contrastive-emoji3.yaml \
        --data.init_args.num_workers "$WORKERS" ;;
    contrastive3-unlocked) need_emoji3; EVAL_DATA=data/emoji-3 fit_export altclip brivl altclip-contrastive-emoji3-unlocked \
        runs/export/altclip-emoji3-unlocked "" --config configs/altclip-contrastive.yaml \
        --config configs/altclip-contrastive-emoji3.yaml --config configs/ablation/altclip-contrastive-emoji3-unlocked.yaml \
        --data.init_args.num_workers "$WORKERS" ;;
    scratch-fair3) need_emoji3; need models/clip-emoji3-en brivl.json teacher3
      EVAL_DATA=data/emoji-3 fit_export brivl brivl altclip-scratch-fair-emoji3 models/altclip-scratch-fair-emoji3 "" \
        --config configs/brivl-emoji.yaml --config configs/ablation/altclip-scratch-fair-emoji3.yaml --data.num_workers "$WORKERS" ;;
    heldout|heldout-aug) arms=("" -aug); [ "$stage" = heldout-aug ] && arms=(-aug)
      for arm in "${arms[@]}"; do
        cfgs=(--config configs/brivl-emoji.yaml --config configs/ablation/heldout-openmoji.yaml)
        [ -n "$arm" ] && cfgs+=(--config configs/ablation/heldout-openmoji-aug.yaml)
        EVAL_DATA=data/emoji-3 fit_export brivl brivl "heldout-openmoji$arm" "runs/export/heldout-openmoji$arm" "" \
          "${cfgs[@]}" --data.num_workers "$WORKERS"
      done ;;
    heldout-full) need_emoji3
      EVAL_DATA=data/emoji-3 fit_export brivl brivl heldout-openmoji-full runs/export/heldout-openmoji-full "" \
        --config configs/brivl-emoji.yaml --config configs/brivl-emoji3.yaml \
        --config configs/ablation/heldout-openmoji-full.yaml --data.num_workers "$WORKERS" ;;
    negclip) for arm in "" -control; do
        cfgs=(--config configs/brivl-emoji.yaml --config configs/ablation/negclip.yaml)
        [ -n "$arm" ] && cfgs+=(--config configs/ablation/negclip-control.yaml)
        fit_export brivl brivl "negclip$arm" "runs/export/negclip$arm" "" "${cfgs[@]}" --data.num_workers "$WORKERS"
      done ;;
    negclip-control-900) fit_export brivl brivl negclip-control-900 runs/export/negclip-control-900 "" \
        --config configs/brivl-emoji.yaml --config configs/ablation/negclip.yaml --config configs/ablation/negclip-control.yaml \
        --config configs/ablation/negclip-control-900.yaml --data.num_workers "$WORKERS" ;;
    negclip-mirror) fit_export brivl brivl negclip-mirror runs/export/negclip-mirror "" --config configs/brivl-emoji.yaml \
        --config configs/ablation/negclip.yaml --config configs/ablation/negclip-mirror.yaml --data.num_workers "$WORKERS" ;;
    negclip-swapsep) fit_export brivl brivl negclip-swapsep runs/export/negclip-swapsep "" \
        --config configs/brivl-emoji.yaml --config configs/ablation/negclip.yaml \
        --config configs/ablation/negclip-mirror.yaml --config configs/ablation/negclip-swapsep.yaml \
        --data.num_workers "$WORKERS" ;;
    negclip-parallel) fit_export brivl brivl negclip-parallel runs/export/negclip-parallel "" \
        --config configs/brivl-emoji.yaml --config configs/ablation/negclip.yaml \
        --config configs/ablation/negclip-mirror.yaml --config configs/ablation/negclip-swapsep.yaml \
        --config configs/ablation/negclip-parallel.yaml --data.num_workers "$WORKERS" ;;
    negclip-parallel-low|negclip-parallel-p05) low=(--config configs/ablation/negclip-parallel-low.yaml)
      [ "$stage" = negclip-parallel-p05 ] && low+=(--config configs/ablation/negclip-parallel-p05.yaml)
      fit_export brivl brivl "$stage" "runs/export/$stage" "" \
        --config configs/brivl-emoji.yaml --config configs/ablation/negclip.yaml \
        --config configs/ablation/negclip-mirror.yaml --config configs/ablation/negclip-swapsep.yaml \
        --config configs/ablation/negclip-parallel.yaml "${low[@]}" --data.num_workers "$WORKERS" ;;
    negclip-wise) need runs/export/negclip-parallel-low brivl.json negclip-parallel-low
      for a in 0.25 0.5 0.75; do  # WiSE-FT points between the shipped model and the low-share arm
        out="runs/export/negclip-parallel-low-wise-$a"
        $PY -m brivl wise-ft --zero-shot models/brivl-emoji --fine-tuned runs/export/negclip-parallel-low \
          --alpha $a --out "$out" --eval-data data/emoji
        # what the pick reads (README: the highest val relation score within 2 points of the shipped val R@1)
        $PY -m brivl eval --model "$out" --view val --json --no-zeroshot > "$out/val.json"
        $PY -m brivl compositional --model "$out" --split val --json > "$out/compositional-val.json"
      done ;;
    diffusion) diffusion_leg altdiffusion-emoji-cpu models/altdiffusion-emoji --config configs/altdiffusion-emoji-cpu.yaml ;;
    diffusion3) need_emoji3; diffusion_leg altdiffusion-emoji3-cpu runs/export/altdiffusion-emoji3 \
        --config configs/altdiffusion-emoji-cpu.yaml --config configs/altdiffusion-emoji3-cpu.yaml ;;
    *) echo "unknown stage $stage (brivl teacher distill contrastive scratch scratch-fair m18 distill-all distill-all-more distill-all-wide distill-all-wide-more contrastive-all contrastive-all-wide brivl3 brivl3-more teacher3 distill3 distill3-more contrastive3 contrastive3-unlocked scratch-fair3 heldout heldout-aug heldout-full negclip negclip-control-900 negclip-mirror negclip-swapsep negclip-parallel negclip-parallel-low negclip-parallel-p05 negclip-wise diffusion diffusion3)" >&2; exit 2 ;;
  esac
done
