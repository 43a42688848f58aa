"""i2vedit: first-frame-guided video editing with image-to-video diffusion models."""

__version__ = "0.1.0"
