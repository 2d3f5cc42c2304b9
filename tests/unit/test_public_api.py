"""The exported names are a promise: changing them is a deliberate act."""

import bulkgen


def test_public_surface_is_pinned() -> None:
    assert sorted(bulkgen.__all__) == [
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
    for name in bulkgen.__all__:
        assert getattr(bulkgen, name) is not None


def test_settings_defaults_match_the_documented_ones() -> None:
    settings = bulkgen.Settings(_env_file=None)
    assert settings.db_pool_max == 20
    assert settings.max_attempts == 5
    assert settings.model == "gpt-4o"
    assert settings.max_tokens == 1500
    assert settings.cache_ttl_s == 3600
    assert settings.concurrency is None  # auto: follows the limiter


def test_version_is_the_package_metadata() -> None:
    from importlib.metadata import version

    assert bulkgen.__version__ == version("bulkgen")


def test_the_client_loads_nothing_of_the_server_side() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, bulkgen.client\n"
        "server = ('bulkgen.api', 'bulkgen.db', 'bulkgen.service', 'bulkgen.worker')\n"
        "print(sorted(m for m in sys.modules if m.startswith(server)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
