"""Provider adapters by platform `kind`: the pure half of speaking to a provider (actors/upstream.py's
`ProviderAdapter`). A new kind is one module here and one entry in `ADAPTERS`."""

from __future__ import annotations

from actors.upstream import ProviderAdapter
from service.providers.cloudflare import CloudflareAdapter
from service.providers.cohere import CohereAdapter
from service.providers.gemini import GeminiAdapter
from service.providers.openai import OpenAIAdapter

ADAPTERS: dict[str, ProviderAdapter] = {
    "openai": OpenAIAdapter(),
    "gemini": GeminiAdapter(),
    "cohere": CohereAdapter(),
    "cloudflare": CloudflareAdapter(),
}
