"""`molmini serve`: an OpenAI-compatible chat-completions server (server.py) over batched generation; the
requests it accepts are parsed and checked in requests.py."""
