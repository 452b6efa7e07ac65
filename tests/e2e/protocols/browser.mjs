// Debian's Chromium (driven by playwright-core) loads page.html once per scenario, all at
// once; the page streams chat completion chunks with the native EventSource through the
// gateway's openai-chat route (GET, the query as the POST body). Records what the page
// showed (report.py judges it).
//
//   node browser.mjs --base http://127.0.0.1:PORT --log upstream.jsonl --out browser.json \
//       --scenarios clean,... --profile DIR --artifacts DIR
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const key of ['base', 'log', 'out', 'scenarios', 'profile', 'artifacts']) {
  if (!args[key]) { console.error(`browser.mjs: --${key} is required`); process.exit(2); }
}
const HANG_MS = 15000;
const scenarios = args.scenarios.split(',');
const require = createRequire(import.meta.url);

async function load(context, scenario) {
  const nonce = randomUUID().slice(0, 12);
  const page = await context.newPage();
  const console_ = [];
  page.on('console', (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => console_.push(`pageerror: ${e.message}`));
  const responses = [];
  page.on('response', (r) => {
    if (new URL(r.url()).pathname.endsWith('/browser/chat')) responses.push({ status: r.status(), headers: r.headers() });
  });
  const query = { scenario, nonce };
  if (scenario === '502') query.prefix = '/down';
  let hung = false;
  try {
    await page.goto(`${args.base}/page/index.html?${new URLSearchParams(query)}`, { waitUntil: 'domcontentloaded', timeout: 10000 });
    await page.waitForFunction(() => window.__e2e && window.__e2e.done, null, { timeout: HANG_MS });
  } catch (e) {
    hung = true;
    console_.push(`wait: ${e.message.split('\n')[0]}`);
  }
  return { scenario, nonce, page, console_, responses, hung };
}

async function observe(run) {
  const state = await run.page.evaluate(() => window.__e2e).catch(() => null);
  const obs = { nonce: run.nonce, hung: run.hung || !state, text: '', error: null, complete: false, finish: null };
  if (state) {
    obs.text = state.tokens.join('');
    obs.finish = state.finish;
    obs.ended_by = state.endedBy;
    obs.got_done = state.gotDone;
    obs.seconds = state.endedAt ? (state.endedAt - state.startedAt) / 1000 : null;
    obs.shown_errors = state.errors;
    obs.plain_errors = state.plainErrors;
    obs.parse_errors = state.parseErrors;
    const response = run.responses[run.responses.length - 1];
    obs.http = run.responses.map((r) => r.status);
    if (state.errors.length) {
      const e = state.errors[0];
      obs.error = { kind: 'event', class: 'MessageEvent', message: e?.error?.message ?? JSON.stringify(e), status: null, type: e?.error?.type ?? e?.error?.code ?? null };
    } else if (state.plainErrors.length) {
      obs.error = {
        kind: 'network', class: 'Event', message: `EventSource error (readyState ${state.plainErrors[0].readyState})`,
        status: response ? response.status : null, type: response ? response.headers['x-sse-gateway-error'] ?? null : null,
        header: response ? response.headers['x-sse-gateway-error'] ?? null : null,
      };
    }
    obs.complete = state.gotDone && state.errors.length === 0;
  }
  obs.console = run.console_;
  return obs;
}

const results = {};
let context;
try {
  context = await chromium.launchPersistentContext(args.profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 900, height: 420 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  const runs = await Promise.all(scenarios.map((s) => load(context, s)));
  await new Promise((r) => setTimeout(r, 300));
  for (const run of runs) {
    results[run.scenario] = await observe(run);
    if (run.scenario === 'clean' || run.scenario === 'truncated') {
      const file = path.join(args.artifacts, `browser-${run.scenario}.png`);
      await run.page.screenshot({ path: file, fullPage: true }).catch(() => {});
    }
  }
} catch (e) {
  console.error(`browser.mjs: ${e.stack || e}`);
  for (const s of scenarios) if (!results[s]) results[s] = { hung: false, text: '', error: null, complete: false, note: `browser run failed: ${e.message}` };
} finally {
  if (context) await context.close().catch(() => {});
}
const log = fs.readFileSync(args.log, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
for (const obs of Object.values(results)) {
  obs.upstream_requests = obs.nonce ? log.filter((e) => e.event === 'request' && JSON.stringify(e.body).includes(obs.nonce)).length : 0;
}
const versions = { 'playwright-core': require('playwright-core/package.json').version };
fs.writeFileSync(args.out, JSON.stringify({ versions, results }, null, 2));
