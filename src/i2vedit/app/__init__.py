"""i2vedit-app: the editing page."""
