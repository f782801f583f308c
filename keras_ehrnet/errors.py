"""The errors bad input data raises across the package: one line naming the file, image or value.

Programs catch `DatasetError` (a ValueError) and exit 2 with its message.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset record (annotation file, image or annotation) that cannot give correct targets."""


class ImageError(DatasetError):
    """An image file that is missing, cannot be decoded, is truncated or has the wrong size."""
