"""bulkgen: bulk LLM generation that does not fall over."""

from bulkgen.errors import (
    BulkgenError,
    ConfigError,
    InputError,
    ProviderError,
    StorageError,
)
from bulkgen.models import ChatRequest, Completion, JobStatus, Usage
from bulkgen.settings import Settings

__all__ = [
    "BulkgenError",
    "ChatRequest",
    "Completion",
    "ConfigError",
    "InputError",
    "JobStatus",
    "ProviderError",
    "Settings",
    "StorageError",
    "Usage",
]

__version__ = "0.1.0"
