/**
 * Hosts as the proxy spells them. Apart from wire.ts so that what a run's request needs loads
 * without node:tls: the agent loads TLS only when a proxied run starts (its idle memory).
 */
import net from 'node:net';

/**
 * A host as the proxy compares and connects to it, or undefined when it is none: lowercase, no
 * trailing dot, an IPv4 address in dotted-quad form however it was written (127.1, 2130706433,
 * 0x7f000001, an IPv4-mapped IPv6 address), an IPv6 address compressed. Binding, rate limits and
 * records all see one spelling, so another spelling of a host is the same host.
 */
export function canonicalHost(raw: string): string | undefined {
  let h = raw.toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h.endsWith('.')) h = h.slice(0, -1);
  if (h.includes(':')) {
    if (net.isIPv6(h) === false) return undefined;
    let v6: string;
    try {
      v6 = new URL(`http://[${h}]/`).hostname.slice(1, -1);
    } catch {
      return undefined;
    }
    // IPv4-mapped (::ffff:a.b.c.d, which URL writes as ::ffff:XXXX:XXXX): the IPv4 address.
    const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(v6);
    if (!m) return v6;
    const hi = parseInt(m[1] ?? '0', 16);
    const lo = parseInt(m[2] ?? '0', 16);
    return [hi >> 8, hi & 255, lo >> 8, lo & 255].join('.');
  }
  if (!/^[a-z0-9.-]{1,253}$/.test(h)) return undefined;
  try {
    // The WHATWG URL parser writes every IPv4 form as a dotted quad.
    return new URL(`http://${h}/`).hostname;
  } catch {
    return undefined;
  }
}
