"""The layer build benchmark (``make bench``): see bench/README.md."""
