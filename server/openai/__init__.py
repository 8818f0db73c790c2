"""The OpenAI wire protocol: request and response models and the routes that speak it."""
