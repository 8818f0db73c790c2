"""Splitting a model across machines with llama.cpp's RPC backend: workers, devices, and the child process
that hosts an `rpc` model (llama.cpp aborts its process when a worker goes away)."""
