"""The GPU suite's results file: each part's status (exit code, seconds against its budget) and figures,
gathered from the suite's work folder into `<gpu>-<date>.json` (bench/gpu_suite.sh runs this last).

    python bench/suite_report.py --work WORK --out bench/results [--dry-run]

A part's figures are the JSON its benchmark wrote (WORK/parts/NAME.json, one key) or, for the training
runs, read from their run folders (WORK/runs/NAME): throughput, MFU and memory from train_log.jsonl, wall
time and energy from cost.json, the held-out score from eval_results.json.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import load_average, machine  # noqa: E402

BENCH_PARTS = ("train_eager", "train_compiled", "generate")
RUN_PARTS = ("train_run", "fsdp")


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Figures of one train.py run folder; the first log line (which pays the warm-up) is left out of means."""
    lines = [json.loads(l) for l in (run_dir / "train_log.jsonl").read_text().splitlines() if l.strip()]
    if not lines:
        raise ValueError(f"{run_dir / 'train_log.jsonl'} is empty: the run logged no step")
    steady = lines[1:] or lines
    out: dict[str, Any] = {"steps": lines[-1]["step"], "loss_first": lines[0]["loss"], "loss_last": lines[-1]["loss"],
                           "samples_per_s": round(mean(l["samples_per_s"] for l in steady), 2),
                           "tokens_per_s": round(mean(l["tokens_per_s"] for l in steady), 1)}
    if all("mfu" in l for l in steady):
        out["mfu"] = round(mean(l["mfu"] for l in steady), 4)
    if any("gpu_mem_gb" in l for l in lines):
        out["gpu_mem_gb"] = max(l.get("gpu_mem_gb", 0) for l in lines)
    cost = run_dir / "cost.json"
    if cost.is_file():
        out.update({k: v for k, v in json.loads(cost.read_text()).items() if k in ("wall_time_s", "energy_kwh", "gpu")})
    summary = run_dir / "train_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        out.update(parameters=s.get("parameters"), num_processes=s.get("num_processes"), device=s.get("device"))
    results = run_dir / "eval_results.json"
    if results.is_file():
        out["heldout_overall"] = json.loads(results.read_text()).get("overall")
    return out


def part_record(work: Path, name: str) -> dict[str, Any] | None:
    status_file = work / "parts" / f"{name}.status.json"
    if not status_file.is_file():
        return None
    status = json.loads(status_file.read_text())
    rc = status["rc"]
    status["status"] = "ok" if rc == 0 else ("timed out" if rc in (124, 137) else "failed")
    log = work / "logs" / f"{name}.log"
    if rc and log.is_file():
        status["log_tail"] = log.read_text(errors="replace").splitlines()[-8:]
    try:
        if name in BENCH_PARTS and (work / "parts" / f"{name}.json").is_file():
            status["result"] = next(iter(json.loads((work / "parts" / f"{name}.json").read_text()).values()))
        elif name in RUN_PARTS and (work / "runs" / name / "train_log.jsonl").is_file():
            status["result"] = run_summary(work / "runs" / name)
    except (ValueError, KeyError, StopIteration) as e:
        status["result_error"] = f"{type(e).__name__}: {e}"
    return status


def headline(parts: dict[str, Any]) -> dict[str, Any]:
    """The few numbers to read first: samples/s, MFU and memory per model and part, ratios to LLaVA."""
    out: dict[str, Any] = {}
    for name in ("train_eager", "train_compiled"):
        result = (parts.get(name) or {}).get("result")
        if result:
            out[name] = {model: {k: m.get(k) for k in ("samples_per_s", "mfu", "peak_memory_mib")}
                         for model, m in result["models"].items()}
            out[name]["ratio_to_llava"] = result.get("ratio_to_llava")
    result = (parts.get("generate") or {}).get("result")
    if result:
        out["generate_new_tokens_per_s"] = {model: {b: v["new_tokens_per_s"] for b, v in m.items()}
                                            for model, m in result["models"].items()}
    for name in RUN_PARTS:
        result = (parts.get(name) or {}).get("result")
        if result:
            out[name] = {k: result.get(k) for k in ("samples_per_s", "mfu", "gpu_mem_gb", "energy_kwh", "loss_last")}
    return out


def gpu_slug(info: dict[str, Any]) -> str:
    name = info.get("gpu") or ""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-") or "cpu"


def nvidia_smi() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return done.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="the suite's work folder (parts/, logs/, runs/)")
    ap.add_argument("--out", required=True, help="folder for <gpu>-<date>.json")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--seconds", type=float, default=None, help="the whole suite's wall time")
    ap.add_argument("--parts", default="install,train_eager,train_compiled,generate,train_run,fsdp")
    args = ap.parse_args(argv)
    work = Path(args.work)
    parts = {name: part_record(work, name) for name in args.parts.split(",")}
    info = machine()
    report = {"suite": "bench/gpu_suite.sh", "dry_run": args.dry_run, "date": info["date"],
              "total_seconds": args.seconds, "machine": info, "nvidia_smi": nvidia_smi(),
              "load_average_end": load_average(), "headline": headline(parts), "parts": parts}
    stem = f"dryrun-{gpu_slug(info)}" if args.dry_run else gpu_slug(info)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}-{time.strftime('%Y-%m-%d')}.json"
    n = 2
    while path.exists():  # a second run the same day keeps the first
        path = out_dir / f"{stem}-{time.strftime('%Y-%m-%d')}-{n}.json"
        n += 1
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(path)
    return path


if __name__ == "__main__":
    main()
