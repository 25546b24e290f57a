"""cairn's MCP surface seen by the official Python MCP SDK (`mcp` on PyPI).

Run by the Rust test `mcp::official_python_mcp_client_sees_tools_answers_and_refusals`, which
serves a keyed instance and sets:
  CAIRN_MCP_URL    the Streamable HTTP endpoint (http://127.0.0.1:<port>/mcp)
  CAIRN_HR_KEY     a key with ask + search and the `hr` group
  CAIRN_BOT_KEY    a key with ask + search and no group
  CAIRN_BIN, CAIRN_CONFIG, CAIRN_DATA_DIR   to start `cairn mcp` over stdio
Any failed check raises; the last line printed on success is "mcp client: all checks passed".
"""

import asyncio
import os

import httpx2
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

TOOLS = {"search", "ask", "get_document", "list_sources"}


def over_http(key):
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
    return Client(streamable_http_client(os.environ["CAIRN_MCP_URL"], http_client=client))


async def check_tools(client):
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) >= TOOLS, f"tools listed: {sorted(tools)}"
    for name in TOOLS:
        assert tools[name].input_schema.get("type") == "object", (name, tools[name].input_schema)
        assert tools[name].output_schema, f"{name} has no output schema"
    assert "query" in tools["search"].input_schema["properties"]
    assert "question" in tools["ask"].input_schema["properties"]


async def find_hr_page(client):
    found = await client.call_tool("search", {"query": "salary band senior engineers", "k": 5})
    assert not found.is_error, found
    hits = found.structured_content["hits"]
    for field in ("doc_id", "chunk_id", "title", "url", "snippet", "score"):
        assert field in hits[0], (field, hits[0])
    hr = [h for h in hits if h["source"] == "hr"]
    assert hr, f"the hr key finds the hr page: {hits}"
    return hr[0]["doc_id"]


async def http_checks():
    async with over_http(os.environ["CAIRN_HR_KEY"]) as hr:
        await check_tools(hr)
        doc_id = await find_hr_page(hr)
        doc = await hr.call_tool("get_document", {"doc_id": doc_id})
        assert not doc.is_error, doc
        assert "confidential" in doc.structured_content["text"], doc.structured_content
        sources = await hr.call_tool("list_sources", {})
        names = {s["name"] for s in sources.structured_content["sources"]}
        assert names == {"samples", "hr"}, names
        templates = (await hr.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["cairn://doc/{doc_id}"], templates
        resource = await hr.read_resource(f"cairn://doc/{doc_id}")
        assert "confidential" in resource.contents[0].text, resource
        answer = await hr.call_tool("ask", {"question": "How long do refunds take?"})
        assert not answer.is_error, answer
        out = answer.structured_content
        assert out["answer"].strip(), out
        assert out["outcome"], out
        assert out["citations"], f"an answered question has verified citations: {out}"
        assert out["trace_id"], out
    async with over_http(os.environ["CAIRN_BOT_KEY"]) as bot:
        refused = await bot.call_tool("get_document", {"doc_id": doc_id})
        assert refused.is_error, f"a key without the hr group read {doc_id}: {refused}"
        assert refused.content[0].text.startswith("not_found:"), refused.content
        try:
            await bot.read_resource(f"cairn://doc/{doc_id}")
            raise AssertionError(f"a key without the hr group read cairn://doc/{doc_id}")
        except MCPError as e:
            assert "not_found" in str(e), e
        sources = await bot.call_tool("list_sources", {})
        names = {s["name"] for s in sources.structured_content["sources"]}
        assert names == {"samples"}, names
    print("http: tools listed, each tool called, a resource read, restricted document refused")


async def stdio_checks():
    def params(key_name):
        return StdioServerParameters(
            command=os.environ["CAIRN_BIN"],
            args=[
                "--config", os.environ["CAIRN_CONFIG"],
                "--data-dir", os.environ["CAIRN_DATA_DIR"],
                "-q", "mcp", "--key-name", key_name,
            ],
        )

    async with Client(params("hr")) as hr:
        await check_tools(hr)
        names = {s["name"] for s in (await hr.call_tool("list_sources", {})).structured_content["sources"]}
        assert names == {"samples", "hr"}, names
    async with Client(params("bot")) as bot:
        names = {s["name"] for s in (await bot.call_tool("list_sources", {})).structured_content["sources"]}
        assert names == {"samples"}, f"stdio runs with the named key's groups: {names}"
    print("stdio: tools listed, the named key's groups apply")


async def main():
    await http_checks()
    await stdio_checks()
    print("mcp client: all checks passed")


asyncio.run(main())
