"""An account's template cannot stall workers: real PostgreSQL, the simulator over HTTP.

A template that cannot render its first row is refused at submit with nothing enqueued; one
that renders the first row but not another fails that row as ``invalid_input``, once.
"""

from __future__ import annotations

import pytest

from bulkgen.errors import InputError
from bulkgen.intake import JobInput
from bulkgen.simulator import SimConfig, running_simulator

from .pipeline_support import make_settings, start, statuses

pytestmark = pytest.mark.postgres

QUICK_SIM = SimConfig(rpm=None, tpm=None, ttft_ms=5, tokens_per_s=0, seed=3)
# 2.5e8 loop steps, each range within the sandbox's cap: seconds per row in place.
LOOPS = "{% for i in range(100000) %}{% for j in range(2500) %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (LOOPS + "About {{ keyword }}", "took longer than 1 s"),
        ("About {{ keyword }} in {{ citty }}", "'citty' is undefined"),
        ("About {{ keyword.__class__.__mro__ }}", "unsafe"),
        ("{% for i in range(100000) %}{{ keyword }}{% endfor %}", "more than 1000 characters"),
    ],
)
async def test_submit_refuses_a_template_that_cannot_render_the_first_row(
    database_url: str, template: str, message: str
) -> None:
    async with running_simulator(QUICK_SIM) as base_url:
        settings = make_settings(
            database_url, base_url, template_render_timeout_s=1.0, prompt_max_chars=1000
        )
        svc = await start(settings)
        try:
            rows = [JobInput("tea", {}, {}), JobInput("coffee", {}, {})]
            with pytest.raises(InputError, match=message) as info:
                await svc.submit(rows, svc.batch_options(template=template), account="acme")
            assert str(info.value).startswith("row 1: the prompt template cannot render it")
            assert await svc.store.pool.fetchval("SELECT count(*) FROM batches") == 0
            assert await svc.store.pool.fetchval("SELECT count(*) FROM jobs") == 0
        finally:
            await svc.aclose()


async def test_rows_the_template_cannot_render_fail_once_as_invalid_input(
    database_url: str,
) -> None:
    template = (
        '{% if slow == "yes" %}' + LOOPS + "{% endif %}"
        '{% if unsafe == "yes" %}{{ keyword.__class__.__mro__ }}{% endif %}'
        "Write an article about {{ keyword }}."
    )
    variables = [("no", "no"), ("yes", "no"), ("no", "yes"), ("yes", "no"), ("no", "no")]
    rows = [
        JobInput(f"keyword {i}", {"slow": slow, "unsafe": unsafe}, {})
        for i, (slow, unsafe) in enumerate(variables)
    ]
    async with running_simulator(QUICK_SIM) as base_url:
        settings = make_settings(
            database_url, base_url, template_render_timeout_s=1.0, max_attempts=3
        )
        svc = await start(settings)
        try:
            batch_id = await svc.submit(
                rows, svc.batch_options(template=template, max_tokens=200), account="acme"
            )
            await svc.worker(burst=True).run()
            jobs = await svc.store.pool.fetch(
                "SELECT input->>'keyword' AS keyword, status, attempts, error_kind, error_message"
                " FROM jobs ORDER BY id"
            )
            assert await statuses(svc, batch_id) == {"done": 2, "failed": 3}
        finally:
            await svc.aclose()
    failed = {j["keyword"]: j for j in jobs if j["status"] == "failed"}
    assert sorted(failed) == ["keyword 1", "keyword 2", "keyword 3"]
    for job in failed.values():
        assert (job["error_kind"], job["attempts"]) == ("invalid_input", 1)
    assert "took longer than 1 s" in failed["keyword 1"]["error_message"]
    assert "unsafe" in failed["keyword 2"]["error_message"]
