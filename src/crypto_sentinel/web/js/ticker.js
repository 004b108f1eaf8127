// The ticker panel: last price, 24 h change, high/low, volume, VWAP, volatility and spread.
// Prices stay the API's exact decimal strings; only the derived percentages use floats.

import { compare, places, round, subtract } from "./exact.js";

const DASH = "–";
const LABELS = { 60: "1m", 300: "5m", 900: "15m", 3600: "1h", 21600: "6h", 86400: "1d" };

export class TickerPanel {
  constructor() {
    this.field = (id) => document.getElementById(id);
    this.open = null; // 24 h open, for the change as trades arrive
    this.high = null;
    this.low = null;
    this.lastTime = "";
    this.last = null; // newest price shown, for the alert's starting side
  }

  reset(product) {
    this.field("ticker-product").textContent = product;
    for (const id of ["last-price", "change-24h", "high-24h", "low-24h", "volume-24h",
      "vwap-24h", "volatility", "spread"]) {
      this.field(id).textContent = DASH;
    }
    this.open = this.high = this.low = this.last = null;
    this.lastTime = "";
  }

  /** 24 h statistics from `/v1/products/{id}/stats`. */
  showStats(stats) {
    this.open = stats.open_24h;
    this.high = stats.high_24h;
    this.low = stats.low_24h;
    this.field("high-24h").textContent = stats.high_24h ?? DASH;
    this.field("low-24h").textContent = stats.low_24h ?? DASH;
    this.field("volume-24h").textContent = stats.volume_24h ?? DASH;
    // VWAP has many more decimals than prices: show it at price precision, exact on hover.
    const vwap = this.field("vwap-24h");
    const digits = Math.max(2, ...[stats.open_24h, stats.high_24h, stats.low_24h].map(
      (p) => (p ? places(p) : 0)));
    vwap.textContent = stats.vwap_24h ? round(stats.vwap_24h, digits) : DASH;
    vwap.title = stats.vwap_24h ? `exact: ${stats.vwap_24h}` : "";
    if (stats.last && stats.last_trade_time) this.showLast(stats.last, stats.last_trade_time);
  }

  /** A ticker (REST or push): best bid/ask give the spread. */
  showTicker(ticker) {
    if (ticker.best_bid && ticker.best_ask) {
      this.field("spread").textContent = subtract(ticker.best_ask, ticker.best_bid);
    }
    if (ticker.price) this.showLast(ticker.price, ticker.time);
  }

  /** A live trade: new last price, and the 24 h range widened if it moved outside it. */
  showTrade(trade) {
    if (this.high !== null && compare(trade.price, this.high) > 0) {
      this.high = trade.price;
      this.field("high-24h").textContent = trade.price;
    }
    if (this.low !== null && compare(trade.price, this.low) < 0) {
      this.low = trade.price;
      this.field("low-24h").textContent = trade.price;
    }
    this.showLast(trade.price, trade.time);
  }

  showLast(price, time) {
    if (time < this.lastTime) return; // an older snapshot never hides a newer price
    this.lastTime = time;
    this.last = price;
    this.field("last-price").textContent = price;
    const change = this.field("change-24h");
    if (this.open === null) return;
    const percent = (Number(subtract(price, this.open)) / Number(this.open)) * 100;
    change.textContent = `${percent >= 0 ? "+" : ""}${percent.toFixed(2)} %`;
    change.dataset.direction = percent > 0 ? "up" : percent < 0 ? "down" : "flat";
  }

  /** Standard deviation of log returns between consecutive candle closes. */
  showVolatility(candles, granularity) {
    this.field("volatility-unit").textContent = `(per ${LABELS[granularity] ?? granularity})`;
    const closes = candles.map((c) => Number(c.close)).filter((v) => v > 0);
    const returns = closes.slice(1).map((v, i) => Math.log(v / closes[i]));
    if (returns.length < 2) {
      this.field("volatility").textContent = DASH;
      return;
    }
    const mean = returns.reduce((a, b) => a + b, 0) / returns.length;
    const variance = returns.reduce((a, r) => a + (r - mean) ** 2, 0) / (returns.length - 1);
    this.field("volatility").textContent = `${(Math.sqrt(variance) * 100).toFixed(3)} %`;
  }
}
