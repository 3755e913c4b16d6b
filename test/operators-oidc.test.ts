/**
 * Operators' OpenID Connect tokens (src/operators/oidc.ts) against a real OpenID Provider
 * (oidc-provider, test/fixtures/oidc-provider.mjs): the tokens that verify are the provider's
 * own, issued through the authorization-code flow; the ones the test signs itself (with the
 * provider's key, or another) are the refusals a provider would not issue. Each refusal is
 * asserted by its message, so one check can't quietly stand in for another.
 *
 * oidc-provider and its Node 22 live in test/conformance/ (`npm ci --prefix test/conformance`);
 * without them this file is skipped, except in CI.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { SignJWT, type JWTPayload } from 'jose';
import { KeywardError } from '../src/errors.js';
import { OidcVerifier, type OidcVerifierOptions } from '../src/operators/oidc.js';
import type { OidcSettings } from '../src/operators/types.js';
import {
  CLIENT_ID,
  generateSigningKey,
  installed,
  mint,
  NOT_INSTALLED,
  OidcProvider,
  RESOURCE,
  skip,
  unsigned,
  type SigningKey,
} from './oidc-helpers.js';

function settings(issuer: string): OidcSettings {
  return {
    issuer,
    clientId: CLIENT_ID,
    audience: [RESOURCE],
    allowedClients: [CLIENT_ID],
    jwksCacheTtlMs: 600_000,
    claimMappings: { operatorId: 'sub', groups: 'groups' },
    allowedGroups: ['sre-team'],
    clockSkewSec: 30,
    scopes: ['openid', 'groups'],
  };
}

function verifier(issuer: string, options: OidcVerifierOptions = { jwksCooldownMs: 0 }) {
  return new OidcVerifier(settings(issuer), options);
}

/** Asserts that verifying token is refused with a message matching message. */
async function refused(v: OidcVerifier, token: string, message: RegExp): Promise<KeywardError> {
  let caught: unknown;
  await v.verify(token).then(
    () => assert.fail(`the token was accepted; expected a refusal matching ${message}`),
    (e: unknown) => (caught = e),
  );
  assert.ok(caught instanceof KeywardError, `not a KeywardError: ${String(caught)}`);
  assert.equal(caught.code, 'OPERATOR_REFUSED');
  assert.match(caught.message, message);
  return caught;
}

const now = () => Math.floor(Date.now() / 1000);

describe('operators signing in with OpenID Connect', { skip, timeout: 120_000 }, () => {
  let idp: OidcProvider;
  let key: SigningKey;
  const started: OidcProvider[] = [];
  /** Claims as the provider would issue them for alice, for tokens the test signs. */
  const claims = (over: JWTPayload = {}): JWTPayload => ({
    iss: idp.issuer,
    aud: RESOURCE,
    client_id: CLIENT_ID,
    sub: 'alice',
    groups: ['sre-team'],
    iat: now(),
    exp: now() + 300,
    ...over,
  });

  before(async () => {
    assert.ok(installed, NOT_INSTALLED);
    key = await generateSigningKey();
    idp = await OidcProvider.start([key]);
    started.push(idp);
  });
  after(async () => {
    for (const p of started) await p.stop();
  });

  test("alice's real ID token and access token name her and her allowed group", async () => {
    const { idToken, accessToken } = await idp.login('alice');
    const v = verifier(idp.issuer);
    const expected = { id: 'alice', method: 'oidc', groups: ['sre-team'], issuer: idp.issuer };
    // The ID token's audience is the console's client id; the access token's, the resource.
    assert.deepEqual(await v.verify(idToken), expected);
    assert.deepEqual(await v.verify(accessToken), expected);
    // One discovery and one key set fetch served both: the cache holds.
    const { discovery, jwks } = await idp.stats();
    assert.deepEqual({ discovery, jwks }, { discovery: 1, jwks: 1 });
  });

  test("bob's real token is refused: none of his groups is allowed, and the message names them", async () => {
    const { idToken } = await idp.login('bob');
    const e = await refused(
      verifier(idp.issuer),
      idToken,
      /^operator "bob" is in none of the allowed groups: their groups are \["dev"\]$/,
    );
    assert.ok(!e.message.includes(idToken.split('.')[2] ?? '-'), 'the message holds the token');
  });

  test("a token signed with the provider's key but expired beyond the skew is refused as expired", async () => {
    const token = await mint(key, claims({ iat: now() - 7200, exp: now() - 3600 }));
    await refused(verifier(idp.issuer), token, /^the token has expired/);
  });

  test('a token that expired within the clock skew still verifies', async () => {
    const token = await mint(key, claims({ iat: now() - 600, exp: now() - 10 }));
    assert.equal((await verifier(idp.issuer).verify(token)).id, 'alice');
  });

  test('a token not valid yet (nbf beyond the skew) is refused', async () => {
    const token = await mint(key, claims({ nbf: now() + 600 }));
    await refused(verifier(idp.issuer), token, /^the token is not valid yet/);
  });

  test('a token issued in the future beyond the skew is refused', async () => {
    const token = await mint(key, claims({ iat: now() + 600, exp: now() + 900 }));
    await refused(verifier(idp.issuer), token, /^the token was issued in the future/);
  });

  test('an access token for the shared audience that the provider issued to another application is refused; allowed_clients can name it', async () => {
    // Okta's default server puts its audience (api://default) on every client's access tokens:
    // the wiki's token, from its backend or its logs, must not log anyone in as an operator.
    const wiki = await mint(key, claims({ client_id: 'wiki-app', scp: ['wiki.read'] }));
    await refused(
      verifier(idp.issuer),
      wiki,
      /^the token was issued to the client "wiki-app", not to one operators.oidc allows \(keyward-console\)/,
    );
    // Okta names the client cid; Keycloak, azp.
    await refused(
      verifier(idp.issuer),
      await mint(key, claims({ client_id: undefined, cid: 'wiki-app' })),
      /issued to the client "wiki-app"/,
    );
    await refused(
      verifier(idp.issuer),
      await mint(key, claims({ client_id: undefined })),
      /^the token names no client it was issued to/,
    );
    // Found in review: every claim that names a client must name an allowed one (keyward's
    // client_id beside another's azp), and Entra ID v1 names it in appid alone.
    for (const issuedTo of [{ azp: 'wiki-app' }, { client_id: undefined, appid: 'wiki-app' }])
      await refused(
        verifier(idp.issuer),
        await mint(key, claims(issuedTo)),
        /issued to the client "wiki-app"/,
      );
    const allowing = new OidcVerifier(
      { ...settings(idp.issuer), allowedClients: [CLIENT_ID, 'wiki-app'] },
      { jwksCooldownMs: 0 },
    );
    assert.equal((await allowing.verify(wiki)).id, 'alice');
  });

  test("a token for another audience, signed with the provider's key, is refused", async () => {
    const token = await mint(key, claims({ aud: 'https://another-service.example' }));
    await refused(verifier(idp.issuer), token, /^the token is for another audience/);
  });

  test('a token signed by a key the provider does not publish is refused, after fetching again', async () => {
    const stranger = await generateSigningKey('not-published');
    const v = verifier(idp.issuer);
    await v.verify(await mint(key, claims())); // the key set is cached
    const before = await idp.stats();
    await refused(v, await mint(stranger, claims()), /signed by a key the issuer does not publish/);
    // An unknown kid makes the verifier look again (cooldown 0), once.
    assert.equal((await idp.stats()).jwks, before.jwks + 1);
  });

  test('a token without a kid that no published key verifies is refused as an unknown key', async () => {
    const stranger = await generateSigningKey();
    const token = await mint(stranger, claims(), { kid: undefined });
    await refused(verifier(idp.issuer), token, /signed by a key the issuer does not publish/);
  });

  test("bob's real token with its groups changed to sre-team is refused: bad signature", async () => {
    const { idToken } = await idp.login('bob');
    const [header = '', payload = '', signature = ''] = idToken.split('.');
    const claimsOfBob = JSON.parse(Buffer.from(payload, 'base64url').toString()) as JWTPayload;
    const forged = Buffer.from(JSON.stringify({ ...claimsOfBob, groups: ['sre-team'] }));
    const token = `${header}.${forged.toString('base64url')}.${signature}`;
    await refused(verifier(idp.issuer), token, /^the token's signature is not valid/);
  });

  test("a second provider's real token is refused as another issuer, without fetching from it", async () => {
    const other = await OidcProvider.start([await generateSigningKey()]);
    started.push(other);
    const { idToken } = await other.login('alice');
    const e = await refused(verifier(idp.issuer), idToken, /^the token is from another issuer/);
    assert.ok(e.message.includes(other.issuer), e.message);
    const { discovery, jwks } = await other.stats();
    assert.deepEqual({ discovery, jwks }, { discovery: 0, jwks: 0 });
  });

  test('a discovery document naming another issuer is refused (http://localhost vs 127.0.0.1)', async () => {
    const issuer = idp.issuer.replace('127.0.0.1', 'localhost');
    const token = await mint(key, claims({ iss: issuer }));
    await refused(verifier(issuer), token, /discovery document names another issuer/);
  });

  test('when the issuer cannot be reached, every token is refused: fail closed', async () => {
    const gone = await OidcProvider.start([key]);
    const issuer = gone.issuer;
    await gone.stop();
    const token = await mint(key, claims({ iss: issuer }));
    await refused(verifier(issuer), token, /^the issuer's keys could not be fetched: /);
  });

  test('after the provider rotates its keys, a real token signed with the new key verifies', async () => {
    const oldKey = await generateSigningKey();
    const rotating = await OidcProvider.start([oldKey]);
    started.push(rotating);
    const v = verifier(rotating.issuer);
    const aliceClaims = claims({ iss: rotating.issuer });
    // With the default cooldown (30 s), a kid seen right after a fetch is not fetched again.
    const patient = verifier(rotating.issuer, {});
    const before = await rotating.login('alice');
    assert.equal((await v.verify(before.idToken)).id, 'alice');
    assert.equal((await patient.verify(before.idToken)).id, 'alice');

    const newKey = await generateSigningKey();
    await rotating.rotate([newKey, oldKey]);
    const after = await rotating.login('alice');
    const [header = ''] = after.idToken.split('.');
    assert.equal(JSON.parse(Buffer.from(header, 'base64url').toString()).kid, newKey.kid);

    assert.deepEqual(await v.verify(after.idToken), {
      id: 'alice',
      method: 'oidc',
      groups: ['sre-team'],
      issuer: rotating.issuer,
    });
    assert.equal((await v.verify(after.accessToken)).id, 'alice');
    assert.equal((await v.verify(before.idToken)).id, 'alice', 'the old key is still published');
    // Without a kid, both published keys fit: each is tried, and the old one verifies.
    assert.equal((await v.verify(await mint(oldKey, aliceClaims, { kid: undefined }))).id, 'alice');
    await refused(
      v,
      await mint(await generateSigningKey(), aliceClaims, { kid: undefined }),
      /signed by a key the issuer does not publish \(none of its keys verifies it\)/,
    );
    await refused(patient, after.idToken, /signed by a key the issuer does not publish/);
  });

  test('an issuer that is neither https nor on a loopback address is refused', () => {
    for (const issuer of ['http://idp.example.com', 'http://10.0.0.1:8080', 'ftp://idp.example']) {
      assert.throws(
        () => verifier(issuer),
        (e: unknown) =>
          e instanceof KeywardError &&
          e.code === 'OPERATOR_REFUSED' &&
          /is not https: an issuer's keys are only fetched over https/.test(e.message),
      );
    }
    assert.doesNotThrow(() => verifier('https://idp.example.com'));
    assert.doesNotThrow(() => verifier('http://[::1]:8080'));
  });

  test('unsigned (alg none) and HS256 tokens are refused, even with the right kid', async () => {
    const v = verifier(idp.issuer);
    await refused(v, unsigned(claims()), /^the token's signature algorithm "none" is not allowed/);
    // The classic confusion: the issuer's public key used as an HMAC secret.
    const secret = Buffer.from(JSON.stringify({ ...key.privateJwk, d: undefined }));
    const hs = await new SignJWT(claims())
      .setProtectedHeader({ alg: 'HS256', kid: key.kid })
      .sign(secret);
    await refused(v, hs, /^the token's signature algorithm "HS256" is not allowed/);
  });

  test('a token without the operator id claim, or without a groups list or string, is refused', async () => {
    const v = verifier(idp.issuer);
    const noSub = claims();
    delete noSub.sub;
    await refused(v, await mint(key, noSub), /^the token names no operator: its "sub" claim/);
    await refused(v, await mint(key, claims({ sub: 'a'.repeat(257) })), /names no operator/);
    const noGroups = claims();
    delete noGroups['groups'];
    await refused(v, await mint(key, noGroups), /^the token's groups claim "groups" is missing/);
    for (const groups of [42, ['sre-team', 7], { 'sre-team': true }])
      await refused(
        v,
        await mint(key, claims({ groups })),
        /^the token's groups claim "groups" is missing or not a list of strings/,
      );
    // One string is one group (Google's hd, mapped as the groups claim).
    assert.deepEqual(await v.verify(await mint(key, claims({ groups: 'sre-team' }))), {
      id: 'alice',
      method: 'oidc',
      groups: ['sre-team'],
      issuer: idp.issuer,
    });
  });

  test('a token of another type, issued to another party, or naming a key: operator is refused', async () => {
    const v = verifier(idp.issuer);
    await refused(
      v,
      await mint(key, claims({ events: {} }), { typ: 'logout+jwt' }),
      /^the token's type "logout\+jwt" is not an ID token's or an access token's$/,
    );
    await refused(
      v,
      await mint(key, claims({ aud: ['other-client', CLIENT_ID], azp: 'other-client' })),
      /^the token was issued to "other-client", not to keyward-console$/,
    );
    // Found in review: keyward's id as the only audience, another party named as the one it was
    // issued to (a cross-client ID token, an access token for an API on keyward's registration).
    for (const issuedTo of [
      { azp: 'other-client' },
      { cid: 'other-client' },
      { client_id: 'other-client' },
      { appid: 'other-client' },
    ])
      await refused(
        v,
        await mint(key, claims({ aud: CLIENT_ID, client_id: undefined, ...issuedTo })),
        /^the token was issued to "other-client", not to keyward-console$/,
      );
    // keyward's own ID token (azp, if any, is keyward) logs in.
    assert.equal(
      (
        await v.verify(
          await mint(key, claims({ aud: CLIENT_ID, client_id: undefined, azp: CLIENT_ID })),
        )
      ).id,
      'alice',
    );
    await refused(
      v,
      await mint(key, claims({ sub: 'key:alice' })),
      /operator id "key:alice" begins with key:/,
    );
    // An access token (RFC 9068's type) for the resource is fine.
    assert.equal((await v.verify(await mint(key, claims(), { typ: 'at+jwt' }))).id, 'alice');
  });

  test('malformed tokens are refused as such', async () => {
    const v = verifier(idp.issuer);
    for (const token of ['', 'not a token', 'a.b.c', 'x'.repeat(20_000)]) {
      await refused(v, token, /^the token (is not a well-formed JWT|is empty or longer)/);
    }
  });
});
