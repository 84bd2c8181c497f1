// Live updates from /api/events (Server-Sent Events), and a guard against refetch storms.

const LABELS = { live: "live", connecting: "connecting…", lost: "reconnecting…", closed: "offline: reload" };

function showStatus(state) {
  const badge = document.getElementById("live");
  if (!badge) return;
  badge.dataset.state = state;
  badge.textContent = LABELS[state];
}

/**
 * Listen to the hub's events: `on.alarm(data)`, `on.panel(data)`, and `on.open()` on every
 * (re)connection — events sent while disconnected are lost, so pages refetch there.
 */
export function listen(on) {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    showStatus("live");
    on.open?.();
  });
  source.addEventListener("error", () => {
    showStatus(source.readyState === EventSource.CLOSED ? "closed" : "lost");
  });
  for (const name of ["alarm", "panel"]) {
    source.addEventListener(name, (event) => on[name]?.(JSON.parse(event.data)));
  }
  return source;
}

/** Wrap an async refresh: calls while it runs cause one more run, not one each. */
export function coalesced(refresh) {
  let running = null;
  let again = false;
  return function run() {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        try {
          await refresh();
        } catch (error) {
          console.error(error);
        }
      } while (again);
      running = null;
    })();
    return running;
  };
}
