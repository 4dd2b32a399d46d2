#!/usr/bin/env bash
# Device check and throughput figures in one call, for a machine with a GPU (or, with
# --device cpu --quick, for CI on any machine, so that the script cannot rot).
#
#   scripts/gpu-check.sh [--device cuda|cpu] [--quick] [--out FILE] [--work DIR]
#
# 1. CUDA vs CPU on the built-in demo model (random weights): max difference of image and
#    text embeddings and of the block-2 residual, in f32 and in bf16.
# 2. Full-size random-weight ViT-B/32: extract (layer 11, CLS) images/s from JPEG files,
#    train rows/s at 64x/k=500 and 32x/k=64 (batch 4096, synthetic activations), and
#    eval-zeroshot images/s without and with an SAE.
# Results go to FILE (Markdown, default gpu-check.md in the work directory) and stdout.
# Needs only the saeclip binary ($SAECLIP, default target/release/saeclip) and python3
# (standard library) to read JSON; the binary must find libtorch (LD_LIBRARY_PATH).
set -euo pipefail

DEVICE=cuda
QUICK=0
OUT_FILE=""
WORK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) OUT_FILE="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done
SAECLIP=${SAECLIP:-target/release/saeclip}
[ -x "$SAECLIP" ] || { echo "error: $SAECLIP not found: build it with 'make build' or set SAECLIP" >&2; exit 1; }
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
OUT_FILE=${OUT_FILE:-$WORK/gpu-check.md}

if [ "$QUICK" = 1 ]; then
  IMAGES=32; TRAIN_ROWS=8192; TRAIN_STEPS=3; BATCH=2048; PRESET=demo; LAYER=3; WIDTH=128
else
  IMAGES=2048; TRAIN_ROWS=262144; TRAIN_STEPS=60; BATCH=4096; PRESET=vit-b-32; LAYER=11; WIDTH=768
fi

now() { python3 -c 'import time; print(time.time())'; }
json_get() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval('d'+sys.argv[2]))" "$1" "$2"; }
device_name() {
  if [ "$DEVICE" = cpu ]; then
    grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'
  else
    nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo "CUDA device"
  fi
}

REPORT=$(mktemp)
say() { echo "$*" | tee -a "$REPORT"; }
say "# saeclip device check"
say ""
say "- device: $DEVICE ($(device_name)); date: $(date -u +%Y-%m-%dT%H:%M:%SZ); quick: $QUICK"
say "- binary: $SAECLIP ($("$SAECLIP" --version))"
say ""

# 1. Device vs CPU on the demo model.
"$SAECLIP" dev random-model --preset demo --seed 0 --out "$WORK/demo" >/dev/null
"$SAECLIP" dev write-images --dataset procedural:0 --limit 8 --format png --out "$WORK/png" >/dev/null
mapfile -t PNGS < <(find "$WORK/png" -name '*.png' | sort)
IMG_ARGS=(); for p in "${PNGS[@]}"; do IMG_ARGS+=(--image "$p"); done
embed() { "$SAECLIP" -q --device "$1" embed --model "$WORK/demo" --precision "$2" "${IMG_ARGS[@]}" \
  --text "a photo of a red circle" --text "a blue star" --layer 2 --out "$3" >/dev/null; }
embed cpu f32 "$WORK/cpu-f32.safetensors"
embed "$DEVICE" f32 "$WORK/dev-f32.safetensors"
embed "$DEVICE" bf16 "$WORK/dev-bf16.safetensors"
say "## $DEVICE vs CPU (demo model, 8 images, 2 texts)"
say ""
say "| tensor | f32 max abs diff | f32 max rel diff | bf16 max abs diff | bf16 max rel diff |"
say "|---|---|---|---|---|"
paste <("$SAECLIP" dev compare "$WORK/dev-f32.safetensors" "$WORK/cpu-f32.safetensors") \
      <("$SAECLIP" dev compare "$WORK/dev-bf16.safetensors" "$WORK/cpu-f32.safetensors") |
  grep -v -e pixel_values -e input_ids |
  while IFS=$'\t' read -r name a r _ b rb; do say "| $name | $a | $r | $b | $rb |"; done
say ""

# 2. Throughput with a full-size random ViT-B/32 (the demo model with --quick).
"$SAECLIP" dev random-model --preset "$PRESET" --seed 0 --out "$WORK/model" >/dev/null
"$SAECLIP" dev write-images --dataset procedural:1 --limit "$IMAGES" --format jpg --out "$WORK/jpg" >/dev/null
say "## Throughput ($PRESET, random weights)"
say ""
say "| what | figure |"
say "|---|---|"
t0=$(now)
"$SAECLIP" --device "$DEVICE" extract --model "$WORK/model" --dataset "folder:$WORK/jpg" --layer "$LAYER" \
  --tokens cls --batch-size 256 --out "$WORK/cache" --force 2> "$WORK/extract.log"
t1=$(now)
loop_rate=$(grep -o '[0-9.]* images/s' "$WORK/extract.log" | tail -1)
say "| extract, layer $LAYER CLS, $IMAGES JPEGs, end to end (incl. model load) | $(python3 -c "print(f'{$IMAGES/($t1-$t0):.1f} images/s')") |"
say "| extract, extraction loop only | $loop_rate |"

# Synthetic activations as wide as the model, so the SAE also splices into it below.
"$SAECLIP" dev synthetic-cache --rows "$TRAIN_ROWS" --d "$WIDTH" --out "$WORK/synthetic" >/dev/null
for cfg in "64 500" "32 64"; do
  set -- $cfg
  run="$WORK/run-$1x-k$2"
  rm -rf "$run"
  "$SAECLIP" -q --device "$DEVICE" train --config /dev/null \
    --set "data.cache=$WORK/synthetic" --set data.val_fraction=0 \
    --set "sae.expansion_factor=$1" --set "sae.k=$2" --set "training.batch_size=$BATCH" \
    --set "training.steps=$TRAIN_STEPS" --set training.lr_warmup_steps=0 --set training.log_every=1000 \
    --set "output.run_dir=$run" >/dev/null
  say "| train, $1x width, k=$2, batch $BATCH, $TRAIN_STEPS steps | $(python3 -c "import json; print(f\"{json.load(open('$run/summary.json'))['rows_per_s']:.0f} rows/s\")") |"
done

if "$SAECLIP" eval-zeroshot --help >/dev/null 2>&1; then
  for sae in "" "$WORK/run-32x-k64/checkpoints/last.safetensors"; do
    args=(--device "$DEVICE" -q eval-zeroshot --model "$WORK/model" --dataset "folder:$WORK/jpg" --json "$WORK/eval.json")
    label="eval-zeroshot, no SAE"
    if [ -n "$sae" ]; then args+=(--sae "$sae"); label="eval-zeroshot, with a 32x k=64 SAE"; fi
    t0=$(now); "$SAECLIP" "${args[@]}" >/dev/null 2>"$WORK/eval.log" || { say "| $label | failed: $(tail -1 "$WORK/eval.log") |"; continue; }; t1=$(now)
    say "| $label, $IMAGES images, end to end | $(python3 -c "print(f'{$IMAGES/($t1-$t0):.1f} images/s')") |"
  done
fi
say ""
cp "$REPORT" "$OUT_FILE"
echo "results written to $OUT_FILE" >&2
