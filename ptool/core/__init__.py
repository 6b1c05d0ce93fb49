"""The ptool engine: plain Python and PyTorch, no Typer, no rich.

The public entry points are re-exported lazily so that `import ptool.core` stays cheap.
"""
