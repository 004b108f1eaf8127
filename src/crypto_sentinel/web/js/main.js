// The dashboard page: history from the /v1 REST routes, live updates from /v1/stream, and the
// controls (product, candle size, freeze, alert, theme). Each panel lives in its own module;
// this one only wires them together.

import { PriceAlert } from "./alert.js";
import * as api from "./api.js";
import { CandleChart } from "./chart.js";
import { DepthChart } from "./depth.js";
import { LiveStream } from "./stream.js";
import { TradeTape } from "./tape.js";
import { applyTheme, initialTheme } from "./theme.js";
import { TickerPanel } from "./ticker.js";

const $ = (id) => document.getElementById(id);
const STATS_EVERY_MS = 5000;
const HEALTH_EVERY_MS = 10000;
const GRANULARITIES = [60, 300, 900, 3600, 21600, 86400];
const TOKEN_KEY = "sentinel-api-token";

const view = { exchange: null, product: null, granularity: 60, frozen: false, price: null };
const chart = new CandleChart($("chart"));
const depth = new DepthChart($("depth"), $("book-note"), $("book-spread"));
const tape = new TradeTape($("tape"));
const ticker = new TickerPanel();
const alert = new PriceAlert(alertFired);
const stream = new LiveStream({ onMessage, onStatus, onOpen, token: api.token });
let loading = 0; // ticket of the history load in flight (0: none)
let queued = []; // live messages that arrived during that load

// --- history ---------------------------------------------------------------------------

/** Load the chart, tape and ticker for the current product and candle size from REST. */
async function load() {
  const ticket = ++loading;
  queued = [];
  const { product, granularity } = view;
  try {
    const stats = await api.stats(product);
    const [candles, trades, current] = await Promise.all([
      api.candles(product, granularity, historyEnd(stats.last_trade_time, granularity)),
      api.trades(product, 50),
      stats.last ? api.ticker(product) : null, // no trade yet: no ticker either (404)
    ]);
    if (ticket !== loading) return; // a newer switch is loading already
    chart.replace(candles.data, `${product}/${granularity}`);
    tape.replace(trades.data);
    ticker.reset(product);
    ticker.showStats(stats);
    if (current) ticker.showTicker(current);
    ticker.showVolatility(chart.ordered(), granularity);
    if (view.price === null) view.price = ticker.last;
    showError("");
  } catch (error) {
    if (error instanceof api.TokenError) askForToken();
    else if (ticket === loading) showError(`Could not load ${product}: ${error.message}`);
  } finally {
    if (ticket === loading) {
      loading = 0;
      const pending = queued;
      queued = [];
      pending.forEach(apply);
    }
  }
}

/**
 * Where the chart's window ends: now, unless the product's last trade is older than a page of
 * candles (a replay of old recordings, a quiet market); then the page ending at that trade.
 */
function historyEnd(lastTradeTime, granularity) {
  if (!lastTradeTime) return undefined;
  const last = Date.parse(lastTradeTime) / 1000;
  if (last > Date.now() / 1000 - 299 * granularity) return undefined;
  return last + 0.001; // just after it (Date keeps milliseconds, the API microseconds)
}

async function refreshStats() {
  if (view.frozen || loading || document.hidden || !view.product) return;
  try {
    ticker.showStats(await api.stats(view.product));
  } catch (error) {
    if (error instanceof api.TokenError) askForToken();
    else showError(`Could not refresh statistics: ${error.message}`);
  }
}

// --- live updates ----------------------------------------------------------------------

function onMessage(message) {
  if (message.type === "error") {
    showError(`Live stream: ${message.message}`);
    return;
  }
  if (!current(message)) return; // left over from the previous product or exchange
  if (message.type === "trade") {
    view.price = message.price;
    alert.check(message); // alerts fire even while the display is frozen
  }
  if (view.frozen) return;
  if (loading) queued.push(message);
  else apply(message);
}

/** The message is about what the page shows (pushed messages name their exchange). */
function current(message) {
  const exchange = message.exchange;
  return message.product_id === view.product && (!exchange || exchange === view.exchange);
}

function apply(message) {
  if (view.frozen || !current(message)) return;
  if (message.type === "trade") {
    tape.add(message);
    ticker.showTrade(message);
  } else if (message.type === "ticker") {
    ticker.showTicker(message);
  } else if (message.type === "book") {
    depth.show(message);
  } else if (message.type === "candle" && message.granularity === view.granularity) {
    chart.upsert(message);
    ticker.showVolatility(chart.ordered(), view.granularity);
  }
}

function onStatus(state, text) {
  const element = $("connection");
  element.dataset.state = state;
  element.textContent = text;
}

function onOpen(isReconnect) {
  if (isReconnect && !view.frozen && view.product) load(); // fill what was missed
}

// --- banners -----------------------------------------------------------------------------

function showError(text) {
  const banner = $("error-banner");
  banner.textContent = text;
  banner.hidden = !text;
}

/** Say plainly when the data is not a live exchange feed (replay, simulator, lake only). */
function showSource(health) {
  const source = health.source;
  let text = "";
  if (!source) {
    text = "This API runs no source of its own: history from the lake (live only via Kafka).";
  } else if (source.kind === "replay") {
    const state = source.finished ? "finished playing" : "playing back";
    text = `Replay source: recorded exchange frames, ${state} — not live market data.`;
  } else if (source.simulated) {
    text = "Simulated data from the built-in simulator — not real market data.";
  } else if (!source.connected) {
    text = `Exchange feed not connected (${source.last_error || "connecting"}).`;
  }
  const banner = $("source-banner");
  banner.dataset.source = source ? source.kind : "none";
  banner.textContent = text;
  banner.hidden = !text;
}

async function refreshHealth() {
  try {
    showSource(await api.health());
  } catch (error) {
    showError(`Could not reach the API: ${error.message}`);
  }
}

// --- API token ---------------------------------------------------------------------------

function storage() {
  try {
    return window.localStorage;
  } catch {
    return null; // storage disabled: the token lasts as long as the page
  }
}

/**
 * The token to send: one given in the page's URL (`/?token=...`, taken out of the address
 * bar and history at once, then remembered in this browser), else the one remembered.
 */
function takeToken() {
  const params = new URLSearchParams(window.location.search);
  const given = params.get("token");
  if (given !== null) {
    params.delete("token");
    const rest = params.toString();
    window.history.replaceState(null, "", `${window.location.pathname}${rest ? `?${rest}` : ""}`);
    if (given) storage()?.setItem(TOKEN_KEY, given);
    return given;
  }
  return storage()?.getItem(TOKEN_KEY) || null;
}

/** The API wants a token it does not have: ask for it once, then start again with it. */
function askForToken() {
  const form = $("token-form");
  if (!form.hidden) return;
  $("token-status").textContent = api.token()
    ? "The API refused the saved token. Enter the current one."
    : "This API needs an access token. Enter it once; this browser remembers it.";
  showError("");
  form.hidden = false;
  $("token-input").focus();
}

function useToken(event) {
  event.preventDefault();
  const value = $("token-input").value.trim();
  if (!value) return;
  storage()?.setItem(TOKEN_KEY, value);
  if (!storage()) api.setToken(value);
  window.location.reload();
}

// --- controls ----------------------------------------------------------------------------

function remember() {
  const params = new URLSearchParams({ product: view.product, granularity: view.granularity });
  if (view.exchange) params.set("exchange", view.exchange);
  window.history.replaceState(null, "", `${window.location.pathname}?${params}`);
}

function follow() {
  remember();
  stream.follow(view.exchange, view.product, view.granularity);
  load();
}

function switchProduct(product) {
  if (alert.armed && alert.armed.product !== product) {
    alert.clear();
    $("alert-status").textContent = `Alert cleared: the product changed to ${product}.`;
  }
  view.product = product;
  view.price = null;
  depth.reset(); // until the new product's book arrives
  follow();
}

function toggleFreeze() {
  view.frozen = !view.frozen;
  $("freeze").setAttribute("aria-pressed", String(view.frozen));
  $("frozen-banner").hidden = !view.frozen;
  if (!view.frozen) load(); // catch up with what happened meanwhile
}

function setAlert(event) {
  event.preventDefault();
  const toast = $("alert-toast");
  toast.hidden = true;
  try {
    const armed = alert.arm(view.product, $("alert-price").value, view.price);
    const wait = armed.side < 0 ? "waiting for a rise" : armed.side > 0 ? "waiting for a fall" : "";
    const now = view.price ? ` (now ${view.price}${wait ? `, ${wait}` : ""})` : "";
    $("alert-status").textContent = `Alert set: ${armed.product} crossing ${armed.threshold}${now}.`;
    $("alert-price").removeAttribute("aria-invalid");
  } catch (error) {
    $("alert-price").setAttribute("aria-invalid", "true");
    $("alert-status").textContent = error.message;
  }
}

function clearAlert() {
  alert.clear();
  $("alert-toast").hidden = true;
  $("alert-status").textContent = "No alert set.";
}

function alertFired(fired) {
  const toast = $("alert-toast");
  const verb = fired.direction === "up" ? "rose to" : "fell to";
  toast.textContent = `${fired.product} ${verb} ${fired.price}, crossing your alert at ${fired.threshold}.`;
  Object.assign(toast.dataset, {
    price: fired.price,
    threshold: fired.threshold,
    direction: fired.direction,
    tradeId: fired.tradeId,
  });
  toast.hidden = false;
  $("alert-status").textContent = "Alert fired. Set a new one to keep watching.";
}

// --- start -------------------------------------------------------------------------------

async function productIds() {
  for (;;) {
    try {
      const ids = (await api.products()).data.map((p) => p.product_id);
      if (ids.length) return ids;
      showError("No products yet: waiting for the first market data…");
    } catch (error) {
      if (error instanceof api.TokenError) askForToken();
      else showError(`Could not list products: ${error.message}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 3000));
  }
}

/** Exchanges with a source or data, as [lake name, label] (empty if the API cannot say). */
async function exchangeChoices() {
  try {
    return (await api.exchanges()).data.map((e) => {
      const label = e.name ? `${e.name}${e.simulated ? " (simulated)" : ""}` : e.exchange;
      return [e.exchange, label];
    });
  } catch {
    return [];
  }
}

async function switchExchange(exchange) {
  view.exchange = exchange;
  api.setExchange(exchange);
  const ids = await productIds();
  $("product").replaceChildren(...ids.map((id) => new Option(id, id)));
  $("product").value = ids[0];
  switchProduct(ids[0]);
}

async function start() {
  api.setToken(takeToken());
  $("token-form").addEventListener("submit", useToken);
  const themeButton = $("theme");
  const theme = initialTheme();
  applyTheme(theme, themeButton);
  chart.setTheme(theme);
  depth.setTheme(theme);
  themeButton.addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    applyTheme(next, themeButton, true);
    chart.setTheme(next);
    depth.setTheme(next);
  });
  $("freeze").addEventListener("click", toggleFreeze);
  $("alert-form").addEventListener("submit", setAlert);
  $("alert-clear").addEventListener("click", clearAlert);
  $("alert-toast").addEventListener("click", () => ($("alert-toast").hidden = true));

  refreshHealth();
  setInterval(refreshHealth, HEALTH_EVERY_MS);
  setInterval(refreshStats, STATS_EVERY_MS);

  const params = new URLSearchParams(window.location.search);
  const wanted = Number(params.get("granularity"));
  view.granularity = GRANULARITIES.includes(wanted) ? wanted : 60;
  const granularity = $("granularity");
  granularity.value = String(view.granularity);
  granularity.addEventListener("change", () => {
    view.granularity = Number(granularity.value);
    follow();
  });

  const choices = await exchangeChoices();
  const exchangeSelect = $("exchange");
  exchangeSelect.replaceChildren(...choices.map(([value, label]) => new Option(label, value)));
  const names = choices.map(([value]) => value);
  view.exchange = names.includes(params.get("exchange")) ? params.get("exchange") : names[0] || null;
  exchangeSelect.value = view.exchange || "";
  exchangeSelect.closest("label").hidden = names.length < 2; // one venue: nothing to choose
  api.setExchange(view.exchange);
  exchangeSelect.addEventListener("change", () => switchExchange(exchangeSelect.value));

  const ids = await productIds();
  const select = $("product");
  select.replaceChildren(...ids.map((id) => new Option(id, id)));
  view.product = ids.includes(params.get("product")) ? params.get("product") : ids[0];
  select.value = view.product;
  select.addEventListener("change", () => switchProduct(select.value));
  stream.start(); // once the API took the token (if it wants one)
  follow();
}

start();
