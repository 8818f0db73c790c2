"""Anthropic's Messages API over the generation core: POST /v1/messages and /v1/messages/count_tokens."""
