"""nomoat: a local, OpenAI-compatible model server for GGUF models with per-request LoRA adapters."""

__version__ = "0.1.0"
