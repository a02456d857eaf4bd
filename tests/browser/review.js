// Drives the Airlock reviewer web UI in headless Chromium, as a reviewer
// would: sign in through airlock-dev-idp, find the held request in the
// inbox, check what it shows, open it, and approve or deny it.
//
// Usage: node review.js <reviewer-url> <request-id> <approve|deny> <json-expectations>
// Environment: AIRLOCK_CHROMIUM (default /usr/bin/chromium), AIRLOCK_USER_DATA
// (a fresh empty directory), AIRLOCK_SCREENSHOT (optional: a PNG path for
// the inbox), AIRLOCK_LIVE_CHECK (optional: print READY, then wait for a new
// request to appear in the open inbox). With `scope` in the expectations,
// it approves in that scope, prints GRANTED, finds the grant, waits for its
// first use to show, and revokes it. When a vote sends the browser back
// to the issuer for a step-up sign-in, it signs in again as the same user,
// records what the pages said, and votes again. Prints one JSON line with what it
// saw, last; exits 1 on any failure.
"use strict";

const fs = require("fs");
const { chromium } = require("playwright-core");

const [base, requestId, decision, expectJson] = process.argv.slice(2);
const expected = JSON.parse(expectJson || "{}");
const executablePath = process.env.AIRLOCK_CHROMIUM || "/usr/bin/chromium";
const userDataDir = process.env.AIRLOCK_USER_DATA;

function fail(message) {
  console.error("review.js: " + message);
  process.exit(1);
}

(async () => {
  if (!base || !requestId || !["approve", "deny"].includes(decision)) {
    fail("usage: node review.js <reviewer-url> <request-id> <approve|deny> <json>");
  }
  if (!userDataDir) { fail("set AIRLOCK_USER_DATA to a fresh empty directory"); }
  if (!fs.existsSync(executablePath)) {
    fail(executablePath + " is missing: install Debian's chromium (./deploy/local/install-deps.sh)");
  }
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run",
    ],
    viewport: { width: 1280, height: 900 },
  });
  const seen = {};
  const page = context.pages()[0] || await context.newPage();
  try {
    page.setDefaultTimeout(20000);

    // Not signed in: the reviewer's sign-in page, then the issuer's.
    await page.goto(base + "/");
    await page.click("#sign-in");
    await page.waitForURL((url) => !url.toString().startsWith(base));
    seen.idpPage = await page.textContent("body");
    await page.click('button[data-user="' + expected.user + '"]');

    // Back at the inbox, signed in.
    await page.waitForURL(base + "/");
    await page.waitForSelector('article[data-request-id="' + requestId + '"]');
    seen.header = (await page.textContent("header")).replace(/\s+/g, " ").trim();
    const card = page.locator('article[data-request-id="' + requestId + '"]');
    seen.statement = await card.locator("pre.sql").innerText();
    seen.identity = (await card.locator(".identity").innerText()).replace(/\s+/g, " ").trim();
    seen.card = (await card.innerText()).replace(/\s+/g, " ").trim();
    seen.cookies = (await context.cookies()).map((c) => ({
      name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite, secure: c.secure,
    }));
    if (process.env.AIRLOCK_LIVE_CHECK) {
      // The test holds another statement once told READY; the open inbox
      // must show it without anyone reloading (server-sent events).
      console.log("READY");
      const other = 'article[data-request-id]:not([data-request-id="' + requestId + '"])';
      await page.waitForSelector(other, { timeout: 20000 });
      seen.liveArrival = await page.locator(other).first().getAttribute("data-request-id");
    }
    if (process.env.AIRLOCK_SCREENSHOT) {
      await page.screenshot({ path: process.env.AIRLOCK_SCREENSHOT, fullPage: true });
    }

    // The request page: approve or deny with a reason.
    await card.locator("a.button").click();
    await page.waitForURL(base + "/requests/" + requestId);
    seen.requestStatement = await page.locator("pre.sql").first().innerText();
    const shadow = page.locator("dd.shadow");
    seen.shadow = (await shadow.count()) ? (await shadow.first().innerText()).replace(/\s+/g, " ").trim() : null;
    const text = async (selector) => {
      const found = page.locator(selector);
      return (await found.count()) ? (await found.first().innerText()).replace(/\s+/g, " ").trim() : null;
    };
    seen.agentReason = await text("dd.agent-reason");
    seen.estimate = await text("dd.estimate");
    seen.recent = await text("table.recent");
    seen.bounds = await page.locator("input.bound").evaluateAll((inputs) => inputs.map((i) => [i.name, i.value]));
    if (expected.scope) {
      // Approve in scope: statements of this shape, for a while, a number
      // of times, each within a row bound.
      seen.shape = await text("dd.fingerprint");
      await page.check("#scope-fingerprint");
      await page.fill("#scope-ttl", expected.scope.ttl);
      await page.fill("#scope-max-uses", String(expected.scope.max_uses));
      await page.fill("#scope-max-rows", String(expected.scope.max_rows));
    }
    await page.fill("#reason", expected.reason || "checked in the browser");
    await page.click("#" + decision);
    const voted = base + "/requests/" + requestId + "?voted=" + decision;
    const refusedAt = base + "/requests/" + requestId + "/decide";
    await page.waitForURL((url) => url.toString() === voted || url.toString() === refusedAt);
    if (page.url() === refusedAt && await page.locator("#step-up").count()) {
      // Step-up: the vote was refused, and the page offers a stronger sign-in.
      seen.stepUpRefusal = (await page.textContent("#notice")).replace(/\s+/g, " ").trim();
      await page.click("#step-up");
      await page.waitForURL((url) => !url.toString().startsWith(base));
      seen.stepUpPage = (await page.textContent("body")).replace(/\s+/g, " ").trim();
      seen.stepUpClaims = new URL(page.url()).searchParams.get("claims");
      await page.click('button[data-user="' + expected.user + '"]');
      await page.waitForURL(base + "/requests/" + requestId + "?stepped_up=1");
      seen.steppedUpNotice = await page.textContent("#notice");
      await page.fill("#reason", expected.reason || "checked in the browser");
      await page.click("#" + decision);
    }
    await page.waitForURL(voted);
    seen.notice = await page.textContent("#notice");
    seen.state = await page.locator("article .state").first().innerText();
    seen.votes = (await page.locator("ul.votes").innerText().catch(() => "")).replace(/\s+/g, " ").trim();
    if (expected.scope) {
      // The test uses the grant once told GRANTED; the grant's page shows
      // the use, and the reviewer revokes it there.
      console.log("GRANTED");
      const reloadUntil = async (check, what) => {
        const deadline = Date.now() + 20000;
        for (;;) {
          if (await check()) { return; }
          if (Date.now() > deadline) { throw new Error("never saw " + what); }
          await page.waitForTimeout(300);
          await page.reload();
        }
      };
      await page.click('nav a[href="/grants"]');
      await page.waitForURL(base + "/grants");
      const row = page.locator('tr[data-grant-id="' + requestId + '"]');
      await reloadUntil(async () => (await row.count()) > 0, "the grant among the active ones");
      seen.grantRow = (await row.innerText()).replace(/\s+/g, " ").trim();
      await row.locator("a").first().click();
      await page.waitForURL(base + "/grants/" + requestId);
      await reloadUntil(async () => (await text("dd.uses") || "").startsWith("1 of"), "the grant's first use");
      seen.grantCard = await text("article.grant");
      seen.grantUses = await text("table.grant-uses");
      await page.fill("#revoke-reason", "cleanup finished");
      await page.click("#revoke");
      await page.waitForURL(base + "/grants/" + requestId + "?revoked=1");
      seen.revokedNotice = await text("#notice");
      seen.grantState = await text("article.grant .state");
      seen.revokedBy = await text("dd.revoked");
    }
    console.log(JSON.stringify(seen));
  } catch (e) {
    seen.failedAt = page.url();
    seen.failedPage = await page.textContent("body").catch(() => "");
    console.log(JSON.stringify(seen));
    fail(String(e && e.stack || e));
  } finally {
    await context.close();
  }
})();
