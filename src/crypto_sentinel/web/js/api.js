// REST calls to the API that serves this page (same origin, so it works offline and behind
// any host name). Errors carry the API's own JSON message.
//
// An API started with a token (SENTINEL_API_TOKEN) wants `Authorization: Bearer <token>`:
// the page sends the token it was given (see main.js) with every call, and the live stream
// offers it as a WebSocket subprotocol (browsers cannot set headers on a WebSocket).

let apiToken = null;
let apiExchange = null; // the exchange every /v1 and /latest call asks for (null: the API's default)

/** Answer for this exchange (a lake name from /v1/exchanges) from now on. */
export function setExchange(exchange) {
  apiExchange = exchange || null;
}

export function setToken(token) {
  apiToken = token || null;
}

export const token = () => apiToken;

/** The API refused the token (or got none): 401. */
export class TokenError extends Error {}

async function getJSON(path, params = {}) {
  const url = new URL(path, window.location.origin);
  if (apiExchange && path.startsWith("/v1/products")) url.searchParams.set("exchange", apiExchange);
  for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
  const headers = { Accept: "application/json" };
  if (apiToken) headers.Authorization = `Bearer ${apiToken}`;
  const response = await fetch(url, { headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const reason = body && body.error ? body.error : response.statusText;
    const Kind = response.status === 401 ? TokenError : Error;
    throw new Kind(`${url.pathname}: ${response.status} ${reason}`);
  }
  return body;
}

const product = (id) => `/v1/products/${encodeURIComponent(id)}`;

export const health = () => getJSON("/health");
export const exchanges = () => getJSON("/v1/exchanges");
export const products = () => getJSON("/v1/products");
export const stats = (id) => getJSON(`${product(id)}/stats`);
export const trades = (id, limit) => getJSON(`${product(id)}/trades`, { limit });
/** Candles, newest first; `end` (Unix seconds) pages back in time, default: up to now. */
export const candles = (id, granularity, end) =>
  getJSON(`${product(id)}/candles`, end === undefined ? { granularity } : { granularity, end });
export const ticker = (id) => getJSON(`${product(id)}/ticker`);
