/**
 * A QR code of secret bytes, drawn on a terminal with block characters (two module rows per text
 * line, light modules drawn, for dark terminals). The picture is built byte by byte in secure
 * memory and the module matrix is zeroed; the qrcode library's own intermediate arrays are
 * outside keyward's reach (docs/THREAT-MODEL.md).
 */
import { createRequire } from 'node:module';
import type QRCodeT from 'qrcode';
import { secureAlloc, secureFree, writeAllSync, type SecureBuffer } from './secure.js';

const UPPER = Buffer.from('\u2580', 'utf8'); // ▀
const LOWER = Buffer.from('\u2584', 'utf8'); // ▄
const FULL = Buffer.from('\u2588', 'utf8'); // █
const QUIET = 2;

export function writeQr(data: SecureBuffer, fd: number): void {
  // Loaded here, not at start: only two commands draw QR codes.
  const QRCode = createRequire(import.meta.url)('qrcode') as typeof QRCodeT;
  const qr = QRCode.create([{ data, mode: 'byte' }], { errorCorrectionLevel: 'M' });
  const size = qr.modules.size;
  const modules = qr.modules.data;
  const dark = (r: number, c: number): boolean =>
    r >= 0 && c >= 0 && r < size && c < size && modules[r * size + c] === 1;
  const width = size + 2 * QUIET;
  const rows = Math.ceil(width / 2);
  const out = secureAlloc(rows * (width * 3 + 1));
  let o = 0;
  try {
    for (let y = 0; y < rows; y++) {
      for (let x = 0; x < width; x++) {
        const top = !dark(2 * y - QUIET, x - QUIET);
        const bottom = 2 * y + 1 < width && !dark(2 * y + 1 - QUIET, x - QUIET);
        const glyph = top && bottom ? FULL : top ? UPPER : bottom ? LOWER : undefined;
        if (glyph) o += glyph.copy(out, o);
        else out[o++] = 0x20;
      }
      out[o++] = 0x0a;
    }
    writeAllSync(fd, out.subarray(0, o));
  } finally {
    modules.fill(0);
    secureFree(out);
  }
}
