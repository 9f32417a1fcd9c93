"""Data: key-driven toy generators in pure JAX, and image data through tfds data sources."""

from . import toy as toy
