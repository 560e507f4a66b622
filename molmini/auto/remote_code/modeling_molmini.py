"""molmini's model for transformers' AutoModelForImageTextToText (trust_remote_code=True). The classes are the
installed molmini package's (`pip install molmini`): this file only names them, so a checkpoint runs molmini's
own code."""
from molmini.hf_auto import MolminiConfig, MolminiForConditionalGeneration

__all__ = ["MolminiConfig", "MolminiForConditionalGeneration"]
