"""bulkgen: bulk LLM generation that does not fall over."""

from importlib.metadata import PackageNotFoundError, version

from bulkgen.client import Client
from bulkgen.errors import (
    ApiError,
    BulkgenError,
    ConfigError,
    InputError,
    ProviderError,
    StorageError,
)
from bulkgen.models import ChatRequest, Completion, JobStatus, Usage
from bulkgen.settings import Settings

__all__ = [
    "ApiError",
    "BulkgenError",
    "ChatRequest",
    "Client",
    "Completion",
    "ConfigError",
    "InputError",
    "JobStatus",
    "ProviderError",
    "Settings",
    "StorageError",
    "Usage",
]

try:
    __version__ = version("bulkgen")  # pyproject.toml's version is the only one
except PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"
