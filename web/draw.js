// What the console's page (app.js) draws from the agent's answers, as functions of the data
// alone: a request's caller, the audit timeline and rows, a definition's word diff, an MCP
// server's pins, the TOTP code. Built with dom.js's el (textContent, escapes), so nothing here
// reads or writes the page's state. Loaded after dom.js, before app.js, as window.keywardDraw.
'use strict';

(function () {
  const { ascii, el } = window.keywardDom;

  // Who asks: the rows of a pending request's caller, as the agent identified it. A path or an
  // argument the caller chose is shown in ASCII with escapes (ascii), as the CLI's prompts.
  function callerRows(p) {
    const r = p.requester || {};
    const dl = el('dl');
    const row = (k, v) => {
      if (v === undefined || v === null || v === '') return;
      dl.append(el('dt', { text: k }), el('dd', { text: String(v) }));
    };
    row('executable', r.hidden ? '(hidden: it made itself unreadable)' : r.exe && ascii(r.exe));
    row('sha-256', r.exeSha256 || (r.exeUnknown && `unknown: ${r.exeUnknown}`));
    row('pid', r.pid);
    row('command line', (r.cmdline || []).map((a) => ascii(JSON.stringify(a))).join(' '));
    row('directory', r.cwd && ascii(r.cwd));
    row(
      'started by',
      (r.parents || [])
        .slice(0, 6)
        .map((a) => `${a.exe ? ascii(a.exe) : '(hidden)'} [${a.pid}]`)
        .join(' ← '),
    );
    const loaders = (r.loaderVars || []).map(
      (v) => `${v.name}=${v.value === null ? '(not shown)' : ascii(v.value)}`,
    );
    row('loader variables', loaders.join(' '));
    // A run's command line the prompt had to cut: here whole.
    if (Array.isArray(p.command))
      row('the whole command', p.command.map((a) => ascii(JSON.stringify(a))).join(' '));
    return dl;
  }

  // The audit log's rows, newest first (500 at most).
  function auditRows(entries) {
    return entries
      .slice()
      .reverse()
      .slice(0, 500)
      .map((e) =>
        el(
          'tr',
          {},
          el('td', { text: String(e.seq) }),
          el('td', { text: e.time.replace('T', ' ').replace(/\.\d+Z$/, 'Z') }),
          el('td', { text: e.type }),
          el('td', { class: e.decision || '', text: e.decision || '' }),
          el('td', { text: e.target ? ascii(e.target) : '' }),
          el('td', { text: e.caller ? ascii(e.caller) : '' }),
          el('td', { text: e.reason || '' }),
        ),
      );
  }

  // The timeline of releases and denials: what counts as a release.
  const RELEASES = [
    'secret.read',
    'credential.deliver',
    'credential.fetch',
    'key.sign',
    'mcp.call',
  ];

  function svg(tag, attrs, text) {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function timeline(box, entries) {
    const W0 = 800;
    const H = 180;
    const pad = { l: 36, r: 10, t: 10, b: 26 };
    const marks = entries
      .map((e) => ({
        t: Date.parse(e.time),
        kind:
          e.decision === 'deny'
            ? 'deny'
            : e.decision === 'allow' && RELEASES.includes(e.type)
              ? 'allow'
              : null,
      }))
      .filter((m) => m.kind);
    const parts = [
      svg('line', { class: 'axis', x1: pad.l, y1: H - pad.b, x2: W0 - pad.r, y2: H - pad.b }),
    ];
    if (marks.length === 0) {
      parts.push(
        svg('text', { class: 'label', x: W0 / 2 - 80, y: H / 2 }, 'no releases or denials yet'),
      );
      box.replaceChildren(...parts);
      return;
    }
    const t0 = Math.min(...marks.map((m) => m.t));
    const t1 = Math.max(...marks.map((m) => m.t)) + 1;
    const n = 40;
    const width = (W0 - pad.l - pad.r) / n;
    const buckets = Array.from({ length: n }, () => ({ allow: 0, deny: 0 }));
    for (const m of marks)
      buckets[Math.min(n - 1, Math.floor(((m.t - t0) / (t1 - t0)) * n))][m.kind]++;
    const max = Math.max(1, ...buckets.map((b) => b.allow + b.deny));
    const scale = (H - pad.t - pad.b) / max;
    buckets.forEach((b, i) => {
      const x = pad.l + i * width + 1;
      const ha = b.allow * scale;
      const hd = b.deny * scale;
      if (ha > 0)
        parts.push(
          svg('rect', { class: 'allow', x, y: H - pad.b - ha, width: width - 2, height: ha }),
        );
      if (hd > 0)
        parts.push(
          svg('rect', { class: 'deny', x, y: H - pad.b - ha - hd, width: width - 2, height: hd }),
        );
    });
    const fmt = (t) => new Date(t).toISOString().replace('T', ' ').slice(0, 19);
    parts.push(svg('text', { class: 'label', x: pad.l, y: H - 8 }, fmt(t0)));
    parts.push(svg('text', { class: 'label', x: W0 - pad.r - 120, y: H - 8 }, fmt(t1)));
    parts.push(svg('text', { class: 'label', x: 4, y: pad.t + 10 }, String(max)));
    box.replaceChildren(...parts);
  }

  // A word diff of a waiting MCP definition. It comes as parts (kept, removed, added): text in a
  // definition can't pose as a marker.
  function diffView(parts) {
    return el(
      'pre',
      { class: 'diff' },
      ...parts.map((p) =>
        p.op === '-'
          ? el('del', { block: p.text })
          : p.op === '+'
            ? el('ins', { block: p.text })
            : el('span', { block: p.text }),
      ),
    );
  }

  // The TOTP enrolment's QR code: bytes are its size (two bytes) and its matrix (one a module).
  // Returns the size, so the caller finds what follows the matrix.
  function qr(canvas, bytes) {
    // The qrcode package's encoder (/vendor/qr.js): byte mode, level M, as `keyward totp enroll`
    // draws it on a terminal. Its matrix is cleared once drawn.
    const code = keywardQr.create([{ data: bytes, mode: 'byte' }], { errorCorrectionLevel: 'M' });
    const size = code.modules.size;
    const modules = code.modules.data;
    const cell = 6;
    const quiet = 4;
    canvas.width = canvas.height = (size + 2 * quiet) * cell;
    const g = canvas.getContext('2d');
    g.fillStyle = '#fff';
    g.fillRect(0, 0, canvas.width, canvas.height);
    g.fillStyle = '#000';
    for (let r = 0; r < size; r++)
      for (let c = 0; c < size; c++)
        if (modules[r * size + c] === 1)
          g.fillRect((c + quiet) * cell, (r + quiet) * cell, cell, cell);
    modules.fill(0);
    return size;
  }

  // An MCP server's pins: each waiting definition with its word diff and a Trust button (bound to
  // the hash shown: onTrust(waiting, passphrase), the field emptied first), then what is pinned.
  function pinCard(s, onTrust) {
    const box = el(
      'div',
      { class: 'card wide', 'data-server': s.server },
      el('h3', { text: s.server }),
    );
    for (const w of s.waiting) {
      const pass = el('input', {
        type: 'password',
        class: 'factor',
        placeholder: 'vault passphrase',
      });
      const trust = el('button', { class: 'trust', type: 'button', text: 'Trust this definition' });
      trust.addEventListener('click', () => {
        const v = pass.value;
        pass.value = '';
        return onTrust(w, v);
      });
      box.append(
        el(
          'div',
          { class: 'waiting', 'data-tool': w.tool },
          el('p', {
            class: 'warn',
            text: `${w.tool}: waiting since ${w.at} (sha-256 ${w.sha256.slice(0, 16)}…)`,
          }),
          w.diff === null
            ? el('p', { class: 'hint', text: 'the definition is not on file' })
            : diffView(w.diff),
          el('div', { class: 'row' }, pass, trust),
        ),
      );
    }
    box.append(
      el(
        'ul',
        { class: 'pinned' },
        ...s.pinned.map((p) =>
          el('li', { text: `${p.tool} — ${p.sha256.slice(0, 16)}…, pinned ${p.at}` }),
        ),
      ),
    );
    return box;
  }

  Object.defineProperty(window, 'keywardDraw', {
    value: Object.freeze({ auditRows, callerRows, diffView, pinCard, qr, timeline }),
  });
})();
