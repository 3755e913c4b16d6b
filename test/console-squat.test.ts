/**
 * A console tab outlives its agent: a process of the user kills the agent (or waits for it to
 * stop) and takes the console's port, 127.0.0.1 and ::1, to collect what the person types into
 * the tab they already had open at the address keyward printed. The tab must never send a
 * passphrase, a code or a key to anything that can't prove it is the agent the tab logged in to
 * (a key the agent gave the tab at the login, in page memory only). docs/CONSOLE.md.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { agentHome, startAgent, stopAgent, type AgentHome } from './agent-helpers.js';
import {
  CHROMIUM,
  consoleUrl,
  launch,
  loginWithPassphrase,
  waitingCommand,
} from './console-helpers.js';
import { kw, PASSPHRASE } from './helpers.js';

const skip = CHROMIUM ? false : 'chromium is not installed (CI installs it: .ci/run)';

const POLICY = `version: 1
rules:
  - name: typed
    targets: ["pass/**"]
    decision: approve
    approve: { mode: passphrase, timeout: 5m }
`;

let h: AgentHome;
let browser: Browser;
let page: Page;
const squatters: http.Server[] = [];

before(async () => {
  if (skip) return;
  h = agentHome(POLICY);
  assert.equal(kw(['secret', 'set', 'pass/one'], { env: h.env, input: 'the value' }).code, 0);
  await startAgent(h, { KEYWARD_ASKPASS: '', SSH_ASKPASS: '' });
  assert.equal(kw(['unlock'], { env: h.env }).code, 0);
  browser = await launch();
  page = await browser.newPage();
  page.setDefaultTimeout(120_000);
});

after(async () => {
  await browser?.close();
  for (const s of squatters) await new Promise<void>((r) => s.close(() => r()));
  if (h) await stopAgent(h);
});

/**
 * The attacker's server at the console's port: it says the session ended (as the agent does
 * after a lock: 403 to the console's page, 401 to the operator page), that the agent is locked,
 * and answers a proof of identity with made-up bytes.
 * Returns what it was sent.
 */
async function squat(port: number): Promise<Array<{ path: string; body: string }>> {
  const seen: Array<{ path: string; body: string }> = [];
  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      seen.push({ path: req.url ?? '', body });
      res.setHeader('Content-Type', 'application/json');
      if (req.url === '/api/state') res.end('{"locked":true,"webauthn":false}');
      else if (req.url?.endsWith('/hello')) res.end(`{"proof":"${'A'.repeat(43)}"}`);
      else if (req.url?.startsWith('/api/operator/')) {
        res.statusCode = 401;
        res.end('{"error":"an operator logs in first"}');
      } else {
        res.statusCode = 403;
        res.end('{"error":"log in first (a missing or wrong session or CSRF token)"}');
      }
    });
  };
  for (const host of ['127.0.0.1', '::1']) {
    const s = http.createServer(handler);
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(port, host, () => resolve());
    });
    squatters.push(s);
  }
  return seen;
}

test(
  "a tab whose agent is gone shows no login and sends no passphrase to whatever takes the agent's port",
  { skip },
  async () => {
    const url = consoleUrl(h);
    const port = Number(new URL(url).port);
    await loginWithPassphrase(page, url, PASSPHRASE);
    // A request that asks for the passphrase, shown in the tab with its input.
    const w = waitingCommand(['read', 'pass/one'], h.env);
    const id = await w.id;
    const input = page.locator(`.request[data-id="${id}"] input.factor`);
    await input.waitFor();
    // The attacker kills the agent and takes its port before the tab notices.
    const exited = new Promise((resolve) => h.agent?.once('exit', resolve));
    h.agent?.kill('SIGKILL');
    await exited;
    await w.done;
    const seen = await squat(port);
    // The person, not knowing, types the passphrase into the input they see and approves.
    await input.fill(PASSPHRASE);
    await page.locator(`.request[data-id="${id}"] button.approve`).click({ force: true });
    // The tab finds that what answers can't prove it is its agent, and says so, for good.
    await page.locator('#gone').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#view-login').isVisible(), false);
    assert.equal(await page.locator('#passphrase').isVisible(), false);
    // Whatever the tab's stream does next (it would retry, and find a 403 as after a lock), the
    // tab is done: it asks nothing more of what answers there.
    const asked = seen.length;
    await page.locator('#gone').filter({ hasText: 'keyward console' }).waitFor();
    assert.equal(seen.filter((s, i) => i >= asked && s.path !== '/api/hello').length, 0);
    // Nothing the person typed reached the attacker.
    assert.deepEqual(
      seen.filter((s) => s.body.includes(PASSPHRASE)),
      [],
      `the squatter got: ${JSON.stringify(seen.map((s) => s.path))}`,
    );
    assert.ok(
      seen.some((s) => s.path === '/api/hello'),
      'the tab asked for the proof before it sent anything',
    );
  },
);

test(
  "an operator's page whose agent is gone asks for no key again, whatever takes the port",
  { skip },
  async () => {
    const o = agentHome(`version: 1
operators:
  group_policy_map:
    sre-team: [prod]
rules:
  - name: prod
    targets: ["prod/**"]
    decision: approve
    approve: { mode: operator, groups: [sre-team], timeout: 10m }
`);
    await startAgent(o, { KEYWARD_ASKPASS: '', SSH_ASKPASS: '' });
    try {
      assert.equal(kw(['unlock'], { env: o.env }).code, 0);
      const created = kw(['operator', 'key', 'create', 'bob', '--groups', 'sre-team'], {
        env: o.env,
      });
      assert.equal(created.code, 0, created.stderr);
      const apiKey = created.stdout.trim();
      const url = consoleUrl(o);
      const p = await browser.newPage();
      p.setDefaultTimeout(120_000);
      await p.goto(`${url}operator`);
      await p.locator('#api-key').fill(apiKey);
      await p.locator('#login-key').click();
      await p.locator('#who').filter({ hasText: 'key:bob' }).waitFor();
      const exited = new Promise((resolve) => o.agent?.once('exit', resolve));
      o.agent?.kill('SIGKILL');
      await exited;
      const seen = await squat(Number(new URL(url).port));
      // The page's next refresh finds a 401 there (as when a session ends): it would ask for the
      // key again; it asks for the proof first, and is done.
      await p.locator('#gone').waitFor({ state: 'visible' });
      assert.equal(await p.locator('#view-login').isVisible(), false);
      assert.ok(seen.some((s) => s.path === '/api/operator/hello'));
      assert.deepEqual(
        seen.filter((s) => s.body.includes(apiKey)),
        [],
      );
      await p.close();
    } finally {
      await stopAgent(o);
    }
  },
);
