"""Unit tests: async tests run under the blocking-call detector."""

from tests.blocking import no_blocking_calls

__all__ = ["no_blocking_calls"]  # the autouse fixture, imported so that pytest finds it here
