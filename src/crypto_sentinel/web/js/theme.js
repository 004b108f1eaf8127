// Light and dark themes: the system's preference until the user picks one, which is then
// remembered in this browser.

const KEY = "crypto-sentinel.theme";

export function initialTheme() {
  try {
    const saved = window.localStorage.getItem(KEY);
    if (saved === "light" || saved === "dark") return saved;
  } catch {
    // storage can be disabled; the system preference still applies
  }
  return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

/** Apply `name` to the page and the toggle button; `remember` stores the user's choice. */
export function applyTheme(name, button, remember = false) {
  document.documentElement.dataset.theme = name;
  button.setAttribute("aria-pressed", String(name === "dark"));
  if (!remember) return;
  try {
    window.localStorage.setItem(KEY, name);
  } catch {
    // not remembered, still applied
  }
}
