"""What the service says to a client that sent something it cannot use: an HTTP status and one sentence.

Its own module because both the routes (app.py) and the explanations' workers (explainer.py) refuse uploads,
with the same words for the same mistake.
"""

from __future__ import annotations

from ..data.images import ImageTooLargeError, UnreadableImageError
from ..data.prepare import ImageLimitError
from ..errors import AlexnetError

__all__ = ["FORMATS", "ClientError", "image_refusal"]

FORMATS = "JPEG, PNG, GIF, BMP, TIFF or WebP"


class ClientError(Exception):
    """A request the service refuses: an HTTP status and one sentence saying what to send instead."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def image_refusal(name: str, exc: AlexnetError) -> ClientError:
    """The decoder's refusal of upload `name` (over a size cap, unreadable) as the client's 4xx answer."""
    if isinstance(exc, ImageLimitError):  # --max-pixels, read from the header
        return ClientError(413, str(exc))
    if isinstance(exc, ImageTooLargeError):  # the decoder's own caps (ALEXNET_MAX_IMAGE_PIXELS, _BYTES)
        return ClientError(413, f"{name} is too large ({exc.reason.split(';')[0]}); send a smaller image")
    if isinstance(exc, UnreadableImageError):
        return ClientError(400, f"{name} cannot be read as an image ({exc.reason}); send a {FORMATS} file")
    return ClientError(400, str(exc))  # e.g. a size cap inside the decoder
