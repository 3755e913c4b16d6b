/**
 * The OpenSSH agent protocol (draft-miller-ssh-agent), the part keyward serves so far: list
 * identities and sign with ed25519, every signature through the same identity, policy, approval
 * and audit path as a secret. Everything else gets SSH_AGENT_FAILURE, as the draft asks of
 * requests and extensions an agent does not support.
 */
import { createHash } from 'node:crypto';

export const SSH = {
  FAILURE: 5,
  SUCCESS: 6,
  REQUEST_IDENTITIES: 11,
  IDENTITIES_ANSWER: 12,
  SIGN_REQUEST: 13,
  SIGN_RESPONSE: 14,
} as const;

export const MAX_SSH_MESSAGE = 256 * 1024;

export class SshParseError extends Error {}

/** Reads SSH wire types from a message; every length is checked (the peer is untrusted). */
export class SshReader {
  private pos = 0;
  constructor(private readonly b: Buffer) {}
  byte(): number {
    if (this.pos + 1 > this.b.length) throw new SshParseError('truncated');
    return this.b.readUInt8(this.pos++);
  }
  u32(): number {
    if (this.pos + 4 > this.b.length) throw new SshParseError('truncated');
    const v = this.b.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  string(): Buffer {
    const n = this.u32();
    if (this.pos + n > this.b.length) throw new SshParseError('truncated string');
    const s = this.b.subarray(this.pos, this.pos + n);
    this.pos += n;
    return s;
  }
}

export function sshString(b: Buffer | string): Buffer {
  const data = typeof b === 'string' ? Buffer.from(b, 'utf8') : b;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  return Buffer.concat([len, data]);
}

export function message(type: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat([Buffer.from([type]), ...parts]);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length);
  return Buffer.concat([len, body]);
}

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

export function ed25519Blob(publicKey: Buffer): Buffer {
  return Buffer.concat([sshString('ssh-ed25519'), sshString(publicKey)]);
}

/** As `ssh-keygen -l` prints it. */
export function fingerprint(blob: Buffer): string {
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

export function publicKeyLine(blob: Buffer, comment: string): string {
  return `ssh-ed25519 ${blob.toString('base64')} ${comment}`;
}

/**
 * What is being signed, for the prompt and the audit log: an SSHSIG signature (namespace "git"
 * means a git commit or tag), an SSH login (user, and the server's host key when the client
 * sends it), or else the SHA-256 of the data.
 */
export function describeSignData(data: Buffer): { text: string; details: Record<string, string> } {
  const sha = createHash('sha256').update(data).digest('hex');
  try {
    if (data.subarray(0, 6).toString('latin1') === 'SSHSIG') {
      const r = new SshReader(data.subarray(6));
      const namespace = r.string().toString('utf8');
      r.string();
      const hashAlg = r.string().toString('utf8');
      const hash = r.string().toString('hex');
      const what = namespace === 'git' ? 'a git commit or tag' : `namespace "${namespace}"`;
      return {
        text: `an SSHSIG signature (${what}) over data with ${hashAlg} ${hash.slice(0, 32)}...`,
        details: { kind: 'sshsig', namespace, hashAlg, hash },
      };
    }
    const r = new SshReader(data);
    r.string(); // session id
    if (r.byte() === 50) {
      const user = r.string().toString('utf8');
      const service = r.string().toString('utf8');
      const method = r.string().toString('utf8');
      if (method === 'publickey-hostbound-v00@openssh.com' || method === 'publickey') {
        r.byte();
        r.string();
        r.string();
        let host = '';
        if (method.startsWith('publickey-hostbound'))
          host = `, server host key ${fingerprint(r.string())}`;
        return {
          text: `an SSH login as "${user}" (${service})${host}`,
          details: { kind: 'ssh-login', user, ...(host ? { hostKey: host.slice(18) } : {}) },
        };
      }
    }
  } catch {
    // not a shape we know: fall through to the hash
  }
  return {
    text: `data with SHA-256 ${sha.slice(0, 32)}...`,
    details: { kind: 'data', sha256: sha },
  };
}
