// Chromium (Debian's, driven by playwright-core) loads the test page through the
// gateway; the page's native EventSource streams each scenario from the flawed
// upstream through the gateway's `chat` route. Writes one result per scenario as JSON.
//
//   node browser.mjs --base http://127.0.0.1:PORT --log upstream.jsonl --plan plan.json \
//       --out browser.json --profile DIR --artifacts DIR [--scenarios blog,linger,...] \
//       [--page-origin ORIGIN --refused-origin ORIGIN --cors-out cors.json]
//
// With --page-origin, three cross-origin runs follow: the page is loaded from
// ORIGIN (another origin than the gateway's --base) and its EventSource streams the
// blog scenario from the gateway: on the `*` route without credentials, on the chat
// route withCredentials (a cookie for the gateway's host must arrive upstream, and the
// exact origin come back), and from --refused-origin, which the route does not list
// (the browser must refuse the stream). Their results go to --cors-out.

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const key of ['base', 'log', 'plan', 'out', 'profile', 'artifacts']) {
  if (!args[key]) { console.error(`browser.mjs: --${key} is required`); process.exit(2); }
}
const plan = JSON.parse(fs.readFileSync(args.plan, 'utf8'));
const scenarios = (args.scenarios || Object.keys(plan).join(',')).split(',');
const DONE_TIMEOUT_MS = 12000; // a page that has not ended by then hangs
const QUIET_MS = 3500;         // Chromium's EventSource reconnects after 3 s: wait past it
const LEAVE_AFTER = 3;         // abandon: the user stops the answer after this many tokens
const GONE_WITHIN_MS = 1000;   // abandon: the upstream must see the close this soon

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

function upstreamLog() {
  return fs.readFileSync(args.log, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

function upstreamRequests(q) {
  return upstreamLog()
    .filter((e) => e.event === 'request' && e.path.startsWith('/v1/assistant/stream') && e.body && e.body.q === q);
}

async function load(context, scenario) {
  const q = `load-${scenario}-${Math.random().toString(36).slice(2, 10)}`;
  const page = await context.newPage();
  const console_ = [];
  page.on('console', (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => console_.push(`pageerror: ${e.message}`));
  const streamResponses = [];
  page.on('response', (r) => {
    if (new URL(r.url()).pathname.startsWith('/api/stream')) {
      streamResponses.push({ status: r.status(), headers: r.headers() });
    }
  });
  const query = { scenario, q };
  if (scenario === 'abandon') query.leave_after = String(LEAVE_AFTER);
  const url = `${args.base}/page/index.html?` + new URLSearchParams(query);
  const started = Date.now();
  let ended = true;
  try {
    await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 10000 });
    await page.waitForFunction(() => window.__e2e && window.__e2e.done, null, { timeout: DONE_TIMEOUT_MS });
  } catch (e) {
    ended = false;
    console_.push(`wait: ${e.message.split('\n')[0]}`);
  }
  return { scenario, q, page, console_, streamResponses, started, ended };
}

async function judge(run) {
  const { scenario, q, page } = run;
  const leaving = scenario === 'abandon';
  const expected = leaving ? plan[scenario].slice(0, LEAVE_AFTER) : plan[scenario];
  const problems = [];
  let state = null;
  let answer = null;
  try {
    state = await page.evaluate(() => window.__e2e);
    answer = await page.evaluate(() => document.getElementById('answer').textContent);
  } catch (e) {
    problems.push(`could not read the page: ${e.message}`);
  }
  const requests = upstreamRequests(q);
  if (state) {
    if (!run.ended || !state.done) problems.push(`the stream never ended on the page (hang; ${DONE_TIMEOUT_MS} ms)`);
    else if (state.endedBy !== (leaving ? 'left' : 'done')) problems.push(`ended by ${state.endedBy}`);
    if (!same(state.tokens, expected)) {
      problems.push(`tokens ${JSON.stringify(state.tokens)} != sent ${JSON.stringify(expected)}`);
    }
    if (answer !== expected.join('')) problems.push(`DOM answer ${JSON.stringify(answer)} != ${JSON.stringify(expected.join(''))}`);
    if (state.parseErrors.length) problems.push(`unparsable data: ${JSON.stringify(state.parseErrors)}`);
    if (state.opens !== 1) problems.push(`onopen called ${state.opens} times (want 1)`);
    if (state.plainErrors.length) problems.push(`network error events (connection ended before [DONE]): ${JSON.stringify(state.plainErrors)}`);
    if (scenario === 'silent') {
      const types = state.errors.map((e) => e && e.error && e.error.type);
      if (!(state.errors.length === 1 && types[0] === 'upstream_idle_timeout' && state.errors[0].error.route === 'chat')) {
        problems.push(`want one error event with type upstream_idle_timeout on route chat, got ${JSON.stringify(state.errors)}`);
      }
    } else if (state.errors.length) {
      problems.push(`unexpected error events: ${JSON.stringify(state.errors)}`);
    }
  }
  if (requests.length !== 1) {
    problems.push(`upstream saw ${requests.length} requests for this page load (want exactly 1)`);
  } else {
    const r = requests[0];
    if (r.method !== 'POST') problems.push(`upstream request method ${r.method} (want POST)`);
    if (r.path !== `/v1/assistant/stream/${scenario}`) problems.push(`upstream path ${r.path}`);
    if (r.headers.accept !== 'text/event-stream') problems.push(`upstream accept ${r.headers.accept}`);
    if (!(r.headers['content-type'] || '').startsWith('application/json')) problems.push(`upstream content-type ${r.headers['content-type']}`);
    if (!same(r.body, { q, scenario }) && !same(r.body, { scenario, q })) problems.push(`upstream body ${JSON.stringify(r.body)}`);
    if (r.query) problems.push(`upstream query string kept: ${r.query}`);
  }
  let gone = null;
  if (leaving && requests.length === 1 && state && state.leftAt) {
    const end = upstreamLog().find((e) => e.event === 'end' && e.id === requests[0].id);
    gone = end ? { how: end.how, ms_after_leaving: Math.round(end.t * 1000 - state.leftAt), written: end.written } : null;
    if (!end || !end.how.startsWith('peer_closed')) {
      problems.push(`the upstream did not see its connection closed after the user left: ${JSON.stringify(end)}`);
    } else if (gone.ms_after_leaving > GONE_WITHIN_MS) {
      problems.push(`the upstream saw the close ${gone.ms_after_leaving} ms after the user left (want <= ${GONE_WITHIN_MS})`);
    }
  }
  return {
    scenario,
    pass: problems.length === 0,
    problems,
    detail: {
      q,
      ms_to_end: state && state.endedAt ? state.endedAt - state.startedAt : null,
      opens: state && state.opens,
      messages: state && state.messages,
      errors: state && state.errors,
      plain_errors: state && state.plainErrors,
      upstream_requests: requests.length,
      upstream_after_leaving: gone,
      stream_responses: run.streamResponses,
      console: run.console_,
    },
  };
}

// The cross-origin runs: which page origin, which route, with or without credentials.
const CROSS = [
  { name: 'cors_any_origin', origin: args['page-origin'], path: '/api/public/', credentials: false, allowed: true },
  { name: 'cors_credentials', origin: args['page-origin'], path: '/api/stream/', credentials: true, allowed: true },
  { name: 'cors_refused_origin', origin: args['refused-origin'], path: '/api/stream/', credentials: true, allowed: false },
];
const COOKIE = 'e2e_session=c00kie';

async function crossLoad(context, spec) {
  const q = `${spec.name}-${Math.random().toString(36).slice(2, 10)}`;
  const page = await context.newPage();
  const console_ = [];
  page.on('console', (m) => console_.push(`${m.type()}: ${m.text()}`));
  const streamResponses = [];
  page.on('response', (r) => {
    if (r.url().startsWith(args.base)) streamResponses.push({ status: r.status(), headers: r.headers() });
  });
  const query = { scenario: 'blog', q, gateway: args.base, stream_path: spec.path };
  if (spec.credentials) query.credentials = '1';
  let ended = true;
  try {
    await page.goto(`${spec.origin}/page/index.html?` + new URLSearchParams(query), { waitUntil: 'domcontentloaded', timeout: 10000 });
    await page.waitForFunction(() => window.__e2e && window.__e2e.done, null, { timeout: DONE_TIMEOUT_MS });
  } catch (e) {
    ended = false;
    console_.push(`wait: ${e.message.split('\n')[0]}`);
  }
  const problems = [];
  let state = null;
  try {
    state = await page.evaluate(() => window.__e2e);
  } catch (e) {
    problems.push(`could not read the page: ${e.message}`);
  }
  const requests = upstreamRequests(q);
  const origin = streamResponses.length ? streamResponses[0].headers['access-control-allow-origin'] : undefined;
  if (state) {
    if (!ended || !state.done) problems.push(`the page never ended (${DONE_TIMEOUT_MS} ms)`);
    if (spec.allowed) {
      if (state.endedBy !== 'done') problems.push(`ended by ${state.endedBy}`);
      if (!same(state.tokens, plan.blog)) problems.push(`tokens ${JSON.stringify(state.tokens)} != ${JSON.stringify(plan.blog)}`);
      if (state.opens !== 1) problems.push(`onopen called ${state.opens} times (want 1)`);
      const want = spec.credentials ? spec.origin : '*';
      if (origin !== want) problems.push(`Access-Control-Allow-Origin ${JSON.stringify(origin)} (want ${want})`);
    } else {
      // The browser refuses the response: no open, no token, the EventSource closed.
      if (state.endedBy !== 'closed') problems.push(`ended by ${state.endedBy} (want closed: the browser refuses it)`);
      if (state.opens !== 0 || state.tokens.length) problems.push(`the page read the stream: opens ${state.opens}, tokens ${JSON.stringify(state.tokens)}`);
      if (origin !== undefined) problems.push(`Access-Control-Allow-Origin ${JSON.stringify(origin)} sent to a refused origin`);
    }
  }
  if (requests.length !== 1) problems.push(`upstream saw ${requests.length} requests (want exactly 1: no reconnect)`);
  else {
    const r = requests[0];
    if (r.path !== '/v1/assistant/stream/blog') problems.push(`upstream path ${r.path}`);
    if (r.headers.origin !== spec.origin) problems.push(`upstream origin ${r.headers.origin} (want ${spec.origin})`);
    const cookie = (r.headers.cookie || '').includes(COOKIE);
    if (spec.allowed && cookie !== spec.credentials) {
      problems.push(spec.credentials ? 'withCredentials sent no cookie' : `a cookie went without credentials: ${r.headers.cookie}`);
    }
  }
  await page.close().catch(() => {});
  return {
    scenario: spec.name,
    pass: problems.length === 0,
    problems,
    detail: { q, page_origin: spec.origin, state, upstream_requests: requests.length, stream_responses: streamResponses, console: console_ },
  };
}

const results = {};
const crossResults = {};
let context;
try {
  context = await chromium.launchPersistentContext(args.profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 900, height: 520 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  // All page loads at once: each has its own `q`, so the upstream log tells them apart.
  const runs = await Promise.all(scenarios.map((s) => load(context, s)));
  await sleep(QUIET_MS);
  for (const run of runs) {
    results[run.scenario] = await judge(run);
    if (run.scenario === 'blog' || run.scenario === 'silent') {
      const file = path.join(args.artifacts, `browser-${run.scenario}.png`);
      await run.page.screenshot({ path: file, fullPage: true });
      results[run.scenario].screenshot = path.resolve(file);
    }
  }
  if (args['page-origin']) {
    // A cookie of the gateway's host (cookies ignore ports): only a credentialed
    // cross-origin EventSource may carry it.
    await context.addCookies([{ name: 'e2e_session', value: 'c00kie', url: args.base, sameSite: 'Lax' }]);
    for (const spec of CROSS) crossResults[spec.name] = await crossLoad(context, spec);
  }
} catch (e) {
  console.error(`browser.mjs: ${e.stack || e}`);
  for (const s of scenarios) if (!results[s]) results[s] = { scenario: s, pass: false, problems: [`browser run failed: ${e.message}`] };
} finally {
  if (context) await context.close().catch(() => {});
}
fs.writeFileSync(args.out, JSON.stringify(results, null, 2));
if (args['cors-out']) {
  for (const spec of CROSS) {
    if (!crossResults[spec.name]) crossResults[spec.name] = { scenario: spec.name, pass: false, problems: ['the cross-origin run did not happen'] };
  }
  fs.writeFileSync(args['cors-out'], JSON.stringify(crossResults, null, 2));
}
