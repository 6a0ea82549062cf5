"""orderstream: a flash-sale order pipeline with one writer per product partition."""

__version__ = "0.1.0"
