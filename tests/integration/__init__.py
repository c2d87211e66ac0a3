"""Integration tests on the real SQLite store."""
