"""Credentials: operator and agent tokens, the operator token file, the UI session."""
