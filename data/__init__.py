"""The ground floor of detcrop: images, class folders, manifests, splits and configs.

`detect` and `classify` stand on this package; it imports neither.
"""
