"""The name published checkpoints import: their remote-code files say `from molmini.hf_auto import ...`, and
`import molmini.hf_auto` registers molmini with transformers' Auto classes. The classes live in
molmini/auto/classes.py; this module is that one under its first name, kept so those checkpoints load."""
import sys

from molmini.auto import classes

sys.modules[__name__] = classes
