"""A short error hierarchy: each error says whether trying again can help."""

from __future__ import annotations


class OrderstreamError(Exception):
    """Base of every error orderstream raises on purpose."""

    retriable = False


class InvalidMessageError(OrderstreamError):
    """A message that can never be processed: it goes to the dead-letter topic."""

    retriable = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TopicMismatchError(OrderstreamError):
    """A topic exists with a partition count other than the configured one."""

    retriable = False


class ConfigurationError(OrderstreamError):
    """Settings that cannot work together with what the deployment already holds."""

    retriable = False
