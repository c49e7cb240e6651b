// crashgrid dashboard: live statistics over a WebSocket, crash group details over HTTP.
// Plain JavaScript, no dependencies, nothing fetched but the node's own API.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const LIVE_URL = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api/v1/stats/live`;
  const STALE_AFTER_MS = 5000; // no snapshot for this long (or 3 publish periods): presumed dead
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const BREAKDOWN_ROWS = 8;
  // [field of stats.breakdowns, heading, where it goes]
  const DIMENSIONS = [
    ['app_version', 'App version', 'breakdowns'],
    ['os_version', 'OS version', 'breakdowns'],
    ['device_model', 'Device model', 'breakdowns'],
    ['exception_type', 'Exception type', 'breakdowns-side'],
    ['platform', 'Platform', 'breakdowns-side'],
  ];

  // ---------------------------------------------------------------- DOM helpers

  /** Creates an element; `attrs.text` sets its text, `attrs.class` its class, others are attributes. */
  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') el.textContent = v;
      else if (k === 'class') el.className = v;
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) if (c !== null && c !== undefined) el.append(c);
    return el;
  }

  function svg(tag, attrs = {}) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'text') el.textContent = v;
      else el.setAttribute(k, v);
    }
    return el;
  }

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  // ---------------------------------------------------------------- formatting

  const intFormat = new Intl.NumberFormat('en-US');
  const fmtInt = (n) => (n === null || n === undefined ? '—' : intFormat.format(n));
  const fmtRate = (n) => (n >= 100 ? intFormat.format(Math.round(n)) : n.toFixed(1).replace(/\.0$/, ''));
  const pct = (part, whole) => (whole > 0 ? (100 * part) / whole : 0);
  const fmtPct = (p) => (p >= 10 || p === 0 ? `${Math.round(p)} %` : `${p.toFixed(1)} %`);

  /** Microseconds, human-sized. */
  function fmtUs(us) {
    if (us === null || us === undefined || !Number.isFinite(us)) return '—';
    if (us < 1000) return `${Math.round(us)} µs`;
    if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 2 : 1)} ms`;
    return `${(us / 1e6).toFixed(2)} s`;
  }

  /** Milliseconds as a duration. */
  function fmtDuration(ms) {
    if (ms === null || ms === undefined) return '—';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
    if (ms < 3600000) return `${Math.floor(ms / 60000)} min ${Math.floor((ms % 60000) / 1000)} s`;
    return `${Math.floor(ms / 3600000)} h ${Math.floor((ms % 3600000) / 60000)} min`;
  }

  function fmtAgo(ms) {
    const age = Date.now() - ms;
    if (age < 1500) return 'just now';
    return `${fmtDuration(age).replace(/ \d+ s$/, '')} ago`;
  }

  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium', hour12: false });
  const fmtClock = (ms) => timeFormat.format(new Date(ms));
  const fmtDateTime = (ms) => dateTimeFormat.format(new Date(ms));

  /** A window length: "5 min", "90 s". */
  const fmtWindow = (secs) => (secs % 60 === 0 ? `${secs / 60} min` : `${secs} s`);

  const basename = (path) => (path ? path.split(/[\\/]/).pop() : '');

  // ---------------------------------------------------------------- live connection

  let snapshot = null;
  let lastMessageAt = 0;
  let staleAfterMs = STALE_AFTER_MS;
  const conn = { ws: null, attempt: 0, retryAt: 0, timer: null };

  function setConnection(state, detail = '') {
    const el = $('connection');
    const label = { connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…' }[state];
    el.dataset.state = state;
    document.body.dataset.connection = state;
    el.querySelector('.connection-text').textContent = detail ? `${label} ${detail}` : label;
    el.title = state === 'live' ? 'Receiving a snapshot every second' : 'Not receiving live data';
  }

  function connect() {
    clearTimeout(conn.timer);
    conn.timer = null;
    let ws;
    try {
      ws = new WebSocket(LIVE_URL);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    conn.ws = ws;
    let previousAt = 0; // generated_at_ms of this socket's previous snapshot
    ws.onmessage = (ev) => {
      if (conn.ws !== ws) return;
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch (e) {
        console.warn('crashgrid: unreadable snapshot', e);
        return;
      }
      lastMessageAt = Date.now();
      if (previousAt && data.generated_at_ms > previousAt) {
        staleAfterMs = Math.max(STALE_AFTER_MS, 3 * (data.generated_at_ms - previousAt));
      }
      previousAt = data.generated_at_ms;
      conn.attempt = 0;
      setConnection('live');
      snapshot = data;
      render(data);
    };
    ws.onclose = () => {
      if (conn.ws === ws) scheduleReconnect();
    };
  }

  /** Drops the current socket (if any) and retries with exponential backoff and jitter. */
  function scheduleReconnect() {
    if (conn.ws) {
      const old = conn.ws;
      conn.ws = null;
      old.onmessage = old.onclose = null;
      try { old.close(); } catch (e) { /* already closed */ }
    }
    if (conn.timer) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** conn.attempt);
    const delay = Math.round(base * (0.8 + 0.4 * Math.random()));
    conn.attempt += 1;
    conn.retryAt = Date.now() + delay;
    conn.timer = setTimeout(connect, delay);
    updateRetryLabel();
  }

  function updateRetryLabel() {
    if (!conn.timer) {
      if (!conn.ws || conn.ws.readyState === WebSocket.CONNECTING) {
        if (snapshot) setConnection('reconnecting', '');
      }
      return;
    }
    const secs = Math.max(0, Math.ceil((conn.retryAt - Date.now()) / 1000));
    setConnection('reconnecting', secs > 0 ? `(retry in ${secs} s)` : '');
  }

  // Once a second: age labels, the retry countdown, and the stale-connection watchdog.
  setInterval(() => {
    if (conn.ws && conn.ws.readyState === WebSocket.OPEN && lastMessageAt && Date.now() - lastMessageAt > staleAfterMs) {
      scheduleReconnect();
    }
    if ($('connection').dataset.state !== 'live') updateRetryLabel();
    refreshAges();
  }, 1000);

  window.addEventListener('online', () => {
    if (conn.timer) {
      conn.attempt = 0;
      connect();
    }
  });

  // ---------------------------------------------------------------- rendering

  function render(snap) {
    const stats = snap.stats;
    setText('node-name', snap.node);
    document.title = `crashgrid · ${snap.node}`;
    renderKpis(snap);
    renderChart(stats);
    renderGroups(stats);
    renderBacklog(snap);
    renderCluster(snap);
    renderBreakdowns(stats);
    if (detail.id) updateDetailLive();
    refreshAges();
  }

  function refreshAges() {
    if (lastMessageAt) {
      const age = Date.now() - lastMessageAt;
      setText('updated', age < 2500 ? `updated ${fmtClock(lastMessageAt)}` : `last update ${fmtAgo(lastMessageAt)}`);
    }
    for (const el of document.querySelectorAll('[data-ago]')) el.textContent = fmtAgo(Number(el.dataset.ago));
  }

  function renderKpis(snap) {
    const { stats, ingest } = snap;
    const complete = stats.series.slice(0, -1); // the newest second is still filling
    const last = complete.length ? complete[complete.length - 1] : 0;
    const recent = complete.slice(-10);
    const avg10 = recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : 0;
    setText('rate', fmtInt(last));
    setText('rate-sub', `${fmtRate(avg10)}/s average over 10 s`);
    setText('total', fmtInt(stats.total));
    setText('total-sub', `${fmtRate(stats.total / stats.window_seconds)}/s average over ${fmtWindow(stats.window_seconds)}`);
    for (const el of document.querySelectorAll('[data-window]')) el.textContent = fmtWindow(stats.window_seconds);
    setText('users', fmtInt(stats.distinct_users));
    setText('processed', fmtInt(ingest.processed_total));
    setText('accepted', fmtInt(ingest.accepted_total));
    setText('rejected', fmtInt(ingest.rejected_total));
    $('rejected').classList.toggle('bad', ingest.rejected_total > 0);
  }

  // --- the rate chart

  const chart = { points: [], now: 0, hoverX: null };

  /** A round step (1, 2 or 5 × 10ⁿ, at least 1) giving about `ticks` gridlines up to `max`. */
  function niceStep(max, ticks) {
    const raw = Math.max(1, max / ticks);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
  }

  function renderChart(stats) {
    const el = $('rate-chart');
    const width = Math.max(320, $('chart-wrap').clientWidth);
    const height = 220;
    const m = { l: 48, r: 14, t: 14, b: 26 };
    const data = stats.series.length > 1 ? stats.series.slice(0, -1) : stats.series.slice();
    const n = data.length;
    const peak = Math.max(0, ...data);
    const step = niceStep(peak, 4);
    const top = Math.max(step, Math.ceil(peak / step) * step);
    const x = (i) => m.l + (n > 1 ? (i * (width - m.l - m.r)) / (n - 1) : 0);
    const y = (v) => m.t + (height - m.t - m.b) * (1 - v / top);
    const bottom = height - m.b;

    el.setAttribute('viewBox', `0 0 ${width} ${height}`);
    el.setAttribute('width', width);
    el.setAttribute('height', height);

    const nodes = [];
    const defs = svg('defs');
    const grad = svg('linearGradient', { id: 'rate-fill', x1: 0, y1: 0, x2: 0, y2: 1 });
    grad.append(svg('stop', { offset: '0%', 'stop-color': 'var(--accent)', 'stop-opacity': 0.35 }));
    grad.append(svg('stop', { offset: '100%', 'stop-color': 'var(--accent)', 'stop-opacity': 0.02 }));
    defs.append(grad);
    nodes.push(defs);

    for (let v = 0; v <= top; v += step) {
      nodes.push(svg('line', { class: 'grid', x1: m.l, x2: width - m.r, y1: y(v), y2: y(v) }));
      nodes.push(svg('text', { class: 'axis', x: m.l - 8, y: y(v) + 4, 'text-anchor': 'end', text: fmtInt(v) }));
    }
    const tick = stats.window_seconds > 600 ? 300 : stats.window_seconds > 60 ? 60 : 10;
    for (let ago = 0; ago <= stats.window_seconds; ago += tick) {
      const i = Math.max(0, n - 1 - ago);
      const anchor = ago === 0 ? 'end' : i === 0 ? 'start' : 'middle';
      const label = ago === 0 ? 'now' : tick >= 60 ? `−${ago / 60} min` : `−${ago} s`;
      nodes.push(svg('line', { class: 'tick', x1: x(i), x2: x(i), y1: bottom, y2: bottom + 4 }));
      nodes.push(svg('text', { class: 'axis', x: x(i), y: height - 6, 'text-anchor': anchor, text: label }));
    }

    let line = '';
    data.forEach((v, i) => { line += `${i ? 'L' : 'M'}${x(i).toFixed(1)} ${y(v).toFixed(1)}`; });
    if (n) {
      const area = `${line}L${x(n - 1).toFixed(1)} ${bottom}L${x(0).toFixed(1)} ${bottom}Z`;
      nodes.push(svg('path', { id: 'rate-area', class: 'area', d: area, fill: 'url(#rate-fill)' }));
      nodes.push(svg('path', { id: 'rate-line', 'data-testid': 'rate-line', class: 'line', d: line }));
      nodes.push(svg('circle', { class: 'head', cx: x(n - 1), cy: y(data[n - 1]), r: 3.5 }));
    }
    nodes.push(svg('line', { id: 'chart-guide', class: 'guide', x1: 0, x2: 0, y1: m.t, y2: bottom, visibility: 'hidden' }));
    el.replaceChildren(...nodes);

    chart.points = data.map((v, i) => ({ x: x(i), y: y(v), v, second: stats.now - (n - i) }));
    const avg = stats.total / stats.window_seconds;
    setText('chart-legend', `peak ${fmtInt(peak)}/s · average ${fmtRate(avg)}/s`);
    if (chart.hoverX !== null) showChartTip(chart.hoverX);
  }

  function showChartTip(px) {
    const pts = chart.points;
    if (!pts.length) return;
    let best = pts[0];
    for (const p of pts) if (Math.abs(p.x - px) < Math.abs(best.x - px)) best = p;
    const guide = $('chart-guide');
    guide.setAttribute('x1', best.x);
    guide.setAttribute('x2', best.x);
    guide.setAttribute('visibility', 'visible');
    const tip = $('chart-tip');
    tip.replaceChildren(h('strong', { text: `${fmtInt(best.v)} crashes` }), h('span', { text: fmtClock(best.second * 1000) }));
    tip.hidden = false;
    const wrapWidth = $('chart-wrap').clientWidth;
    tip.style.left = `${Math.min(Math.max(best.x - tip.offsetWidth / 2, 0), wrapWidth - tip.offsetWidth)}px`;
    tip.style.top = `${Math.max(0, best.y - tip.offsetHeight - 10)}px`;
  }

  $('rate-chart').addEventListener('mousemove', (ev) => {
    const rect = ev.currentTarget.getBoundingClientRect();
    chart.hoverX = ev.clientX - rect.left;
    showChartTip(chart.hoverX);
  });
  $('rate-chart').addEventListener('mouseleave', () => {
    chart.hoverX = null;
    $('chart-tip').hidden = true;
    const guide = $('chart-guide');
    if (guide) guide.setAttribute('visibility', 'hidden');
  });
  new ResizeObserver(() => { if (snapshot) renderChart(snapshot.stats); }).observe($('chart-wrap'));

  // --- top groups (rows are kept and updated in place, so a click never lands on a replaced row)

  const groupRows = new Map();

  function sparkline(series, bucket = 5) {
    const values = [];
    for (let i = 0; i < series.length; i += bucket) {
      values.push(series.slice(i, i + bucket).reduce((a, b) => a + b, 0));
    }
    const max = Math.max(1, ...values);
    const w = 60;
    const hgt = 20;
    const pts = values.map((v, i) => [(i * w) / Math.max(1, values.length - 1), hgt - 1 - (v / max) * (hgt - 2)]);
    const line = pts.map(([px, py], i) => `${i ? 'L' : 'M'}${px.toFixed(1)} ${py.toFixed(1)}`).join('');
    return { line, area: `${line}L${w} ${hgt}L0 ${hgt}Z` };
  }

  function groupRow(id) {
    let row = groupRows.get(id);
    if (row) return row;
    const spark = svg('svg', { class: 'spark', viewBox: '0 0 60 20', preserveAspectRatio: 'none', 'data-testid': 'group-spark', 'aria-hidden': 'true' });
    const sparkArea = svg('path', { class: 'spark-area' });
    const sparkLine = svg('path', { class: 'spark-line' });
    spark.append(sparkArea, sparkLine);
    const title = h('div', { class: 'group-title', 'data-testid': 'group-title' });
    const count = h('td', { class: 'num strong', 'data-testid': 'group-count' });
    const shareText = h('span');
    const shareBar = h('span', { class: 'share-fill' });
    const tr = h('tr', { 'data-testid': 'group-row', 'data-group-id': id, tabindex: '0', role: 'link' },
      h('td', { class: 'col-title' }, title, h('code', { class: 'group-id muted', text: id })),
      count,
      h('td', { class: 'num' }, h('span', { class: 'share' }, shareText, h('span', { class: 'share-track' }, shareBar))),
      h('td', { class: 'col-spark' }, spark));
    tr.addEventListener('click', () => openGroupRoute(id));
    tr.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); openGroupRoute(id); } });
    row = { tr, title, count, shareText, shareBar, sparkArea, sparkLine };
    groupRows.set(id, row);
    return row;
  }

  function renderGroups(stats) {
    const body = $('groups-body');
    const seen = new Set();
    stats.top_groups.forEach((g, i) => {
      seen.add(g.id);
      const row = groupRow(g.id);
      if (row.title.textContent !== g.title) { row.title.textContent = g.title; row.title.title = g.title; }
      row.count.textContent = fmtInt(g.count);
      const share = pct(g.count, stats.total);
      row.shareText.textContent = fmtPct(share);
      row.shareBar.style.width = `${share}%`;
      const { line, area } = sparkline(g.series);
      row.sparkLine.setAttribute('d', line);
      row.sparkArea.setAttribute('d', area);
      row.tr.classList.toggle('selected', detail.id === g.id);
      if (body.children[i] !== row.tr) body.insertBefore(row.tr, body.children[i] || null);
    });
    for (const [id, row] of groupRows) {
      if (!seen.has(id)) { row.tr.remove(); groupRows.delete(id); }
    }
    $('groups-empty').hidden = stats.top_groups.length > 0;
    $('groups').hidden = stats.top_groups.length === 0;
    setText('groups-count', stats.top_groups.length ? `top ${stats.top_groups.length}` : '');
  }

  // --- breakdowns

  function renderBreakdowns(stats) {
    const cards = { breakdowns: [], 'breakdowns-side': [] };
    for (const [key, label, where] of DIMENSIONS) {
      const entries = stats.breakdowns[key] || [];
      const list = h('ol', { class: 'bars' });
      let shown = entries.slice(0, BREAKDOWN_ROWS);
      if (entries.length > BREAKDOWN_ROWS) {
        const rest = entries.slice(BREAKDOWN_ROWS);
        shown = shown.concat([{ value: `${rest.length} more`, count: rest.reduce((a, e) => a + e.count, 0), other: true }]);
      }
      for (const e of shown) {
        const share = pct(e.count, stats.total);
        const other = e.other || e.value === '(other)';
        list.append(h('li', { class: other ? 'bar other' : 'bar', 'data-testid': 'breakdown-bar', title: `${e.value}: ${fmtInt(e.count)} (${fmtPct(share)})` },
          h('span', { class: 'bar-label', text: e.value }),
          h('span', { class: 'bar-count', text: fmtInt(e.count) }),
          h('span', { class: 'bar-track' }, h('span', { class: 'bar-fill', style: `width:${share.toFixed(2)}%` })),
          h('span', { class: 'bar-pct muted', text: fmtPct(share) })));
      }
      const values = entries.filter((e) => e.value !== '(other)').length;
      const more = entries.length > values ? '+' : '';
      cards[where].push(h('section', { class: 'card breakdown', 'data-testid': `breakdown-${key}` },
        h('div', { class: 'card-head' }, h('h2', { text: label }), h('span', { class: 'muted', text: entries.length ? `${values}${more} values` : '' })),
        entries.length ? list : h('p', { class: 'empty muted', text: 'No crashes in the window.' })));
    }
    for (const [where, list] of Object.entries(cards)) $(where).replaceChildren(...list);
  }

  // --- backlog and cluster

  function renderBacklog(snap) {
    const { backlog, stats } = snap;
    const lat = stats.symbolication_time_us;
    setText('backlog-unacked', fmtInt(backlog.unacked));
    setText('backlog-capacity', `capacity ${fmtInt(backlog.queue_capacity)}`);
    setText('backlog-oldest', backlog.unacked > 0 ? fmtDuration(backlog.oldest_unacked_age_ms) : 'none');
    setText('backlog-avg', lat.count > 0 ? fmtUs(backlog.avg_symbolication_us) : '—');
    setText('symb-count', fmtInt(lat.count));
    setText('symb-p50', fmtUs(lat.p50));
    setText('symb-p95', fmtUs(lat.p95));
    setText('symb-p99', fmtUs(lat.p99));
    const fill = pct(backlog.unacked, backlog.queue_capacity);
    const meter = $('backlog-meter');
    meter.style.width = `${Math.min(100, fill)}%`;
    meter.dataset.level = fill >= 90 ? 'danger' : fill >= 60 ? 'warn' : 'ok';
    $('backlog-oldest').classList.toggle('warn', backlog.oldest_unacked_age_ms > 10000);
  }

  // The node serving this page (snapshots come from the leader, whichever pod serves them).
  let selfId = null;
  fetch('/api/v1/cluster').then((r) => r.json()).then((v) => { selfId = v.node; }).catch(() => {});

  function fmtMs(ms) {
    return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(2)} s`;
  }

  function renderCluster(snap) {
    const { cluster } = snap;
    setText('cluster-epoch', fmtInt(cluster.epoch));
    const lease = cluster.lease;
    const changes = (cluster.transitions || []).length;
    setText('cluster-lease', lease
      ? `lease ${fmtMs(lease.lease_duration_ms)} · renew deadline ${fmtMs(lease.renew_deadline_ms)} · retry ${fmtMs(lease.retry_period_ms)} · ${changes} leader change${changes === 1 ? '' : 's'} seen`
      : 'single node (no lease)');
    const items = cluster.members.map((mem) => h('li', {
      class: `member${mem.healthy ? '' : ' unhealthy'}`,
      'data-testid': 'cluster-member',
      'data-member-id': mem.id,
      'data-leader': mem.leader ? 'true' : 'false',
    },
    h('span', { class: 'dot', title: mem.healthy ? 'healthy' : 'not answering' }),
    h('span', { class: 'member-id', text: mem.id }),
    mem.leader ? h('span', { class: 'badge leader', 'data-testid': 'leader-badge', text: 'leader' }) : null,
    mem.id === (selfId || snap.node) ? h('span', { class: 'badge self', text: 'this node' }) : null,
    h('span', { class: 'member-addr muted', text: mem.address }),
    h('span', { class: `member-health ${mem.healthy ? 'ok' : 'bad'}`, text: mem.healthy ? 'healthy' : 'unhealthy' })));
    if (!cluster.leader) items.unshift(h('li', { class: 'member warn-text', text: 'No leader elected' }));
    $('cluster-members').replaceChildren(...items);
  }

  // ---------------------------------------------------------------- crash group detail (#/groups/<id>)

  const detail = { id: null, request: 0, group: null };

  function openGroupRoute(id) {
    location.hash = `#/groups/${encodeURIComponent(id)}`;
  }

  function closeDetail() {
    if (location.hash.startsWith('#/groups/')) {
      history.pushState(null, '', location.pathname + location.search);
    }
    route();
  }

  function route() {
    const match = /^#\/groups\/([^/]+)$/.exec(location.hash);
    if (match) showDetail(decodeURIComponent(match[1]));
    else hideDetail();
  }

  function hideDetail() {
    detail.id = null;
    detail.group = null;
    $('group-detail').hidden = true;
    $('scrim').hidden = true;
    document.body.classList.remove('drawer-open');
    for (const row of groupRows.values()) row.tr.classList.remove('selected');
  }

  function showDetail(id) {
    const changed = detail.id !== id;
    detail.id = id;
    $('group-detail').hidden = false;
    $('scrim').hidden = false;
    document.body.classList.add('drawer-open');
    for (const [gid, row] of groupRows) row.tr.classList.toggle('selected', gid === id);
    if (changed) {
      detail.group = null;
      setText('detail-id', id);
      const known = snapshot && snapshot.stats.top_groups.find((g) => g.id === id);
      setText('detail-title', known ? known.title : 'Crash group');
      $('detail-body').replaceChildren(h('p', { class: 'muted loading', text: 'Loading…' }));
      $('detail-close').focus({ preventScroll: true });
    }
    loadGroup(id);
  }

  async function loadGroup(id) {
    const request = ++detail.request;
    let group;
    try {
      const res = await fetch(`/api/v1/groups/${encodeURIComponent(id)}`, { headers: { accept: 'application/json' } });
      const body = await res.json().catch(() => null);
      if (request !== detail.request) return;
      if (!res.ok) {
        const message = res.status === 404
          ? 'This node has no record of this group: it may have been evicted, or its crashes were processed by another node.'
          : `The node answered ${res.status}: ${(body && body.error && body.error.message) || res.statusText}`;
        $('detail-body').replaceChildren(h('p', { class: 'notice', 'data-testid': 'detail-error', text: message }));
        return;
      }
      group = body;
    } catch (e) {
      if (request !== detail.request) return;
      $('detail-body').replaceChildren(h('p', { class: 'notice', 'data-testid': 'detail-error', text: `Cannot load the group: ${e.message}` }));
      return;
    }
    detail.group = group;
    renderDetail(group);
  }

  function fact(label, value, attrs = {}) {
    return h('div', { class: 'fact' }, h('div', { class: 'fact-label muted', text: label }), h('div', { class: 'fact-value', ...attrs }, value));
  }

  function when(ms) {
    const sameDay = new Date(ms).toDateString() === new Date().toDateString();
    return h('span', { title: fmtDateTime(ms) },
      h('span', { text: sameDay ? fmtClock(ms) : fmtDateTime(ms) }), ' ',
      h('span', { class: 'muted', 'data-ago': String(ms), text: fmtAgo(ms) }));
  }

  /** Signature keys of unsymbolicated frames are `module+0xoffset`. */
  function frameKey(crash, frame) {
    if (frame.function) return frame.function;
    const mod = frame.module_index !== undefined ? crash.modules[frame.module_index] : null;
    if (!mod || !mod.code_file) return '<unknown>';
    try {
      return `${basename(mod.code_file)}+0x${(BigInt(frame.instruction_addr) - BigInt(mod.image_addr)).toString(16)}`;
    } catch (e) {
      return '<unknown>';
    }
  }

  const STATUS_LABEL = { symbolicated: 'symbolicated', missing_symbol: 'missing symbol', unknown_image: 'unknown image', malformed: 'malformed' };

  function renderFrames(crash, thread, signature) {
    const list = h('ol', { class: 'frames', 'data-testid': 'stack' });
    thread.frames.forEach((f) => {
      const location = f.abs_path ? `${basename(f.abs_path)}${f.lineno ? `:${f.lineno}` : ''}` : null;
      const inSignature = signature.has(frameKey(crash, f));
      list.append(h('li', {
        class: `frame status-${f.status}${f.inlined ? ' inlined' : ''}${inSignature ? ' in-signature' : ''}`,
        'data-testid': 'stack-frame',
        'data-status': f.status,
        'data-inlined': f.inlined ? 'true' : 'false',
        title: inSignature ? 'Part of the group signature' : null,
      },
      h('span', { class: 'frame-index muted', text: `#${f.original_index}` }),
      h('div', { class: 'frame-main' },
        h('div', { class: 'frame-line' },
          h('span', { class: f.function ? 'frame-function' : 'frame-function unknown', 'data-testid': 'frame-function', title: f.raw_function && f.raw_function !== f.function ? f.raw_function : null, text: f.function || f.instruction_addr }),
          f.inlined ? h('span', { class: 'badge inlined', 'data-testid': 'frame-inlined', title: 'Inlined into the frame below', text: 'inlined' }) : null),
        h('div', { class: 'frame-meta muted' },
          location ? h('span', { class: 'frame-location', 'data-testid': 'frame-location', title: f.abs_path, text: location }) : null,
          f.package ? h('span', { class: 'frame-package', 'data-testid': 'frame-package', title: f.package, text: basename(f.package) }) : null,
          h('span', { class: 'frame-addr', text: f.lookup_addr ? `${f.instruction_addr} (+${f.lookup_addr})` : f.instruction_addr }),
          f.lang && f.lang !== 'unknown' ? h('span', { class: 'frame-lang', text: f.lang }) : null)),
      h('span', { class: `status status-${f.status}`, 'data-testid': 'frame-status', text: STATUS_LABEL[f.status] || f.status })));
    });
    if (!thread.frames.length) list.append(h('li', { class: 'muted', text: 'No frames reported.' }));
    return list;
  }

  function threadLabel(t) {
    const parts = [t.name ? `“${t.name}”` : null, t.id !== undefined ? `id ${t.id}` : null].filter(Boolean);
    return parts.length ? parts.join(' · ') : 'unnamed thread';
  }

  function renderDetail(group) {
    const crash = group.latest;
    const signature = new Set(group.signature);
    setText('detail-title', group.title);
    setText('detail-id', group.id);
    const crashed = crash.threads.find((t) => t.crashed) || crash.threads[0];
    const others = crash.threads.filter((t) => t !== crashed);
    const frameStats = crashed ? crashed.frames.reduce((acc, f) => { acc[f.status] = (acc[f.status] || 0) + 1; return acc; }, {}) : {};

    const facts = h('div', { class: 'facts-grid' },
      fact(`In window · ${fmtWindow(snapshot ? snapshot.stats.window_seconds : 300)}`, '—', { id: 'detail-window-count', 'data-testid': 'detail-window-count' }),
      fact('Since node start', fmtInt(group.count), { 'data-testid': 'detail-count' }),
      fact('First seen', when(group.first_seen_ms), { 'data-testid': 'detail-first-seen' }),
      fact('Last seen', when(group.last_seen_ms), { 'data-testid': 'detail-last-seen' }));

    const ex = crash.exception;
    const sections = [
      facts,
      h('div', { class: 'exception', 'data-testid': 'detail-exception' },
        h('span', { class: 'exception-type', text: ex.type }),
        ex.value ? h('span', { class: 'exception-value', text: ex.value }) : null),
    ];
    if (crashed) {
      const summary = Object.entries(frameStats).map(([st, n]) => `${n} ${STATUS_LABEL[st] || st}`).join(' · ');
      const inlined = crashed.frames.filter((f) => f.inlined).length;
      sections.push(
        h('div', { class: 'section-head' },
          h('h3', {}, 'Crashed thread ', h('span', { class: 'muted', text: threadLabel(crashed) })),
          h('span', { class: 'muted small' }, `${crashed.frames.length} frames${inlined ? ` (${inlined} inlined)` : ''} · ${summary}`,
            h('span', { class: 'legend' }, h('i', { class: 'swatch' }), 'signature'))),
        renderFrames(crash, crashed, signature));
    }
    sections.push(
      h('h3', { text: 'Latest crash' }),
      h('dl', { class: 'event' }, ...[
        ['App', `${crash.app.id} ${crash.app.version}${crash.app.build ? ` (${crash.app.build})` : ''}`],
        ['Platform', crash.platform],
        ['OS', `${crash.os.name} ${crash.os.version}`],
        ['Device', crash.device_model || '—'],
        ['User', crash.user_id || '—'],
        ['Crashed at', fmtDateTime(crash.timestamp_ms)],
        ['Event', crash.event_id],
      ].map(([k, v]) => h('div', {}, h('dt', { text: k }), h('dd', { title: v, text: v })))),
      h('h3', {}, 'Signature ', h('span', { class: 'muted', text: `${ex.type} and these frames, innermost first` })),
      h('ol', { class: 'signature', 'data-testid': 'signature' }, ...group.signature.map((k) => h('li', {}, h('code', { text: k })))));
    if (others.length) {
      const more = h('details', { class: 'more' }, h('summary', { text: `${others.length} other thread${others.length > 1 ? 's' : ''}` }));
      for (const t of others) more.append(h('h4', { text: threadLabel(t) }), renderFrames(crash, t, new Set()));
      sections.push(more);
    }
    if (crash.modules && crash.modules.length) {
      const mods = h('details', { class: 'more' }, h('summary', { text: `${crash.modules.length} module${crash.modules.length > 1 ? 's' : ''}` }));
      const table = h('table', { class: 'modules' }, h('thead', {}, h('tr', {}, h('th', { text: 'Module' }), h('th', { text: 'Debug id' }), h('th', { text: 'Debug file' }))));
      const tbody = h('tbody');
      for (const m of crash.modules) {
        tbody.append(h('tr', {},
          h('td', { title: m.code_file || '', text: basename(m.code_file) || '—' }),
          h('td', {}, h('code', { text: m.debug_id || '—' })),
          h('td', {}, h('span', { class: `status debug-${m.debug_status}`, title: m.debug_error || '', text: m.debug_status }))));
      }
      table.append(tbody);
      mods.append(table);
      sections.push(mods);
    }
    $('detail-body').replaceChildren(...sections);
    updateDetailLive();
  }

  function updateDetailLive() {
    const el = $('detail-window-count');
    if (!el || !snapshot) return;
    const g = snapshot.stats.top_groups.find((x) => x.id === detail.id);
    el.textContent = g ? fmtInt(g.count) : 'not in top 20';
  }

  $('detail-close').addEventListener('click', closeDetail);
  $('scrim').addEventListener('click', closeDetail);
  $('detail-refresh').addEventListener('click', () => { if (detail.id) loadGroup(detail.id); });
  document.addEventListener('keydown', (ev) => { if (ev.key === 'Escape' && detail.id) closeDetail(); });
  window.addEventListener('hashchange', route);

  // ---------------------------------------------------------------- start

  setConnection('connecting');
  route();
  connect();
})();
