// The Vercel AI SDK streams every scenario through the gateway, as a user's code would
// (streamText, reading fullStream), and records what it showed (report.py judges it):
//
//   ai-chat        @ai-sdk/openai's chat model      (POST /v1/chat/completions)
//   ai-responses   @ai-sdk/openai's responses model (POST /v1/responses)
//   ai-anthropic   @ai-sdk/anthropic's model        (POST /v1/messages)
//
//   node ai_sdk.mjs --base http://127.0.0.1:PORT --log upstream.jsonl --out ai.json \
//       --scenarios clean,... [--clients ai-chat,...]
//
// The scenario is the model id; `502` goes to the routes under /down with model `clean`,
// `504` is model `hang_headers`. maxRetries: 0. All calls run at once; one not ended
// after HANG_MS is recorded as a hang.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { randomUUID } from 'node:crypto';
import { streamText } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { createAnthropic } from '@ai-sdk/anthropic';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const key of ['base', 'log', 'out', 'scenarios']) {
  if (!args[key]) { console.error(`ai_sdk.mjs: --${key} is required`); process.exit(2); }
}
const HANG_MS = 15000;
const require = createRequire(import.meta.url);
const version = (name) => require(`${name}/package.json`).version;

function target(scenario) {
  if (scenario === '502') return { model: 'clean', base: `${args.base}/down` };
  if (scenario === '504') return { model: 'hang_headers', base: args.base };
  return { model: scenario, base: args.base };
}

const CLIENTS = {
  'ai-chat': (base, model) => createOpenAI({ baseURL: `${base}/v1`, apiKey: 'test' }).chat(model),
  'ai-responses': (base, model) => createOpenAI({ baseURL: `${base}/v1`, apiKey: 'test' }).responses(model),
  'ai-anthropic': (base, model) => createAnthropic({ baseURL: `${base}/v1`, apiKey: 'test' })(model),
};

// What a user's error handler sees.
function describe(error, kind) {
  if (error == null) return null;
  let bodyMessage = null;
  let type = (error.type && error.type !== 'error' ? error.type : null) ?? error.code ?? null;
  if (typeof error.responseBody === 'string') {
    try {
      const body = JSON.parse(error.responseBody);
      const inner = body && typeof body.error === 'object' && body.error ? body.error : body;
      bodyMessage = inner?.message ?? null;
      type = type ?? inner?.type ?? inner?.code ?? null;
    } catch { /* not JSON */ }
  }
  if (type == null && error.data && typeof error.data === 'object') {
    const d = error.data.error && typeof error.data.error === 'object' ? error.data.error : error.data;
    type = d.type ?? d.code ?? null;
  }
  return {
    kind,
    class: error.name ?? error.constructor?.name ?? typeof error,
    message: typeof error.message === 'string' ? error.message : JSON.stringify(error),
    status: error.statusCode ?? null,
    type,
    body_message: bodyMessage,
    header: error.responseHeaders?.['x-sse-gateway-error'] ?? null,
    cause: error.cause ? String(error.cause.message ?? error.cause) : undefined,
  };
}

async function runOne(client, scenario) {
  const nonce = randomUUID().slice(0, 12);
  const { model, base } = target(scenario);
  const obs = { nonce, parts: [], error: null, errors: [], finish: null, raw_finish: null, complete: false, hung: false };
  const started = Date.now();
  const work = (async () => {
    try {
      const result = streamText({
        model: CLIENTS[client](base, model),
        prompt: `e2e ${nonce}`,
        maxOutputTokens: 256,
        maxRetries: 0,
        onError: ({ error }) => { obs.on_error_called = (obs.on_error_called ?? 0) + 1; obs.errors.push(describe(error, 'onError')); },
      });
      for await (const part of result.fullStream) {
        if (part.type === 'text-delta') obs.parts.push(part.text);
        else if (part.type === 'error') obs.error = obs.error ?? describe(part.error, 'part');
        else if (part.type === 'finish') { obs.finish = part.finishReason; obs.raw_finish = part.rawFinishReason ?? null; }
      }
      obs.complete = obs.error == null && obs.finish === 'stop';
    } catch (e) {
      obs.error = describe(e, 'raised');
      obs.complete = false;
    }
    obs.seconds = (Date.now() - started) / 1000;
  })();
  let timer;
  const hang = new Promise((resolve) => { timer = setTimeout(() => { obs.hung = true; resolve(); }, HANG_MS); });
  await Promise.race([work, hang]);
  clearTimeout(timer);
  obs.text = obs.parts.join('');
  delete obs.parts;
  return obs;
}

const scenarios = args.scenarios.split(',');
const clients = (args.clients || Object.keys(CLIENTS).join(',')).split(',');
const results = Object.fromEntries(clients.map((c) => [c, {}]));
await Promise.all(clients.flatMap((c) => scenarios.map(async (s) => { results[c][s] = await runOne(c, s); })));
await new Promise((r) => setTimeout(r, 300)); // a retry, had there been one, reaches the log
const log = fs.readFileSync(args.log, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
for (const c of clients) {
  for (const s of scenarios) {
    const obs = results[c][s];
    obs.upstream_requests = log.filter((e) => e.event === 'request' && JSON.stringify(e.body).includes(obs.nonce)).length;
  }
}
const versions = Object.fromEntries(['ai', '@ai-sdk/openai', '@ai-sdk/anthropic'].map((n) => [n, version(n)]));
fs.writeFileSync(args.out, JSON.stringify({ versions, results }, null, 2));
process.exit(0); // a hung call must not keep the process alive
