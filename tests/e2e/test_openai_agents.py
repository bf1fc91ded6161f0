"""The openai-agents SDK against the gateway: its default model (`OpenAIResponsesModel`, the Responses API)
runs an agent with one function tool, the way an application would. The fault upstream's `tool-once`
model calls the tool first, then answers with the tool's result, so one run is two Responses turns: a
`function_call`, then the agent's `function_call_output` and a text answer.

The agents SDK is asyncio and our tests are trio: the agent runs in `asyncio.run` in a worker thread, while
the gateway serves on the trio thread."""

from __future__ import annotations

import asyncio

import agents
import openai
import pytest
import trio
from harness import GATEWAY_KEY, running_gateway
from test_streams import events_of

CALLS: list[str] = []


@agents.function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    CALLS.append(city)
    return f"22C in {city}"


def run_agent(base_url: str) -> agents.RunResult:
    async def main() -> agents.RunResult:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=10)
        try:
            agent = agents.Agent(
                name="weather",
                instructions="Answer with the weather tool.",
                tools=[get_weather],
                model=agents.OpenAIResponsesModel(model="tool-once", openai_client=client),
            )
            return await agents.Runner.run(agent, "What is the weather in Paris?")
        finally:
            await client.close()

    agents.set_tracing_disabled(True)
    return asyncio.run(main())


async def test_an_agent_calls_its_tool_once_then_answers(tmp_path):
    CALLS.clear()
    with trio.fail_after(30):
        async with running_gateway(tmp_path, ["tool-once"]) as gw:
            result = await trio.to_thread.run_sync(run_agent, gw.base_url)
    assert CALLS == ["example"]  # the tool ran once, with the upstream's example arguments
    assert result.final_output == "The tool said: 22C in example."
    chats = [r.body for r in gw.upstream.requests if r.path == "/v1/chat/completions"]
    assert len(chats) == 2
    first, second = chats
    assert first["messages"][0] == {"role": "system", "content": "Answer with the weather tool."}
    assert first["tools"][0]["function"]["name"] == "get_weather"
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert second["messages"][3]["content"] == "22C in example"
    assert {e.protocol for e in events_of(gw.data_dir, "request_received")} == {"responses"}


def run_agent_streamed(base_url: str) -> tuple[str, list[str]]:
    """The agent through `Runner.run_streamed` (the Responses stream), naming the models to try in order
    (the gateway's own `models` field, as `extra_body`)."""

    async def main() -> tuple[str, list[str]]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=20)
        try:
            agent = agents.Agent(
                name="weather",
                instructions="Answer with the weather tool.",
                tools=[get_weather],
                model=agents.OpenAIResponsesModel(model="local/stall-pre:30", openai_client=client),
                model_settings=agents.ModelSettings(
                    extra_body={"models": ["local/fail:500", "local/tool-once"], "fallback": False}
                ),
            )
            run = agents.Runner.run_streamed(agent, "What is the weather in Paris?")
            kinds = [event.type async for event in run.stream_events()]
            return str(run.final_output), kinds
        finally:
            await client.close()

    agents.set_tracing_disabled(True)
    return asyncio.run(main())


async def test_a_streamed_agent_gets_past_a_stall_and_a_failure_before_its_first_token(tmp_path, clock):
    """The chain's first model is silent, the second fails: the first turn falls over twice before any
    content, so the agent sees one seamless stream from the third model, and still calls its tool once."""
    CALLS.clear()
    fast = "first_byte_s = 5\nstall_s = 5\nkeepalive_s = 2"
    with trio.fail_after(60):
        async with running_gateway(tmp_path, ["stall-pre:30", "fail:500", "tool-once"], timeouts=fast) as gw:
            final, kinds = await trio.to_thread.run_sync(run_agent_streamed, gw.base_url)
    assert CALLS == ["example"]
    assert final == "The tool said: 22C in example."
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    tried = [r.body["model"] for r in gw.upstream.requests if r.path == "/v1/chat/completions"]
    # The first turn fell over twice; the second goes straight to the model that answered (the other two
    # are cooling).
    assert tried == ["stall-pre:30", "fail:500", "tool-once", "tool-once"]
    assert {e.protocol for e in events_of(gw.data_dir, "request_received")} == {"responses"}


PIXEL = "data:image/png;base64,iVBORw0KGgo="


@agents.function_tool
def screenshot(page: str) -> list[agents.ToolOutputText | agents.ToolOutputImage]:
    """A screenshot of a page."""
    return [agents.ToolOutputText(text=f"{page} as shown"), agents.ToolOutputImage(image_url=PIXEL)]


def run_screenshot_agent(base_url: str) -> None:
    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=10)
        try:
            agent = agents.Agent(
                name="looker",
                tools=[screenshot],
                model=agents.OpenAIResponsesModel(model="tool-once", openai_client=client),
            )
            await agents.Runner.run(agent, "Look at the home page.", max_turns=2)
        finally:
            await client.close()

    agents.set_tracing_disabled(True)
    asyncio.run(main())


async def test_a_tool_s_image_output_reaches_the_model_after_the_tool_message(tmp_path):
    """The SDK sends a ToolOutputImage as an `input_image` in the function_call_output (once a 400 that
    every later turn repeated). `tool-once` reads the user message that carries the image as a new
    question and calls the tool again, so the run stops at its max_turns; the second turn is the point."""
    with trio.fail_after(30):
        async with running_gateway(tmp_path, ["tool-once"]) as gw:
            with pytest.raises(agents.MaxTurnsExceeded):
                await trio.to_thread.run_sync(run_screenshot_agent, gw.base_url)
    chats = [r.body for r in gw.upstream.requests if r.path == "/v1/chat/completions"]
    assert len(chats) == 2
    tool, images = chats[1]["messages"][-2:]
    assert tool["role"] == "tool" and tool["content"] == "example as shown"
    assert images["role"] == "user" and images["content"][1] == {
        "type": "image_url",
        "image_url": {"url": PIXEL},
    }
