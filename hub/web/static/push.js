// The service worker, and the "Enable notifications" button that subscribes this phone.

import { api, post } from "./api.js";

/** The VAPID public key (base64url) as the bytes pushManager.subscribe wants. */
function keyBytes(base64url) {
  const base64 = base64url.replaceAll("-", "+").replaceAll("_", "/");
  const raw = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

/** Register the service worker for the whole app; null where the browser has none. */
export async function registerWorker() {
  if (!("serviceWorker" in navigator)) return null;
  return navigator.serviceWorker.register("/sw.js", { scope: "/" });
}

async function subscribe(registration) {
  const { public_key: key } = await api("/api/push/key");
  const subscription = await registration.pushManager.subscribe({
    userVisibleOnly: true,
    applicationServerKey: keyBytes(key),
  });
  await post("/api/push/subscriptions", subscription.toJSON());
}

/** Wire `button`: it subscribes; `status` says how things stand. */
export async function setupPush(button, status) {
  if (!button) return;
  const say = (text) => (status.textContent = text);
  let registration;
  try {
    registration = await registerWorker();
  } catch (error) {
    console.error(error);
  }
  if (!registration || !("PushManager" in window)) {
    button.hidden = true;
    say("This browser cannot receive push notifications.");
    return;
  }
  const existing = await registration.pushManager.getSubscription();
  if (existing) {
    button.textContent = "Notifications on";
    // Tell the hub again: the one logged in now is the one this phone should alert.
    post("/api/push/subscriptions", existing.toJSON()).catch((error) => console.error(error));
  }
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      if ((await Notification.requestPermission()) !== "granted") {
        say("Notifications are blocked for this site in the browser's settings.");
        return;
      }
      await subscribe(registration);
      button.textContent = "Notifications on";
      say("This phone will be alerted.");
    } catch (error) {
      say(`Could not enable notifications: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  });
}
