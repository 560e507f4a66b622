"""Everything that turns a record into tensors, in the order a sample meets it: the record schema
(records.py), the shard reader (reader.py), the stream (stream.py), the formatter (formatter.py), the
processor (processor.py, with crops.py, images.py, chat_format.py, tokenizer.py), packing (packing.py)
and the loader (loader.py); layouts.py reads benchmark and dataset files in their published layouts.

Kept empty so that `import molmini.data.records` (the data commands' only import) costs no torch."""
