"""Checkpoint folders on disk and on the Hugging Face hub: what a folder holds, finding one, publishing one."""
