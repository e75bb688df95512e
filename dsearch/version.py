"""dsearch's version: one place, read by the package, the build (pyproject.toml) and every record it writes."""
__version__ = "0.1.0"
