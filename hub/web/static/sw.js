// The service worker: shows the hub's push notifications and acknowledges from them.
// The push payload is JSON: {title, body, tag, ack_url}; the ack URL is itself the secret.

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

function readPayload(event) {
  try {
    return event.data ? event.data.json() : {};
  } catch {
    return { body: event.data.text() };
  }
}

self.addEventListener("push", (event) => {
  const data = readPayload(event);
  const options = {
    body: data.body ?? "",
    tag: data.tag,
    renotify: Boolean(data.tag),
    requireInteraction: true,
    icon: "/icons/icon-192.png",
    data: { ack_url: data.ack_url },
    actions: data.ack_url ? [{ action: "ack", title: "Acknowledge" }] : [],
  };
  event.waitUntil(self.registration.showNotification(data.title ?? "tenhub alarm", options));
});

async function acknowledge(notification) {
  let text;
  try {
    const response = await fetch(notification.data.ack_url, {
      method: "POST",
      headers: { Accept: "application/json" },
    });
    const answer = await response.json().catch(() => ({}));
    text = response.ok ? "Acknowledged: the others know you are coming." : `Not acknowledged: ${answer.error ?? response.status}`;
  } catch {
    text = "Not acknowledged: no connection to the hub. Open the app and try again.";
  }
  await self.registration.showNotification(notification.title, { body: text, tag: notification.tag });
}

async function openPatrol() {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const open = windows.find((client) => new URL(client.url).pathname === "/patrol");
  return open ? open.focus() : self.clients.openWindow("/patrol");
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const wantsAck = event.action === "ack" && event.notification.data?.ack_url;
  event.waitUntil(wantsAck ? acknowledge(event.notification) : openPatrol());
});
