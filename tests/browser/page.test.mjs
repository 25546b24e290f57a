// Browser scenarios for cairn's bundled page, run by `tests/it/browser.rs` with
// `node --test`. Drives the system Chromium through playwright-core (no browser download).
//
// Env: CAIRN_BASE_URL (required), CAIRN_ADMIN_KEY, CAIRN_CHROMIUM, CAIRN_ARTIFACTS.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.CAIRN_BASE_URL;
const ADMIN_KEY = process.env.CAIRN_ADMIN_KEY || "";
const EXE = process.env.CAIRN_CHROMIUM || "/usr/bin/chromium";
const ART = process.env.CAIRN_ARTIFACTS || join(process.cwd(), "target", "browser-artifacts");
assert.ok(BASE, "CAIRN_BASE_URL must be set");
mkdirSync(ART, { recursive: true });

const FALLBACK = "The answer service is down; here are the closest documents instead.";

let ctx, profile;

before(async () => {
  profile = mkdtempSync(join(tmpdir(), "cairn-page-"));
  ctx = await chromium.launchPersistentContext(profile, {
    executablePath: EXE,
    headless: true,
    viewport: { width: 1100, height: 900 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
});

after(async () => {
  await ctx?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

async function freshPage(viewport) {
  const page = await ctx.newPage();
  if (viewport) await page.setViewportSize(viewport);
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  page.errors = errors;
  await page.goto(BASE + "/");
  return page;
}

const shot = (page, name) => page.screenshot({ path: join(ART, name + ".png"), fullPage: true });

// Records every distinct text of the answer box as it changes.
async function watchAnswer(page) {
  await page.evaluate(() => {
    window.__states = [];
    const box = document.querySelector("#answer");
    new MutationObserver(() => {
      const t = box.textContent;
      if (t && window.__states[window.__states.length - 1] !== t) window.__states.push(t);
    }).observe(box, { childList: true, subtree: true, characterData: true });
  });
}

async function realHits(q) {
  const r = await fetch(`${BASE}/search?q=${encodeURIComponent(q)}&k=3`);
  assert.equal(r.status, 200);
  return (await r.json()).hits;
}

function sse(events) {
  return events.map(([name, data], i) => `id: ${i + 1}\nevent: ${name}\ndata: ${JSON.stringify(data)}\n\n`).join("");
}

test("first load is small and self-contained", async () => {
  const r = await fetch(BASE + "/");
  assert.equal(r.status, 200);
  const body = await r.text();
  assert.ok(body.length < 100_000, `page is ${body.length} bytes`);
  assert.doesNotMatch(body, /<script[^>]+src=|<link[^>]+stylesheet/, "no external assets");
});

test("search as you type shows highlighted hits with a why toggle", async () => {
  const page = await freshPage();
  await page.locator("#q").pressSequentially("refund", { delay: 40 });
  const first = page.locator("#hits > li").first();
  await first.waitFor();
  assert.ok(await page.locator("#hits mark").count() > 0, "snippets carry <mark> highlights");
  assert.match(await page.locator("#search-status").textContent(), /result/);
  assert.match(await first.locator(".meta").textContent(), /samples/);
  await first.locator("summary").click();
  assert.match(await first.locator("dl.why").textContent(), /Keyword rank/);
  // The filter lists sources seen in hits.
  assert.ok(await page.locator("#source option", { hasText: "samples" }).count() === 1);
  await shot(page, "01-search-results");
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("text from the server is escaped, only the snippet's marks are HTML", async () => {
  const page = await freshPage();
  await page.route("**/search?*", route => route.fulfill({
    contentType: "application/json",
    body: JSON.stringify({ took_ms: 1, hits: [{
      doc_id: "x", chunk_id: "x#0", title: '<img src=x onerror="window.__pwned=1">Evil', url: "javascript:alert(1)",
      source: "<b>s</b>", score: 1, snippet: "safe &lt;b&gt; <mark>hit</mark>", page: null, heading_path: ["<i>h</i>"],
      updated_at: "2025-01-02T00:00:00Z", breakdown: { bm25_rank: 1, bm25_score: 1, vector_rank: null, vector_similarity: null, fused: 1 },
    }] }),
  }));
  await page.locator("#q").fill("evil");
  await page.locator("#hits > li").waitFor();
  assert.equal(await page.locator("#hits img, #hits b, #hits i, #hits a").count(), 0);
  assert.equal(await page.locator("#hits mark").count(), 1);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  await page.close();
});

test("search with no results says so", async () => {
  const page = await freshPage();
  await page.route("**/search?*", route => route.fulfill({ contentType: "application/json", body: '{"hits":[],"took_ms":0.5}' }));
  await page.locator("#q").fill("zzqx");
  await page.locator("#search-status", { hasText: "No results" }).waitFor();
  await page.close();
});

test("an answer streams in and its citation opens the cited passage", async () => {
  const page = await freshPage();
  const question = "How long do refunds take?";
  await page.locator("#q").fill(question);
  await watchAnswer(page);
  await page.locator("#q").press("Enter");
  await page.locator("#answer-status", { hasText: "Done." }).waitFor({ timeout: 20_000 });
  const states = await page.evaluate(() => window.__states);
  const final = await page.locator("#answer").textContent();
  const intermediate = states.filter(s => s !== final);
  assert.ok(intermediate.length >= 2, `expected the answer to grow in steps, saw ${states.length} states`);
  for (const s of intermediate) assert.ok(final.startsWith(s), "each state is a prefix of the final answer");

  const cite = page.locator("#answer button.cite").first();
  await cite.waitFor();
  const n = await cite.getAttribute("data-n");
  // The server's own view of the same answer (non-streaming) tells which document [n] is.
  const r = await fetch(BASE + "/ask", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ question, stream: false }),
  });
  const expected = (await r.json()).citations.find(c => String(c.n) === n);
  assert.ok(expected, `citation ${n} exists`);

  await cite.focus();
  await page.keyboard.press("Enter");
  const passage = page.locator("#passage");
  await passage.waitFor();
  assert.ok((await passage.locator("h3").textContent()).includes(expected.title));
  assert.equal((await passage.locator("blockquote mark").textContent()).trim(), expected.quote.trim());
  assert.equal(await page.evaluate(() => document.activeElement.id), "passage", "focus moves to the passage");
  assert.ok(await page.locator("#sources li").count() >= 1, "sources list");
  assert.match(await page.locator("#usage").textContent(), /extractive/);
  await shot(page, "02-answer-with-citation");
  await page.keyboard.press("Escape");
  assert.ok(await passage.isHidden());
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("an answer is rated with the keyboard and the rating reaches the server", async () => {
  const page = await freshPage();
  await page.locator("#q").fill("How long do refunds take?");
  await page.locator("#q").press("Enter");
  await page.locator("#answer-status", { hasText: "Done." }).waitFor({ timeout: 20_000 });
  const up = page.getByRole("button", { name: "Helpful", exact: true });
  const down = page.getByRole("button", { name: "Not helpful", exact: true });
  assert.equal(await up.getAttribute("aria-pressed"), "false");
  // Keyboard only: Space presses the focused button, Tab reaches the next, Enter presses it.
  await up.focus();
  let [resp] = await Promise.all([page.waitForResponse(r => r.url().endsWith("/feedback")), page.keyboard.press("Space")]);
  assert.equal(resp.status(), 201);
  const first = await resp.json();
  assert.equal(first.rating, "up");
  assert.equal(await up.getAttribute("aria-pressed"), "true");
  assert.equal(await down.getAttribute("aria-pressed"), "false");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.getAttribute("aria-label")), "Not helpful");
  [resp] = await Promise.all([page.waitForResponse(r => r.url().endsWith("/feedback")), page.keyboard.press("Enter")]);
  assert.equal(resp.status(), 201);
  assert.equal((await resp.json()).replaced, true, "a second rating replaces the first");
  assert.equal(await down.getAttribute("aria-pressed"), "true");
  assert.equal(await up.getAttribute("aria-pressed"), "false");
  await page.getByLabel("What was wrong? (optional)").fill("It does not say when the money arrives.");
  [resp] = await Promise.all([page.waitForResponse(r => r.url().endsWith("/feedback")), page.getByRole("button", { name: "Send comment" }).press("Enter")]);
  assert.equal(resp.status(), 201);
  await page.locator("#rate-status", { hasText: "comment was recorded" }).waitFor();
  await shot(page, "02b-answer-rated");
  // The server kept one rating for the answer: down, with the comment.
  const r = await fetch(BASE + "/admin/feedback", { headers: { authorization: "Bearer " + ADMIN_KEY } });
  assert.equal(r.status, 200);
  const view = await r.json();
  const mine = view.recent_down.filter(f => f.trace_id === first.trace_id);
  assert.equal(mine.length, 1);
  assert.equal(mine[0].comment, "It does not say when the money arrives.");
  // A new question starts unrated.
  await page.locator("#q").fill("How much does shipping cost?");
  await page.locator("#q").press("Enter");
  await page.locator("#answer-status", { hasText: "Done." }).waitFor({ timeout: 20_000 });
  assert.equal(await down.getAttribute("aria-pressed"), "false");
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("a follow-up continues the conversation and asking for a person is handed off", async () => {
  const page = await freshPage();
  await page.locator("#q").fill("I want to send back some unused boots.");
  await page.locator("#q").press("Enter");
  await page.locator("#answer-status", { hasText: "Done." }).waitFor({ timeout: 20_000 });
  assert.ok(await page.locator("#handoff").isHidden(), "an answered question needs no person");
  // The follow-up box appears once an answer has a thread; checked, the next question continues it.
  await page.getByLabel("Follow-up to the last answer").check();
  await page.locator("#q").fill("How many days do I have?");
  const [req] = await Promise.all([
    page.waitForRequest(r => r.url().endsWith("/ask") && r.method() === "POST"),
    page.locator("#q").press("Enter"),
  ]);
  assert.ok(JSON.parse(req.postData()).thread_id, "the follow-up names the thread");
  await page.locator("#answer-status", { hasText: "Done." }).waitFor({ timeout: 20_000 });
  assert.match(await page.locator("#answer-query").textContent(), /boots/i, "the search used the earlier turn");
  await page.locator("#q").fill("Can I talk to a human please?");
  await page.locator("#q").press("Enter");
  await page.locator("#handoff", { hasText: "asked to talk to a person" }).waitFor({ timeout: 20_000 });
  await shot(page, "02c-follow-up-and-hand-off");
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("Stop cancels the stream and keeps what arrived", async () => {
  const page = await freshPage();
  await page.locator("#q").fill("How do I return an item in its original packaging?");
  await page.locator("#ask-btn").click();
  await page.waitForFunction(() => document.querySelector("#answer").textContent.length > 0);
  await page.locator("#stop-btn").click();
  await page.locator("#answer-status", { hasText: "Stopped." }).waitFor();
  assert.ok((await page.locator("#answer").textContent()).length > 0);
  assert.ok(await page.locator("#retry-btn").isVisible());
  assert.ok(await page.locator("#stop-btn").isHidden());
  await page.close();
});

test("a question nothing answers gets a designed I-don't-know", async () => {
  const page = await freshPage();
  await page.locator("#q").fill("xylophone quasar zeppelin");
  await page.locator("#ask-btn").click();
  await page.locator("#answer.no-answer").waitFor({ timeout: 20_000 });
  assert.match(await page.locator("#answer-notice").textContent(), /Nothing in the indexed sources/);
  await page.close();
});

test("provider down shows the operator's fallback text and the retrieved sources", async () => {
  const page = await freshPage();
  const hits = await realHits("refunds");
  await page.route("**/ask", route => route.fulfill({
    contentType: "text/event-stream",
    body: ": keep-alive\n\n" + sse([["retrieval", { hits }], ["error", { code: "providers_unavailable", message: FALLBACK }]]),
  }));
  await page.locator("#q").fill("How long do refunds take?");
  await page.locator("#q").press("Enter");
  await page.locator("#answer-notice", { hasText: FALLBACK }).waitFor();
  assert.match(await page.locator("#sources-h").textContent(), /Possibly relevant/);
  assert.equal(await page.locator("#sources li").count(), hits.length);
  await shot(page, "03-provider-down");
  await page.close();
});

test("rate limiting shows when to retry", async () => {
  const page = await freshPage();
  await page.route("**/ask", route => route.fulfill({
    status: 429, headers: { "retry-after": "7" }, contentType: "application/json",
    body: JSON.stringify({ error: { code: "rate_limited", message: "rate limit reached; retry in 7 s" } }),
  }));
  await page.locator("#q").fill("refunds");
  await page.locator("#q").press("Enter");
  await page.locator("#answer-notice", { hasText: "7 s" }).waitFor();
  assert.ok(await page.locator("#retry-btn").isDisabled(), "retry waits for the limit");
  await page.close();
});

test("a dropped connection keeps the partial answer and offers Retry", async () => {
  const page = await freshPage();
  await page.route("**/ask", route => route.fulfill({
    contentType: "text/event-stream",
    body: sse([["retrieval", { hits: [] }], ["token", { text: "Refunds are issued" }], ["token", { text: " within 5" }]]),
  }));
  await page.locator("#q").fill("refunds");
  await page.locator("#q").press("Enter");
  await page.locator("#answer-notice", { hasText: "connection dropped" }).waitFor();
  assert.equal(await page.locator("#answer").textContent(), "Refunds are issued within 5");
  await page.unroute("**/ask");
  await page.locator("#retry-btn").click();
  await page.locator("#answer-status", { hasText: "Done." }).waitFor({ timeout: 20_000 });
  assert.equal(await page.locator("#answer-notice").textContent(), "");
  await page.close();
});

test("admin view: key prompt, sources, reindex with progress and report, traces, charts", async () => {
  const page = await freshPage();
  await page.goto(BASE + "/#admin");
  await page.locator("#admin-key").fill("wrong-key");
  await page.locator("#admin-key").press("Enter");
  await page.locator("#admin-msg .error").waitFor();
  await page.locator("#admin-key").fill(ADMIN_KEY);
  await page.locator("#admin-key").press("Enter");
  const row = page.locator("#sources-rows tr", { hasText: "samples" });
  await row.waitFor();
  assert.ok(Number(await row.locator("td.num").first().textContent()) > 0, "documents are counted");
  await row.getByRole("button", { name: /Reindex/ }).click();
  await page.locator("#job", { hasText: "succeeded" }).waitFor({ timeout: 30_000 });
  assert.ok(await page.locator("#trace-rows tr").count() >= 1);
  await page.locator("#charts svg").first().waitFor();
  assert.ok(await page.locator("#charts figure").count() >= 4);
  // The answer rated "not helpful" above is listed with its comment, and charted.
  await page.locator("#feedback-rows tr", { hasText: "It does not say when the money arrives." }).waitFor();
  assert.ok(await page.locator("#feedback-svg rect").count() >= 1, "today's ratings are a bar");
  assert.match(await page.locator("#feedback-svg").getAttribute("aria-label"), /0% helpful of 1/);
  // The reindex's job.completed webhook is listed with its outcome (delivery is in the
  // background: reload until it shows).
  let delivered = false;
  for (let i = 0; i < 20 && !delivered; i++) {
    await page.reload();
    await page.locator("#hook-rows tr").first().waitFor();
    delivered = await page.locator("#hook-rows tr", { hasText: "job.completed" }).filter({ hasText: "delivered" }).count() > 0;
    if (!delivered) await page.waitForTimeout(500);
  }
  assert.ok(delivered, "the job.completed delivery is shown as delivered");
  assert.match(await page.locator("#hook-endpoints").textContent(), /\/hook \(job\.completed\)/);
  assert.match(await page.locator("#sources-rows tr", { hasText: "samples" }).textContent(), /manual/, "a source without refresh is synced manually");
  await shot(page, "04-admin");
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("phone width: no horizontal scrolling, answer readable", async () => {
  const page = await freshPage({ width: 375, height: 800 });
  await page.locator("#q").pressSequentially("shipping", { delay: 30 });
  await page.locator("#hits > li").first().waitFor();
  await page.locator("#q").fill("How much does shipping cost?");
  await page.locator("#q").press("Enter");
  await page.waitForFunction(() => !document.querySelector("#stop-btn").offsetParent, null, { timeout: 20_000 });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 375, `page is ${width}px wide at a 375px viewport`);
  await shot(page, "05-phone");
  await page.goto(BASE + "/#admin");
  await page.locator("#admin-key").fill(ADMIN_KEY);
  await page.locator("#admin-key").press("Enter");
  await page.locator("#sources-rows tr").first().waitFor();
  const adminWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(adminWidth <= 375, `admin is ${adminWidth}px wide at a 375px viewport`);
  await shot(page, "06-phone-admin");
  await page.close();
});
