"""Build switchboard's built-in catalog (`service/data/catalog.json`) from the seed catalog.

    .venv/bin/python scripts/build_catalog.py /work/shared/catalog/seed-catalog.json --version 2026-12-02.2

What it does, and why:
- Keeps the platforms of every kind the gateway has an adapter for (`KINDS`: openai, gemini, cohere,
  cloudflare: all 17 of the seed's platforms); a kind without an adapter would be rows nothing can call.
- Where the seed's platform notes describe the seed's own transport rather than ours (Gemini's key in the
  query string), `NOTES` replaces them.
- Per platform: name, kind, display_name (the seed's provider name), base_url, headers, timeout_s, key_page,
  notes, the thread-protection level from the seed's defaults (`provider-ban` for longcat, `model-skip` for
  the rest) and the env var its keys may come from (`GROQ_API_KEY` style).
- Per model: the seed's ranks, limits, context window and enabled flag, plus two fields the seed did not have:
  `pool` (smart / fast / balanced, see `assign_pool`) and `fallback` (in the automatic chain = enabled).
- Adds the embedding models of `EMBEDDING_MODELS` (`task` embedding, with their `family`), which the seed
  did not have.
- Copies the seed's uncertainty notes that still describe this data; notes about the seed's own migration
  chain or router bugs do not apply to a static file and are left out.
Order is stable (platforms in seed order, models in seed order), so a regenerated file diffs cleanly.
Bump `--version` whenever the output changes: the catalog version is recorded with the routing data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

KINDS = ("openai", "gemini", "cohere", "cloudflare")
NOTES = {
    "google": (
        "Native Gemini API (kind gemini: service/providers/gemini.py). POST {base_url}/models/{model}:"
        "generateContent, or :streamGenerateContent?alt=sse; the key travels only in the x-goog-api-key "
        "header, never in the URL. System messages go to systemInstruction (inlined for Gemma); tool "
        "schemas are cleaned of the JSON-Schema keywords Gemini rejects; a 429 cools the key for "
        "RetryInfo.retryDelay."
    ),
}
SMART_MAX_INTELLIGENCE_RANK = 3
FAST_MAX_SPEED_RANK = 2
# The seed's router preferred these in smart mode although their ranks alone would not put them there.
SMART_EXTRA = {("longcat", "LongCat-2.0-Preview"), ("openrouter", "openrouter/owl-alpha")}
# Seed `uncertain` notes kept, by their opening words (the others are about the seed's migrations/router).
UNCERTAIN_KEPT = ("github/gpt-4o", "All numeric limits", "Disabled rows", "zhipu:")
OUTPUT = Path(__file__).resolve().parents[1] / "service" / "data" / "catalog.json"

# Embedding models (`task = "embedding"`, served by /v1/embeddings), which the seed did not have: free-tier
# models of platforms the catalog has, with the limits their providers document for free keys. `family`
# names the vectors a model gives: the same family on two platforms is the same weights, so one stands in
# for the other; different families never do. Ranks are mid-range values inside the chat models' range, so
# adding them moves no chat model's normalised intelligence; an embedding request orders a family's
# models by them (ties by ref).
EMBEDDING_RANK, EMBEDDING_SPEED_RANK = 16, 5
EMBEDDING_MODELS: tuple[dict[str, Any], ...] = (
    {
        "platform": "google",
        "id": "gemini-embedding-001",
        "display_name": "Gemini Embedding 001",
        "family": "google/gemini-embedding-001",
        "rpm": 100,
        "rpd": 1000,
        "tpm": 30000,
        "tpd": None,
        "context_window": 2048,
    },
    {
        "platform": "mistral",
        "id": "mistral-embed",
        "display_name": "Mistral Embed",
        "family": "mistralai/mistral-embed",
        "rpm": 2,
        "rpd": None,
        "tpm": 500000,
        "tpd": None,
        "context_window": 8192,
    },
    {
        "platform": "cohere",
        "id": "embed-v4.0",
        "display_name": "Cohere Embed v4",
        "family": "cohere/embed-v4.0",
        "rpm": 100,
        "rpd": 33,
        "tpm": None,
        "tpd": None,
        "context_window": 128000,
    },
    {
        "platform": "cloudflare",
        "id": "@cf/baai/bge-m3",
        "display_name": "BAAI bge-m3 (Workers AI)",
        "family": "BAAI/bge-m3",
        "rpm": 3000,
        "rpd": None,
        "tpm": None,
        "tpd": None,
        "context_window": 8192,
    },
    {
        "platform": "cloudflare",
        "id": "@cf/baai/bge-base-en-v1.5",
        "display_name": "BAAI bge-base-en-v1.5 (Workers AI)",
        "family": "BAAI/bge-base-en-v1.5",
        "rpm": 3000,
        "rpd": None,
        "tpm": None,
        "tpd": None,
        "context_window": 512,
    },
    {
        "platform": "nvidia",
        "id": "baai/bge-m3",
        "display_name": "BAAI bge-m3 (NVIDIA NIM)",
        "family": "BAAI/bge-m3",
        "rpm": 40,
        "rpd": None,
        "tpm": None,
        "tpd": None,
        "context_window": 8192,
    },
    {
        "platform": "nvidia",
        "id": "nvidia/nv-embedqa-e5-v5",
        "display_name": "NVIDIA NV-EmbedQA E5 v5",
        "family": "nvidia/nv-embedqa-e5-v5",
        "rpm": 40,
        "rpd": None,
        "tpm": None,
        "tpd": None,
        "context_window": 512,
    },
    {
        "platform": "github",
        "id": "openai/text-embedding-3-small",
        "display_name": "OpenAI text-embedding-3-small (GitHub Models)",
        "family": "openai/text-embedding-3-small",
        "rpm": 15,
        "rpd": 150,
        "tpm": None,
        "tpd": None,
        "context_window": 8191,
    },
)
EMBEDDING_UNCERTAIN = (
    "Embedding models' limits are the providers' documented free tiers as of 2026-12 (Gemini API free tier "
    "for gemini-embedding-001: 100 RPM / 30k TPM / 1,000 RPD; Mistral's Experiment tier as for its chat "
    "models; Cohere trial keys: 100 embed calls a minute and ~1,000 calls a month shared with chat (33 a "
    "day here); Workers AI text embeddings: 3,000 RPM, inside the account's 10k neurons a day; NVIDIA: 40 "
    "RPM on starter credits; GitHub Models' embedding tier: 15 RPM / 150 RPD). The Cohere numbers and "
    "Cloudflare's bge-m3 context window (8192 here; Workers AI lists more) are the least certain.",
    "nvidia/nv-embedqa-e5-v5 is an asymmetric model: NVIDIA requires `input_type` (query or passage), "
    "which clients send as an extra body field (the gateway passes it through). Cohere's compatibility "
    "API may not honour `dimensions` for embed-v4.0; vectors of another length than asked are refused.",
)


def env_var(platform: str) -> str:
    return platform.upper().replace("-", "_") + "_API_KEY"


def assign_pool(model: dict[str, Any]) -> str:
    if (
        model["intelligence_rank"] <= SMART_MAX_INTELLIGENCE_RANK
        or (model["platform"], model["id"]) in SMART_EXTRA
    ):
        return "smart"
    if model["speed_rank"] <= FAST_MAX_SPEED_RANK:
        return "fast"
    return "balanced"


def build(seed: dict[str, Any], version: str) -> dict[str, Any]:
    protection = seed["defaults"]["thread_protection"]
    other_protection = seed["defaults"]["thread_protection_other_platforms"]
    platforms = [
        {
            "name": p["name"],
            "kind": p["kind"],
            "display_name": p["provider_name"],
            "base_url": p["base_url"],
            "headers": p["headers"],
            "timeout_s": p["timeout_s"],
            "key_page": p["key_page"],
            "protection": protection.get(p["name"], other_protection),
            "env_var": env_var(p["name"]),
            "notes": NOTES.get(p["name"], p["notes"]),
        }
        for p in seed["platforms"]
        if p["kind"] in KINDS
    ]
    names = {p["name"] for p in platforms}
    models = [
        {
            "platform": m["platform"],
            "id": m["id"],
            "display_name": m["display_name"],
            "pool": assign_pool(m),
            "fallback": m["enabled"],
            "intelligence_rank": m["intelligence_rank"],
            "speed_rank": m["speed_rank"],
            "rpm": m["rpm"],
            "rpd": m["rpd"],
            "tpm": m["tpm"],
            "tpd": m["tpd"],
            "context_window": m["context_window"],
            "enabled": m["enabled"],
        }
        for m in seed["models"]
        if m["platform"] in names
    ]
    models += [
        {
            "platform": e["platform"],
            "id": e["id"],
            "display_name": e["display_name"],
            "pool": "balanced",
            "fallback": False,  # the chat chain never holds an embedding model
            "intelligence_rank": EMBEDDING_RANK,
            "speed_rank": EMBEDDING_SPEED_RANK,
            **{limit: e[limit] for limit in ("rpm", "rpd", "tpm", "tpd")},
            "context_window": e["context_window"],
            "enabled": True,
            "task": "embedding",
            "family": e["family"],
        }
        for e in EMBEDDING_MODELS
        if e["platform"] in names
    ]
    # Fail loudly if the seed changed under us instead of silently shipping a different catalog.
    refs = {(m["platform"], m["id"]) for m in models}
    missing = SMART_EXTRA - refs
    if missing:
        raise SystemExit(f"smart-pool extras not in the seed: {sorted(missing)}")
    uncertain = [n for n in seed["uncertain"] if n.startswith(UNCERTAIN_KEPT)]
    if len(uncertain) != len(UNCERTAIN_KEPT):
        raise SystemExit("an expected `uncertain` note is missing from the seed")
    return {
        "version": version,
        "source": (
            f"switchboard seed catalog (platforms of kinds {', '.join(KINDS)}), extracted from "
            f"{seed['source']}"
        ),
        "conventions": {
            "intelligence_rank": "lower = smarter; ties allowed",
            "speed_rank": "lower = faster",
            "limits": "rpm/rpd/tpm/tpd null = no limit recorded (unlimited / unknown)",
            "pool": (
                f"smart: intelligence_rank <= {SMART_MAX_INTELLIGENCE_RANK} plus the seed's smart-mode "
                f"preferences; fast: speed_rank <= {FAST_MAX_SPEED_RANK} and not smart; balanced: the rest"
            ),
            "fallback": "member of the automatic fallback chain (= enabled; never for embedding models)",
            "task": "chat (the default, when absent) or embedding (served by /v1/embeddings only)",
            "family": (
                "embedding models: the vectors they give; models of one family stand in for each other, "
                "models of different families never do"
            ),
        },
        "uncertain": [*uncertain, *EMBEDDING_UNCERTAIN],
        "platforms": platforms,
        "models": models,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed", type=Path, help="path to seed-catalog.json")
    parser.add_argument("--version", required=True, help="catalog version, e.g. 2026-11-26.1")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    catalog = build(json.loads(args.seed.read_text(encoding="utf-8")), args.version)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(catalog, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    counts: dict[str, int] = {}
    chat = [m for m in catalog["models"] if m.get("task", "chat") == "chat"]
    for m in chat:
        counts[m["pool"]] = counts.get(m["pool"], 0) + 1
    embedding = len(catalog["models"]) - len(chat)
    print(
        f"{args.output}: {len(catalog['platforms'])} platforms, {len(chat)} chat models {counts}, "
        f"{embedding} embedding models"
    )


if __name__ == "__main__":
    main()
