// Live round progress: patch the server-rendered page from the WebSocket feed.
// Every message carries the whole round snapshot, so a reconnect needs no catch-up logic.
(function () {
  "use strict";
  const root = document.getElementById("round");
  if (!root || !("WebSocket" in window)) return;
  const field = (name) => root.querySelector(`[data-field="${name}"]`);
  const connection = root.querySelector("[data-connection]");
  let delay = 500;

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function render(snapshot) {
    const status = field("status");
    status.textContent = snapshot.status;
    status.className = `status status-${snapshot.status}`;
    field("submitted").textContent = snapshot.submitted;
    field("participants").textContent = snapshot.participants;
    field("progress").value = snapshot.submitted;
    field("deadline_at").textContent = snapshot.deadline_at || "—";
    field("result_version").textContent = snapshot.result_version ? `v${snapshot.result_version}` : "—";
    field("failure_reason").textContent = snapshot.failure_reason || "";
    const info = snapshot.aggregation || {};
    field("aggregation").textContent = Object.keys(info).length
      ? Object.entries(info).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(", ") : v}`).join(" · ")
      : "";
    const body = field("updates");
    body.replaceChildren(...snapshot.updates.map((u) => {
      const tr = document.createElement("tr");
      tr.append(cell(u.merchant), cell(u.num_examples), cell(u.status), cell(u.created_at));
      return tr;
    }));
  }

  function logEvent(name) {
    const li = document.createElement("li");
    li.textContent = `${new Date().toLocaleTimeString()} ${name}`;
    field("events").prepend(li);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${root.dataset.wsPath}`);
    socket.onopen = () => {
      delay = 500;
      connection.textContent = "(live)";
      connection.className = "live";
    };
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      render(data.round);
      if (data.event !== "snapshot") logEvent(data.event);
    };
    socket.onclose = () => {
      connection.textContent = "(reconnecting…)";
      connection.className = "offline";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }
  connect();
})();
