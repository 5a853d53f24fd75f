"""Integrations with web frameworks; each module needs its framework's extra installed."""
