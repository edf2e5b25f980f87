"""Trainer helpers."""
