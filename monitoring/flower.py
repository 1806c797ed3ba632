"""Where Flower's configuration lies, for ``carina flower`` (``celery flower --conf=…``)."""

from pathlib import Path

FLOWER_CONFIG = Path(__file__).with_name("flowerconfig.py")
