"""A Python environment with torch, transformers, safetensors, pillow and numpy and nothing else (no molmini, no
open_clip, no timm): what `pip install torch transformers safetensors pillow numpy` gives a user, built offline
in seconds from this interpreter's own installed copies.

`python -m venv --without-pip` makes an empty environment; each distribution those five packages need (their
requirements, followed through importlib.metadata, extras left out) is linked into its site-packages, files and
dist-info both (transformers checks versions through the metadata). The environment is what pip would have
installed, at the versions this one has.
"""
from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

USER_PACKAGES = ["torch", "transformers", "safetensors", "pillow", "numpy"]


def _closure(names: list[str]) -> list[metadata.Distribution]:
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        key = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(key)
        except metadata.PackageNotFoundError:  # an optional platform package this machine does not have
            continue
        seen[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def transformers_only_python(folder: Path) -> Path:
    """The interpreter of a fresh environment under `folder` holding only USER_PACKAGES and their requirements."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for dist in _closure(USER_PACKAGES):
        root = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = root / top
            if top.endswith(".pth") or top == "__pycache__" or not source.exists() or (site / top).exists():
                continue
            (site / top).symlink_to(source)
    return python
