"""The HTTP face of bulkgen: a FastAPI application over the same services as the CLI."""

from bulkgen.api.app import create_app
from bulkgen.api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]
