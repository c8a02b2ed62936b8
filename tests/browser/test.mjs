// make browser-test (scripts/browser-test.sh starts everything this needs):
// authd's cookies, CORS and Origin check as headless Chromium really handles them.
//
//   AUTHD_URL    http://127.0.0.1:A  authd, DEBUG=true (cookies without Secure over http)
//   ALLOWED_URL  http://127.0.0.1:B  a static page whose origin is in ALLOWED_ORIGINS
//   EVIL_URL     http://127.0.0.1:C  a static page whose origin is not
//
// All three are on one host: one *site* (scheme + host; the port is no part of a site), three
// *origins* (the port is). Cookies are scoped by host, not port, so authd's cookies are sent
// with every credentialed request to 127.0.0.1 whichever of the three pages makes it, and
// SameSite (a site rule) does not tell B from C. What keeps C out is authd: CORS headers only
// for allowed origins (so C cannot read answers) and the Origin check on unsafe methods (so
// C cannot change anything). http://localhost:C serves the evil page from another *site*,
// to show what SameSite does when it does apply.
//
// Prints PASS/FAIL per check; exits 1 when any check fails.
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const AUTHD = required('AUTHD_URL');
const ALLOWED = required('ALLOWED_URL');
const EVIL = required('EVIL_URL');
// The same evil page from another site: localhost is not 127.0.0.1 for cookies.
const CROSS_SITE = EVIL.replace('//127.0.0.1:', '//localhost:');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// authd's log (its access lines: "METHOD /path STATUS …"), when the script passes it: what
// authd itself says it answered.
const AUTHD_LOG = process.env.AUTHD_LOG;
const JWT_TTL = 3600; // authd's defaults (API.md): JWT_TTL, SESSION_IDLE_TIMEOUT, SESSION_MAX_AGE
const IDLE = 7 * 24 * 3600;
const MAX_AGE = 30 * 24 * 3600;
const SLACK = 60; // seconds of clock and run-time slack on lifetimes

function required(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`test.mjs: ${name} is not set (run it with make browser-test)`);
    process.exit(2);
  }
  return v.replace(/\/$/, '');
}

// The whole run must end well inside scripts/browser-test.sh's limit, with a message.
setTimeout(() => {
  console.error('FAIL  the browser test did not finish within 120 s');
  process.exit(1);
}, 120_000).unref();

let passed = 0;
let failed = 0;
function check(name, ok, detail = '') {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'PASS' : 'FAIL'}  ${name}${detail && !ok ? `\n      ${detail}` : ''}`);
  return ok;
}
const near = (value, want) => typeof value === 'number' && Math.abs(value - want) <= SLACK;
const now = () => Date.now() / 1000;
const show = (v) => JSON.stringify(v);

// What went over the wire to authd, as Chromium's network stack reports it over the DevTools
// protocol: the request headers as sent (Cookie, Origin, Sec-Fetch-Site included) and the
// answer's status and raw headers (Set-Cookie included), also for answers that the page
// itself may not read. (Playwright's own request.allHeaders() leaves out the Cookie and
// Origin of no-cors requests, so this listens to the Network domain itself.)
const wire = [];
const byId = new Map();
const lower = (headers) => Object.fromEntries(Object.entries(headers || {}).map(([k, v]) => [k.toLowerCase(), v]));
async function watch(context, page) {
  const cdp = await context.newCDPSession(page);
  const entry = (id) => byId.get(id);
  cdp.on('Network.requestWillBeSent', (e) => {
    if (!e.request.url.startsWith(AUTHD + '/')) return;
    const prior = byId.get(e.requestId);
    if (prior && e.redirectResponse) prior.done = true;
    const item = {
      method: e.request.method,
      path: e.request.url.slice(AUTHD.length),
      status: undefined,
      requestHeaders: { ...lower(e.request.headers), ...(prior?.early || {}) },
      responseHeaders: {},
      done: false,
    };
    byId.set(e.requestId, item);
    wire.push(item);
  });
  cdp.on('Network.requestWillBeSentExtraInfo', (e) => {
    const item = entry(e.requestId);
    // The extra info may come before the request it belongs to.
    if (item) Object.assign(item.requestHeaders, lower(e.headers));
    else byId.set(e.requestId, { early: lower(e.headers) });
  });
  cdp.on('Network.responseReceivedExtraInfo', (e) => {
    const item = entry(e.requestId);
    if (item?.method) {
      item.status = e.statusCode;
      item.responseHeaders = { ...item.responseHeaders, ...lower(e.headers) };
    }
  });
  cdp.on('Network.responseReceived', (e) => {
    const item = entry(e.requestId);
    if (item?.method) {
      item.status ??= e.response.status;
      item.responseHeaders = { ...lower(e.response.headers), ...item.responseHeaders };
    }
  });
  for (const ev of ['Network.loadingFinished', 'Network.loadingFailed']) {
    cdp.on(ev, (e) => {
      const item = entry(e.requestId);
      if (item?.method) item.done = true;
    });
  }
  await cdp.send('Network.enable');
  return page;
}
// Waits until every exchange recorded so far has ended (network events may trail the
// page's promise by a moment), for at most 3 s.
async function settle() {
  const until = Date.now() + 3000;
  do await new Promise((r) => setTimeout(r, 100));
  while (wire.some((e) => !e.done) && Date.now() < until);
}
// The last exchange for `method path` recorded since `mark` (an index into `wire`).
function sent(mark, method, path) {
  return wire
    .slice(mark)
    .filter((e) => e.method === method && e.path === path)
    .at(-1);
}
// A request the browser held back: its preflight (OPTIONS) was answered without CORS
// headers, and the request itself got no answer (DevTools lists it, blocked, with no status).
// How many access lines authd logged for `method path` (the query left out); 0 without
// AUTHD_LOG. preflightOnly also wants that count unchanged since `logged` was taken.
function accessLines(method, path) {
  if (!AUTHD_LOG) return 0;
  const line = ` authd::access] ${method} ${path.split('?')[0]} `;
  return readFileSync(AUTHD_LOG, 'utf8').split('\n').filter((l) => l.includes(line)).length;
}
function preflightOnly(mark, method, path, logged) {
  if (accessLines(method, path) !== logged) return false;
  const since = wire.slice(mark).filter((e) => e.path === path);
  const preflight = since.find((e) => e.method === 'OPTIONS');
  return (
    preflight?.status === 200 &&
    !('access-control-allow-origin' in preflight.responseHeaders) &&
    since.every((e) => e.method !== method || e.status === undefined)
  );
}
const cookieNames = (entry) =>
  (entry?.requestHeaders?.cookie || '')
    .split(';')
    .map((c) => c.trim().split('=')[0])
    .filter(Boolean);
const cookieValue = (entry, name) =>
  (entry?.requestHeaders?.cookie || '')
    .split(';')
    .map((c) => c.trim())
    .find((c) => c.startsWith(name + '='))
    ?.slice(name.length + 1);

// fetch() from inside `page`, with credentials: what the page's script gets to see.
async function call(page, method, path, { json, mode = 'cors' } = {}) {
  const mark = wire.length;
  const result = await page.evaluate(
    async ({ url, method, json, mode }) => {
      const init = { method, mode, credentials: 'include' };
      if (json !== undefined) {
        init.headers = { 'Content-Type': 'application/json' };
        init.body = JSON.stringify(json);
      }
      try {
        const r = await fetch(url, init);
        const text = await r.text();
        let body = text;
        try {
          body = JSON.parse(text);
        } catch {}
        return {
          fetched: true,
          type: r.type,
          status: r.status,
          body,
          setCookieVisible: r.headers.get('set-cookie'),
        };
      } catch (e) {
        return { fetched: false, error: `${e.name}: ${e.message}` };
      }
    },
    { url: AUTHD + path, method, json, mode },
  );
  await settle();
  return { ...result, mark };
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  // playwright-core gives every launch a fresh, empty profile (--user-data-dir) of its own.
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
try {
  await run();
} catch (e) {
  check('the test ran to its end', false, e.stack || String(e));
} finally {
  await browser.close();
}
console.log(`\nbrowser-test: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);

async function run() {
  const context = await browser.newContext();
  context.setDefaultTimeout(15_000);
  const jar = async () => Object.fromEntries((await context.cookies(AUTHD)).map((c) => [c.name, c]));

  const app = await watch(context, await context.newPage());
  await app.goto(`${ALLOWED}/allowed.html`);
  const email = `browser-${Date.now()}@example.com`;
  const password = 'Password123';

  // --- the allowed front end (B): register, login --------------------------------------
  let r = await call(app, 'POST', '/api/register/', { json: { name: 'Browser', email, password } });
  check('B: register answers 201, readable by the page', r.status === 201 && r.body?.email === email, show(r));
  let w = sent(r.mark, 'POST', '/api/register/');
  check(
    'B: authd names B in Access-Control-Allow-Origin, with Allow-Credentials: true',
    w?.responseHeaders['access-control-allow-origin'] === ALLOWED &&
      w?.responseHeaders['access-control-allow-credentials'] === 'true',
    show(w?.responseHeaders),
  );

  const loginsLogged = accessLines('POST', '/api/login/');
  r = await call(app, 'POST', '/api/login/', { json: { email, password } });
  const loginAt = now();
  check('B: login answers 200 with the user', r.status === 200 && r.body?.email === email, show(r));
  check(
    'B: the login body carries no token',
    r.body && !Object.keys(r.body).some((k) => /token|jwt|refresh/i.test(k)),
    show(r.body),
  );
  check('B: Set-Cookie is not visible to the page script', r.setCookieVisible === null, show(r.setCookieVisible));
  if (AUTHD_LOG) check("authd's access log records the login", accessLines('POST', '/api/login/') === loginsLogged + 1);
  w = sent(r.mark, 'POST', '/api/login/');
  const setCookie = w?.responseHeaders['set-cookie'] || '';
  check(
    `authd sent jwt with Max-Age=${JWT_TTL} and refresh with Max-Age=${IDLE}`,
    /(^|\n)jwt=[^;\n]+;[^\n]*Max-Age=3600\b/.test(setCookie) && /(^|\n)refresh=[^;\n]+;[^\n]*Max-Age=604800\b/.test(setCookie),
    setCookie,
  );

  // --- the cookies as the browser stored them --------------------------------------------
  let c = await jar();
  check('jar: jwt and refresh are stored for authd', c.jwt?.value && c.refresh?.value, show(Object.keys(c)));
  check('jar: jwt is HttpOnly, SameSite=Lax, Path=/', c.jwt?.httpOnly === true && c.jwt?.sameSite === 'Lax' && c.jwt?.path === '/', show(c.jwt));
  check(
    'jar: refresh is HttpOnly, SameSite=Strict, Path=/',
    c.refresh?.httpOnly === true && c.refresh?.sameSite === 'Strict' && c.refresh?.path === '/',
    show(c.refresh),
  );
  check('jar: neither is Secure (DEBUG=true over http)', c.jwt?.secure === false && c.refresh?.secure === false);
  check(
    `jar: jwt expires in the future, at login + ${JWT_TTL} s`,
    c.jwt?.expires > now() && near(c.jwt?.expires, loginAt + JWT_TTL),
    `expires ${c.jwt?.expires}, login + ttl ${loginAt + JWT_TTL}`,
  );
  check(
    `jar: refresh expires in the future, at login + ${IDLE} s (7 days)`,
    c.refresh?.expires > now() && near(c.refresh?.expires, loginAt + IDLE),
    `expires ${c.refresh?.expires}, login + idle ${loginAt + IDLE}`,
  );
  // Cookies have no port: the browser keeps authd's cookies for the host 127.0.0.1, so the
  // same cookies belong to B's and C's origins too (and go to their servers).
  const forEvil = await context.cookies(EVIL);
  check(
    'jar: the same cookies also apply to the other ports of 127.0.0.1 (cookies are per host)',
    forEvil.some((x) => x.name === 'jwt') && forEvil.some((x) => x.name === 'refresh'),
    show(forEvil.map((x) => x.name)),
  );
  const initial = { jwt: c.jwt?.value, refresh: c.refresh?.value };

  // HttpOnly: no script of any origin of the host sees them, not even authd's own.
  const own = await context.newPage();
  await own.goto(`${AUTHD}/healthz`);
  const ownCookies = await own.evaluate(() => document.cookie);
  check("HttpOnly: document.cookie on authd's own origin shows neither cookie", !/\b(jwt|refresh)=/.test(ownCookies), show(ownCookies));
  const appCookies = await app.evaluate(() => document.cookie);
  check('HttpOnly: document.cookie on B shows neither cookie', !/\b(jwt|refresh)=/.test(appCookies), show(appCookies));
  await own.close();

  // --- reading with the cookie ----------------------------------------------------------
  r = await call(app, 'GET', '/api/user/');
  check('B: GET /api/user/ answers 200 with the user', r.status === 200 && r.body?.email === email, show(r));
  w = sent(r.mark, 'GET', '/api/user/');
  check(
    'B: the request carried Origin: B and Sec-Fetch-Site: same-site',
    w?.requestHeaders.origin === ALLOWED && w?.requestHeaders['sec-fetch-site'] === 'same-site',
    show(w?.requestHeaders),
  );
  check('B: the request carried the jwt cookie (SameSite=Lax, same site)', cookieValue(w, 'jwt') === initial.jwt, show(cookieNames(w)));
  // SameSite=Strict withholds a cookie only from *cross-site* requests. B (port B) and authd
  // (port A) are the same site, so Chromium sends the Strict refresh cookie with B's fetch
  // too, even on a GET that does not need it. (Cross-site, below, it does not.)
  check(
    'B: the request carried the SameSite=Strict refresh cookie too (cross-port is same-site)',
    cookieValue(w, 'refresh') === initial.refresh,
    show(cookieNames(w)),
  );

  r = await call(app, 'GET', '/api/sessions/');
  const sessions = Array.isArray(r.body) ? r.body : [];
  check(
    'B: GET /api/sessions/ lists one session, the current one',
    r.status === 200 && sessions.length === 1 && sessions[0].current === true,
    show(r),
  );
  check(
    "B: the session records the browser's User-Agent and 127.0.0.1",
    /Chrome/.test(sessions[0]?.user_agent || '') && sessions[0]?.ip === '127.0.0.1',
    show(sessions[0]),
  );

  // --- the evil origin (C, same site, not allowed) --------------------------------------
  const evil = await watch(context, await context.newPage());
  await evil.goto(`${EVIL}/evil.html`);

  // The evil page's own server gets authd's cookies too: the browser sends 127.0.0.1's
  // cookies to every port. (A fact about browsers, not about authd: never host anything
  // untrusted on another port of authd's host name.)
  {
    const seen = [];
    const listener = async (req) => seen.push(await req.allHeaders());
    evil.on('request', listener);
    await evil.reload();
    await new Promise((res) => setTimeout(res, 150));
    evil.off('request', listener);
    check(
      "C's own server received authd's HttpOnly jwt cookie on the page load (cookies ignore ports)",
      seen.some((h) => /\bjwt=/.test(h.cookie || '')),
      show(seen.map((h) => h.cookie)),
    );
  }

  r = await call(evil, 'GET', '/api/user/');
  check('C: a credentialed fetch of /api/user/ rejects (TypeError), nothing readable', !r.fetched && /TypeError/.test(r.error), show(r));
  w = sent(r.mark, 'GET', '/api/user/');
  check(
    'C: authd answered 200 without Access-Control-Allow-Origin (CORS is what blocks the read)',
    w?.status === 200 && !('access-control-allow-origin' in w.responseHeaders) && !('access-control-allow-credentials' in w.responseHeaders),
    show(w && { status: w.status, headers: w.responseHeaders }),
  );
  r = await call(evil, 'GET', '/api/user/', { mode: 'no-cors' });
  check('C: a no-cors fetch of /api/user/ gives an opaque answer (status 0, empty body)', r.fetched && r.type === 'opaque' && r.status === 0 && r.body === '', show(r));

  // Unsafe requests that need no preflight (no body, mode no-cors) do reach authd, with
  // Origin: C and both cookies (same site, so SameSite lets them through): the Origin check
  // must refuse them.
  for (const path of ['/api/logout/?scope=global', '/api/logout/', '/api/token/refresh/']) {
    r = await call(evil, 'POST', path, { mode: 'no-cors' });
    w = sent(r.mark, 'POST', path);
    check(
      `C: POST ${path} (no-cors, with both cookies) is refused by authd with 403`,
      w?.status === 403 &&
        w.requestHeaders.origin === EVIL &&
        w.requestHeaders['sec-fetch-site'] === 'same-site' &&
        cookieValue(w, 'jwt') === initial.jwt &&
        cookieValue(w, 'refresh') === initial.refresh &&
        !('set-cookie' in w.responseHeaders),
      show({ page: r, wire: w && { status: w.status, origin: w.requestHeaders.origin, site: w.requestHeaders['sec-fetch-site'], cookies: cookieNames(w), set: w.responseHeaders['set-cookie'] } }),
    );
  }
  // A JSON POST needs a CORS preflight, which authd answers without CORS headers for C:
  // the browser never sends the POST.
  let logged = accessLines('POST', '/api/logout/');
  r = await call(evil, 'POST', '/api/logout/?scope=global', { json: {} });
  check(
    'C: a JSON POST /api/logout/ fails its preflight (TypeError); the POST is never sent',
    !r.fetched && /TypeError/.test(r.error) && preflightOnly(r.mark, 'POST', '/api/logout/?scope=global', logged),
    show({ r, wire: wire.slice(r.mark).map((e) => `${e.method} ${e.path} ${e.status} ${e.responseHeaders['access-control-allow-origin']}`) }),
  );
  const sessionPath = `/api/sessions/${sessions[0]?.id}/`;
  logged = accessLines('DELETE', sessionPath);
  r = await call(evil, 'DELETE', sessionPath);
  check(
    `C: DELETE ${sessionPath} fails its preflight (TypeError); the DELETE is never sent`,
    !r.fetched && /TypeError/.test(r.error) && preflightOnly(r.mark, 'DELETE', sessionPath, logged),
    show({ r, wire: wire.slice(r.mark).map((e) => `${e.method} ${e.path} ${e.status} ${e.responseHeaders['access-control-allow-origin']}`) }),
  );
  // The classic CSRF: a form posted by C's page as a top-level navigation. Same site, so
  // even SameSite=Strict cookies go along; the Origin header is what gives it away.
  {
    const mark = wire.length;
    const [nav] = await Promise.all([
      evil.waitForResponse((res) => res.url().startsWith(`${AUTHD}/api/logout/`)),
      evil.evaluate((action) => {
        const form = document.getElementById('csrf');
        form.action = action;
        form.submit();
      }, `${AUTHD}/api/logout/?scope=global`),
    ]);
    await evil.waitForLoadState();
    await settle();
    w = sent(mark, 'POST', '/api/logout/?scope=global');
    check(
      'C: a form POST to /api/logout/?scope=global (top-level, both cookies sent) gets 403',
      nav.status() === 403 && w?.requestHeaders.origin === EVIL && cookieValue(w, 'refresh') === initial.refresh,
      show({ status: nav.status(), origin: w?.requestHeaders.origin, cookies: cookieNames(w) }),
    );
  }
  await evil.close();

  // Nothing changed: the same cookies in the jar, the session alive.
  c = await jar();
  check(
    "after C's attempts: the jar still holds the same jwt and refresh",
    c.jwt?.value === initial.jwt && c.refresh?.value === initial.refresh,
  );
  r = await call(app, 'GET', '/api/user/');
  check("after C's attempts: B's GET /api/user/ still answers 200", r.status === 200 && r.body?.email === email, show(r));
  r = await call(app, 'GET', '/api/sessions/');
  check("after C's attempts: the session is still listed", r.status === 200 && Array.isArray(r.body) && r.body.length === 1, show(r));

  // --- another site (http://localhost:C): what SameSite does when it applies -------------
  {
    const other = await watch(context, await context.newPage());
    await other.goto(`${CROSS_SITE}/evil.html`);
    r = await call(other, 'GET', '/api/user/', { mode: 'no-cors' });
    w = sent(r.mark, 'GET', '/api/user/');
    // localhost and 127.0.0.1 are different sites: Chromium sends neither the Lax nor the
    // Strict cookie with a cross-site subresource request, and authd sees no one (401).
    check(
      'cross-site fetch (from localhost): neither cookie is sent, authd answers 401',
      w?.requestHeaders['sec-fetch-site'] === 'cross-site' &&
        !cookieNames(w).includes('jwt') && !cookieNames(w).includes('refresh') && w.status === 401,
      show(w && { status: w.status, site: w.requestHeaders['sec-fetch-site'], cookies: cookieNames(w) }),
    );
    // A top-level GET navigation from another site: Lax cookies go, Strict ones do not.
    const mark = wire.length;
    await Promise.all([
      other.waitForResponse((res) => res.url() === `${AUTHD}/api/user/`),
      other.evaluate((url) => {
        location.href = url;
      }, `${AUTHD}/api/user/`),
    ]);
    await settle();
    w = sent(mark, 'GET', '/api/user/');
    check(
      'cross-site top-level GET navigation: the Lax jwt is sent, the Strict refresh is not',
      cookieValue(w, 'jwt') === initial.jwt && !cookieNames(w).includes('refresh') && w.status === 200,
      show(w && { status: w.status, cookies: cookieNames(w) }),
    );
    await other.close();
  }

  // --- refresh from B -------------------------------------------------------------------
  r = await call(app, 'POST', '/api/token/refresh/');
  const refreshedAt = now();
  check(
    'B: POST /api/token/refresh/ answers 200 with expires_in and session_expires_in',
    r.status === 200 && near(r.body?.expires_in, JWT_TTL) && near(r.body?.session_expires_in, MAX_AGE),
    show(r),
  );
  w = sent(r.mark, 'POST', '/api/token/refresh/');
  check(
    'B: the refresh request carried the Strict refresh cookie (same site) and Origin: B',
    cookieValue(w, 'refresh') === initial.refresh && w?.requestHeaders.origin === ALLOWED,
    show(w && { cookies: cookieNames(w), origin: w.requestHeaders.origin }),
  );
  c = await jar();
  check('after refresh: the jar holds a new jwt', c.jwt?.value && c.jwt.value !== initial.jwt);
  check('after refresh: the jar holds a new refresh token', c.refresh?.value && c.refresh.value !== initial.refresh);
  check(
    'after refresh: same attributes, lifetimes counted from the refresh',
    c.jwt?.httpOnly && c.jwt?.sameSite === 'Lax' && c.refresh?.httpOnly && c.refresh?.sameSite === 'Strict' &&
      near(c.jwt?.expires, refreshedAt + JWT_TTL) && near(c.refresh?.expires, refreshedAt + IDLE),
    show({ jwt: c.jwt, refresh: c.refresh }),
  );
  const refreshed = { jwt: c.jwt?.value, refresh: c.refresh?.value };
  r = await call(app, 'GET', '/api/user/');
  w = sent(r.mark, 'GET', '/api/user/');
  check('after refresh: GET /api/user/ answers 200 with the new jwt', r.status === 200 && cookieValue(w, 'jwt') === refreshed.jwt, show(r));

  // --- logout from B --------------------------------------------------------------------
  r = await call(app, 'POST', '/api/logout/');
  check('B: POST /api/logout/ answers 200 {"message":"success"}', r.status === 200 && r.body?.message === 'success', show(r));
  w = sent(r.mark, 'POST', '/api/logout/');
  check(
    'B: the logout answer clears both cookies (Max-Age=0)',
    /(^|\n)jwt=;[^\n]*Max-Age=0/.test(w?.responseHeaders['set-cookie'] || '') &&
      /(^|\n)refresh=;[^\n]*Max-Age=0/.test(w?.responseHeaders['set-cookie'] || ''),
    show(w?.responseHeaders['set-cookie']),
  );
  c = await jar();
  check("after logout: neither cookie is left in the browser's jar", !c.jwt && !c.refresh, show(Object.keys(c)));
  r = await call(app, 'GET', '/api/user/');
  check('after logout: B: GET /api/user/ answers 401', r.status === 401, show(r));
  r = await call(app, 'POST', '/api/token/refresh/');
  check('after logout: B: POST /api/token/refresh/ answers 401', r.status === 401, show(r));
}
