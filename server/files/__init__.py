"""Files uploaded through the Files API: stored under the state dir, owned by the key that sent them."""
