"""Data pipelines for molmini: generators and converters that write `Record`s into webdataset shards.

Run ``python -m data_pipelines --help`` for the command line.
"""
