// The keyward console's page. Plain DOM: every value from the agent goes in with textContent
// (never innerHTML), its control and direction characters shown as escapes, and the
// Content-Security-Policy allows only this file and the WebAuthn library to run. The CSRF token
// lives in this page's memory only (not sessionStorage, which the browser writes to disk) and
// goes in a header on every API request; the session cookie alone opens nothing. A reload logs
// out.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const W = window.SimpleWebAuthnBrowser;
  let csrf = null;
  // For the tests' own API calls from inside the page (test/console.test.ts).
  Object.defineProperty(window, 'keywardCsrf', { value: () => csrf });
  let pending = [];
  let skew = 0;
  let streaming = false;

  const { agentCheck, clean, el, heading, say } = window.keywardDom;
  const { auditRows, callerRows, pinCard, qr, timeline } = window.keywardDraw;

  // Whether what answers at this address is the agent this tab logged in to (dom.js): asked
  // before a passphrase or a code goes, and before a login form comes back.
  const agent = agentCheck('/api/hello', () => (csrf = null));
  const checkAgent = () => agent.check();

  async function api(method, path, body, secret) {
    // A passphrase or a code goes only to the agent this tab logged in to (tab-proof.ts).
    if (agent.gone || secret !== undefined || (body && body.code !== undefined)) await checkAgent();
    const headers = { 'X-Keyward-CSRF': csrf || '' };
    let payload;
    if (secret !== undefined) {
      headers['Content-Type'] = 'application/octet-stream';
      payload = new TextEncoder().encode(secret);
    } else if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    const res = await fetch(path, { method, headers, body: payload, credentials: 'same-origin' });
    let data;
    try {
      data = await res.json();
    } catch (e) {
      data = {};
    }
    if (!res.ok) {
      if (res.status === 403 && /log in first/.test(data.error || '')) loggedOut();
      throw new Error((data.error || `HTTP ${res.status}`) + (data.hint ? ` (${data.hint})` : ''));
    }
    return data;
  }

  function show(view) {
    for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== `view-${view}`;
    for (const a of document.querySelectorAll('nav a'))
      a.classList.toggle('active', a.dataset.view === view);
  }

  function route() {
    if (!csrf) return showLogin();
    const view = (location.hash.replace(/^#\/?/, '') || 'approvals').split('/')[0];
    const known = ['approvals', 'audit', 'policy', 'credentials', 'pins'];
    const v = known.includes(view) ? view : 'approvals';
    $('nav').hidden = false;
    show(v);
    if (v === 'audit') loadAudit().catch((e) => say(e.message, true));
    if (v === 'policy') loadPolicy().catch((e) => say(e.message, true));
    if (v === 'credentials') loadCredentials().catch((e) => say(e.message, true));
    if (v === 'pins') loadPins().catch((e) => say(e.message, true));
    if (!streaming) stream();
  }

  async function showLogin() {
    $('nav').hidden = true;
    // A tab that logged in before shows a login again only to its own agent (after a lock).
    try {
      await checkAgent();
    } catch (e) {
      return;
    }
    show('login');
    try {
      const s = await (await fetch('/api/state', { credentials: 'same-origin' })).json();
      $('locked-note').hidden = !s.locked;
      $('login-webauthn').hidden = !s.webauthn;
    } catch (e) {
      say('the agent does not answer', true);
    }
  }

  async function loggedIn(data) {
    await agent.remember(data);
    csrf = data.csrf;
    say('');
    route();
    // First-time setup: after the passphrase, register a security key.
    fetch('/api/state', { credentials: 'same-origin' })
      .then((r) => r.json())
      .then((s) => {
        if (!s.webauthn)
          say(
            'No security key is registered yet: add one under Security keys, so approvals can ask for it (and you can log in without the passphrase).',
          );
      })
      .catch(() => undefined);
  }

  function loggedOut() {
    csrf = null;
    showLogin();
  }

  $('login-passphrase').addEventListener('click', async () => {
    const p = $('passphrase');
    const value = p.value;
    p.value = '';
    try {
      await loggedIn(await api('POST', '/api/login/passphrase', undefined, value));
    } catch (e) {
      say(e.message, true);
    }
  });
  $('passphrase').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') $('login-passphrase').click();
  });

  $('login-webauthn').addEventListener('click', async () => {
    try {
      const { handle, options } = await api('POST', '/api/login/options', {});
      const response = await W.startAuthentication({ optionsJSON: options });
      await loggedIn(await api('POST', '/api/login/webauthn', { handle, response }));
    } catch (e) {
      say(e.message, true);
    }
  });

  $('logout').addEventListener('click', async () => {
    try {
      await api('POST', '/api/logout', {});
    } catch (e) {
      // The session may have ended already.
    }
    loggedOut();
  });

  // Pending approvals, live: server-sent events read through fetch (the CSRF header goes along).
  async function stream() {
    if (agent.gone) return;
    streaming = true;
    try {
      const res = await fetch('/api/events', {
        headers: { 'X-Keyward-CSRF': csrf || '' },
        credentials: 'same-origin',
      });
      if (!res.ok) {
        streaming = false;
        if (res.status === 403) loggedOut();
        return;
      }
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block
            .split('\n')
            .filter((l) => l.startsWith('data: '))
            .map((l) => l.slice(6))
            .join('\n');
          if (data) {
            const d = JSON.parse(data);
            skew = d.now - Date.now();
            pending = d.pending;
            renderPending();
          }
        }
      }
    } catch (e) {
      // The agent went away or locked; try again below.
    }
    streaming = false;
    if (csrf) setTimeout(() => csrf && !streaming && stream(), 2000);
  }

  function secondsLeft(p) {
    return Math.max(0, Math.round((p.expiresAt - (Date.now() + skew)) / 1000));
  }

  // The list never moves under the pointer: a new request is added at the end, one that ends
  // stays in place (greyed, its buttons off) until the pointer leaves the list, and a new
  // request's Approve works only after a moment. A request can't be slid under a click.
  const shown = new Map();
  let pointerInList = false;
  const ARM_MS = 1000;

  function sweep() {
    for (const [id, li] of shown)
      if (li.classList.contains('gone')) {
        li.remove();
        shown.delete(id);
      }
  }

  $('pending').addEventListener('pointerenter', () => (pointerInList = true));
  $('pending').addEventListener('pointerleave', () => {
    pointerInList = false;
    sweep();
  });

  function renderPending() {
    const ids = new Set(pending.map((p) => p.id));
    for (const [id, li] of shown)
      if (!ids.has(id) && !li.classList.contains('gone')) {
        li.classList.add('gone');
        for (const b of li.querySelectorAll('button, input')) b.disabled = true;
        li.querySelector('.left').textContent = 'no longer pending';
      }
    for (const p of pending)
      if (!shown.has(p.id)) {
        const li = requestItem(p);
        shown.set(p.id, li);
        $('pending').append(li);
      }
    if (!pointerInList) sweep();
    $('no-pending').hidden = pending.length > 0;
    $('pending-count').textContent = pending.length > 0 ? `(${pending.length})` : '';
  }

  function requestItem(p) {
    const r = p.requester || {};
    const dl = callerRows(p);
    const row = (k, v) => {
      if (v === undefined || v === null || v === '') return;
      dl.append(el('dt', { text: k }), el('dd', { text: String(v) }));
    };
    row('rule', p.rule);
    row(
      'approval',
      p.mode === 'operator' && p.operators
        ? `operator: ${p.operators.count} of groups ${p.operators.groups.join(', ')}; ${(p.votes || []).length} approved so far (${(p.votes || []).map((v) => v.operator).join(', ') || 'none'})`
        : p.mode + (p.userVerification ? ` (user verification ${p.userVerification})` : ''),
    );
    if (p.message) row('message', p.message);
    const left = el('span', { class: 'left', 'data-left': p.id, text: `${secondsLeft(p)} s left` });
    const actions = el('div', { class: 'actions' });
    const approve = el('button', { class: 'approve', type: 'button', disabled: '' });
    setTimeout(() => {
      if (!approve.closest('.gone')) approve.disabled = false;
    }, ARM_MS);
    const deny = el('button', { class: 'deny danger', type: 'button', text: 'Deny' });
    let input;
    if (p.mode === 'webauthn') approve.textContent = 'Approve with security key';
    else if (p.mode === 'passphrase') {
      input = el('input', { type: 'password', class: 'factor', placeholder: 'vault passphrase' });
      approve.textContent = 'Approve';
    } else if (p.mode === 'totp') {
      input = el('input', {
        class: 'factor',
        inputmode: 'numeric',
        placeholder: 'TOTP code',
        maxlength: '8',
      });
      approve.textContent = 'Approve';
    } else approve.textContent = 'Approve';
    if (input) actions.append(input);
    // Operators approve elsewhere (the operator API); here it can only be denied.
    if (p.mode === 'operator') actions.append(deny);
    else actions.append(approve, deny);
    approve.addEventListener('click', () => decide(p, input).catch((e) => say(e.message, true)));
    deny.addEventListener('click', () =>
      api('POST', `/api/approvals/${p.id}/deny`, {})
        .then(() => say(`denied ${p.id}`))
        .catch((e) => say(e.message, true)),
    );
    const li = el(
      'li',
      { class: 'request', 'data-id': p.id },
      left,
      // The id the waiting command printed: two requests alike in all else differ here.
      el('p', { class: 'request-id', text: `request ${p.id}` }),
      el('h3', { text: heading(p) }),
      ...(p.also && p.also.length > 0
        ? [el('p', { class: 'also', text: `and also ${p.also.join(', ')}` })]
        : []),
      ...(p.what ? [el('p', { class: 'what', text: `to ${p.what}` })] : []),
      el('p', { class: 'who', text: r.description || '' }),
      dl,
      actions,
    );
    if (r.loaderVars && r.loaderVars.length > 0)
      li.insertBefore(
        el('p', {
          class: 'warn',
          text: 'Started with loader variables: someone else’s code may run in it.',
        }),
        dl,
      );
    return li;
  }

  async function decide(p, input) {
    const path = `/api/approvals/${p.id}/approve`;
    if (p.mode === 'webauthn') {
      const { options } = await api('POST', `/api/approvals/${p.id}/options`, {});
      const response = await W.startAuthentication({ optionsJSON: options });
      await api('POST', path, { response });
    } else if (p.mode === 'passphrase') {
      const v = input.value;
      input.value = '';
      await api('POST', path, undefined, v);
    } else if (p.mode === 'totp') {
      await api('POST', path, { code: input.value.trim() });
    } else {
      await api('POST', path, {});
    }
    say(`approved ${p.id}`);
  }

  setInterval(() => {
    for (const p of pending) {
      const s = document.querySelector(`.request:not(.gone) [data-left="${p.id}"]`);
      if (s) s.textContent = `${secondsLeft(p)} s left`;
    }
  }, 1000);

  // The audit log, with a timeline of releases and denials (draw.js).
  async function loadAudit() {
    const q = new URLSearchParams();
    const add = (k, id) => {
      const v = $(id).value.trim();
      if (v) q.set(k, id.startsWith('f-s') || id.startsWith('f-u') ? new Date(v).toISOString() : v);
    };
    add('type', 'f-type');
    add('target', 'f-target');
    add('caller', 'f-caller');
    add('decision', 'f-decision');
    add('since', 'f-since');
    add('until', 'f-until');
    const d = await api('GET', `/api/audit?${q}`);
    $('audit-count').textContent =
      `${d.total} entries${d.total > d.entries.length ? ` (the newest ${d.entries.length} shown)` : ''}`;
    timeline($('timeline'), d.entries);
    $('audit-rows').replaceChildren(...auditRows(d.entries));
  }
  $('f-apply').addEventListener('click', () => loadAudit().catch((e) => say(e.message, true)));

  async function loadPolicy() {
    const d = await api('GET', '/api/policy');
    const f = d.inForce;
    $('policy-meta').textContent = clean(
      `${f.version === null ? 'the built-in default' : `version ${f.version}`}, sha-256 ${f.sha256.slice(0, 16)}…` +
        (f.drift ? ` — WARNING: the files differ from it: ${f.driftReasons.join('; ')}` : ''),
    );
    $('policy-text').textContent = clean(f.text, true);
    $('policy-history').replaceChildren(
      ...d.history
        .slice()
        .reverse()
        .map((h) => {
          const b = el('button', { class: 'secondary', type: 'button', text: 'show' });
          b.addEventListener('click', () =>
            showVersion(h.version).catch((e) => say(e.message, true)),
          );
          return el(
            'li',
            {},
            el('span', {
              text: `version ${h.version}, applied ${h.appliedAt}, ${h.rules} rule(s)`,
            }),
            b,
          );
        }),
    );
  }

  async function showVersion(n) {
    const d = await api('GET', `/api/policy/${n}`);
    $('policy-version').hidden = false;
    $('policy-version-title').textContent = `Version ${d.version} (applied ${d.appliedAt})`;
    $('policy-diff').textContent = clean(
      d.diff
        ? `against version ${d.diff.against}: ${d.diff.summary}` +
            (d.diff.added.length ? `; added ${d.diff.added.join(', ')}` : '') +
            (d.diff.removed.length ? `; removed ${d.diff.removed.join(', ')}` : '') +
            (d.diff.modified.length ? `; changed ${d.diff.modified.join(', ')}` : '')
        : 'the first applied version',
    );
    $('policy-version-text').textContent = clean(d.text, true);
  }

  async function loadCredentials() {
    const d = await api('GET', '/api/credentials');
    $('no-credentials').hidden = d.credentials.length > 0;
    $('credentials').replaceChildren(
      ...d.credentials.map((c) => {
        const rename = el('button', { class: 'secondary', type: 'button', text: 'Rename' });
        const revoke = el('button', { class: 'danger', type: 'button', text: 'Revoke' });
        // Changing the set of keys takes the passphrase, as on the command line.
        const passphrase = () => {
          const p = $('cred-passphrase');
          const v = p.value;
          p.value = '';
          return v;
        };
        rename.addEventListener('click', async () => {
          const name = prompt('New name', c.name);
          if (!name) return;
          const q = new URLSearchParams({ name });
          await api('POST', `/api/credentials/${c.id}/rename?${q}`, undefined, passphrase())
            .then(() => say(`renamed ${name}`))
            .catch((e) => say(e.message, true));
          loadCredentials();
        });
        revoke.addEventListener('click', async () => {
          if (!confirm(`Revoke ${c.name}? It will approve nothing more.`)) return;
          await api('POST', `/api/credentials/${c.id}/revoke`, undefined, passphrase())
            .then(() => say(`revoked ${c.name}`))
            .catch((e) => say(e.message, true));
          loadCredentials();
        });
        return el(
          'li',
          { class: 'credential', 'data-id': c.id },
          el('span', { class: 'name', text: c.name }),
          el('span', {
            class: 'meta',
            text: `added ${c.created}, last used ${c.lastUsed || 'never'}`,
          }),
          rename,
          revoke,
        );
      }),
    );
  }

  $('register').addEventListener('click', async () => {
    const p = $('reg-passphrase');
    const secret = p.value;
    p.value = '';
    try {
      const { options } = await api('POST', '/api/credentials/options', undefined, secret);
      const response = await W.startRegistration({ optionsJSON: options });
      await api('POST', '/api/credentials', { name: $('reg-name').value, response });
      say('security key added');
      loadCredentials();
    } catch (e) {
      say(e.message, true);
    }
  });

  // MCP pins: each server's card (draw.js), Trust bound to the hash shown.
  async function loadPins() {
    const d = await api('GET', '/api/pins');
    $('no-pins').hidden = d.servers.length > 0;
    $('pins').replaceChildren(
      ...d.servers.map((s) =>
        pinCard(s, async (w, v) => {
          const q = new URLSearchParams({ server: s.server, tool: w.tool, hash: w.sha256 });
          try {
            await api('POST', `/api/pins/trust?${q}`, undefined, v);
            say(`trusted ${s.server} ${w.tool}`);
            loadPins();
          } catch (e) {
            say(e.message, true);
          }
        }),
      ),
    );
  }

  // TOTP enrolment: the answer is the otpauth URI's bytes; its QR code is drawn here.
  $('totp-enroll').addEventListener('click', async () => {
    const p = $('totp-passphrase');
    const v = p.value;
    p.value = '';
    try {
      // The passphrase goes only to the agent this tab logged in to (as through api()).
      await checkAgent();
      const res = await fetch('/api/totp', {
        method: 'POST',
        headers: { 'X-Keyward-CSRF': csrf || '', 'Content-Type': 'application/octet-stream' },
        body: new TextEncoder().encode(v),
        credentials: 'same-origin',
      });
      if (!res.ok) throw new Error((await res.json()).error || `HTTP ${res.status}`);
      const bytes = new Uint8Array(await res.arrayBuffer());
      qr($('totp-qr'), bytes);
      $('totp-uri').textContent = new TextDecoder().decode(bytes);
      bytes.fill(0);
      $('totp-result').hidden = false;
      say('TOTP enrolled: scan the code now; it is not shown again');
    } catch (e) {
      say(e.message, true);
    }
  });

  window.addEventListener('hashchange', route);
  route();
})();
