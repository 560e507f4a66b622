"""molmini: small task-specific vision-language models, Molmo's recipe at a size one GPU trains."""
from .config import Config, ConfigError, load_config
from .data import Record, RecordError
from .model import MolminiModel
from .processor import MolminiProcessor

__all__ = ["Config", "ConfigError", "load_config", "Record", "RecordError", "MolminiModel", "MolminiProcessor"]
__version__ = "0.1.0"
