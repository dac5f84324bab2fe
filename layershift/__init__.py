"""layershift: the CLI and the local emulated AWS."""
