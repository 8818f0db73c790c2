"""LoRA adapters by name: the catalogue, file checks, PEFT conversion and watched directories."""
