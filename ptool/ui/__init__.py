"""Rendering: rich tables and trees, JSON documents, progress, error messages."""
