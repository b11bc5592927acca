"""Shared utilities of SCORP, one module per domain (geometry, io, images, losses, metrics, ...)."""
