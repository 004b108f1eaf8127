// REST calls to the API that serves this page (same origin, so it works offline and behind
// any host name). Errors carry the API's own JSON message.

async function getJSON(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const reason = body && body.error ? body.error : response.statusText;
    throw new Error(`${url.pathname}: ${response.status} ${reason}`);
  }
  return body;
}

const product = (id) => `/v1/products/${encodeURIComponent(id)}`;

export const health = () => getJSON("/health");
export const products = () => getJSON("/v1/products");
export const stats = (id) => getJSON(`${product(id)}/stats`);
export const trades = (id, limit) => getJSON(`${product(id)}/trades`, { limit });
/** Candles, newest first; `end` (Unix seconds) pages back in time, default: up to now. */
export const candles = (id, granularity, end) =>
  getJSON(`${product(id)}/candles`, end === undefined ? { granularity } : { granularity, end });
export const ticker = (id) => getJSON(`${product(id)}/ticker`);
