#!/usr/bin/env bash
# Check that lmms-eval's chartqa task and `python -m eval run --benchmarks chartqa=...` score a molmini
# checkpoint the same, item by item, on one small local ChartQA-layout parquet (synthetic charts, real answers).
#
#   experiments/lmms_eval_check.sh [LMMS_VENV] [WORK] [CKPT]
#
# LMMS_VENV (default /tmp/lmms-venv): a venv with lmms-eval and molmini installed (not editable), e.g.
#   python3 -m venv /tmp/lmms-venv && /tmp/lmms-venv/bin/pip install torch torchvision \
#     && /tmp/lmms-venv/bin/pip install lmms-eval "filelock<4" && /tmp/lmms-venv/bin/pip install .
# WORK (default: a new temporary folder): everything this writes; a folder given must be empty or one this
# script wrote before (it holds .lmms-eval-check), since the script replaces its own outputs there.
# CKPT (default: train one, 150 steps, under WORK/runs): a molmini checkpoint folder; one saved before the
# transformers auto_map existed is re-saved under WORK/ckpt.
# Env: NUM_ITEMS (24), STEPS (150), PY (the repo's .venv/bin/python). Run from the repo root.
set -euo pipefail
LMMS_VENV=${1:-/tmp/lmms-venv}
WORK=${2:-$(mktemp -d -t lmms-check-XXXXXX)}
CKPT=${3:-}
NUM_ITEMS=${NUM_ITEMS:-24}
STEPS=${STEPS:-150}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
[ -x "$LMMS_VENV/bin/python" ] || { echo "error: $LMMS_VENV/bin/python is missing; build the venv (see the header)" >&2; exit 2; }
"$LMMS_VENV/bin/python" -c "import lmms_eval, molmini.auto.classes" 2>/dev/null \
  || { echo "error: $LMMS_VENV lacks lmms_eval or molmini; pip install them there (see the header)" >&2; exit 2; }
if [ -d "$WORK" ] && [ -n "$(ls -A "$WORK")" ] && [ ! -f "$WORK/.lmms-eval-check" ]; then
  echo "error: $WORK is not empty and was not written by this script; give an empty or new folder" >&2; exit 2
fi
mkdir -p "$WORK" && touch "$WORK/.lmms-eval-check"
echo "work folder: $WORK"

# 1. The parquet: synthetic charts, each record's first question and answer, lmms-lab/ChartQA's columns.
if [ ! -f "$WORK/chartqa/data/test-00000-of-00001.parquet" ]; then
  rm -rf "$WORK/charts-src"
  "$PY" -m data_pipelines synth charts --out "$WORK/charts-src" --num "$NUM_ITEMS" --image-px 128 --seed 777 --split test
  mkdir -p "$WORK/chartqa/data"
  "$PY" - "$WORK/charts-src" "$WORK/chartqa/data/test-00000-of-00001.parquet" <<'EOF'
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
from molmini.data.records import strip_image_marker
from molmini.data.reader import find_shards, read_records
rows = []
for i, r in enumerate(read_records(find_shards(sys.argv[1]))):
    question, answer = strip_image_marker(r.messages[0]["content"]), r.messages[1]["content"]
    rows.append({"type": "human_test" if i % 2 == 0 else "augmented_test", "question": question, "answer": answer,
                 "image": {"bytes": r.image, "path": f"{r.key}.{r.image_ext}"}})
# the `huggingface` schema metadata, as in the hub's parquet files, makes `datasets` decode `image` to a PIL image
features = {"type": {"dtype": "string", "_type": "Value"}, "question": {"dtype": "string", "_type": "Value"},
            "answer": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"}}
table = pa.Table.from_pylist(rows)
table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
pq.write_table(table, sys.argv[2])
print(f"wrote {len(rows)} rows to {sys.argv[2]}")
EOF
fi
PARQUET="$WORK/chartqa/data/test-00000-of-00001.parquet"

# 2. The checkpoint: trained here unless given; re-saved when its config.json has no auto_map.
if [ -z "$CKPT" ]; then
  CKPT="$WORK/runs/lmmscheck/checkpoint"
  [ -f "$CKPT/config.json" ] || "$PY" train.py train.max_steps="$STEPS" train.run_name=lmmscheck \
    train.output_dir="$WORK/runs" train.trackers=[] data.synth.num_train=800 data.synth.num_test=100 \
    data.train_dir="$WORK/data/train" data.test_dir="$WORK/data/test"
fi
if ! grep -q auto_map "$CKPT/config.json"; then
  "$PY" -c "import sys; from molmini.model.vlm import MolminiModel; MolminiModel.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])" \
    "$CKPT" "$WORK/ckpt"
  CKPT="$WORK/ckpt"
fi

# 3-6, once per prompt: lmms-eval's chartqa prompt (the question, then "\nAnswer the question with a single
# word."), then the bare question (as molmini's synthetic data is trained, so that the predictions vary):
# lmms-eval's task yaml overridden by `lmms_eval_specific_kwargs`, molmini by `--prompt-template question_only`.
CHARTQA_YAML=$("$LMMS_VENV/bin/python" -c "import lmms_eval, os; print(os.path.join(os.path.dirname(lmms_eval.__file__), 'tasks/chartqa/chartqa.yaml'))")
compare() {  # NAME MOLMINI_TEMPLATE POST_PROMPT
  local name=$1 template=$2 post=$3 out="$WORK/$1"
  echo "== prompt: $name (molmini template $template, lmms-eval post_prompt '${post}')"
  rm -rf "$out" && mkdir -p "$out/tasks"
  # 3. lmms-eval's own chartqa task (its yaml, utils, metrics), reading the local parquet instead of the hub.
  cat > "$out/tasks/chartqa_local.yaml" <<YAML
include: $CHARTQA_YAML
task: chartqa_local
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: $PARQUET
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "$post"
YAML
  (cd "$out" && HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 "$LMMS_VENV/bin/python" -m lmms_eval --model huggingface \
    --model_args "pretrained=$CKPT,trust_remote_code=True,device=cpu,device_map=cpu" --tasks chartqa_local \
    --include_path "$out/tasks" --batch_size 4 --log_samples --output_path "$out/lmms-out")

  # 4. molmini's harness on the same parquet.
  "$PY" -m eval run --model "$CKPT" --benchmarks chartqa="$WORK/chartqa" --out "$out/molmini-out" --lmms-eval-layout \
    --prompt-template "$template"

  # 5. Scores and per-item predictions, side by side.
  "$PY" - "$out/lmms-out" "$out/molmini-out/lmms_eval" <<'PY'
import glob, json, sys
def latest(pattern):
    paths = sorted(glob.glob(pattern, recursive=True))
    if not paths:
        sys.exit(f"error: nothing matches {pattern}")
    return paths[-1]
def response(row):  # lmms-eval 0.7 writes filtered_resps as the string, molmini's layout (and lm-eval's) as a list
    return row["filtered_resps"][0] if isinstance(row["filtered_resps"], list) else row["filtered_resps"]
lmms = json.load(open(latest(f"{sys.argv[1]}/**/*_results.json")))["results"]["chartqa_local"]
ours = json.load(open(latest(f"{sys.argv[2]}/**/*_results.json")))["results"]["chartqa"]
for key in ("relaxed_overall", "relaxed_human_split", "relaxed_augmented_split"):
    print(f"{key:26s} lmms-eval {lmms.get(key + ',none')}  molmini {ours.get(key + ',none')}")
lmms_rows = [json.loads(l) for l in open(latest(f"{sys.argv[1]}/**/*_samples_chartqa_local.jsonl"))]
our_rows = [json.loads(l) for l in open(latest(f"{sys.argv[2]}/**/*_samples_chartqa.jsonl"))]
lmms_rows.sort(key=lambda r: r["doc_id"])
differ = 0
for a, b in zip(lmms_rows, our_rows):
    pa, pb = response(a), response(b)
    same = pa == pb and a["relaxed_overall"] == b["relaxed_overall"]
    differ += not same
    print(f"{'  ' if same else '!='} {a['doc_id']:3d} gold={a['target']!r:12} lmms={pa!r:14} {a['relaxed_overall']}"
          f"  molmini={pb!r:14} {b['relaxed_overall']}")
print(f"{len(lmms_rows)} lmms-eval rows, {len(our_rows)} molmini rows, {differ} differ; "
      f"{len({response(r) for r in lmms_rows})} distinct answers")
PY

  # 6. Where predictions differ: molmini's own generate in bf16 (as lmms-eval's `huggingface` model loads it) and
  # fp32 (as `eval run` does on the CPU), each against lmms-eval's predictions, to tell dtype from everything else.
  "$LMMS_VENV/bin/python" - "$WORK" "$out" "$CKPT" "$post" <<'PY'
import glob, io, json, sys
import pyarrow.parquet as pq, torch
from PIL import Image
from molmini.model.vlm import MolminiModel
work, out, ckpt, post = sys.argv[1:5]
rows = pq.read_table(f"{work}/chartqa/data/test-00000-of-00001.parquet").to_pylist()
images = [Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB") for r in rows]
prompts = [r["question"] + post.replace("\\n", "\n") for r in rows]  # the yaml's escape, as YAML reads it
lmms = {}
for line in open(sorted(glob.glob(f"{out}/lmms-out/**/*_samples_chartqa_local.jsonl", recursive=True))[-1]):
    row = json.loads(line)
    lmms[row["doc_id"]] = row["filtered_resps"][0] if isinstance(row["filtered_resps"], list) else row["filtered_resps"]
for dtype in (torch.bfloat16, torch.float32):
    model = MolminiModel.from_pretrained(ckpt, device="cpu", dtype=dtype)
    preds = model.generate(images, prompts, max_new_tokens=16, batch_size=4, do_sample=False)
    differ = [i for i, p in enumerate(preds) if p != lmms[i]]
    print(f"molmini generate in {dtype}: {len(differ)} of {len(preds)} predictions differ from lmms-eval's {differ}")
PY
}
compare chartqa-prompt lmms_eval_chartqa '\nAnswer the question with a single word.'
compare question-only question_only ''
