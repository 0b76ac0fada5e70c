// What a person waits for in the console with many runs in the store: sign in, then load the
// runs list and one run's page ROUNDS times each in headless Chromium, and print the median
// first contentful paint and the server's response time of each. Used by bench.sh.
// playwright-core as tests/console installs it (scripts/setup.sh).
import { chromium } from "../../tests/console/node_modules/playwright-core/index.mjs";

const [base, token, runId, rounds = "5"] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const median = (values) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${base}/ui/login`);
  await page.fill("#token", token);
  await page.press("#token", "Enter");
  await page.waitForURL(`${base}/ui/runs`);
  for (const [name, path] of [["runs list", "/ui/runs"], ["run page", `/ui/runs/${runId}`]]) {
    const paints = [];
    const responses = [];
    for (let i = 0; i < Number(rounds); i++) {
      await page.goto(`${base}${path}`);
      // Paint timing is reported a frame after it happens.
      await page.waitForFunction(
        () => performance.getEntriesByType("paint").some((e) => e.name === "first-contentful-paint"),
        null, { timeout: 5_000 });
      const timing = await page.evaluate(() => {
        const nav = performance.getEntriesByType("navigation")[0];
        const paint = performance.getEntriesByType("paint").find((e) => e.name === "first-contentful-paint");
        return { paint: paint?.startTime ?? NaN, response: nav.responseEnd - nav.requestStart };
      });
      paints.push(timing.paint);
      responses.push(timing.response);
    }
    console.log(`${name.padEnd(9)}  first contentful paint median ${median(paints).toFixed(1)} ms ` +
      `(${Math.min(...paints).toFixed(1)}–${Math.max(...paints).toFixed(1)}), server response median ` +
      `${median(responses).toFixed(1)} ms, ${rounds} loads`);
  }
} finally {
  await browser.close();
}
