"""Resident KV Claims enforced inside a real vLLM engine."""
