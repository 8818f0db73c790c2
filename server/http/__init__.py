"""The HTTP surface: the app, its middleware and route table, body reading, auth, limits and the access log."""
