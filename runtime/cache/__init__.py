"""KV memory and the prefix cache."""
