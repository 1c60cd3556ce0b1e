"""Kernel backends that fill chunks on first read."""
