"""layershift's domain package: shared by every control-plane function, the builder and the CLI."""

__version__ = "0.1.0"
