"""molmini checkpoints in transformers: the Auto classes (classes.py: config and model; processor.py: the
processor) and the thin remote-code files a checkpoint carries (remote_code/). Importing molmini.auto.classes
(or the alias molmini.hf_auto) registers them with transformers' Auto classes."""
