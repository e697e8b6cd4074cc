// llmbudget dashboard: applies live increments from /api/live (server-sent events) to the page,
// and drives the buttons and forms. No framework, no build step, nothing fetched from elsewhere.
// The rules mirror llmbudget/agentstats.py (colours, trend, runaway) and web/fmt.py (money).
"use strict";
(function () {
  const NANO = 1e9;
  const TZ = document.body.dataset.tz || undefined;
  const HIGH_COST = 0.05 * NANO;
  const SLOT_US = 5 * 60 * 1e6;
  const RUNAWAY_MIN = 0.5 * NANO;

  function money(nano) {
    if (nano === null || nano === undefined) return "unpriced";
    const v = nano / NANO;
    if (v === 0) return "$0";
    if (v >= 0.1) return "$" + v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    if (v >= 0.001) return "$" + v.toFixed(3);
    const t = v.toFixed(6).replace(/0+$/, "").replace(/\.$/, "");
    return t === "0" ? "<$0.000001" : "$" + t;
  }
  const num = (n) => Number(n).toLocaleString("en-US");
  function clock(iso) {
    try {
      return new Date(iso).toLocaleTimeString("en-GB", { timeZone: TZ, hour12: false });
    } catch (e) {
      return iso;
    }
  }
  function level(nano) {
    if (nano > 5 * NANO) return "red";
    if (nano >= 1 * NANO) return "yellow";
    return "green";
  }
  function trend(costs) {
    const w = costs.slice(-10);
    if (w.length < 2) return "flat";
    const half = Math.floor(w.length / 2);
    const older = w.slice(0, w.length - half), newer = w.slice(w.length - half);
    const a = older.reduce((x, y) => x + y, 0) / older.length;
    const b = newer.reduce((x, y) => x + y, 0) / newer.length;
    if (a === 0) return b > 0 ? "rising" : "flat";
    const c = (b - a) / a;
    return c > 0.1 ? "rising" : c < -0.1 ? "falling" : "flat";
  }
  const ARROWS = { rising: "↗", falling: "↘", flat: "→" };
  function runaway(spend, nowUs) {
    const slots = new Array(12).fill(0);
    for (const [ts, cost] of spend) {
      const i = Math.floor(Math.max(0, nowUs - ts) / SLOT_US);
      if (i <= 11) slots[i] += cost;
    }
    const base = slots.slice(1).sort((x, y) => x - y)[5];
    return slots[0] >= RUNAWAY_MIN && slots[0] >= 5 * base;
  }
  function setText(root, f, text) {
    const el = root.querySelector('[data-f="' + f + '"]');
    if (el) el.textContent = text;
    return el;
  }

  // ------------------------------------------------------------ agent cards
  function paintCard(card, st) {
    setText(card, "session", st.session || "–");
    setText(card, "tokens", num(st.tokens));
    setText(card, "cost", money(st.cost));
    const lv = level(st.cost);
    card.classList.remove("level-green", "level-yellow", "level-red");
    card.classList.add("level-" + lv);
    setText(card, "level", lv);
    const w = st.recent.slice(-10);
    if (w.length) {
      const avg = Math.floor(w.reduce((x, y) => x + y, 0) / w.length);
      setText(card, "cpr", money(avg));
      const t = trend(w);
      const arrow = setText(card, "arrow", ARROWS[t]);
      if (arrow) arrow.setAttribute("aria-label", t);
      const p = card.querySelector('[data-f="cpr-title"]');
      if (p) p.title = "Avg cost/request: " + money(avg) + " (last 10 requests)";
      let high = card.querySelector(".flag.high");
      if (avg > HIGH_COST && !high) {
        high = document.createElement("span");
        high.className = "flag high";
        high.title = "above $0.05 per request";
        high.textContent = "▲ high cost";
        card.querySelector(".flags").prepend(high);
      } else if (avg <= HIGH_COST && high) high.remove();
    }
    const run = card.querySelector(".flag.runaway");
    if (run) run.hidden = !runaway(st.spend, Date.now() * 1000);
    card.classList.toggle("paused", !!st.paused);
    card.querySelector(".flag.pausedflag").hidden = !st.paused;
    card.querySelector("button.pause").hidden = !!st.paused;
    card.querySelector("button.resume").hidden = !st.paused;
    card.dataset.state = JSON.stringify(st);
  }
  // agent -> the newest call (ms since epoch) its card must include; present while it is fetched
  const fetching = new Map();
  function findCard(agent) {
    for (const c of document.querySelectorAll("article.card")) if (c.dataset.agent === agent) return c;
    return null;
  }
  const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
  async function loadCard(agent, ts) {
    const busy = fetching.has(agent);
    fetching.set(agent, Math.max(fetching.get(agent) || 0, ts || 0));
    if (busy) return;
    try {
      // the ledger makes a call readable within its flush interval (0.2 s): read until the card has it
      let d = null;
      for (let i = 0; i < 12; i++) {
        const r = await fetch("/api/agents/" + encodeURIComponent(agent));
        if (r.ok) {
          d = await r.json();
          if (d.last_request && Date.parse(d.last_request) >= fetching.get(agent) - 1) break;
        } else if (r.status !== 404) return;
        await sleep(150);
      }
      const holder = document.getElementById("cards");
      if (!d || !holder) return;
      const tmp = document.createElement("div");
      tmp.innerHTML = d.html;
      const fresh = tmp.firstElementChild;
      const old = findCard(agent);
      if (old) old.replaceWith(fresh);
      else holder.prepend(fresh);
      const empty = document.getElementById("no-agents");
      if (empty) empty.remove();
    } finally {
      fetching.delete(agent);
    }
  }
  function applyToCard(inc) {
    if (!inc.agent) return;
    const card = fetching.has(inc.agent) ? null : findCard(inc.agent);
    if (!card) {
      if (document.getElementById("cards")) loadCard(inc.agent, Date.parse(inc.ts));
      return;
    }
    const st = JSON.parse(card.dataset.state);
    if (inc.session !== st.session) {
      st.session = inc.session;
      st.tokens = 0;
      st.cost = 0;
    }
    st.tokens += inc.tokens;
    st.cost += inc.cost_nano || 0;
    // an increment may sum several calls (`calls`): their own costs come in `recent_costs`
    const costs = inc.recent_costs || (inc.cost_nano !== null ? [inc.cost_nano] : []);
    for (const c of costs) st.recent.push(c);
    st.recent = st.recent.slice(-10);
    const ts = Date.parse(inc.ts) * 1000;
    st.spend.unshift([ts, inc.cost_nano || 0]);
    st.spend = st.spend.filter((s) => s[0] > ts - 3900e6);
    const t = card.querySelector('[data-f="last"]');
    if (t) {
      t.textContent = clock(inc.ts);
      t.setAttribute("datetime", inc.ts);
    }
    paintCard(card, st);
    card.classList.add("bump");
    setTimeout(() => card.classList.remove("bump"), 600);
  }

  // ------------------------------------------------------------ totals and budgets
  function addTo(id, delta, fmt) {
    const el = document.getElementById(id);
    if (!el) return;
    const v = Number(el.dataset.nano || el.textContent.replace(/[^0-9]/g, "")) + delta;
    if (el.dataset.nano !== undefined) el.dataset.nano = String(v);
    el.textContent = fmt(v);
  }
  function applyToTotals(inc) {
    const c = inc.cost_nano || 0;
    addTo("today-cost", c, money);
    addTo("month-cost", c, money);
    addTo("projected", c, money); // the projection is this month's spend plus the rate's share: it moves with it
    addTo("today-calls", inc.calls || 1, num);
    addTo("month-calls", inc.calls || 1, num);
    addTo("today-tokens", inc.tokens, num);
    for (const b of document.querySelectorAll(".budget")) {
      const scope = b.dataset.scope, value = b.dataset.value;
      const field = { agent: "agent", backend: "backend", model: "model", session: "session", tier: "tier" }[scope];
      if (scope !== "global" && !(field && inc[field] === value)) continue;
      const add = b.dataset.unit === "usd" ? c : inc.tokens;
      const spent = Number(b.dataset.spent) + add;
      const limit = Number(b.dataset.limit);
      b.dataset.spent = String(spent);
      const pct = limit ? Math.min(100, (100 * spent) / limit) : 100;
      b.querySelector('[data-f="fill"]').style.width = pct.toFixed(1) + "%";
      setText(b, "pct", pct.toFixed(0));
      setText(b, "spent", b.dataset.unit === "usd" ? money(spent) : num(spent) + " tokens");
      if (spent >= limit) {
        b.className = "budget state-exhausted";
        setText(b, "state", "✖ EXHAUSTED");
      }
    }
  }

  // ------------------------------------------------------------ notifications
  function applyNotice(n) {
    const list = document.getElementById("notices");
    if (list) {
      const empty = list.querySelector(".empty");
      if (empty) empty.remove();
      const li = document.createElement("li");
      li.className = "notice " + (n.level || "info") + " fresh";
      const icon = { critical: "✖", warning: "⚠", info: "ℹ" }[n.level] || "•";
      li.textContent = icon + " " + clock(n.timestamp) + " " + n.message;
      list.prepend(li);
    }
    const m = /^agent (.+)$/.exec(n.scope || "");
    if (m && (n.kind === "agent_paused" || n.kind === "agent_resumed")) {
      const card = findCard(m[1]);
      if (card) {
        const st = JSON.parse(card.dataset.state);
        st.paused = n.kind === "agent_paused";
        paintCard(card, st);
      }
    }
  }

  // ------------------------------------------------------------ the live stream
  async function resync() {
    const r = await fetch("/api/overview");
    if (!r.ok) return;
    const o = await r.json();
    const set = (id, nano) => {
      const el = document.getElementById(id);
      if (el) {
        el.dataset.nano = String(nano);
        el.textContent = money(nano);
      }
    };
    set("today-cost", o.today.cost_nano);
    set("month-cost", o.month.cost_nano);
    set("projected", o.forecast.month_end_projected_nano);
    for (const a of o.agents) loadCard(a.agent, a.last_request ? Date.parse(a.last_request) : 0);
  }
  function connect() {
    const badge = document.getElementById("live");
    const es = new EventSource("/api/live");
    es.addEventListener("hello", (ev) => {
      const d = JSON.parse(ev.data);
      badge.textContent = "● live" + (d.redis ? " (all replicas)" : "");
      badge.classList.add("on");
      document.body.dataset.live = "on";
    });
    es.addEventListener("usage", (ev) => {
      const inc = JSON.parse(ev.data);
      applyToTotals(inc);
      applyToCard(inc);
    });
    es.addEventListener("notice", (ev) => applyNotice(JSON.parse(ev.data)));
    es.addEventListener("resync", () => resync());
    es.onerror = () => {
      badge.textContent = "○ reconnecting";
      badge.classList.remove("on");
    };
  }

  // ------------------------------------------------------------ actions (same-origin JSON POSTs)
  async function post(url, body, method) {
    const r = await fetch(url, {
      method: method || "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
      credentials: "same-origin",
    });
    const d = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((d.error && d.error.message) || r.statusText);
    return d;
  }
  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-action]");
    if (!btn) return;
    const action = btn.dataset.action;
    if (action === "pause" || action === "resume") {
      const card = btn.closest("article.card");
      const agent = card ? card.dataset.agent : btn.dataset.agent;
      try {
        await post("/api/agents/" + encodeURIComponent(agent) + "/" + action, action === "pause" ? { reason: "paused from the dashboard" } : {});
        if (card) {
          const st = JSON.parse(card.dataset.state);
          st.paused = action === "pause";
          paintCard(card, st);
        } else btn.closest("li").remove();
      } catch (e) {
        alert(e.message);
      }
    } else if (action === "delete-threshold") {
      const tr = btn.closest("tr");
      try {
        await post("/api/thresholds/" + encodeURIComponent(tr.dataset.scope) + "/" + encodeURIComponent(tr.dataset.agent), null, "DELETE");
        tr.remove();
      } catch (e) {
        alert(e.message);
      }
    } else if (action === "explain") {
      const tr = btn.closest("tr");
      const box = tr.nextElementSibling;
      if (!box.hidden) {
        box.hidden = true;
        return;
      }
      const r = await fetch("/api/events/" + encodeURIComponent(tr.dataset.id) + "/explain");
      const d = await r.json();
      box.firstElementChild.replaceChildren(explainTable(d));
      box.hidden = false;
    }
  });
  function cell(tag, text) {
    const c = document.createElement(tag);
    c.textContent = text;
    return c;
  }
  function explainTable(d) {
    const wrap = document.createElement("div");
    wrap.className = "explainbox";
    const t = document.createElement("table");
    const head = document.createElement("tr");
    for (const h of ["Tokens by kind", "Tokens", "× price / 1M", "= cost"]) head.append(cell("th", h));
    t.append(head);
    for (const l of d.lines || []) {
      const tr = document.createElement("tr");
      tr.append(cell("td", l.label), cell("td", num(l.tokens)), cell("td", l.price_per_mtok === null ? "–" : "$" + l.price_per_mtok), cell("td", "$" + l.cost_usd));
      t.append(tr);
    }
    wrap.append(t);
    const p = document.createElement("p");
    p.className = "source";
    p.textContent =
      "Recorded cost: " + (d.cost_usd === null ? "unpriced" : "$" + d.cost_usd) +
      (d.computed_usd ? " · computed: $" + d.computed_usd : "") +
      " · price source: " + d.source + (d.effective_from ? " (in force since " + d.effective_from + ")" : "") +
      (d.tiers_note ? " · " + d.tiers_note : "");
    wrap.append(p);
    return wrap;
  }
  const form = document.getElementById("threshold-form");
  if (form) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      const msg = document.getElementById("threshold-msg");
      try {
        const t = await post("/api/thresholds", {
          scope: f.get("scope"),
          agent: f.get("agent"),
          limit_usd: String(f.get("limit_usd")),
          auto_pause: f.get("auto_pause") === "on",
        });
        const body = document.querySelector("#thresholds tbody");
        const empty = body.querySelector(".empty");
        if (empty) empty.closest("tr").remove();
        for (const tr of body.querySelectorAll("tr")) if (tr.dataset.scope === t.scope && tr.dataset.agent === t.agent) tr.remove();
        const tr = document.createElement("tr");
        tr.dataset.scope = t.scope;
        tr.dataset.agent = t.agent;
        tr.append(cell("td", t.scope), cell("td", t.agent), cell("td", money(t.limit_nano)), cell("td", t.auto_pause ? "yes" : "no"));
        const td = document.createElement("td");
        const b = cell("button", "Delete");
        b.type = "button";
        b.dataset.action = "delete-threshold";
        td.append(b);
        tr.append(td);
        body.append(tr);
        msg.textContent = "Saved: in force within a second.";
      } catch (e) {
        msg.textContent = "Not saved: " + e.message;
      }
    });
  }
  // sessions: per-agent breakdown on click
  for (const row of document.querySelectorAll("tr.srow")) {
    row.addEventListener("click", async () => {
      const id = row.dataset.session;
      const r = await fetch("/api/sessions/" + encodeURIComponent(id));
      const d = await r.json();
      document.getElementById("bd-id").textContent = id;
      const body = document.getElementById("bd-rows");
      body.replaceChildren();
      for (const a of d.by_agent) {
        const tr = document.createElement("tr");
        tr.append(cell("td", a.agent || "(none)"), cell("td", num(a.calls)), cell("td", num(a.tokens)), cell("td", a.cost_usd === null ? "unpriced" : money(Math.round(Number(a.cost_usd) * NANO))), cell("td", clock(a.first)), cell("td", clock(a.last)));
        body.append(tr);
      }
      document.getElementById("breakdown").hidden = false;
    });
  }
  connect();
})();
