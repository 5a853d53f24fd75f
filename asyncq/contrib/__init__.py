"""Integrations with other tools and frameworks (each imports its framework only when used)."""
