"""`python -m scalelab` is the `scalelab` command."""

from .cli import app

app(prog_name="scalelab")
