// The desk's alarm sound, synthesised with WebAudio (no audio file to load).

let context = null;

function audio() {
  if (!context && window.AudioContext) context = new AudioContext();
  return context;
}

/** Three short tones. Silent until the page has had a click (the browser's rule). */
export function beep() {
  const ctx = audio();
  if (!ctx) return;
  if (ctx.state === "suspended") ctx.resume();
  const start = ctx.currentTime + 0.02;
  [880, 660, 880].forEach((frequency, i) => {
    const at = start + i * 0.22;
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = "square";
    osc.frequency.value = frequency;
    gain.gain.setValueAtTime(0.0001, at);
    gain.gain.exponentialRampToValueAtTime(0.2, at + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, at + 0.18);
    osc.connect(gain).connect(ctx.destination);
    osc.start(at);
    osc.stop(at + 0.2);
  });
}

/** Show `button` while the browser keeps the sound off; a click turns it on. */
export function offerSound(button) {
  const ctx = audio();
  if (!ctx || !button) return;
  const update = () => (button.hidden = ctx.state === "running");
  ctx.addEventListener("statechange", update);
  button.addEventListener("click", () => ctx.resume());
  // Any click on the page unlocks the sound as well.
  document.addEventListener("pointerdown", () => ctx.resume(), { once: true });
  update();
}
