"""Hydra configs of i2vedit (shipped in the wheel as ``i2vedit.conf``)."""
