/**
 * koffi (the FFI that reaches libc and Node's own libcrypto), loaded once for the process. Its
 * package's loader picks the build for this machine by reading Node's ELF program headers (glibc
 * or musl) and wraps a few functions for deprecation notices: ~5 ms of every keyward process that
 * uses it, against ~1.6 ms for the addon itself (docs/PERFORMANCE.md, "keyward read"). On glibc
 * Linux, where the build's place is fixed (`@koromix/koffi-linux-ARCH/linux_ARCH/koffi.node`),
 * keyward loads it itself; anything unexpected (another layout, a version that is not the
 * package's, a failed load) leaves the package's loader to decide, as before.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type Koffi from 'koffi';
import { processWide } from './once.js';
import { packageDir } from './package-dir.js';

const require = createRequire(import.meta.url);

function direct(): typeof Koffi | undefined {
  try {
    const arch = process.arch;
    if (
      process.platform !== 'linux' ||
      (arch !== 'x64' && arch !== 'arm64') ||
      // musl: the package's loader tells it apart and picks its build; let it.
      fs.existsSync('/etc/alpine-release')
    )
      return undefined;
    const dir = packageDir('koffi', path.dirname(fileURLToPath(import.meta.url)));
    // The build is an optional dependency of koffi's: found from koffi's directory, as its loader
    // finds it.
    const builds = dir && packageDir(`@koromix/koffi-linux-${arch}`, dir);
    if (!dir || !builds) return undefined;
    const version = (
      JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { version?: unknown }
    ).version;
    const build = path.join(builds, `linux_${arch}`, 'koffi.node');
    const native = require(build) as typeof Koffi & { version?: unknown };
    return typeof version === 'string' && native.version === version ? native : undefined;
  } catch {
    return undefined;
  }
}

interface Loaded {
  koffi: typeof Koffi;
  direct: boolean;
}

/**
 * koffi runs an asynchronous call (an RSA signature: lib/openssl.ts) on a stack and heap of its
 * own, and keeps up to eight such blocks for the next calls: what a signature left on its stack
 * (OpenSSL's Montgomery arithmetic with the primes) would stay there until a later call reused
 * the block. With none kept, each call maps fresh blocks and unmaps them after it (the kernel
 * hands out zeroed pages): two mappings a signature of ~2 ms. Only settable before a library is
 * loaded; a process that loaded one already (none of keyward's) keeps koffi's default.
 */
function keepNoAsyncBlocks(k: typeof Koffi): void {
  try {
    k.config({ resident_async_pools: 0 });
  } catch {
    // Too late to change: the default stays (docs/THREAT-MODEL.md, "ECDSA and RSA keys").
  }
}

const loaded = processWide<Loaded>('koffi', () => {
  const d = direct();
  const k = d ?? (require('koffi') as typeof Koffi);
  keepNoAsyncBlocks(k);
  return { koffi: k, direct: d !== undefined };
});

export const koffi = loaded.koffi;
/** Whether the build was loaded without the package's loader (for the test). */
export const koffiDirect = loaded.direct;
