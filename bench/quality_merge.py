"""Join the reports of one bench/quality.py configuration run in parts (its --tasks split over processes or machines)
into one quality.json / quality.md, and copy each part's per-task pictures beside them.

The parts must agree on everything but their tasks: the same images, steps, batch, tuning, grids, prior file and
ComfyUI/torch versions; each task may come from one part only, and at most one part may hold the steps sweep. On a
2-core machine two single-thread parts run side by side in about half the time of one run.

Usage (from the repository root):
    OMP_NUM_THREADS=1 .comfyui/venv/bin/python bench/quality.py --tasks box_inpaint,random_inpaint --threads 1 \\
        --out .artifacts/quality_a &
    OMP_NUM_THREADS=1 .comfyui/venv/bin/python bench/quality.py --tasks super_resolution,gaussian_deblur,motion_deblur \\
        --sweep-steps '' --threads 1 --out .artifacts/quality_b &
    wait; python3 bench/quality_merge.py .artifacts/quality_a .artifacts/quality_b --out .artifacts/quality
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import TASKS, write  # noqa: E402  (the report format and its markdown)

# config entries that may differ between parts: the tasks each part ran
PART_KEYS = {"tasks"}
MACHINE_KEYS = ("cpu", "torch", "comfyui", "python", "device", "gpu", "unet_dtype", "vae_dtype")


def load_part(folder: Path) -> dict:
    path = folder / "quality.json" if folder.is_dir() else folder
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"bench/quality_merge.py: cannot read the report {path}: {error}. Pass the --out folder "
                         "of a finished bench/quality.py run (or its quality.json).")
    if not report.get("config") or "results" not in report:
        raise SystemExit(f"bench/quality_merge.py: {path} is not a bench/quality.py report (no config/results).")
    report["_folder"] = path.parent
    return report


def check_compatible(parts: list[dict]) -> None:
    """Refuse parts that measured different things: they would not make one table."""
    first = parts[0]
    shared_config = {k: v for k, v in first["config"].items() if k not in PART_KEYS}
    for part in parts[1:]:
        name = part["_folder"]
        config = {k: v for k, v in part["config"].items() if k not in PART_KEYS}
        differing = sorted(k for k in shared_config.keys() | config.keys() if shared_config.get(k) != config.get(k))
        if differing:
            raise SystemExit(f"bench/quality_merge.py: {name} ran another configuration than {first['_folder']} "
                             f"({', '.join(differing)} differ); rerun it with the same options but --tasks.")
        if part["prior"]["sha256"] != first["prior"]["sha256"]:
            raise SystemExit(f"bench/quality_merge.py: {name} used other demo-prior weights than {first['_folder']}.")
        machine = [k for k in MACHINE_KEYS if part["machine"].get(k) != first["machine"].get(k)]
        if machine:
            raise SystemExit(f"bench/quality_merge.py: {name} ran on another machine or host than "
                             f"{first['_folder']} ({', '.join(machine)} differ); its s/img would not compare.")
    seen: dict[str, Path] = {}
    for part in parts:
        for task in part["results"]:
            if task in seen:
                raise SystemExit(f"bench/quality_merge.py: task {task} is in both {seen[task]} and "
                                 f"{part['_folder']}; each task must come from one part.")
            seen[task] = part["_folder"]
    sweeps = [part["_folder"] for part in parts if part.get("sweep")]
    if len(sweeps) > 1:
        raise SystemExit(f"bench/quality_merge.py: {', '.join(map(str, sweeps))} each hold a steps sweep; run it in "
                         "one part only (--sweep-steps '' in the others).")


def merge(parts: list[dict]) -> dict:
    """One report: tasks in bench/quality.py's order, each part's command, the sum of the parts' seconds."""
    check_compatible(parts)
    by_task = {task: part for part in parts for task in part["results"]}
    order = [task for task in TASKS if task in by_task]
    first = parts[0]
    return {
        "command": first["command"],
        "parts": [{"command": part["command"], "tasks": list(part["results"]), "total_seconds": part["total_seconds"]}
                  for part in parts],
        "machine": first["machine"],
        "prior": first["prior"],
        "operators": {task: by_task[task]["operators"][task] for task in order},
        "tuning": {task: by_task[task]["tuning"][task] for task in order if task in by_task[task]["tuning"]},
        "results": {task: by_task[task]["results"][task] for task in order},
        "sweep": next((part["sweep"] for part in parts if part.get("sweep")), None),
        "config": {**first["config"], "tasks": order},
        "total_seconds": sum(part["total_seconds"] for part in parts),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="+", type=Path, help="--out folders (or quality.json files) of the parts")
    parser.add_argument("--out", type=Path, required=True, help="folder for the joined quality.md/.json")
    args = parser.parse_args(argv)
    if len(args.parts) < 2:
        raise SystemExit("bench/quality_merge.py: give at least two parts to join.")
    parts = [load_part(folder) for folder in args.parts]
    report = merge(parts)
    args.out.mkdir(parents=True, exist_ok=True)
    for task in report["results"]:
        picture = next(part["_folder"] for part in parts if task in part["results"]) / f"quality_{task}.png"
        if picture.is_file() and picture.resolve() != (args.out / picture.name).resolve():
            shutil.copyfile(picture, args.out / picture.name)
    json_path, md_path = write(report, str(args.out))
    print(f"quality_merge: {len(parts)} parts, tasks {', '.join(report['results'])}; wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
