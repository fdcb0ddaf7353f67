// Dashboard home: per-model charts (uPlot, vendored in static/vendor/uplot) drawn from the
// series embedded in the page, refetched from the model's series URL whenever one of its rounds
// finishes or is evaluated; the active-rounds table follows the overview WebSocket feed.
(function () {
  "use strict";
  const live = window.flportalLive;
  const root = document.getElementById("dashboard");
  if (!live || !root) return;
  const { el, text } = live;
  const charts = new Map(); // element id -> uPlot instance
  const ACTIVE = new Set(["open", "aggregating"]);
  const REFRESH_ON = new Set(["round.completed", "round.failed", "evaluation.received", "version.norms"]);
  const MERCHANT_ACTIVITY = /^(update\.|weights\.|secagg\.|round\.opened)/;
  const COLORS = { loss: "#b42318", accuracy: "#1d5fbf", auc: "#1b7f3b", train: "#c9831a", grey: "#6b7785" };

  const seriesData = JSON.parse(document.getElementById("dashboard-series").textContent || "{}");

  function line(label, color, extra = {}) {
    return { label, stroke: color, width: 2, spanGaps: false, points: { show: true, size: 5 }, ...extra };
  }

  function chartSpecs(s) {
    const x = s.rounds;
    const roundAxis = { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100], values: (u, ticks) => ticks.map(String) };
    const specs = {
      quality: {
        empty: !x.length,
        data: [x, s.eval_loss, s.eval_accuracy, s.eval_auc, s.train_loss],
        series: [
          {},
          line("held-out loss", COLORS.loss, { scale: "loss" }),
          line("held-out accuracy", COLORS.accuracy, { scale: "ratio" }),
          line("held-out AUC", COLORS.auc, { scale: "ratio" }),
          line("train loss", COLORS.train, { scale: "loss", dash: [6, 4] }),
        ],
        scales: { x: { time: false }, ratio: { range: [0, 1] } },
        axes: [roundAxis, { scale: "loss", label: "loss" }, { scale: "ratio", side: 1, label: "accuracy / AUC", grid: { show: false } }],
      },
      participation: {
        empty: !x.length,
        data: [x, s.invited, s.submitted],
        series: [{}, line("invited", COLORS.grey), line("submitted", COLORS.accuracy)],
        scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
        axes: [roundAxis, { label: "merchants" }],
      },
      norms: {
        empty: !x.length,
        data: [x, s.norm_mean, s.norm_max],
        series: [{}, line("mean L2 norm", COLORS.accuracy), line("max L2 norm", COLORS.loss)],
        scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max(1e-9, max) * 1.1] } },
        axes: [roundAxis, { label: "L2 norm" }],
      },
    };
    const p = s.privacy || {};
    specs.privacy = p.enabled
      ? {
          empty: !p.rounds.length,
          data: [p.rounds, p.epsilon, p.rounds.map(() => p.epsilon_budget)],
          series: [{}, line("ε spent", COLORS.loss), line(`budget ε = ${p.epsilon_budget}`, COLORS.grey, { dash: [4, 4], points: { show: false } })],
          scales: { x: { time: false }, y: { range: [0, p.epsilon_budget * 1.1] } },
          axes: [roundAxis, { label: "ε" }],
        }
      : null;
    return specs;
  }

  function draw(slug) {
    const section = document.getElementById(`charts-${slug}`);
    const s = seriesData[slug];
    if (!section || !s || !window.uPlot) return;
    const specs = chartSpecs(s);
    const charted = section.querySelector('[data-field="charted"]');
    if (charted) charted.textContent = s.rounds.length;
    for (const [kind, spec] of Object.entries(specs)) {
      const box = section.querySelector(`[data-chart="${kind}"]`);
      if (!box || !spec) continue;
      const id = box.id;
      if (spec.empty) {
        charts.get(id)?.destroy();
        charts.delete(id);
        box.replaceChildren(el("p", { class: "muted chart-empty" }, "No finished rounds yet."));
        continue;
      }
      box.dataset.points = String(spec.data[0].length);
      const existing = charts.get(id);
      if (existing && existing.series.length === spec.series.length) {
        existing.setData(spec.data);
        continue;
      }
      existing?.destroy();
      box.replaceChildren();
      const width = Math.max(240, box.clientWidth || 320);
      charts.set(
        id,
        new window.uPlot(
          { width, height: 200, series: spec.series, scales: spec.scales, axes: spec.axes, legend: { live: false } },
          spec.data,
          box,
        ),
      );
    }
  }

  const pending = new Map();
  function refetch(slug) {
    const section = document.getElementById(`charts-${slug}`);
    if (!section) return;
    clearTimeout(pending.get(slug));
    pending.set(
      slug,
      setTimeout(async () => {
        try {
          const response = await fetch(section.dataset.seriesUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
          if (!response.ok) return;
          seriesData[slug] = await response.json();
          section.dataset.refreshed = String(Date.now());
          draw(slug);
        } catch (error) {
          // the next finished round refetches again
        }
      }, 300),
    );
  }

  function activeRow(snapshot) {
    return el(
      "tr",
      { dataset: { roundId: snapshot.id, status: snapshot.status } },
      el("td", {}, el("a", { href: `/rounds/${snapshot.id}/` }, `${snapshot.model} #${snapshot.number}`)),
      el("td", {}, el("span", { class: `status status-${snapshot.status}`, dataset: { field: "status" } }, snapshot.status)),
      el(
        "td",
        { class: "progress-cell" },
        el("progress", { max: snapshot.target_updates, value: snapshot.submitted }),
        " ",
        el("span", { dataset: { field: "submitted" } }, String(snapshot.submitted)),
        `/${snapshot.target_updates} `,
        el("span", { class: "muted" }, `(quorum ${snapshot.min_updates}, ${snapshot.participants} invited)`),
      ),
      el("td", { dataset: { field: "deadline_at" } }, snapshot.deadline_at ? snapshot.deadline_at.slice(0, 19) : "—"),
    );
  }

  function updateActive(snapshot) {
    const body = document.querySelector("#active-rounds tbody");
    const row = body.querySelector(`tr[data-round-id="${snapshot.id}"]`);
    if (ACTIVE.has(snapshot.status)) {
      const fresh = activeRow(snapshot);
      if (row) row.replaceWith(fresh);
      else body.append(fresh);
      document.querySelector(`#upcoming-rounds li[data-round-id="${snapshot.id}"]`)?.remove();
    } else if (row) {
      row.remove();
    }
    body.querySelectorAll("tr.empty").forEach((tr) => tr.remove());
    const count = body.querySelectorAll("tr[data-round-id]").length;
    if (!count) body.append(el("tr", { class: "empty" }, el("td", { colspan: "4", class: "muted" }, "No round is running.")));
    document.getElementById("stat-active-rounds").textContent = count;
  }

  function addVersion(snapshot) {
    if (snapshot.status !== "completed" || !snapshot.result_version) return;
    const body = document.querySelector("#latest-versions tbody");
    if (body.querySelector(`tr[data-model="${CSS.escape(snapshot.model)}"][data-version="${snapshot.result_version}"]`)) return;
    body.querySelectorAll("tr.empty").forEach((tr) => tr.remove());
    const metric = (value) => (typeof value === "number" ? value.toFixed(4) : "—");
    const m = snapshot.metrics || {};
    body.prepend(
      el(
        "tr",
        { dataset: { model: snapshot.model, version: snapshot.result_version }, class: "fresh" },
        el("td", {}, snapshot.model_name || snapshot.model),
        el("td", {}, `v${snapshot.result_version}`),
        el("td", {}, el("a", { href: `/rounds/${snapshot.id}/` }, `#${snapshot.number}`)),
        el("td", { class: "num" }, metric(m.loss)),
        el("td", { class: "num" }, "—"),
        el("td", { class: "num" }, "—"),
        el("td", { class: "num" }, "—"),
        el("td", {}, text(snapshot.finished_at && snapshot.finished_at.slice(0, 19).replace("T", " "))),
      ),
    );
    while (body.rows.length > 10) body.lastElementChild.remove();
    document.getElementById("stat-latest-version").textContent = `v${snapshot.result_version}`;
  }

  function onMessage(data) {
    if (data.event === "snapshot") {
      data.rounds.forEach(updateActive);
      return;
    }
    const snapshot = data.round;
    if (!snapshot) return;
    updateActive(snapshot);
    addVersion(snapshot);
    if (MERCHANT_ACTIVITY.test(data.event)) refreshOnlineSoon();
    if (REFRESH_ON.has(data.event)) refetch(snapshot.model);
  }

  for (const slug of Object.keys(seriesData)) draw(slug);
  if ("ResizeObserver" in window) {
    let timer = null;
    new ResizeObserver(() => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        for (const [id, chart] of charts) {
          const box = document.getElementById(id);
          if (box && box.clientWidth) chart.setSize({ width: box.clientWidth, height: 200 });
        }
      }, 150);
    }).observe(root);
  }
  // Merchants online is not pushed: re-read that card (and the headline count) every 30 s and
  // shortly after merchant activity on any round.
  let onlineTimer = null;
  async function refreshOnline() {
    try {
      await live.refreshFragment("merchants-online-card");
      const count = document.getElementById("merchants-online-count");
      if (count) document.getElementById("stat-merchants-online").textContent = count.textContent;
    } catch (error) {
      // offline: the next tick tries again
    }
  }
  function refreshOnlineSoon() {
    clearTimeout(onlineTimer);
    onlineTimer = setTimeout(refreshOnline, 1000);
  }
  setInterval(refreshOnline, 30000);
  if ("WebSocket" in window) {
    live.connect(root.dataset.wsPath, {
      onMessage,
      onState(state) {
        live.showConnection(document.getElementById("live-connection"), state);
      },
    });
  }
})();
