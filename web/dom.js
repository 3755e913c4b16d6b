// What both console pages (index.html's app.js, operator.html's operator.js) build their DOM
// with: every value from the agent goes in with textContent (never innerHTML), its control and
// direction characters shown as escapes. Loaded first, as window.keywardDom.
'use strict';

(function () {
  // Control, format (bidi overrides, zero-width) and separator characters in text the agent
  // passes on (command lines, directories, names, definitions: the caller's or a server's
  // choosing) are shown as \u{...}, so they can't reorder or hide what a person reads. Newlines
  // and tabs stay where a block of text is shown.
  function clean(v, keepLines) {
    return String(v).replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, (ch) =>
      keepLines && (ch === '\n' || ch === '\t') ? ch : `\\u{${ch.codePointAt(0).toString(16)}}`,
    );
  }

  // A path or an argument the caller chose (an executable, a directory, a command line): as the
  // agent's prompts show them, anything outside printable ASCII as \u{...}, so a look-alike
  // letter (a Cyrillic i in "git") or a combining mark can't pass for another program.
  function ascii(v) {
    return String(v).replace(/[^\x20-\x7e]/gu, (ch) => `\\u{${ch.codePointAt(0).toString(16)}}`);
  }

  // A request's heading: its action and target (an ssh-add key's comment is the caller's
  // choosing) in ASCII as the prompts show it, cut at 200 characters (found in review: a
  // look-alike letter in the heading read as another key's name).
  function heading(p) {
    const t = ascii(p.target);
    return `${p.action} ${t.length > 200 ? `${t.slice(0, 200)}... +${t.length - 200} more` : t}`;
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = clean(v);
      else if (k === 'block') e.textContent = clean(v, true);
      else e.setAttribute(k, v);
    }
    for (const c of children)
      if (c !== null && c !== undefined) e.append(typeof c === 'string' ? clean(c) : c);
    return e;
  }

  /** The page's status line (#message): text, or an error, or hidden when empty. */
  function say(text, isError) {
    const m = document.getElementById('message');
    m.textContent = clean(text);
    m.className = isError ? 'error' : '';
    m.hidden = !text;
  }

  // The agent's key a login gave this tab (src/console/tab-proof.ts), as a key WebCrypto holds
  // (not extractable): HMAC-SHA-512, of which the agent's proof is the first 32 bytes.
  function agentKeyOf(b64url) {
    return crypto.subtle.importKey(
      'raw',
      fromB64url(b64url),
      { name: 'HMAC', hash: 'SHA-512' },
      false,
      ['sign'],
    );
  }

  function fromB64url(v) {
    const b = atob(String(v).replace(/-/g, '+').replace(/_/g, '/'));
    return Uint8Array.from(b, (c) => c.charCodeAt(0));
  }

  function toB64url(bytes) {
    return btoa(String.fromCharCode(...bytes))
      .replace(/\+/g, '-')
      .replace(/\//g, '_')
      .replace(/=+$/, '');
  }

  // Whether what answers at this address holds the agent's key: its proof over a nonce this tab
  // chose. Anything else (no answer, a wrong proof) is false.
  async function sameAgent(key, id, path) {
    try {
      const nonce = crypto.getRandomValues(new Uint8Array(32));
      const res = await fetch(path, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ id, nonce: toB64url(nonce) }),
        credentials: 'omit',
      });
      if (!res.ok) return false;
      const { proof } = await res.json();
      const label = new TextEncoder().encode(`keyward console hello\0${id}\0`);
      const input = new Uint8Array(label.length + nonce.length);
      input.set(label);
      input.set(nonce, label.length);
      const mac = new Uint8Array(await crypto.subtle.sign('HMAC', key, input)).slice(0, 32);
      const got = fromB64url(proof);
      if (got.length !== 32) return false;
      let diff = 0;
      for (let i = 0; i < 32; i++) diff |= mac[i] ^ got[i];
      return diff === 0;
    } catch (e) {
      return false;
    }
  }

  // A page's check, before it sends a passphrase, a code or a key, or shows a sign-in form again,
  // that what answers at its address is the agent it logged in to (src/console/tab-proof.ts):
  // remember() takes the key from a login's answer (the first login trusts the address keyward
  // printed); check() throws unless the proof holds, and then the page is done for good: every
  // view hidden, the #gone line shown, and onGone told (to drop its session).
  function agentCheck(path, onGone) {
    let key = null;
    let id = null;
    let gone = false;
    return {
      get gone() {
        return gone;
      },
      async remember(answer) {
        if (key || !answer.agentKey) return;
        key = await agentKeyOf(answer.agentKey);
        id = answer.agentKeyId;
      },
      async check() {
        if (gone) throw new Error('this page is done: open the address keyward console prints');
        if (!key || (await sameAgent(key, id, path))) return;
        gone = true;
        onGone();
        document.getElementById('nav').hidden = true;
        for (const sec of document.querySelectorAll('main > section')) sec.hidden = true;
        document.getElementById('gone').hidden = false;
        throw new Error('what answers here is not the agent this page logged in to');
      },
    };
  }

  Object.defineProperty(window, 'keywardDom', {
    value: Object.freeze({ agentCheck, ascii, clean, el, heading, say }),
  });
})();
