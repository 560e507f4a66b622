"""Configuration: typed dataclasses, one per concern (schema.py), loaded from YAML with dotted overrides and
checked (loading.py); named presets for real backbones (presets.py); the configs shipped with the package
(shipped.py). `from molmini.config import Config, load_config` reads them all; importing it costs no torch."""
from molmini.config.loading import *  # noqa: F401,F403 (the public names, listed in loading.__all__)
from molmini.config.loading import __all__  # noqa: F401
