// The live push connection (WebSocket /v1/stream): subscribes to one product's trades, ticker,
// candles and order book (top BOOK_DEPTH levels), reconnects with jittered exponential backoff, and treats a connection that has
// been silent for longer than three heartbeats as dead (the server beats every 5 s).

const SILENCE_MS = 16000;
const MAX_BACKOFF_MS = 10000;
const BOOK_DEPTH = 50; // levels per side: the most the push sends

export class LiveStream {
  /**
   * @param {object} handlers  onMessage(msg), onStatus(state, text), onOpen(isReconnect),
   *                           token() (the API token for the URL, or null)
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.socket = null;
    this.wanted = null; // {exchange, product, granularity}
    this.attempts = 0;
    this.opened = false;
    this.watchdog = null;
  }

  start() {
    this.connect();
  }

  /** Follow `product` of `exchange` at candle size `granularity` (replaces the previous
   * subscription). */
  follow(exchange, product, granularity) {
    const previous = this.wanted;
    this.wanted = { exchange, product, granularity };
    if (!this.isOpen()) return;
    if (previous) this.send("unsubscribe", previous);
    this.send("subscribe", this.wanted);
  }

  isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  connect() {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${window.location.host}/v1/stream`;
    // The API token (if any) goes as a subprotocol, not in the URL: URLs end up in logs.
    const token = this.handlers.token && this.handlers.token();
    const socket = token
      ? new WebSocket(url, ["sentinel.v1", `bearer.${token}`])
      : new WebSocket(url);
    this.socket = socket;
    this.status(this.opened ? "reconnecting" : "connecting");
    socket.addEventListener("open", () => {
      const again = this.opened;
      this.opened = true;
      this.attempts = 0;
      if (this.wanted) this.send("subscribe", this.wanted);
      this.handlers.onStatus("live", "Live");
      this.handlers.onOpen(again);
      this.alive();
    });
    socket.addEventListener("message", (event) => {
      this.alive();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // the server only sends JSON; ignore anything else
      }
      this.handlers.onMessage(message);
    });
    socket.addEventListener("close", () => this.closed(socket));
  }

  send(type, { exchange, product, granularity }) {
    const channels = ["trades", "ticker", `candles:${granularity}`, "book"];
    const message = { type, product_ids: [product], channels, depth: BOOK_DEPTH };
    if (exchange) message.exchange = exchange;
    this.socket.send(JSON.stringify(message));
  }

  alive() {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => this.socket && this.socket.close(), SILENCE_MS);
  }

  closed(socket) {
    if (socket !== this.socket) return;
    clearTimeout(this.watchdog);
    this.socket = null;
    this.attempts += 1;
    const base = Math.min(MAX_BACKOFF_MS, 500 * 2 ** (this.attempts - 1));
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.status("reconnecting", delay);
    setTimeout(() => this.connect(), delay);
  }

  status(state, delay) {
    const text =
      state === "connecting"
        ? "Connecting…"
        : delay === undefined
          ? `Reconnecting (attempt ${this.attempts})…`
          : `Reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${this.attempts})`;
    this.handlers.onStatus(state, text);
  }
}
