"""The smallvision client: a typed Python class for the HTTP API, and the `smallvision` command."""

from smallvision.client import ApiError, Client, ServiceUnreachableError

__all__ = ["ApiError", "Client", "ServiceUnreachableError"]
