// Chromium (Debian's, driven by playwright-core from tests/e2e/clients) loads the
// resume page through the relay; the page's native EventSource reads the answer and
// reconnects by itself when the relay cuts it. Writes what the page saw as JSON.
//
//   node browser.mjs --base http://127.0.0.1:RELAY --q QUERY --out page.json --profile DIR [--keep 1]
//
// With --keep 1 the page leaves its EventSource open at [DONE], and the run waits for
// the browser itself to close it (readyState CLOSED: what a 204 to its reconnect does).

import fs from 'node:fs';
import { chromium } from '../clients/node_modules/playwright-core/index.mjs';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const key of ['base', 'q', 'out', 'profile']) {
  if (!args[key]) { console.error(`browser.mjs: --${key} is required`); process.exit(2); }
}
const DONE_TIMEOUT_MS = 60000; // two reconnects (3 s each in Chromium) and the answer
const CLOSED_TIMEOUT_MS = 15000; // one reconnect after the end (3 s), with room

let context;
const result = { done: false, keep: args.keep === '1', problems: [] };
try {
  context = await chromium.launchPersistentContext(args.profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  const page = await context.newPage();
  const stream = `/api/stream/answer?q=${encodeURIComponent(args.q)}`;
  const keep = args.keep === '1' ? '1' : '0';
  await page.goto(`${args.base}/page/index.html?` + new URLSearchParams({ stream, keep }), { waitUntil: 'domcontentloaded' });
  try {
    await page.waitForFunction(() => window.__e2e && window.__e2e.done, null, { timeout: DONE_TIMEOUT_MS });
  } catch (e) {
    result.problems.push(`the page never saw [DONE]: ${e.message.split('\n')[0]}`);
  }
  if (keep === '1') {
    try {
      await page.waitForFunction(() => window.__e2e.closed, null, { timeout: CLOSED_TIMEOUT_MS });
    } catch (e) {
      result.problems.push(`EventSource still reconnecting ${CLOSED_TIMEOUT_MS / 1000} s after [DONE]: ${e.message.split('\n')[0]}`);
    }
  }
  Object.assign(result, await page.evaluate(() => window.__e2e));
} catch (e) {
  result.problems.push(`browser run failed: ${e.stack || e}`);
} finally {
  if (context) await context.close().catch(() => {});
}
fs.writeFileSync(args.out, JSON.stringify(result, null, 2));
