"""Maintenance commands for the book, not part of sdelib: `python -m tools.NAME`."""
