/**
 * An operator signs in on the console's operator page in a real browser (Debian's chromium,
 * driven by playwright-core) through a real OpenID Provider (oidc-provider): the authorization
 * code flow with PKCE, the redirect back to 127.0.0.1, the handle claimed by the page, and an
 * approval that releases a secret the requester waits for. docs/OPERATORS.md.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { auditEntries, stopAgent, unlockedAgent, type AgentHome } from './agent-helpers.js';
import {
  CHROMIUM,
  consoleUrl,
  launch,
  OPERATOR_POLICY,
  PROD_OPERATOR_RULE,
  rawRequest,
  waitingCommand,
} from './console-helpers.js';
import { kw, pastSecondOf } from './helpers.js';
import { CLIENT_ID, generateSigningKey, OidcProvider, skip as oidcSkip } from './oidc-helpers.js';

const skip = CHROMIUM ? oidcSkip : 'chromium is not installed (CI installs it: .ci/run)';

const RULES = PROD_OPERATOR_RULE;

describe('an operator signs in with the identity provider in the browser', { skip }, () => {
  let h: AgentHome;
  let idp: OidcProvider;
  let browser: Browser;
  let port: string;
  const homes: AgentHome[] = [];
  const claimed: string[] = [];

  before(async () => {
    // The agent first (its console's port is the redirect URI's), then the provider, then the
    // policy that trusts the provider, applied to the running agent.
    h = await unlockedAgent(`version: 1\n${RULES}`, homes);
    const started = Date.now();
    port = new URL(consoleUrl(h)).port;
    idp = await OidcProvider.start(
      [await generateSigningKey()],
      [`http://127.0.0.1:${port}/api/operator/oidc/callback`],
    );
    const file = path.join(h.dir, 'with-oidc.yaml');
    fs.writeFileSync(
      file,
      `version: 1
operators:
  oidc:
    issuer: "${idp.issuer}"
    client_id: ${CLIENT_ID}
    allowed_groups: [sre-team]
    scopes: [openid, groups]
${RULES}`,
    );
    const applied = kw(['policy', 'apply', file], { env: h.env });
    assert.equal(applied.code, 0, applied.stderr);
    assert.equal(
      kw(['secret', 'set', 'prod/db'], { env: h.env, input: 'signed-in-value' }).code,
      0,
    );
    browser = await launch();
    await pastSecondOf(started);
  });
  after(async () => {
    await browser?.close();
    await idp?.stop();
    for (const x of homes) await stopAgent(x);
  });

  /**
   * Signs in on the provider's own pages as `user`, from the operator page; `meanwhile` runs
   * while the person is at the provider.
   */
  async function signIn(user: string, meanwhile?: () => Promise<void>) {
    const context = await browser.newContext();
    // The handle the page claims, as the page sent it (to try it again).
    context.on('request', (r) => {
      if (r.url().endsWith('/api/operator/oidc/claim'))
        claimed.push(String((JSON.parse(r.postData() ?? '{}') as { handle?: string }).handle));
    });
    // A loaded machine may take its time; 120 s is when a step has clearly failed (as eventually()).
    context.setDefaultTimeout(120_000);
    const page = await context.newPage();
    await page.goto(`http://127.0.0.1:${port}/operator`);
    await page.locator('#sso').click();
    await page.locator('input[name="login"]').fill(user);
    await meanwhile?.();
    await page.locator('input[name="password"]').fill('any password');
    await page.locator('button[type="submit"]').click();
    await page.getByRole('button', { name: 'Continue' }).click();
    await page.waitForURL(`http://127.0.0.1:${port}/operator`);
    return page;
  }

  test('alice signs in at the provider, comes back signed in, and approves in the page', async () => {
    const w = waitingCommand(['read', 'prod/db'], h.env);
    const id = await w.id;
    const page = await signIn('alice');
    await page.locator('#who').filter({ hasText: 'alice (oidc; sre-team)' }).waitFor();
    // The handle is gone from the address bar and history at once.
    assert.equal(new URL(page.url()).hash, '');
    await page.locator(`li.request[data-id="${id}"] button.approve`).click();
    const done = await w.done;
    assert.equal(done.code, 0, done.stderr);
    assert.equal(done.stdout, 'signed-in-value');
    const entries = auditEntries(h);
    const login = entries.filter((e) => e.type === 'operator.login').at(-1);
    assert.deepEqual(
      [login?.decision, login?.details?.['operator'], login?.details?.['via']],
      ['allow', 'alice', 'sign-in'],
    );
    const granted = entries.filter((e) => e.type === 'approval.granted').at(-1);
    assert.deepEqual(JSON.parse(String(granted?.details?.['operators'])), [
      { operator: 'alice', method: 'oidc', groups: ['sre-team'] },
    ]);
    await page.context().close();
  });

  test("found in review: sign-ins another process starts, however many, don't push the person's out", async () => {
    const url = `http://127.0.0.1:${port}/`;
    const page = await signIn('alice', async () => {
      // Forty sign-ins started by another process while alice types her password: anyone can
      // start one (no session is needed), and a table of sixteen dropped hers.
      for (let i = 0; i < 40; i++) {
        const r = await rawRequest(url, {
          path: '/api/operator/oidc/start',
          headers: { Host: `127.0.0.1:${port}` },
        });
        assert.equal(r.status, 302);
      }
    });
    await page.locator('#who').filter({ hasText: 'alice (oidc; sre-team)' }).waitFor();
    await page.context().close();
  });

  test("bob's sign-in is refused (no allowed group), shown on the page and recorded", async () => {
    const page = await signIn('bob');
    await page
      .locator('#message.error')
      .filter({ hasText: 'none of the allowed groups' })
      .waitFor();
    assert.equal(await page.locator('#nav').isHidden(), true);
    const refused = auditEntries(h)
      .filter((e) => e.type === 'operator.login')
      .at(-1);
    assert.equal(refused?.decision, 'deny');
    assert.match(String(refused?.reason), /operator "bob" is in none of the allowed groups/);
    await page.context().close();
  });

  test('the page shows no text a link puts in its address (a phishing line in the fragment)', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(
      `http://127.0.0.1:${port}/operator#error=${encodeURIComponent('Your key expired: paste it at https://keyward-ops.example/renew')}`,
    );
    // The page has read its fragment (it takes it out of the address bar, then acts on it).
    await page.waitForFunction('window.location.hash === ""');
    assert.doesNotMatch((await page.locator('#message').textContent()) ?? '', /expired|renew/);
    await context.close();
  });

  test("found in review: a provider's error in a callback shows the console's words, never the link's, and trips nothing", async () => {
    const url = `http://127.0.0.1:${port}/`;
    // A state is anyone's who starts a sign-in: no session is needed for that.
    const started = async () => {
      const r = await rawRequest(url, {
        path: '/api/operator/oidc/start',
        headers: { Host: `127.0.0.1:${port}` },
      });
      assert.equal(r.status, 302);
      return String(new URL(String(r.headers.location)).searchParams.get('state'));
    };
    const phish = 'keyward was upgraded: paste your API key at https://keyward-ops.example/renew';
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(
      `${url}api/operator/oidc/callback?state=${await started()}&error=access_denied&error_description=${encodeURIComponent(phish)}`,
    );
    await page
      .locator('#message.error')
      .filter({ hasText: 'The identity provider refused the sign-in' })
      .waitFor();
    assert.doesNotMatch((await page.locator('#message').textContent()) ?? '', /upgraded|renew/);
    // The record keeps the code, a word the standards name.
    const first = auditEntries(h)
      .filter((e) => e.type === 'operator.login')
      .at(-1);
    assert.match(
      String(first?.reason),
      /the identity provider refused the sign-in \(access_denied\)/,
    );
    // A code the standards don't name is not repeated anywhere.
    await page.goto(
      `${url}api/operator/oidc/callback?state=${await started()}&error=go_to_evil.example`,
    );
    await page.waitForFunction('window.location.hash === ""');
    await page
      .locator('#message.error')
      .filter({ hasText: 'The identity provider refused the sign-in' })
      .waitFor();
    assert.doesNotMatch((await page.locator('#message').textContent()) ?? '', /evil/);
    await context.close();
    const refused = auditEntries(h)
      .filter((e) => e.type === 'operator.login')
      .at(-1);
    assert.equal(refused?.decision, 'deny');
    assert.doesNotMatch(JSON.stringify(refused), /upgraded|renew|evil/);
    // Such callbacks are anyone's to make: six of them lock nothing.
    for (let i = 0; i < 6; i++)
      await rawRequest(url, {
        path: `/api/operator/oidc/callback?state=${await started()}&error=access_denied`,
        headers: { Host: `127.0.0.1:${port}` },
      });
    assert.match(kw(['status'], { env: h.env }).stdout, /unlocked/);
  });

  test('found in review: one sign-in sent back twice at once reaches the provider once, and opens one session', async () => {
    const url = `http://127.0.0.1:${port}/`;
    // The provider's redirect back, taken before the browser follows it: a process that sees
    // the address (a proxy log, a browser extension, the history) sends it twice, at once.
    const context = await browser.newContext();
    context.setDefaultTimeout(120_000);
    let back = '';
    // A redirect is not routed by itself: the provider's answers are, and the one that sends
    // the browser back is kept, not followed.
    const provider = new URL(idp.issuer).origin;
    const taken = new Promise<void>((resolve) => {
      void context.route(
        (u) => u.origin === provider,
        async (route) => {
          // The provider's redirects are followed here (the context's cookies), up to the one
          // that goes back to the console.
          let answer = await route.fetch({ maxRedirects: 0 });
          let at = route.request().url();
          for (let hop = 0; hop < 10; hop++) {
            const to = answer.headers()['location'];
            const target = to === undefined ? undefined : new URL(to, at);
            if (target?.pathname === '/api/operator/oidc/callback') {
              back = target.href;
              await route.fulfill({ status: 204 });
              return resolve();
            }
            if (target?.origin !== provider) break;
            at = target.href;
            answer = await context.request.get(at, { maxRedirects: 0 });
          }
          await route.fulfill({ response: answer });
        },
      );
    });
    const page = await context.newPage();
    await page.goto(`http://127.0.0.1:${port}/operator`);
    await page.locator('#sso').click();
    await page.locator('input[name="login"]').fill('alice');
    await page.locator('input[name="password"]').fill('any password');
    await page.locator('button[type="submit"]').click();
    await page.getByRole('button', { name: 'Continue' }).click();
    await taken;
    await context.close();
    const exchanged = (await idp.stats()).token;
    const u = new URL(back);
    const send = () =>
      rawRequest(url, { path: `${u.pathname}${u.search}`, headers: { Host: `127.0.0.1:${port}` } });
    const answers = await Promise.all([send(), send()]);
    const fragments = answers.map((a) => new URL(String(a.headers.location), url).hash).sort();
    assert.equal(fragments.filter((f) => f.startsWith('#handle=')).length, 1, fragments.join(' '));
    // The other never reached the provider: a state finishes one sign-in from the moment its
    // code is taken to the provider, not from the moment the provider answered.
    assert.ok(fragments.includes('#refused=not-started'), fragments.join(' '));
    assert.equal((await idp.stats()).token, exchanged + 1);
  });

  test('a callback this console did not start, or a handle claimed twice, is refused', async () => {
    const url = `http://127.0.0.1:${port}/`;
    const forged = await rawRequest(url, {
      path: '/api/operator/oidc/callback?code=stolen&state=not-issued-here',
      headers: { Host: `127.0.0.1:${port}` },
    });
    assert.equal(forged.status, 302);
    const to = new URL(String(forged.headers.location), url);
    assert.equal(to.pathname, '/operator');
    // Never text in the URL: a word the page knows (anyone can send these, so no handle is kept).
    assert.equal(to.hash, '#refused=not-started');
    // Anyone can send such a callback (a web page, in a browser that lets it reach loopback):
    // recorded, but not counted toward the circuit breaker, which it could trip from afar.
    for (let i = 0; i < 6; i++)
      await rawRequest(url, {
        path: `/api/operator/oidc/callback?code=x&state=not-issued-${i}`,
        headers: { Host: `127.0.0.1:${port}` },
      });
    assert.match(kw(['status'], { env: h.env }).stdout, /unlocked/);
    // alice's page claimed its handle; claimed again, or made up, it opens nothing.
    assert.ok(claimed.length > 0, 'a handle was claimed');
    for (const handle of [claimed[0], 'made-up']) {
      const claim = await rawRequest(url, {
        method: 'POST',
        path: '/api/operator/oidc/claim',
        headers: { Host: `127.0.0.1:${port}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ handle }),
      });
      assert.equal(claim.status, 403);
      assert.match(claim.body, /no such sign-in/);
    }
    // The rest of the console does not answer on 127.0.0.1: its page redirects to localhost,
    // and its API refuses the name.
    const api = await rawRequest(url, {
      path: '/api/approvals',
      headers: { Host: `127.0.0.1:${port}`, Origin: `http://127.0.0.1:${port}` },
    });
    assert.equal(api.status, 403);
  });
});

describe(
  'the operator page, as the console page, never slides a request under a click',
  {
    skip: CHROMIUM ? undefined : 'chromium is not installed (CI installs it: .ci/run)',
  },
  () => {
    let h: AgentHome;
    let browser: Browser;
    const homes: AgentHome[] = [];

    before(async () => {
      h = await unlockedAgent(OPERATOR_POLICY, homes);
      assert.equal(kw(['secret', 'set', 'prod/db'], { env: h.env, input: 'the-value' }).code, 0);
      browser = await launch();
    });
    after(async () => {
      await browser?.close();
      for (const x of homes) await stopAgent(x);
    });

    test("a request another process denies stays in place, greyed, under the operator's pointer; each shows its id", async () => {
      const created = kw(['operator', 'key', 'create', 'bob', '--groups', 'sre-team'], {
        env: h.env,
      });
      assert.equal(created.code, 0, created.stderr);
      const context = await browser.newContext();
      context.setDefaultTimeout(120_000);
      const page = await context.newPage();
      await page.goto(`${consoleUrl(h)}operator`);
      await page.locator('#api-key').fill(created.stdout.trim());
      await page.locator('#login-key').click();
      await page.locator('#who').filter({ hasText: 'key:bob' }).waitFor();
      // The developer's request, then a copy of it by an attacker (the same command, the same
      // directory): the page says which is which by the id each command printed.
      const mine = waitingCommand(['read', 'prod/db'], h.env);
      const myId = await mine.id;
      const item = page.locator(`li.request[data-id="${myId}"]`);
      await item.waitFor();
      const copy = waitingCommand(['read', 'prod/db'], h.env);
      const copyId = await copy.id;
      const other = page.locator(`li.request[data-id="${copyId}"]`);
      await other.waitFor();
      assert.match((await item.textContent()) ?? '', new RegExp(`request ${myId}`));
      assert.match((await other.textContent()) ?? '', new RegExp(`request ${copyId}`));
      // The operator's pointer rests on the developer's Approve; the attacker denies that request
      // (any process of the user may deny one) so that its copy would slide under the click.
      await item.locator('button.approve').hover();
      const before = await item.boundingBox();
      const denied = kw(['deny', myId], { env: h.env });
      assert.equal(denied.code, 0, denied.stderr);
      await page.locator(`li.request.gone[data-id="${myId}"]`).waitFor();
      assert.deepEqual(await item.boundingBox(), before, 'the denied request did not move');
      assert.equal(await item.locator('button.approve').isDisabled(), true);
      assert.deepEqual(await other.boundingBox().then((b) => b !== null), true);
      // A click there now approves nothing.
      await item.locator('button.approve').click({ force: true });
      assert.equal((await mine.done).code, 6);
      // The pointer leaves: what ended goes; the copy is still waiting, unapproved.
      await page.mouse.move(0, 0);
      await item.waitFor({ state: 'detached' });
      assert.equal(await other.locator('button.approve').isDisabled(), false);
      copy.kill();
      await copy.done;
      await context.close();
    });
  },
);
