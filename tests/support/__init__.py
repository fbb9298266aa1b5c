"""Helpers that tests hand to real subprocesses (task entry points and the like)."""
