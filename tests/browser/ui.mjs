// Drives the `bus ui` page as an operator would, in Debian's headless Chromium
// (playwright-core downloads no browser of its own): the endpoint and its failed count on the
// home page, its failed messages, one message, Retry, the confirmation, the notice, and the
// failed count one lower. Prints each step and, last, one JSON line with what it saw.
//
//   node tests/browser/ui.mjs URL SCREENSHOT.png [ENDPOINT]
//
// URL is the ui's base address; the screenshot is of the failed-message list after the retry.
// ENDPOINT defaults to the first endpoint with failed messages. CHROMIUM overrides the
// browser's path (/usr/bin/chromium). Exits non-zero, saying why, when a step fails.
import { chromium } from 'playwright-core';

const [base, screenshot, wanted] = process.argv.slice(2);
if (!base || !screenshot) {
  console.error('usage: node ui.mjs URL SCREENSHOT.png [ENDPOINT]');
  process.exit(2);
}

const step = (text) => console.log(`ui.mjs: ${text}`);

function check(ok, what) {
  if (!ok) throw new Error(what);
}

/** The failed count of `endpoint` on the home page, as a number. */
async function failedCount(page, endpoint) {
  const text = await page.locator(`[data-failed-of="${endpoint}"]`).innerText();
  const n = Number.parseInt(text.trim(), 10);
  check(Number.isInteger(n), `the failed count of ${endpoint} is a number, not ${JSON.stringify(text)}`);
  return n;
}

let page;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // Tests run as root in CI, where Chromium's sandbox cannot start.
  chromiumSandbox: false,
});
try {
  page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  page.setDefaultTimeout(15_000);

  await page.goto(new URL('/', base).href);
  check((await page.locator('h1').innerText()) === 'Endpoints', 'the home page lists the endpoints');
  let endpoint = wanted;
  if (!endpoint) {
    for (const cell of await page.locator('[data-failed-of]').all()) {
      if (Number.parseInt(await cell.innerText(), 10) > 0) {
        endpoint = await cell.getAttribute('data-failed-of');
        break;
      }
    }
  }
  check(endpoint, 'an endpoint with failed messages is listed');
  const before = await failedCount(page, endpoint);
  check(before > 0, `${endpoint} has failed messages`);
  step(`${endpoint}: ${before} failed`);

  await page.getByRole('link', { name: endpoint, exact: true }).click();
  await page.waitForURL(/\/errors/);
  const first = page.locator('td.id a').first();
  const id = (await first.innerText()).trim();
  check(id, 'the failed messages are listed');
  step(`first failed message: ${id}`);

  await first.click();
  await page.getByRole('heading', { name: `Message ${id}` }).waitFor();
  check((await page.locator('pre.body').innerText()).trim().startsWith('{'), 'the body is shown as JSON');
  await page.getByRole('button', { name: 'Retry', exact: true }).click();

  await page.getByRole('heading', { name: `Send 1 message back to ${endpoint}?` }).waitFor();
  step('asked to confirm');
  await page.getByRole('button', { name: 'Yes, send 1 message back' }).click();

  const notice = page.locator('.notice');
  await notice.waitFor();
  const said = (await notice.innerText()).trim();
  check(said === `1 message sent back to ${endpoint}`, `the notice says what was done, not ${JSON.stringify(said)}`);
  check((await page.locator(`td.id a:text-is("${id}")`).count()) === 0, `${id} left the list`);
  step(`notice: ${said}`);
  await page.screenshot({ path: screenshot, fullPage: true });

  await page.getByRole('link', { name: 'bus', exact: true }).click();
  await page.getByRole('heading', { name: 'Endpoints' }).waitFor();
  const after = await failedCount(page, endpoint);
  check(after === before - 1, `the failed count went from ${before} to ${before - 1}, not ${after}`);
  step(`${endpoint}: ${after} failed`);
  console.log(JSON.stringify({ endpoint, retried: id, before, after }));
} catch (error) {
  console.error(`ui.mjs: ${error.message}`);
  if (page) {
    // Where it stopped, to tell a refused request from a changed page.
    const text = await page.locator('body').innerText().catch(() => '');
    console.error(`ui.mjs: at ${page.url()}:\n${text.slice(0, 1000)}`);
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
