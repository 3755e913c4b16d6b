// The operator page (docs/OPERATORS.md): sign in with the identity provider (the agent runs the
// authorization code flow and sends the browser back here with a one-use handle in the URL's
// fragment) or with an API key, then approve or deny the requests a rule gives to your groups.
// Every value from the agent goes in with textContent; the bearer token lives in this page's
// memory only (a reload signs out) and goes in the Authorization header.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  let token = null;
  let timer = null;

  const { agentCheck, clean, el, heading, say } = window.keywardDom;

  // Whether what answers at this address is the agent this page signed in to (dom.js): asked
  // before an API key goes, before the sign-in form comes back, and before the identity provider.
  const agent = agentCheck('/api/operator/hello', () => {
    token = null;
    clearInterval(timer);
  });
  const checkAgent = () => agent.check();

  async function api(method, path, body, raw) {
    if (agent.gone || raw !== undefined) await checkAgent();
    const headers = {};
    if (token) headers['Authorization'] = `Bearer ${token}`;
    let payload;
    if (raw !== undefined) {
      headers['Content-Type'] = 'application/octet-stream';
      payload = new TextEncoder().encode(raw);
    } else if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    const res = await fetch(path, { method, headers, body: payload, credentials: 'omit' });
    const data = await res.json().catch(() => ({}));
    if (res.status === 401) void signedOut();
    if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
    return data;
  }

  async function signedOut() {
    token = null;
    clearInterval(timer);
    for (const item of shown.values()) item.li.remove();
    shown.clear();
    $('nav').hidden = true;
    $('view-requests').hidden = true;
    // The sign-in form again only where this page's agent answers.
    try {
      await checkAgent();
    } catch (e) {
      return;
    }
    $('view-login').hidden = false;
  }

  async function signedIn(answer) {
    await agent.remember(answer);
    token = answer.token;
    const op = answer.operator;
    $('who').textContent = clean(`${op.id} (${op.method}; ${op.groups.join(', ')})`);
    $('nav').hidden = false;
    $('view-login').hidden = true;
    $('view-requests').hidden = false;
    refresh();
    clearInterval(timer);
    timer = setInterval(refresh, 2000);
  }

  // As on the console page (app.js), the list never moves under the pointer: a new request is
  // added at the end, one that ends stays in place (greyed, its buttons off) until the pointer
  // leaves the list, a new request's Approve works only after a moment, and a request's own
  // lines change in place. A request can't be slid under a click (any process of the user can
  // deny one). Each shows its id, which the waiting command printed.
  const shown = new Map();
  let pointerInList = false;
  const ARM_MS = 1000;

  function sweep() {
    for (const [id, item] of shown)
      if (item.li.classList.contains('gone')) {
        item.li.remove();
        shown.delete(id);
      }
  }

  $('pending').addEventListener('pointerenter', () => (pointerInList = true));
  $('pending').addEventListener('pointerleave', () => {
    pointerInList = false;
    sweep();
  });

  const votesOf = (p) =>
    `rule ${p.rule}: ${p.operators.count} operator(s) of ${p.operators.groups.join(', ')}; approved so far: ${(p.votes || []).map((v) => v.operator).join(', ') || 'none yet'}`;

  function requestItem(p) {
    const actions = el('div', { class: 'actions' });
    const status = el('p', {
      class: 'status',
      text: p.mayApprove ? '' : `You can't decide this: ${p.why}`,
    });
    const approve = el('button', {
      class: 'approve',
      type: 'button',
      text: 'Approve',
      disabled: '',
    });
    const deny = el('button', { class: 'deny danger', type: 'button', text: 'Deny' });
    setTimeout(() => {
      if (!approve.closest('.gone') && !approve.dataset.off) approve.disabled = false;
    }, ARM_MS);
    approve.addEventListener('click', () => decide(p.id, 'approve'));
    deny.addEventListener('click', () => decide(p.id, 'deny'));
    actions.append(approve, deny);
    const votes = el('p', { class: 'votes', text: votesOf(p), title: votesOf(p) });
    const li = el(
      'li',
      { class: 'request', 'data-id': p.id },
      el('p', { class: 'request-id', text: `request ${p.id}` }),
      el('h3', { text: heading(p) }),
      ...(p.also && p.also.length > 0
        ? [el('p', { class: 'also', text: `and also ${p.also.join(', ')}` })]
        : []),
      ...(p.what ? [el('p', { class: 'what', text: `to ${p.what}` })] : []),
      el('p', { class: 'who', text: p.requester.description || '' }),
      votes,
      status,
      actions,
    );
    const item = { li, votes, status, approve, deny };
    mayDecide(item, p);
    return item;
  }

  // Whether this operator may still decide p (not once they approved it): said in place.
  function mayDecide(item, p) {
    if (p.mayApprove) return;
    item.approve.dataset.off = '1';
    item.approve.disabled = true;
    item.deny.disabled = true;
    item.status.textContent = item.status.title = `You can't decide this: ${p.why}`;
  }

  function render(list) {
    const ids = new Set(list.map((p) => p.id));
    for (const [id, item] of shown)
      if (!ids.has(id) && !item.li.classList.contains('gone')) {
        item.li.classList.add('gone');
        for (const b of item.li.querySelectorAll('button')) b.disabled = true;
        item.status.textContent = 'no longer pending';
      }
    for (const p of list) {
      const item = shown.get(p.id);
      if (item) {
        if (!item.li.classList.contains('gone')) {
          item.votes.textContent = item.votes.title = votesOf(p);
          mayDecide(item, p);
        }
        continue;
      }
      const fresh = requestItem(p);
      shown.set(p.id, fresh);
      $('pending').append(fresh.li);
    }
    if (!pointerInList) sweep();
    $('no-pending').hidden = list.length > 0;
  }

  async function refresh() {
    if (!token) return;
    try {
      render((await api('GET', '/api/operator/approvals')).pending);
    } catch (e) {
      say(e.message, true);
    }
  }

  async function decide(id, what) {
    try {
      const r = await api('POST', `/api/operator/approvals/${id}/${what}`, {});
      say(what === 'deny' ? `denied ${id}` : `approved ${id} (${r.votes} of ${r.needed})`);
    } catch (e) {
      say(e.message, true);
    }
    refresh();
  }

  $('sso').addEventListener('click', async () => {
    // Not to a sign-in page of whatever took this address (a page whose agent went away).
    try {
      await checkAgent();
    } catch (e) {
      return;
    }
    window.location.assign('/api/operator/oidc/start');
  });
  $('login-key').addEventListener('click', async () => {
    const input = $('api-key');
    try {
      await signedIn(await api('POST', '/api/operator/login/key', undefined, input.value.trim()));
      say('');
    } catch (e) {
      say(e.message, true);
    } finally {
      input.value = '';
    }
  });
  $('logout').addEventListener('click', async () => {
    await api('POST', '/api/operator/logout', {}).catch(() => undefined);
    await signedOut();
  });

  // Back from the identity provider: a handle to claim, for the session or for why the sign-in
  // was refused (the agent's words: never text from the URL, which any link can set). The
  // fragment goes from the address bar (and history) at once.
  const back = new URLSearchParams(window.location.hash.slice(1));
  history.replaceState(null, '', '/operator');
  void signedOut();
  const refused = back.get('refused');
  if (refused === 'not-started')
    say(
      'This sign-in was not started here, was used already, or took too long: sign in again.',
      true,
    );
  // Fixed words: the provider's error code, if any, is in the audit log (a link could set one).
  if (refused === 'provider')
    say('The identity provider refused the sign-in (its error is in the audit log).', true);
  if (refused === 'not-completed')
    say(
      'The sign-in could not be completed with the identity provider: sign in again (the reason is in the audit log).',
      true,
    );
  if (back.get('handle'))
    api('POST', '/api/operator/oidc/claim', { handle: back.get('handle') })
      .then(signedIn)
      .catch((e) => say(e.message, true));
})();
