// A one-shot price alert: fires when a trade reaches or passes the threshold from the side the
// price was on when the alert was set. Comparisons are exact (decimal strings, no floats).

import { compare, isDecimal } from "./exact.js";

export class PriceAlert {
  constructor(onFire) {
    this.onFire = onFire;
    this.armed = null; // {product, threshold, side}; side -1: price below, 1: above, 0: unknown
  }

  /**
   * Watch `product` for `threshold`; `reference` is its current price (or null).
   * Throws an Error with a message for the user when the threshold is not a positive price.
   */
  arm(product, threshold, reference) {
    const text = threshold.trim();
    if (!isDecimal(text) || compare(text, "0") <= 0) {
      throw new Error("Enter a positive price such as 65000.50 (digits and one dot).");
    }
    const side = reference ? compare(reference, text) : 0;
    this.armed = { product, threshold: text, side };
    return this.armed;
  }

  clear() {
    this.armed = null;
  }

  /** Look at a live trade; fires (once) when it crosses the threshold. */
  check(trade) {
    const alert = this.armed;
    if (!alert || trade.product_id !== alert.product) return;
    const now = compare(trade.price, alert.threshold);
    if (alert.side === 0) {
      alert.side = now; // first price seen decides which way a cross goes
      return;
    }
    if (now === alert.side) return;
    this.armed = null;
    this.onFire({
      product: alert.product,
      threshold: alert.threshold,
      price: trade.price,
      tradeId: String(trade.trade_id),
      direction: alert.side < 0 ? "up" : "down",
    });
  }
}
