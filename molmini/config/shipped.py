"""The YAML configs that ship with molmini (configs/ of the repository), found from a clone or a wheel.

A clone keeps them in configs/ at the repository root; an installed wheel carries the same files as the
package data molmini/configs/ (pyproject.toml maps one onto the other). `resolve_config` lets
`--config configs/recipes/chart-reader-cpu.yaml` name a shipped file from any working directory.
"""
from __future__ import annotations

from pathlib import Path

from molmini.config import ConfigError

WHEEL_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # exists only in an installed wheel
CLONE_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG_NAME = "default.yaml"


def configs_dir() -> Path:
    """The folder of the shipped configs: the wheel's package data, or else the clone's configs/."""
    for folder in (WHEEL_CONFIGS, CLONE_CONFIGS):
        if (folder / DEFAULT_CONFIG_NAME).is_file():
            return folder
    raise FileNotFoundError(f"molmini's configs are in neither {WHEEL_CONFIGS} nor {CLONE_CONFIGS}; reinstall "
                            "molmini (`pip install .` from a clone), or pass --config with your own YAML file")


def default_config() -> Path:
    return configs_dir() / DEFAULT_CONFIG_NAME


def shipped_configs() -> list[str]:
    """Every shipped config as `configs/...` (the spelling that works in a clone and, through
    `resolve_config`, everywhere)."""
    root = configs_dir()
    return sorted(f"configs/{p.relative_to(root).as_posix()}" for p in root.rglob("*.yaml"))


def resolve_config(path: str | Path) -> Path:
    """`path` itself when that file exists; otherwise a relative `configs/X.yaml` (or `X.yaml`) names the
    shipped config X. Anything else is an error listing what ships."""
    given = Path(path)
    if given.is_file():
        return given
    if not given.is_absolute():
        parts = given.parts[1:] if given.parts[:1] == ("configs",) else given.parts
        shipped = configs_dir().joinpath(*parts) if parts else None
        if shipped is not None and shipped.is_file():
            return shipped
    training = [c for c in shipped_configs() if not c.startswith("configs/accelerate/")]  # those are accelerate's
    raise ConfigError(f"config file {str(path)!r} does not exist here, and molmini ships no config of that "
                      f"name; pass an existing YAML file with --config, or one of {training}")
