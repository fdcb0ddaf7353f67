// Live round page: patch the server-rendered page from the round's WebSocket feed.
// On (re)connect the server sends the whole state ("snapshot"); after that, every message has
// the round's new snapshot plus what changed: new event-log entries, the rows of the merchants
// concerned (all rows when `replace`), the counts per status and, once completed, the result.
(function () {
  "use strict";
  const live = window.flportalLive;
  if (!live || !document.getElementById("round") || !("WebSocket" in window)) return;
  const { el, text } = live;
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const LOG_LIMIT = 500;
  let pollTimer = null;

  const root = () => document.getElementById("round");
  const byId = (id) => document.getElementById(id);
  const time = (iso) => (iso ? iso.slice(11, 19) : "—");

  function setText(id, value) {
    const node = byId(id);
    if (node) node.textContent = value;
  }

  function renderRound(snapshot) {
    root().dataset.status = snapshot.status;
    const status = byId("round-status");
    status.textContent = snapshot.status;
    status.className = `status status-${snapshot.status}`;
    setText("round-submitted", snapshot.submitted);
    setText("round-participants", snapshot.participants);
    const progress = byId("round-progress");
    progress.max = snapshot.target_updates;
    progress.value = snapshot.submitted;
    progress.textContent = `${snapshot.submitted} of ${snapshot.target_updates}`;
    const deadline = byId("round-deadline");
    deadline.dateTime = snapshot.deadline_at || "";
    deadline.textContent = snapshot.deadline_at ? snapshot.deadline_at.slice(0, 19).replace("T", " ") : "—";
    byId("round-countdown").dataset.deadline = snapshot.deadline_at || "";
    for (const name of ["opened_at", "closed_at"]) {
      const node = root().querySelector(`[data-field="${name}"]`);
      if (node) node.textContent = snapshot[name] ? snapshot[name].slice(0, 19).replace("T", " ") : "—";
    }
    const failure = byId("round-failure");
    failure.textContent = snapshot.failure_reason || "";
    failure.hidden = !snapshot.failure_reason;
    renderSecagg(snapshot.secagg);
    tick();
  }

  // Secure-aggregation phase progress (present only for rounds that use it).
  function renderSecagg(secagg) {
    if (!secagg || !byId("secagg-card")) return;
    setText("secagg-phase", secagg.phase || "done");
    const deadline = byId("secagg-deadline");
    if (deadline) {
      deadline.dateTime = secagg.phase_deadline_at || "";
      deadline.textContent = secagg.phase_deadline_at ? secagg.phase_deadline_at.slice(11, 19) : "—";
    }
    for (const node of root().querySelectorAll("[data-secagg]")) {
      const value = secagg[node.dataset.secagg];
      if (value !== undefined && value !== null) node.textContent = value;
    }
  }

  function renderCounts(counts) {
    if (!counts) return;
    for (const [status, count] of Object.entries(counts)) {
      const node = root().querySelector(`[data-count="${status}"]`);
      if (node) node.textContent = count;
    }
  }

  function merchantRow(row) {
    const statusCell = el("td", {}, el("span", { class: `status status-${row.status}` }, row.status));
    if (row.reason) statusCell.append(" ", el("span", { class: "muted reason" }, row.reason));
    return el(
      "tr",
      { dataset: { merchant: row.merchant, status: row.status } },
      el("td", { title: row.name }, row.merchant),
      statusCell,
      el("td", {}, el("time", { datetime: row.downloaded_at || "" }, time(row.downloaded_at))),
      el("td", {}, el("time", { datetime: row.submitted_at || "" }, time(row.submitted_at))),
      el("td", { class: "num" }, text(row.num_examples)),
    );
  }

  function renderMerchants(rows, replace) {
    const body = root().querySelector('[data-field="merchants"]');
    if (!rows || (!rows.length && !replace)) return;
    if (replace) {
      body.replaceChildren(...rows.map(merchantRow));
      if (!rows.length) body.append(el("tr", { class: "empty" }, el("td", { colspan: "5", class: "muted" }, "No participants.")));
      return;
    }
    body.querySelectorAll("tr.empty").forEach((tr) => tr.remove());
    for (const row of [...rows].reverse()) {  // most recent ends up on top
      body.querySelector(`tr[data-merchant="${CSS.escape(row.merchant)}"]`)?.remove();
      body.prepend(merchantRow(row));
    }
    const limit = Number(root().dataset.shownLimit) || 200;
    while (body.rows.length > limit) body.lastElementChild.remove();
  }

  function renderFeed(entries) {
    if (!entries || !entries.length) return;
    const log = byId("event-log");
    log.querySelectorAll("li.empty").forEach((li) => li.remove());
    let last = Number(root().dataset.lastEventId) || 0;
    for (const entry of [...entries].reverse()) {  // oldest first, each prepended
      if (entry.id <= last) continue;
      log.prepend(
        el(
          "li",
          { dataset: { eventId: entry.id, kind: entry.kind }, class: "fresh" },
          el("time", { datetime: entry.at }, time(entry.at)),
          " ",
          el("span", { class: "kind" }, entry.kind),
          " ",
          el("span", { class: "text" }, entry.text),
        ),
      );
      last = entry.id;
    }
    root().dataset.lastEventId = last;
    while (log.children.length > LOG_LIMIT) log.lastElementChild.remove();
  }

  function show(value) {
    if (Array.isArray(value)) return value.map(show).join(", ");
    if (typeof value === "number" && !Number.isInteger(value)) return String(Number(value.toPrecision(6)));
    return text(value);
  }

  function number(value) {
    return typeof value === "number" ? value.toFixed(4) : "—";
  }

  function renderResult(result) {
    const section = byId("version-result");
    if (!result) return;
    section.hidden = false;
    setText("result-version", `version v${result.version}`);
    const facts = [
      ["strategy", result.strategy],
      ["examples", result.metrics.num_examples !== undefined ? Math.round(result.metrics.num_examples) : "—"],
      ["sha256", result.sha256.slice(0, 16)],
      ...Object.entries(result.aggregation || {}).map(([key, value]) => [key.replaceAll("_", " "), show(value)]),
    ];
    byId("result-aggregation").replaceChildren(
      ...facts.flatMap(([key, value]) => [el("dt", {}, key), el("dd", {}, text(value))]),
    );
    const trained = Object.fromEntries(Object.entries(result.metrics || {}).filter(([key]) => key !== "num_examples"));
    const heldOut = (result.evaluation && result.evaluation.metrics) || {};
    const keys = [...new Set([...Object.keys(trained), ...Object.keys(heldOut)])].sort();
    const body = byId("result-metrics").tBodies[0];
    body.replaceChildren(
      ...keys.map((key) =>
        el("tr", {}, el("td", {}, key), el("td", { class: "num" }, number(trained[key])), el("td", { class: "num" }, number(heldOut[key]))),
      ),
    );
    if (!keys.length) body.append(el("tr", {}, el("td", { colspan: "3", class: "muted" }, "No metrics reported.")));
    setText("result-evaluators", `${(result.evaluation && result.evaluation.evaluators) || 0} merchants evaluated this version so far.`);
  }

  function duration(ms) {
    const total = Math.max(0, Math.round(ms / 1000));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = total % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return h ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
  }

  function tick() {
    const node = byId("round-countdown");
    if (!node) return;
    const status = root().dataset.status;
    if (status === "open" && node.dataset.deadline) {
      const left = Date.parse(node.dataset.deadline) - Date.now();
      node.textContent = left > 0 ? duration(left) : "deadline passed, closing…";
      node.classList.toggle("offline", left < 60000);
    } else if (status === "scheduled" && node.dataset.opens) {
      const left = Date.parse(node.dataset.opens) - Date.now();
      node.textContent = left > 0 ? `opens in ${duration(left)}` : "opening…";
    } else if (status === "aggregating") {
      node.textContent = "closed, aggregating…";
    } else {
      node.textContent = "—";
    }
  }

  function onMessage(data) {
    if (data.round) renderRound(data.round);
    renderCounts(data.counts);
    renderMerchants(data.merchants, data.event === "snapshot" || data.replace);
    renderFeed(data.feed);
    renderResult(data.result);
  }

  function startPolling() {
    if (pollTimer) return;
    pollTimer = setInterval(async () => {
      if (TERMINAL.has(root().dataset.status)) return;
      try {
        await live.refreshFragment("round");
        live.showConnection(byId("live-connection"), "polling");
      } catch (error) {
        // keep polling; the socket keeps trying too
      }
    }, 5000);
  }

  function onState(state, failures) {
    live.showConnection(byId("live-connection"), state);
    if (state === "live" && pollTimer) {
      clearInterval(pollTimer);
      pollTimer = null;
    } else if (state === "reconnecting" && failures >= 2) {
      startPolling();
    }
  }

  setInterval(tick, 1000);
  tick();
  live.connect(root().dataset.wsPath, { onMessage, onState });
})();
