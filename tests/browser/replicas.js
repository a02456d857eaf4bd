// A reviewer's browser in front of several reviewer replicas: signs in once
// through airlock-dev-idp, then opens the inbox whenever the test says so
// on standard input, and reports each time whether it is still signed in.
//
// Usage: node replicas.js <reviewer-url> <user-sub>
// Environment: AIRLOCK_CHROMIUM, AIRLOCK_USER_DATA (as for review.js).
// Prints "SIGNED_IN", then for every "VISIT" line read: "PAGE <json>" with
// the page's status and header; exits on "QUIT" or end of input, 1 on any
// failure.
"use strict";

const fs = require("fs");
const readline = require("readline");
const { chromium } = require("playwright-core");

const [base, user] = process.argv.slice(2);
const executablePath = process.env.AIRLOCK_CHROMIUM || "/usr/bin/chromium";
const userDataDir = process.env.AIRLOCK_USER_DATA;

function fail(message) {
  console.error("replicas.js: " + message);
  process.exit(1);
}

(async () => {
  if (!base || !user) { fail("usage: node replicas.js <reviewer-url> <user-sub>"); }
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
  });
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(20000);
  try {
    await page.goto(base + "/");
    await page.click("#sign-in");
    await page.waitForURL((url) => !url.toString().startsWith(base));
    await page.click('button[data-user="' + user + '"]');
    await page.waitForURL(base + "/");
    await page.waitForSelector("header");
    console.log("SIGNED_IN");
    const lines = readline.createInterface({ input: process.stdin });
    for await (const line of lines) {
      if (line.trim() === "QUIT") { break; }
      if (line.trim() !== "VISIT") { continue; }
      const response = await page.goto(base + "/");
      const header = await page.textContent("header").catch(() => "");
      const signIn = await page.locator("#sign-in").count();
      console.log("PAGE " + JSON.stringify({
        status: response ? response.status() : 0,
        header: (header || "").replace(/\s+/g, " ").trim(),
        signInOffered: signIn > 0,
      }));
    }
  } catch (e) {
    fail(e.stack || String(e));
  } finally {
    await context.close();
  }
})();
