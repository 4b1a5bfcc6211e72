/*! Leadstream pixel.js 0.1.0 | Apache-2.0 | no third-party code, ES2017.
 *
 * Install (the collector's `snippet` prints this for a site):
 *   <script>window.leadstream=window.leadstream||function(){(window.leadstream.q=window.leadstream.q||[]).push(arguments)};</script>
 *   <script async src="https://collector.example.com/pixel.js" data-site="acme"></script>
 *
 * Script tag attributes:
 *   data-site           the site id (required)
 *   data-capture-forms  "true": a form submitted with an email field is sent as an identify event
 *   data-heartbeat      seconds between engagement pings (default 15; 0 turns pings off)
 *   data-collector      collector base URL (default: where pixel.js was loaded from)
 *   data-anonymous      "true": send no visitor id and ask the collector to record no IP or cookie id
 *
 * API (calls made before the script loads are queued by the stub and replayed):
 *   leadstream('identify', {email: 'a@b.com', userId: 'u-42', traits: {plan: 'pro'}})
 *   leadstream('track', 'signup_started', {plan: 'pro'})
 *   leadstream('page')              record a page view now (automatic on load and SPA navigation)
 *   leadstream('flush')             send what is queued now
 *
 * What it records: page views (with SPA navigation through history.pushState/replaceState/popstate;
 * a jump to an in-page anchor is not a page view, a #/ or #! hash route is),
 * page pings while the page is visible and the visitor active (engaged_ms, max scroll depth %),
 * clicks on links and on elements marked data-ls-cta (link_click), identify and track calls.
 * Events are batched and POSTed to <collector>/collect as text/plain JSON (no CORS preflight) with
 * fetch keepalive, with navigator.sendBeacon when the page is hidden or unloaded, and as /p.gif image
 * requests where neither exists. The wire format is documented in pipeline/collector/PROTOCOL.md.
 */
(function () {
  'use strict';
  var w = window, d = document, nav = navigator;
  var VERSION = 'leadstream-js/0.1.0';
  var existing = w.leadstream;
  if (existing && existing.loaded) return;

  var script = d.currentScript || d.querySelector('script[data-site][src*="pixel.js"]');
  if (!script) return;
  var site = script.getAttribute('data-site');
  if (!site) return;
  var src = script.getAttribute('src') || '';
  var collector = (script.getAttribute('data-collector') ||
                   src.replace(/\/pixel\.js(\?.*)?$/, '')).replace(/\/+$/, '');
  var captureForms = script.getAttribute('data-capture-forms') === 'true';
  var hb = script.getAttribute('data-heartbeat');
  var heartbeatMs = (hb === null || hb === '' ? 15 : Number(hb)) * 1000;
  if (!(heartbeatMs >= 0) || heartbeatMs === Infinity) heartbeatMs = 15000;  // not a number: the default
  var anonymous = script.getAttribute('data-anonymous') === 'true';

  var SESSION_GAP_MS = 30 * 60 * 1000;
  var BATCH_DELAY_MS = 1000;
  var MAX_BATCH = 20;
  var MAX_BEACON_BYTES = 60000;

  // ---- ids ---------------------------------------------------------------------------------
  function uuid() {
    if (w.crypto && w.crypto.randomUUID) return w.crypto.randomUUID();
    var b = new Uint8Array(16);
    if (w.crypto && w.crypto.getRandomValues) w.crypto.getRandomValues(b);
    else for (var i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join('');
    return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
  }
  function store(key, value) {
    try { if (value === undefined) return w.localStorage.getItem(key); w.localStorage.setItem(key, value); }
    catch (e) { /* storage disabled: ids last for this page only */ }
    return null;
  }
  function readCookie(name) {
    var m = d.cookie.match(new RegExp('(?:^|; )' + name + '=([^;]*)'));
    return m ? decodeURIComponent(m[1]) : null;
  }
  function writeCookie(name, value, maxAgeS) {
    var secure = location.protocol === 'https:' ? '; Secure' : '';
    try { d.cookie = name + '=' + encodeURIComponent(value) + '; Max-Age=' + maxAgeS + '; Path=/; SameSite=Lax' + secure; }
    catch (e) { /* cookies disabled */ }
  }
  // Visitor id: first-party cookie _ls_id (one year), localStorage as the fallback when cookies are blocked.
  function visitorId() {
    if (anonymous) return null;
    var id = readCookie('_ls_id') || store('_ls_id') || uuid();
    writeCookie('_ls_id', id, 365 * 24 * 3600);
    store('_ls_id', id);
    return id;
  }
  var visitor = visitorId();
  var userId = anonymous ? null : store('_ls_uid');
  // Session: a new one after 30 minutes without an event; index counts the visitor's sessions.
  var session = null;
  function touchSession() {
    var now = Date.now();
    if (!session) {
      try { session = JSON.parse(store('_ls_ses') || 'null'); } catch (e) { session = null; }
    }
    if (!session || !session.id || now - session.last > SESSION_GAP_MS) {
      session = {id: uuid(), index: (session && session.index ? session.index : 0) + 1, last: now};
    }
    session.last = now;
    store('_ls_ses', JSON.stringify(session));
    return session;
  }

  // ---- queue and transport -----------------------------------------------------------------
  var queue = [];
  var timer = null;
  function send(type, fields) {
    var s = touchSession();
    var ev = {type: type, id: uuid(), ts: Date.now(), url: location.href, session_id: s.id, session_index: s.index};
    if (userId) ev.user_id = userId;
    for (var k in fields) if (Object.prototype.hasOwnProperty.call(fields, k) && fields[k] !== undefined && fields[k] !== null) ev[k] = fields[k];
    queue.push(ev);
    if (queue.length >= MAX_BATCH) flush(false);
    else if (!timer) timer = setTimeout(function () { flush(false); }, BATCH_DELAY_MS);
  }
  function body(events) {
    var b = {site_id: site, sent_at: Date.now(), tracker: VERSION, events: events};
    if (visitor) b.visitor_id = visitor;
    if (anonymous) b.anonymous = true;
    return JSON.stringify(b);
  }
  function viaImage(events) {
    events.forEach(function (ev) {
      var p = ['site_id=' + encodeURIComponent(site), 'sent_at=' + Date.now(), 'tracker=' + encodeURIComponent(VERSION)];
      if (visitor) p.push('visitor_id=' + encodeURIComponent(visitor));
      if (anonymous) p.push('anonymous=1');
      for (var k in ev) {
        var v = ev[k];
        if (typeof v === 'object') v = JSON.stringify(v);
        p.push(encodeURIComponent(k) + '=' + encodeURIComponent(v));
      }
      var img = new Image(1, 1);
      img.src = collector + '/p.gif?' + p.join('&');
    });
  }
  function viaFetch(events, attempt) {
    return w.fetch(collector + '/collect', {
      method: 'POST', body: body(events), keepalive: true, credentials: 'include', mode: 'cors',
      headers: {'Content-Type': 'text/plain;charset=UTF-8'}
    }).then(function (r) {
      // 503: the collector's broker is down; retry a few times, honouring Retry-After.
      if (r.status === 503 && attempt < 3) {
        var after = Number(r.headers.get('Retry-After')) || 5;
        setTimeout(function () { viaFetch(events, attempt + 1); }, after * 1000);
      }
    }).catch(function () {
      if (attempt < 3) setTimeout(function () { viaFetch(events, attempt + 1); }, 2000 * (attempt + 1));
    });
  }
  function flush(unloading) {
    if (timer) { clearTimeout(timer); timer = null; }
    if (!queue.length) return;
    var events = queue.splice(0, queue.length);
    var payload = body(events);
    if (unloading && nav.sendBeacon && payload.length < MAX_BEACON_BYTES) {
      // text/plain keeps the beacon a "simple" request: no CORS preflight
      if (nav.sendBeacon(collector + '/collect', new Blob([payload], {type: 'text/plain;charset=UTF-8'}))) return;
    }
    if (w.fetch && payload.length < MAX_BEACON_BYTES) { viaFetch(events, 0); return; }
    viaImage(events);
  }

  // ---- page views, SPA navigation ------------------------------------------------------------
  var lastUrl = null;
  var pageReferrer = d.referrer;
  var engagedMs = 0, lastActive = 0, maxScroll = 0, lastTick = Date.now();
  function beforeHash(u) { var i = u.indexOf('#'); return i < 0 ? u : u.slice(0, i); }
  function hashRoute(u) { var i = u.indexOf('#'); return i >= 0 && /^#[!\/]/.test(u.slice(i)); }
  function pageView() {
    var url = location.href;
    if (url === lastUrl) return;
    // Chromium fires popstate for an in-page anchor (#pricing): that is the same page, not a new view.
    // A hash route (#/path, #!/path) is a view of a hash-routed single-page app.
    if (lastUrl !== null && beforeHash(url) === beforeHash(lastUrl) && !hashRoute(url) && !hashRoute(lastUrl)) return;
    var referrer = lastUrl === null ? pageReferrer : lastUrl;
    if (lastUrl !== null) ping(true);  // close the engagement of the previous SPA page
    lastUrl = url;
    engagedMs = 0; maxScroll = 0; lastTick = Date.now();
    var tz;
    try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { tz = undefined; }
    send('page_view', {
      referrer: referrer || undefined, title: d.title,
      screen: w.screen ? w.screen.width + 'x' + w.screen.height : undefined,
      viewport: w.innerWidth + 'x' + w.innerHeight,
      timezone: tz, language: nav.language
    });
  }
  function hook(name) {
    var original = history[name];
    if (typeof original !== 'function') return;
    history[name] = function () {
      var result = original.apply(this, arguments);
      setTimeout(pageView, 0);  // after the app has updated the title
      return result;
    };
  }
  hook('pushState'); hook('replaceState');
  w.addEventListener('popstate', function () { setTimeout(pageView, 0); });

  // ---- engagement: heartbeats while visible and active ---------------------------------------
  function scrollDepth() {
    var el = d.documentElement, bodyEl = d.body;
    var height = Math.max(el.scrollHeight, bodyEl ? bodyEl.scrollHeight : 0);
    if (height <= w.innerHeight) return 100;
    var seen = (w.pageYOffset || el.scrollTop) + w.innerHeight;
    return Math.min(100, Math.round(seen / height * 100));
  }
  function tick() {
    var now = Date.now();
    // Time counts as engaged while the page is visible and there was input in the last heartbeat period.
    if (d.visibilityState === 'visible' && now - lastActive < Math.max(heartbeatMs, 5000)) engagedMs += now - lastTick;
    lastTick = now;
  }
  function activity() { tick(); lastActive = Date.now(); maxScroll = Math.max(maxScroll, scrollDepth()); }
  function ping(force) {
    tick();
    if (engagedMs <= 0 && !force) return;
    // The ping belongs to the page view it measures: after an SPA navigation location.href is
    // already the next page when the previous one's engagement is closed.
    if (engagedMs > 0) send('page_ping', {url: lastUrl || location.href, engaged_ms: engagedMs,
                                          scroll_depth: Math.max(maxScroll, scrollDepth())});
    engagedMs = 0;
  }
  ['mousemove', 'mousedown', 'keydown', 'scroll', 'touchstart', 'wheel'].forEach(function (t) {
    w.addEventListener(t, activity, {passive: true, capture: true});
  });
  if (heartbeatMs > 0) setInterval(function () { if (d.visibilityState === 'visible') ping(false); }, heartbeatMs);

  // ---- clicks on links and CTAs -----------------------------------------------------------------
  function label(el) {
    var text = el.getAttribute('data-ls-cta') || el.getAttribute('aria-label') || el.textContent || el.id || '';
    text = text.replace(/\s+/g, ' ').trim();
    return text.length > 100 ? text.slice(0, 100) : text;
  }
  d.addEventListener('click', function (e) {
    var target = e.target;
    if (!target || !target.closest) return;
    var el = target.closest('[data-ls-cta], a[href]');
    if (!el) return;
    var href = el.getAttribute('href');
    var cta = el.hasAttribute('data-ls-cta');
    send('link_click', {name: label(el), target_url: href ? el.href : undefined,
      props: cta ? {cta: el.getAttribute('data-ls-cta') || label(el)} : undefined});
  }, true);

  // ---- forms: an email field makes an identify event (only where the site allows it) ----------------
  if (captureForms) {
    d.addEventListener('submit', function (e) {
      var form = e.target;
      if (!form || !form.querySelectorAll) return;
      var fields = form.querySelectorAll('input[type="email"], input[name*="email" i]');
      for (var i = 0; i < fields.length; i++) {
        var value = (fields[i].value || '').trim();
        if (value.indexOf('@') > 0) {
          send('identify', {email: value, traits: {form_id: form.id || form.getAttribute('name') || undefined, source: 'form'}});
          flush(false);
          return;
        }
      }
    }, true);
  }

  // ---- flush when the page goes away ---------------------------------------------------------------
  d.addEventListener('visibilitychange', function () {
    if (d.visibilityState === 'hidden') { ping(false); flush(true); }
  });
  w.addEventListener('pagehide', function () { ping(false); flush(true); });
  // Back/forward cache: a restored page runs no script again, but the visitor is looking at it anew.
  w.addEventListener('pageshow', function (e) { if (e.persisted) { lastUrl = null; pageView(); } });

  // ---- public API and the queue stub ------------------------------------------------------------------
  function api(command) {
    var args = Array.prototype.slice.call(arguments, 1);
    if (command === 'identify') {
      var o = args[0] || {};
      if (o.userId && !anonymous) { userId = String(o.userId); store('_ls_uid', userId); }
      send('identify', {email: o.email, user_id: o.userId ? String(o.userId) : undefined, traits: o.traits});
    } else if (command === 'track') {
      if (typeof args[0] === 'string' && args[0]) send('track', {name: args[0], props: args[1] || undefined});
    } else if (command === 'page') {
      lastUrl = null; pageView();
    } else if (command === 'flush') {
      flush(false);
    }
  }
  var pending = existing && existing.q ? existing.q : [];
  w.leadstream = function () { api.apply(null, arguments); };
  w.leadstream.loaded = true;
  w.leadstream.q = [];
  pageView();
  for (var i = 0; i < pending.length; i++) api.apply(null, pending[i]);
})();
