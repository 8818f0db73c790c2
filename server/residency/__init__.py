"""Which models are loaded: residency states, shared loads, keep_alive, eviction under a memory budget."""
