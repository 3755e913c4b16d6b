/**
 * The web console under test: a real agent, Debian's chromium driven by playwright-core, and the
 * Chrome DevTools Protocol's WebAuthn virtual authenticator standing in for a security key.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { Browser, CDPSession, Page } from 'playwright-core';
import { BIN, kw, ROOT } from './helpers.js';
import type { AgentHome } from './agent-helpers.js';

export const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) =>
  fs.existsSync(p),
);
export const ARTIFACTS = path.join(ROOT, 'test-artifacts', 'console');

/** A rule that gives prod/** to operators of the group sre-team (ten minutes to decide). */
export const PROD_OPERATOR_RULE = `rules:
  - name: prod
    targets: ["prod/**"]
    decision: approve
    approve: { mode: operator, groups: [sre-team], timeout: 10m }
`;

/** A policy of that rule, with API-key operators of sre-team mapped to it. */
export const OPERATOR_POLICY = `version: 1
operators:
  group_policy_map:
    sre-team: [prod]
${PROD_OPERATOR_RULE}`;

export function consoleUrl(h: AgentHome): string {
  const r = kw(['status', '--json'], { env: h.env });
  const s = JSON.parse(r.stdout) as { console?: string | null };
  if (typeof s.console !== 'string') throw new Error(`no console: ${r.stdout} ${r.stderr}`);
  return s.console;
}

export async function launch(): Promise<Browser> {
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    ...(CHROMIUM ? { executablePath: CHROMIUM } : {}),
    // Root in a container: chromium's own sandbox needs user namespaces it may not get.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
}

export interface Authenticator {
  cdp: CDPSession;
  id: string;
  setUserVerified(v: boolean): Promise<void>;
}

/** A virtual CTAP2 security key that verifies the user (a PIN) and is touched at once. */
export async function virtualAuthenticator(page: Page): Promise<Authenticator> {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'usb',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return {
    cdp,
    id: authenticatorId,
    setUserVerified: async (v) => {
      await cdp.send('WebAuthn.setUserVerified', { authenticatorId, isUserVerified: v });
    },
  };
}

export interface Waiting {
  /** The request id, once the CLI has said the request waits. */
  id: Promise<string>;
  /** Everything the CLI said, once it exits. */
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
  kill(): void;
}

/** `keyward ARGS` in another process (run by node), whose request will wait for a person. */
export function waitingCommand(
  args: string[],
  env: NodeJS.ProcessEnv,
  cwd?: string,
  node = process.execPath,
): Waiting {
  const c = spawn(node, [BIN, ...args], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(cwd ? { cwd } : {}),
  });
  let stdout = '';
  let stderr = '';
  let found: (id: string) => void = () => undefined;
  const id = new Promise<string>((resolve) => (found = resolve));
  c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  c.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    const m = /waiting for approval of request ([0-9a-f]{8})/.exec(stderr);
    if (m?.[1]) found(m[1]);
  });
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    // 'close', not 'exit': the output may still be in the pipe when the process has exited.
    c.on('close', (code) => {
      found('(exited)');
      resolve({ code, stdout, stderr });
    }),
  );
  return { id, done, kill: () => c.kill('SIGTERM') };
}

/** A raw HTTP request to the console, with whatever Host and Origin a test wants to send. */
export function rawRequest(
  url: string,
  o: { method?: string; path: string; headers?: Record<string, string>; body?: string },
): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port: Number(u.port),
        method: o.method ?? 'GET',
        path: o.path,
        headers: o.headers ?? {},
        setHost: false,
      },
      (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
      },
    );
    req.on('error', reject);
    req.end(o.body);
  });
}

/** Logs in with the passphrase through the page itself. */
export async function loginWithPassphrase(page: Page, url: string, passphrase: string) {
  await page.goto(url);
  await page.locator('#passphrase').fill(passphrase);
  await page.locator('#login-passphrase').click();
  await page.locator('#nav').waitFor({ state: 'visible' });
}

/**
 * A session made as the page makes one (a passphrase login over HTTP): the headers that carry
 * it, for requests made without a browser.
 */
export async function loginOverHttp(
  url: string,
  passphrase: string,
): Promise<Record<string, string>> {
  const u = new URL(url);
  const origin = `http://${u.host}`;
  const login = await rawRequest(url, {
    method: 'POST',
    path: '/api/login/passphrase',
    headers: { Host: u.host, Origin: origin, 'Content-Type': 'application/octet-stream' },
    body: passphrase,
  });
  const cookie = String(login.headers['set-cookie']?.[0] ?? '').split(';')[0] ?? '';
  const csrf = (JSON.parse(login.body) as { csrf: string }).csrf;
  return { Host: u.host, Origin: origin, Cookie: cookie, 'X-Keyward-CSRF': csrf };
}
