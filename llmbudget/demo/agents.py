"""The demo's simulated agents: each a loop of real HTTP calls through the proxy, attributed by headers.

| agent | provider / model | what it shows |
|---|---|---|
| planner | Anthropic claude-sonnet-4-5, streamed | steady work in session sprint-42, cache reads and writes |
| coder | OpenAI gpt-4.1, streamed | a second provider in the same session |
| reviewer | OpenAI gpt-4o-mini | a cheap agent in its own session |
| summarizer | OpenAI gpt-4o | a $0.03/day budget with `action: fallback`: later calls go to the local llama3.2 |
| looper | Anthropic claude-opus-4-1, every 0.15 s | a runaway loop: hits its $0.60/day budget (`action: pause`) and is paused |
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from dataclasses import dataclass

import aiohttp

log = logging.getLogger("llmbudget.demo")


@dataclass(frozen=True, slots=True)
class SimAgent:
    name: str
    backend: str
    model: str
    session: str
    interval_s: float
    input_tokens: int
    max_tokens: int
    stream: bool = False
    task_type: str = "coding"


AGENTS = (
    SimAgent(
        "planner",
        "anthropic",
        "claude-sonnet-4-5",
        "sprint-42",
        1.2,
        6000,
        600,
        stream=True,
        task_type="planning",
    ),
    SimAgent("coder", "openai", "gpt-4.1", "sprint-42", 0.8, 3000, 800, stream=True),
    SimAgent("reviewer", "openai", "gpt-4o-mini", "review-7", 1.5, 1500, 300, task_type="review"),
    SimAgent("summarizer", "openai", "gpt-4o", "digest-3", 0.6, 4000, 400, task_type="summary"),
    SimAgent("looper", "anthropic", "claude-opus-4-1", "loop-1", 0.15, 8000, 1000),
)


def _request(agent: SimAgent, n: int) -> tuple[str, dict[str, str], bytes]:
    headers = {
        "Content-Type": "application/json",
        "X-LLMBudget-Agent": agent.name,
        "X-LLMBudget-Session": agent.session,
        "X-LLMBudget-Task-Type": agent.task_type,
        "x-sim-input-tokens": str(agent.input_tokens),
    }
    messages = [{"role": "user", "content": f"step {n}: continue the task"}]
    if agent.backend == "anthropic":
        headers |= {"x-api-key": "sk-ant-demo", "anthropic-version": "2023-06-01"}
        body = {
            "model": agent.model,
            "max_tokens": agent.max_tokens,
            "messages": messages,
            "stream": agent.stream,
        }
        return f"/{agent.backend}/v1/messages", headers, json.dumps(body).encode()
    headers["Authorization"] = "Bearer sk-demo"
    body = {
        "model": agent.model,
        "max_tokens": agent.max_tokens,
        "messages": messages,
        "stream": agent.stream,
    }
    return f"/{agent.backend}/v1/chat/completions", headers, json.dumps(body).encode()


async def run_agent(session: aiohttp.ClientSession, base: str, agent: SimAgent, stop: asyncio.Event) -> None:
    """Call through the proxy until `stop`; a refused (paused) agent slows down and keeps knocking."""
    rng = random.Random(agent.name)
    n = 0
    while not stop.is_set():
        n += 1
        path, headers, body = _request(agent, n)
        wait = agent.interval_s * rng.uniform(0.7, 1.3)
        try:
            async with session.post(base + path, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status == 429:
                    wait = max(wait, 2.0)  # paused or over budget: what a polite client does
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.debug("demo_agent_call_failed agent=%s error=%s", agent.name, type(e).__name__)
            wait = 1.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)


async def run_agents(base: str, stop: asyncio.Event) -> None:
    """Every simulated agent at once, until `stop` is set."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(run_agent(session, base, a, stop) for a in AGENTS))
