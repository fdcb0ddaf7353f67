// Shared by the live pages (round page, round list, dashboard): one WebSocket to a portal feed
// that reconnects with exponential backoff (0.5 s doubling to 15 s, with jitter). The server
// sends the whole current state on every (re)connect, so no catch-up logic is needed here.
// While the socket is down, pages may poll (see `poll`), as they do without JavaScript.
(function () {
  "use strict";

  function connect(path, handlers) {
    let delay = 500;
    let failures = 0;
    function open() {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const socket = new WebSocket(`${scheme}://${location.host}${path}`);
      socket.onopen = () => {
        delay = 500;
        failures = 0;
        handlers.onState("live", 0);
      };
      socket.onmessage = (message) => {
        let data;
        try {
          data = JSON.parse(message.data);
        } catch (error) {
          return;
        }
        handlers.onMessage(data);
      };
      socket.onclose = () => {
        failures += 1;
        handlers.onState("reconnecting", failures);
        setTimeout(open, delay + Math.random() * delay * 0.2);
        delay = Math.min(delay * 2, 15000);
      };
    }
    open();
  }

  function showConnection(element, state) {
    if (!element) return;
    const labels = { live: "(live)", reconnecting: "(reconnecting…)", polling: "(offline: polling every 5 s)" };
    element.textContent = labels[state] || "";
    element.className = state === "live" ? "live" : "offline";
    element.dataset.state = state;
  }

  // Refetch this page and swap in the element with `id` from the fresh copy.
  async function refreshFragment(id) {
    const response = await fetch(location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" });
    if (!response.ok) return null;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.getElementById(id);
    const current = document.getElementById(id);
    if (fresh && current) current.replaceWith(fresh);
    return fresh;
  }

  function text(value, fallback = "—") {
    return value === null || value === undefined || value === "" ? fallback : String(value);
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value);
    }
    node.append(...children);
    return node;
  }

  window.flportalLive = { connect, showConnection, refreshFragment, text, el };
})();
