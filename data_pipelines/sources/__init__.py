"""The converters of each source family (data_pipelines/convert.py names them): `rows` holds what they
share (the one driver from source rows to records, keys, image and conversation checks), `llava` the local
JSON/JSONL files with an image folder, `tables` the Hugging Face parquet/arrow datasets."""
