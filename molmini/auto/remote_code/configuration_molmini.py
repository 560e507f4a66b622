"""molmini's config for transformers' AutoConfig (trust_remote_code=True). The class is the installed molmini
package's (`pip install molmini`): this file only names it, so a checkpoint runs molmini's own code."""
from molmini.hf_auto import MolminiConfig

__all__ = ["MolminiConfig"]
