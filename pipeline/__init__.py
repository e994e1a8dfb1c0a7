"""Wires `detect` and `classify` together and owns the `detcrop` command line."""
