"""The status service: what happened to an order, what is left of a product."""

from orderstream.http.app import create_app

__all__ = ["create_app"]
