"""OpenAI wire models and the mapping of errors to OpenAI error bodies."""
