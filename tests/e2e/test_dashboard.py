"""The dashboard in a real headless Chromium, against a real server, worker and simulator.

The app runs under uvicorn on a free port in this test's event loop; a burst worker with
services of its own drains the batch against the simulator, a fraction of whose answers
are ``insufficient_quota`` (a failure no retry fixes), so the batch ends with both
articles and failed jobs. Screenshots are saved under ``tests/artifacts/dashboard/``
(ignored by git) for people to look at.

Chromium is Debian's ``chromium`` package, driven by Playwright through
``executable_path``; Playwright's own browser download is never used.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright import async_api as playwright_api

from bulkgen.accounts import create_account
from bulkgen.api import ApiSettings, create_app
from bulkgen.metrics import Metrics
from bulkgen.service import Services, open_services
from bulkgen.settings import Settings
from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.simulator.config import BatchConfig

from ..integration.pipeline_support import make_settings

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

CHROMIUM = os.environ.get("BULKGEN_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"
# Slow enough that the bar is seen moving and the page reads its figures more than once
# while the batch runs (12 jobs, 2 at a time, half a second each: 3 s at the very least),
# with some jobs failing for good.
SIM = SimConfig(rpm=None, tpm=None, ttft_ms=500, faults={"insufficient_quota": 0.25}, seed=7)
CONCURRENCY = 2
KEYWORDS = [
    "sourdough starter",
    "cold brew at home",
    "indoor herb garden",
    "beginner running plan",
    "home office lighting",
    "composting in an apartment",
    "budget travel in Portugal",
    "caring for a fiddle leaf fig",
    "learning to touch type",
    "first aid kit checklist",
    "how to season cast iron",
    "choosing hiking boots",
]


@dataclass
class Server:
    url: str
    key: str
    services: Services


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    settings = Settings(database_url=database_url, redis_url=None)
    services = await open_services(settings, need_provider=False, metrics=Metrics())
    limits = ApiSettings(rate_per_s=1_000, burst=1_000, events_interval_s=0.2)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(services, limits)
    uv = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    task = asyncio.create_task(uv.serve(sockets=[sock]))
    try:
        port = sock.getsockname()[1]
        key = await create_account(services.store, "acme")
        yield Server(f"http://127.0.0.1:{port}", key, services)
    finally:
        uv.should_exit = True
        await task
        await services.aclose()


async def drain(database_url: str, sim: SimConfig = SIM, **settings: Any) -> None:
    """A burst worker with services of its own, against a simulator of its own."""
    async with running_simulator(sim) as base_url:
        worker_services = await open_services(
            make_settings(database_url, base_url, **settings), metrics=Metrics()
        )
        try:
            await worker_services.worker(burst=True).run()
        finally:
            await worker_services.aclose()


async def test_sign_in_follow_a_batch_to_the_end_and_read_its_failures_and_articles(
    server: Server, database_url: str
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            console_errors: list[str] = []
            page.on(
                "console", lambda m: console_errors.append(m.text) if m.type == "error" else None
            )

            first = await page.goto(server.url + "/")
            assert first is not None and first.status == 200
            assert "default-src 'self'" in first.headers["content-security-policy"]
            await page.fill("#key", "bgk_not-a-real-key")
            await page.click("button[type=submit]")
            assert await page.locator(".alert").is_visible()
            await page.fill("#key", server.key)
            await page.screenshot(path=ARTIFACTS / "1-sign-in.png")
            await page.click("button[type=submit]")
            await page.wait_for_selector("text=No batch yet")
            console_errors.clear()  # the refused key's 401 above was expected
            cookie = next(c for c in await context.cookies() if c["name"] == "bulkgen_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert not cookie["secure"]  # plain HTTP here; over TLS it is Secure

            async with httpx.AsyncClient(base_url=server.url) as api:
                submitted = await api.post(
                    "/v1/batches",
                    json={"items": KEYWORDS, "options": {"max_tokens": 300}},
                    headers={"Authorization": f"Bearer {server.key}"},
                )
            assert submitted.status_code == 201, submitted.text
            batch_id = submitted.json()["id"]

            await page.goto(server.url + "/")
            await page.click(".batch-link")
            await page.wait_for_url(f"**/batches/{batch_id}")
            assert (await page.locator(".state").text_content() or "").strip() == "running"
            worker = asyncio.create_task(drain(database_url, concurrency=CONCURRENCY))
            # Cost is read again while the batch runs, not only once it has ended.
            await page.wait_for_function(
                "() => document.querySelector('.state').textContent.trim() === 'running'"
                " && document.querySelector('[data-stat=cost]').textContent !== '$0.0000'",
                timeout=120_000,
            )
            await page.wait_for_function(
                "() => { const p = document.querySelector('progress');"
                " return p && p.max > 1 && p.value === p.max; }",
                timeout=120_000,
            )
            assert await page.locator(".pct").inner_text() == "100%"
            await page.screenshot(path=ARTIFACTS / "2-progress-complete.png")
            await worker

            # The page reloads itself once the stream ends, with the final figures.
            await page.wait_for_selector(".state.ok")
            await page.wait_for_selector("#failed table.jobs")
            failed_rows = await page.locator("#failed table.jobs tbody tr").count()
            failed_count = await server.services.store.pool.fetchval(
                "SELECT count(*) FROM jobs WHERE status = 'failed'"
            )
            assert failed_rows == failed_count > 0
            assert await page.locator("#failed code", has_text="insufficient_quota").count()
            # Each quota failure is one request answered 429; every other job sent one request.
            share = await page.locator("[data-stat=share429]").inner_text()
            assert f"({failed_count} of {len(KEYWORDS)} requests)" in share, share
            await page.screenshot(path=ARTIFACTS / "3-batch-finished.png", full_page=True)
            await page.locator("#failed").screenshot(path=ARTIFACTS / "4-failed-jobs.png")

            await page.click(".articles a >> nth=0")
            await page.wait_for_selector("article.article")
            html = await page.locator("article.article").inner_html()
            assert "<h1" in html or "<p>" in html
            await page.screenshot(path=ARTIFACTS / "5-article.png", full_page=True)

            await page.goto(server.url + "/")
            assert await page.locator(".batch-row .pct").inner_text() == "100%"
            await page.screenshot(path=ARTIFACTS / "6-batches.png")
            await page.goto(f"{server.url}/batches/{batch_id}")
            await page.click("text=Retry")
            await page.wait_for_selector(".notice")
            assert f"{failed_count} failed job" in await page.locator(".notice").inner_text()

            phone = await browser.new_context(
                viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
            )
            await phone.add_cookies(
                [{"name": cookie["name"], "value": cookie["value"], "url": server.url}]
            )
            mobile = await phone.new_page()
            await mobile.goto(f"{server.url}/batches/{batch_id}")
            await mobile.screenshot(path=ARTIFACTS / "7-phone-batch.png", full_page=True)
            width = await mobile.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, "the page scrolls sideways on a phone"
            await phone.close()

            await page.click("text=Sign out")
            await page.wait_for_selector("#key")
            assert console_errors == []
        finally:
            await browser.close()
    print(f"screenshots in {ARTIFACTS}")


ECONOMY_SIM = SimConfig(
    rpm=None, tpm=None, seed=7, batch=BatchConfig(time_scale=20.0, requests_per_s=5.0)
)


async def test_an_economy_batch_shows_where_its_jobs_are_and_what_it_saved(
    server: Server, database_url: str
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with httpx.AsyncClient(base_url=server.url) as api:
        submitted = await api.post(
            "/v1/batches",
            json={"items": KEYWORDS, "options": {"max_tokens": 300}, "mode": "economy"},
            headers={"Authorization": f"Bearer {server.key}"},
        )
    assert submitted.status_code == 201, submitted.text
    batch_id = submitted.json()["id"]
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            await page.goto(server.url + "/")
            await page.fill("#key", server.key)
            await page.click("button[type=submit]")
            await page.wait_for_selector(".batch-row")
            assert await page.locator(".batch-row .chip", has_text="economy").count() == 1
            await page.goto(f"{server.url}/batches/{batch_id}")
            waiting = page.locator(".stat", has_text="Waiting / at the provider")
            assert (await waiting.locator(".value").inner_text()).strip() == str(len(KEYWORDS))
            await page.screenshot(path=ARTIFACTS / "8-economy-waiting.png", full_page=True)
            await drain(
                database_url,
                ECONOMY_SIM,
                economy_tick_s=0.1,
                economy_poll_s=0.2,
                economy_max_poll_s=0.5,
            )
            await page.wait_for_selector(".state.ok", timeout=120_000)
            await page.wait_for_selector(".articles a")  # the page reloaded with the end figures
            saved = await page.locator("[data-stat=economy]").inner_text()
            assert saved.startswith("$") and saved != "$0.0000", saved
            assert (await waiting.locator(".value").inner_text()).strip() == "0"
            await page.screenshot(path=ARTIFACTS / "9-economy-finished.png", full_page=True)
        finally:
            await browser.close()
