"""What every protocol's handlers share below the app: bounded body reading, request limits, the route table,
the error table, API keys and access, and path redaction. No middleware and no app live here."""
