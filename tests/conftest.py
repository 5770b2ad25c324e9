"""Shared pytest set-up: structured logs configured once for the test session."""

from common.logging import configure_logging

configure_logging()
