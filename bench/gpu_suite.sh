#!/usr/bin/env bash
# The GPU suite: everything measured on a fresh H100/H200 machine in under 8 minutes, one command.
#
#   bash bench/gpu_suite.sh --wheels DIR [--out bench/results]    # on the GPU machine
#   bash bench/gpu_suite.sh --dry-run --out /tmp/suite             # the same parts on the CPU, tiny shapes
#   bash bench/gpu_suite.sh --download-wheels DIR                  # where PyPI answers: the wheels to bring
#
# Parts, each under its own `timeout` (budgets sum to 7m45s; a part that runs out is recorded as timed out):
#   install         pip install --no-index --find-links DIR (the machine may have no package index)
#   train_eager     bench/train_throughput.py --shape H100: molmini (both connectors) vs LLaVA, bf16 autocast
#   train_compiled  the same, torch.compile'd
#   generate        bench/generate_throughput.py --shape H100
#   train_run       python train.py, the default recipe, 200 steps, bf16: MFU, memory, energy (NVML)
#   fsdp            accelerate launch with configs/accelerate/fsdp.yaml on one GPU, 2 steps
# The training data (the default synthetic charts, 2,000 images) is made in the background meanwhile.
# Writes OUT/<gpu>-<date>.json (bench/suite_report.py gathers the parts); logs stay in the work folder.
# --download-wheels DIR fetches, for CPython 3.12 on x86-64 Linux, the packages molmini needs beyond a
# PyTorch CUDA image (open_clip_torch, webdataset, wandb, imagehash, rapidfuzz and what they pull in that
# such images lack), at the versions installed here. --python PY picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DRY=0
WHEELS=""
OUT=bench/results
DOWNLOAD=""
value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || { echo "error: $1 needs a value; see --help" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --wheels) value "$@"; WHEELS=$2; shift 2 ;;
    --out) value "$@"; OUT=$2; shift 2 ;;
    --python) value "$@"; PY=$2; shift 2 ;;
    --download-wheels) value "$@"; DOWNLOAD=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1'; see bash bench/gpu_suite.sh --help" >&2; exit 2 ;;
  esac
done

# The wheels molmini needs on a PyTorch CUDA image: these top-level packages and their dependencies, less
# what such images carry (torch, numpy, transformers, ...: the list below).
NEEDED="open_clip_torch webdataset wandb imagehash rapidfuzz"
ON_IMAGE="torch torchvision torchaudio triton numpy scipy pillow timm transformers tokenizers accelerate
  huggingface-hub safetensors hf-xet regex tqdm pyyaml requests urllib3 idna certifi charset-normalizer packaging
  typing-extensions protobuf click xxhash filelock fsspec jinja2 markupsafe sympy mpmath networkx setuptools psutil
  zipp importlib-metadata anyio h11 httpcore httpx sniffio"
if [[ -n "$DOWNLOAD" ]]; then
  mkdir -p "$DOWNLOAD"
  specs=$("$PY" - "$NEEDED" "$ON_IMAGE" <<'EOF'
import importlib.metadata as md, re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
skip = {norm(n) for n in sys.argv[2].split()}
seen, stack = {}, sys.argv[1].split()
while stack:
    name = stack.pop()
    key = norm(name)
    if key in seen or key in skip or key.startswith(("nvidia-", "cuda-")):
        continue
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        sys.exit(f"error: {name} is not installed here, so its version is unknown; install molmini first "
                 "(pip install -e .)")
    seen[key] = dist.version
    stack += [re.split(r"[ ;<>=!~\[(]", r.strip())[0] for r in dist.requires or [] if "extra ==" not in r]
print(" ".join(f"{k}=={v}" for k, v in sorted(seen.items())))
EOF
) || exit 2
  echo "downloading into $DOWNLOAD: $specs"
  # shellcheck disable=SC2086
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$DOWNLOAD" $specs || exit 1
  du -sh "$DOWNLOAD"
  exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite.XXXXXX")
mkdir -p "$WORK/parts" "$WORK/logs" "$WORK/runs"
SUITE_START=$(date +%s%N)
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
echo "gpu suite: work folder $WORK${WHEELS:+, wheels $WHEELS}$([[ $DRY == 1 ]] && echo ', dry run on the CPU')"

run_part() {  # NAME BUDGET_SECONDS COMMAND...: run under timeout, record exit code and seconds
  local name=$1 budget=$2 start rc
  shift 2
  start=$(date +%s%N)
  timeout --kill-after=5 "$budget" "$@" >"$WORK/logs/$name.log" 2>&1
  rc=$?
  local ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '{"rc": %d, "seconds": %d.%03d, "budget_s": %d}\n' "$rc" $((ms / 1000)) $((ms % 1000)) "$budget" \
    >"$WORK/parts/$name.status.json"
  printf '%-15s rc %-3d %4d s of %3d s\n' "$name" "$rc" $((ms / 1000)) "$budget"
  [[ $rc -eq 0 ]] || tail -n 5 "$WORK/logs/$name.log" | sed 's/^/    /'
}

if [[ $DRY == 1 ]]; then
  SHAPE=(--shape tiny --steps 2 --warmup 1)
  TRAIN_BENCH=("${SHAPE[@]}" --memory-steps 0)
  # traced as for inductor (graph capture, the backward graph), but no C++ build; one connector
  COMPILE=(--compile --compile-backend aot_eager --connector mlp)
  GEN_BENCH=(--shape tiny --steps 1 --warmup 1)
  MODEL=("model.vision.vision_cfg={image_size: 32, patch_size: 8, width: 64, layers: 2, head_width: 32}"
         "model.lm.config={model_type: llama, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2,
           num_key_value_heads: 2, intermediate_size: 128, max_position_embeddings: 256, tie_word_embeddings: true}"
         model.tokenizer.vocab_size=300)
  DATA=(data.synth.num_train=32 data.synth.num_test=8 data.synth.image_px=32 data.synth.shard_size=16
        data.synth.workers=1 data.num_workers=0 train.batch_size=8 eval.max_items=8 eval.batch_size=8)
  STEPS=2 LOG_EVERY=1 CPU=(--cpu) B_INSTALL=0 B_EAGER=60 B_COMPILED=120 B_GEN=60 B_RUN=120 B_FSDP=120
else
  SHAPE=(--shape H100 --steps 10 --warmup 3)
  TRAIN_BENCH=("${SHAPE[@]}")
  COMPILE=(--compile)
  GEN_BENCH=(--shape H100 --steps 3 --warmup 1)
  MODEL=()
  DATA=(data.synth.num_train=2000 data.synth.num_test=200 data.synth.workers=6 data.num_workers=8
        eval.max_items=200)
  STEPS=200 LOG_EVERY=20 CPU=() B_INSTALL=40 B_EAGER=60 B_COMPILED=160 B_GEN=45 B_RUN=110 B_FSDP=50
fi
RUN_ARGS=("${MODEL[@]}" "${DATA[@]}" data.train_dir="$WORK/data/train" data.test_dir="$WORK/data/test"
          train.output_dir="$WORK/runs" train.trackers=[] train.mixed_precision=bf16)

if [[ $DRY == 0 && -n "$WHEELS" ]]; then
  [[ -d "$WHEELS" ]] || { echo "error: --wheels $WHEELS is not a folder of wheels" >&2; exit 2; }
  # Resolve the needed packages against what is installed plus the wheels given; where that fails (a
  # dependency pinned differently on this image), install the given wheels as they are.
  # shellcheck disable=SC2086
  run_part install "$B_INSTALL" bash -c "'$PY' -m pip install --no-index --find-links '$WHEELS' $NEEDED ||
    '$PY' -m pip install --no-index --no-deps '$WHEELS'/*.whl"
fi
if ! "$PY" -c "import open_clip, webdataset, wandb, imagehash, rapidfuzz, accelerate, transformers" \
     2>"$WORK/logs/imports.log"; then
  echo "error: $(tail -n 1 "$WORK/logs/imports.log"); bring the wheels: bash bench/gpu_suite.sh" \
       "--download-wheels DIR where PyPI answers, then --wheels DIR here" >&2
  exit 1
fi

# The training runs' data, made while the benchmarks run (train.py reuses it: same synth settings).
timeout 150 "$PY" -c "import sys; from train import prepare_data; from molmini.config import load_config
prepare_data(load_config('configs/default.yaml', sys.argv[1:]))" "${RUN_ARGS[@]}" >"$WORK/logs/data.log" 2>&1 &
DATA_PID=$!

run_part train_eager "$B_EAGER" "$PY" bench/train_throughput.py "${TRAIN_BENCH[@]}" \
  --json "$WORK/parts/train_eager.json" --key train_eager
run_part train_compiled "$B_COMPILED" "$PY" bench/train_throughput.py "${TRAIN_BENCH[@]}" "${COMPILE[@]}" \
  --memory-steps 0 --json "$WORK/parts/train_compiled.json" --key train_compiled
run_part generate "$B_GEN" "$PY" bench/generate_throughput.py "${GEN_BENCH[@]}" \
  --json "$WORK/parts/generate.json" --key generate
wait "$DATA_PID" || echo "    data synthesis failed: $(tail -n 1 "$WORK/logs/data.log")"
run_part train_run "$B_RUN" "$PY" train.py "${RUN_ARGS[@]}" train.max_steps="$STEPS" train.log_every="$LOG_EVERY" \
  train.run_name=train_run
run_part fsdp "$B_FSDP" "$PY" -m accelerate.commands.accelerate_cli launch --config_file configs/accelerate/fsdp.yaml \
  --num_processes 1 --main_process_port "$((20000 + RANDOM % 20000))" "${CPU[@]}" \
  train.py "${RUN_ARGS[@]}" train.max_steps=2 train.log_every=1 train.run_name=fsdp --no-eval

MS_ALL=$(( ($(date +%s%N) - SUITE_START) / 1000000 ))
DRY_FLAG=()
[[ $DRY == 1 ]] && DRY_FLAG=(--dry-run)
"$PY" bench/suite_report.py --work "$WORK" --out "$OUT" "${DRY_FLAG[@]}" \
  --seconds "$(printf '%d.%03d' $((MS_ALL / 1000)) $((MS_ALL % 1000)))"
