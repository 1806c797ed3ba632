"""An example Carina plugin: organ volume and HU statistics per label (see README.md)."""
