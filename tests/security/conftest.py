"""Security tests use the end-to-end fixtures: the fake upstream and the real gateway."""

from tests.e2e.conftest import fake, gateway, started

__all__ = ["fake", "gateway", "started"]
