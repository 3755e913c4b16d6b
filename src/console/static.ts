/**
 * The console's page, from files beside the package (web/ and the bundle): what each path
 * serves, and which of them an operator's browser may load.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const WEB = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'web');
export const STATIC: Record<string, { file: string; type: string }> = {
  '/': { file: path.join(WEB, 'index.html'), type: 'text/html; charset=utf-8' },
  '/app.js': { file: path.join(WEB, 'app.js'), type: 'text/javascript; charset=utf-8' },
  '/app.css': { file: path.join(WEB, 'app.css'), type: 'text/css; charset=utf-8' },
  '/dom.js': { file: path.join(WEB, 'dom.js'), type: 'text/javascript; charset=utf-8' },
  '/draw.js': { file: path.join(WEB, 'draw.js'), type: 'text/javascript; charset=utf-8' },
  '/operator': { file: path.join(WEB, 'operator.html'), type: 'text/html; charset=utf-8' },
  '/operator.js': { file: path.join(WEB, 'operator.js'), type: 'text/javascript; charset=utf-8' },
  // Built by scripts/bundle.ts from the qrcode package: the page draws a TOTP enrolment's code.
  '/vendor/qr.js': {
    file: path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'bundle', 'console-qr.js'),
    type: 'text/javascript; charset=utf-8',
  },
  '/vendor/webauthn.js': {
    file: path.join(
      path.dirname(createRequire(import.meta.url).resolve('@simplewebauthn/browser')),
      '..',
      'dist',
      'bundle',
      'index.umd.min.js',
    ),
    type: 'text/javascript; charset=utf-8',
  },
};

/**
 * What an operator's browser loads from 127.0.0.1 (where a provider's sign-in comes back, RFC
 * 8252): the operator page, its script and style, and the operator API. Nothing else answers there.
 */
export function operatorPage(url: string | undefined): boolean {
  const p = (url ?? '').split('?')[0] ?? '';
  return (
    p === '/operator' ||
    p === '/operator.js' ||
    p === '/dom.js' ||
    p === '/app.css' ||
    p.startsWith('/api/operator/')
  );
}
