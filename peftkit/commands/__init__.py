"""CLI commands that live outside cli.py (each imports click only at module level)."""
