// Opens GraphiQL in headless Chromium, runs the default query through the page, prints the
// result panel's text, then opens the docs explorer on Query and prints its text (GraphiQL
// fills it from graphql-js's standard introspection query), and saves a screenshot.
// Usage: node graphiql.mjs URL SCREENSHOT_PATH
// Exits non-zero if the page fails to load, asks the network for anything but the API, or
// shows no result or no docs. Chromium comes from Debian (/usr/bin/chromium); playwright-core
// only drives it.
import { chromium } from 'playwright-core';

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node graphiql.mjs URL SCREENSHOT_PATH');
  process.exit(2);
}
const origin = new URL(url).origin;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const foreign = [];
  page.on('request', (request) => {
    if (!request.url().startsWith(origin) && !request.url().startsWith('data:')) foreign.push(request.url());
  });
  const errors = [];
  page.on('pageerror', (error) => errors.push(String(error)));
  await page.goto(url, { waitUntil: 'load' });
  const run = page.locator('.graphiql-execute-button');
  await run.waitFor({ timeout: 15000 });
  await run.click();
  const result = page.locator('.result-window');
  await page.waitForFunction(
    () => (document.querySelector('.result-window')?.textContent || '').includes('"data"'),
    null,
    { timeout: 15000 },
  );
  const text = await result.innerText();
  await page.locator('.graphiql-sidebar button[aria-label="Show Documentation Explorer"]').click();
  const docs = page.locator('.graphiql-doc-explorer');
  await docs.waitFor({ timeout: 15000 });
  await docs.locator('a.graphiql-doc-explorer-type-name', { hasText: 'Query' }).first().click({ timeout: 15000 });
  await page.waitForFunction(
    () => (document.querySelector('.graphiql-doc-explorer')?.innerText || '').includes('Fields'),
    null,
    { timeout: 15000 },
  );
  const docsText = await docs.innerText();
  await page.screenshot({ path: screenshot, fullPage: true });
  if (foreign.length) {
    console.error('requests left the API:', foreign.join(', '));
    process.exit(1);
  }
  if (errors.length) {
    console.error('page errors:', errors.join('; '));
    process.exit(1);
  }
  console.log(text);
  console.log('--- docs explorer ---');
  console.log(docsText);
} finally {
  await browser.close();
}
