"""Sanctioned stand-ins for services that cannot run here (see docs/architecture.md#testing)."""
