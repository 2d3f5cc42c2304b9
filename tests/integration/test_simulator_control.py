"""The control client the demo, benchmarks and tests use to steer the simulator."""

import openai

from bulkgen.simulator import SimConfig, running_simulator
from bulkgen.simulator.control import sim_configure, sim_stats


async def test_configure_and_stats_round_trip() -> None:
    async with running_simulator(SimConfig(rpm=None, tpm=None, seed=1)) as base_url:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-x", max_retries=0)
        try:
            messages = [{"role": "user", "content": "tea"}]
            await client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
            config = await sim_configure(base_url + "/", {"faults": {"503": 1.0}})
            assert config["faults"] == {"503": 1.0}
            try:
                await client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
            except openai.InternalServerError as exc:
                assert exc.status_code == 503
            else:
                raise AssertionError("the configured outage did not happen")
        finally:
            await client.close()
        stats = await sim_stats(base_url)
    assert stats["requests"] == 2 and stats["ok"] == 1 and stats["faults"]["503"] == 1
