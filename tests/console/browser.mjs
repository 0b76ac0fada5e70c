// Drives Guild's web console in Debian's headless Chromium through Playwright, as a person
// would: sign in with the keyboard, find the run just made, open its timeline, find its HTTP
// exchange and its log line, press "Replay now", see a tampered bundle fail, be refused another
// tenant's run, and open `guild bundle inspect --html`'s file with no server. Screenshots of each
// page go to $SHOTS. Started by tests/all/console.rs, which passes everything it needs in the
// environment; exits 1 with the first thing that is not as expected.
import { chromium } from "playwright-core";
import { pathToFileURL } from "node:url";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`browser.mjs: ${name} is not set`);
  return value;
};
const base = env("GUILD_URL");
const shots = env("SHOTS");
const timeout = 15_000;

function check(condition, what) {
  if (!condition) throw new Error(`not as expected: ${what}`);
}

async function signIn(context, token) {
  const page = await context.newPage();
  page.setDefaultTimeout(timeout);
  await page.goto(`${base}/ui/runs`);
  check(new URL(page.url()).pathname === "/ui/login", `an anonymous visit goes to the sign-in form (at ${page.url()})`);
  // The token field has focus, and Enter submits: no mouse needed. Chromium applies `autofocus`
  // at its next rendering update, which can come after the load event on a busy machine: wait for
  // it (up to the timeout) rather than read the focus once.
  const focused = await page
    .waitForFunction(() => document.activeElement?.id === "token", null, { timeout })
    .then(() => "token", async () => page.evaluate(() => document.activeElement?.id ?? "nothing"));
  check(focused === "token", `the token field has focus (${focused || "the body"})`);
  await page.keyboard.type(token);
  await page.keyboard.press("Enter");
  await page.waitForURL(`${base}/ui/runs`);
  return page;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
  ],
});
try {
  // Alice: her runs, the HTTP run's timeline, a replay.
  const alice = await browser.newContext();
  const page = await signIn(alice, env("ALICE_TOKEN"));
  const runHttp = env("RUN_HTTP");
  const paint = await page.evaluate(() =>
    performance.getEntriesByType("paint").find((e) => e.name === "first-contentful-paint")?.startTime);
  console.log(`first contentful paint of /ui/runs: ${paint?.toFixed(1)} ms`);
  await page.screenshot({ path: `${shots}/runs.png`, fullPage: true });
  const link = page.getByRole("link", { name: runHttp });
  check(await link.count() === 1, `the run ${runHttp} is listed once`);
  await link.click();
  await page.waitForURL(`${base}/ui/runs/${runHttp}`);
  check((await page.locator("#verdict").innerText()).startsWith("Verified"), "the bundle verifies");
  const exchange = page.locator("tr.event.http details");
  check(await exchange.count() === 1, "one HTTP exchange on the timeline");
  await exchange.locator("summary").click();
  const upstream = env("UPSTREAM_URL");
  check((await exchange.innerText()).includes(upstream), `the exchange names ${upstream}`);
  check(await exchange.locator("table.headers").first().isVisible(), "expanded, its headers show");
  check((await exchange.innerText()).includes("Bearer {{secret:TOKEN}}"), "the secret shows as its placeholder");
  const logLine = page.locator("tr.event.log", { hasText: env("LOG_TEXT") });
  check(await logLine.count() === 1, "the tool's log line is on the timeline");
  await page.screenshot({ path: `${shots}/run.png`, fullPage: true });
  // Replay, by keyboard.
  await page.getByRole("button", { name: "Replay now" }).focus();
  await page.keyboard.press("Enter");
  await page.locator("#replay-verdict").waitFor();
  const verdict = await page.locator("#replay-verdict").innerText();
  check(verdict.startsWith("Replay identical"), `the replay is identical: ${verdict}`);
  await page.screenshot({ path: `${shots}/replay.png`, fullPage: true });

  // A bundle edited in the store shows its failure.
  await page.goto(`${base}/ui/runs/${env("RUN_TAMPERED")}`);
  const tampered = await page.locator("#verdict").innerText();
  check(tampered.startsWith("Does not verify"), `the tampered bundle fails: ${tampered}`);
  await page.screenshot({ path: `${shots}/tampered.png`, fullPage: true });

  // Tools and audit pages render for her.
  await page.goto(`${base}/ui/tools`);
  check(await page.getByRole("heading", { name: "http-get" }).count() === 1, "the tools page lists http-get");
  await page.screenshot({ path: `${shots}/tools.png`, fullPage: true });
  await page.goto(`${base}/ui/audit`);
  check((await page.locator("#audit-verdict").innerText()).startsWith("The chain verifies"), "the audit chain verifies");
  await page.screenshot({ path: `${shots}/audit.png`, fullPage: true });

  // Bob, by URL: the same 404 as for a run that does not exist.
  const bob = await browser.newContext();
  const bobPage = await signIn(bob, env("BOB_TOKEN"));
  const response = await bobPage.goto(`${base}/ui/runs/${runHttp}`);
  check(response.status() === 404, `another tenant's run is 404 (${response.status()})`);
  check((await bobPage.locator("main").innerText()).includes("No such run"), "and says no such run");

  // The auditor's file: no server, the same events.
  const offline = await browser.newContext({ offline: true });
  const report = await offline.newPage();
  await report.goto(pathToFileURL(env("REPORT_HTML")).href);
  const events = await report.locator("tr.event").count();
  check(events === Number(env("REPORT_EVENTS")), `the report shows the bundle's ${env("REPORT_EVENTS")} events (${events})`);
  check(await report.locator("tr.event.http").count() === 1, "with its HTTP exchange");
  await report.screenshot({ path: `${shots}/report.png`, fullPage: true });
  console.log("console: every page as expected");
} finally {
  await browser.close();
}
