"""Helpers shared by the test suite (import as ``support.…``; pytest puts ``tests/`` on sys.path)."""
