/**
 * WebAuthn for the console, through @simplewebauthn/server: registration, login, and the approval
 * of one request, whose challenge is bound to that request's digest.
 *
 * The relying party is `localhost` (an IP address can't be one) and the only origin accepted is
 * this console's own, port included: a page of another local process, on another port, can ask
 * the same authenticator for an assertion, but the assertion names its origin and is refused here.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import type * as SimpleWebAuthn from '@simplewebauthn/server';
import type {
  AuthenticationResponseJSON,
  PublicKeyCredentialCreationOptionsJSON,
  PublicKeyCredentialRequestOptionsJSON,
  RegistrationResponseJSON,
  AuthenticatorTransport,
} from '@simplewebauthn/server';
import type { CredentialRecord, StoredCredential } from './credentials.js';
import { HttpError } from './http.js';

export const RP_ID = 'localhost';
const TIMEOUT_MS = 120_000;

// The WebAuthn library (and its CBOR and ASN.1 parsers) loads on the console's first WebAuthn
// request, not with the agent.
const require = createRequire(import.meta.url);
let lib: typeof SimpleWebAuthn | undefined;
const webauthn = (): typeof SimpleWebAuthn =>
  (lib ??= require('@simplewebauthn/server') as typeof SimpleWebAuthn);

/**
 * The challenge for approving one request: SHA-256 over a label, the request's id, its digest
 * (everything a person was shown: caller, action, target, rule, expiry) and a fresh nonce. Taken
 * once; an assertion over it approves that request and nothing else.
 */
export function approvalChallenge(id: string, digest: string): Uint8Array {
  return createHash('sha256')
    .update('keyward webauthn approval v1\u0000')
    .update(id)
    .update('\u0000')
    .update(digest)
    .update('\u0000')
    .update(randomBytes(32))
    .digest();
}

const transports = (c: StoredCredential) => c.transports as AuthenticatorTransport[];

export async function registrationOptions(
  r: CredentialRecord,
): Promise<PublicKeyCredentialCreationOptionsJSON> {
  return webauthn().generateRegistrationOptions({
    rpName: 'keyward',
    rpID: RP_ID,
    userName: 'keyward',
    userDisplayName: 'keyward vault',
    userID: Buffer.from(r.userId, 'base64url'),
    attestationType: 'none',
    timeout: TIMEOUT_MS,
    excludeCredentials: r.credentials.map((c) => ({ id: c.id, transports: transports(c) })),
    authenticatorSelection: { residentKey: 'preferred', userVerification: 'preferred' },
  });
}

export async function verifyRegistration(
  response: unknown,
  challenge: string,
  origin: string,
): Promise<Omit<StoredCredential, 'name' | 'created' | 'lastUsed'>> {
  let v;
  try {
    v = await webauthn().verifyRegistrationResponse({
      response: response as RegistrationResponseJSON,
      expectedChallenge: challenge,
      expectedOrigin: origin,
      expectedRPID: RP_ID,
      requireUserVerification: false,
    });
  } catch (e) {
    throw new HttpError(400, `the registration was refused: ${(e as Error).message}`);
  }
  if (!v.verified || !v.registrationInfo) throw new HttpError(400, 'the registration was refused');
  const c = v.registrationInfo.credential;
  return {
    id: c.id,
    publicKey: Buffer.from(c.publicKey).toString('base64url'),
    counter: c.counter,
    transports: c.transports ?? [],
  };
}

export async function assertionOptions(
  r: CredentialRecord,
  challenge: Uint8Array | undefined,
  userVerification: 'required' | 'preferred',
): Promise<PublicKeyCredentialRequestOptionsJSON> {
  return webauthn().generateAuthenticationOptions({
    rpID: RP_ID,
    timeout: TIMEOUT_MS,
    userVerification,
    allowCredentials: r.credentials.map((c) => ({ id: c.id, transports: transports(c) })),
    ...(challenge ? { challenge: Uint8Array.from(challenge) } : {}),
  });
}

export interface Asserted {
  credential: StoredCredential;
  newCounter: number;
  userVerified: boolean;
}

/**
 * Checks an assertion: from a registered credential, over exactly this challenge, from this
 * origin, for this RP, with the person present (and verified when required), and a signature
 * counter that moved forward (a cloned or replayed authenticator does not).
 */
export async function verifyAssertion(
  r: CredentialRecord,
  response: unknown,
  challenge: string,
  origin: string,
  requireUserVerification: boolean,
): Promise<Asserted> {
  const resp = response as AuthenticationResponseJSON;
  const id = typeof resp?.id === 'string' ? resp.id : '';
  const credential = r.credentials.find((c) => c.id === id);
  if (!credential) throw new HttpError(403, 'this credential is not registered with this vault');
  let v;
  try {
    v = await webauthn().verifyAuthenticationResponse({
      response: resp,
      expectedChallenge: challenge,
      expectedOrigin: origin,
      expectedRPID: RP_ID,
      credential: {
        id: credential.id,
        publicKey: Buffer.from(credential.publicKey, 'base64url'),
        counter: credential.counter,
        transports: transports(credential),
      },
      requireUserVerification,
    });
  } catch (e) {
    throw new HttpError(403, `the assertion was refused: ${(e as Error).message}`);
  }
  if (!v.verified) throw new HttpError(403, 'the assertion was refused');
  return {
    credential,
    newCounter: v.authenticationInfo.newCounter,
    userVerified: v.authenticationInfo.userVerified,
  };
}
