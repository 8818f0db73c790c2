"""Fine-tuning jobs: a LoRA trained in a child process on a served base model, then served as an adapter."""
