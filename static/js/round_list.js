// Round list: keep each row's status, progress and result current from the overview feed.
// Rounds not on this page are announced with a reload link instead of reshuffling the table.
(function () {
  "use strict";
  const live = window.flportalLive;
  const root = document.getElementById("round-list");
  if (!live || !root || !("WebSocket" in window)) return;

  function update(snapshot, event) {
    const row = root.querySelector(`tr[data-round-id="${snapshot.id}"]`);
    if (!row) {
      if (event === "round.scheduled") document.getElementById("rounds-new").hidden = false;
      return;
    }
    row.dataset.status = snapshot.status;
    const status = row.querySelector('[data-field="status"]');
    status.textContent = snapshot.status;
    status.className = `status status-${snapshot.status}`;
    row.querySelector('[data-field="submitted"]').textContent = snapshot.submitted;
    const progress = row.querySelector("progress");
    progress.max = snapshot.target_updates;
    progress.value = snapshot.submitted;
    row.querySelector('[data-field="deadline_at"]').textContent = snapshot.deadline_at
      ? snapshot.deadline_at.slice(0, 19).replace("T", " ")
      : "—";
    const result = row.querySelector('[data-field="result"]');
    if (snapshot.result_version) {
      result.textContent = `v${snapshot.result_version}`;
    } else if (snapshot.failure_reason) {
      result.replaceChildren(live.el("span", { class: "offline" }, snapshot.failure_reason));
    }
  }

  live.connect(root.dataset.wsPath, {
    onMessage(data) {
      if (data.event === "snapshot") data.rounds.forEach((snapshot) => update(snapshot, "snapshot"));
      else if (data.round) update(data.round, data.event);
    },
    onState(state) {
      live.showConnection(document.getElementById("live-connection"), state);
    },
  });
})();
