"""Sanctioned stand-ins for services that cannot run here (see DESIGN.md, Testing)."""
