"""LLM providers behind one small protocol (see :mod:`bulkgen.providers.base`)."""

from bulkgen.providers.base import Provider, api_key_id
from bulkgen.providers.openai_compat import OpenAICompatProvider

__all__ = ["OpenAICompatProvider", "Provider", "api_key_id"]
