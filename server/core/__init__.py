"""What every wire protocol shares: the generation core, tool calling and structured output."""
