// The trade tape: the newest 50 trades, newest on top, buy/sell coloured and labelled (colour
// is never the only cue). Trades already shown are skipped, so a history reload and the live
// stream can overlap safely.

const LIMIT = 50;

function timeOfDay(iso) {
  // "2024-01-01T12:34:56.789012Z" -> "12:34:56.789" (UTC, as the API sends it)
  return iso.slice(11, 23);
}

export class TradeTape {
  constructor(table) {
    this.body = table.tBodies[0];
    this.shown = new Set(); // trade ids as text
  }

  /** Replace the tape with `trades` (newest first, as the API pages them). */
  replace(trades) {
    this.body.replaceChildren();
    this.shown.clear();
    for (const trade of trades.slice(0, LIMIT).reverse()) this.add(trade);
  }

  /** Put one trade on top (or in order, if it arrives late). */
  add(trade) {
    const id = String(trade.trade_id);
    if (this.shown.has(id)) return;
    this.shown.add(id);
    const row = this.row(trade, id);
    let before = this.body.firstElementChild;
    while (before && BigInt(before.dataset.tradeId) > BigInt(id)) {
      before = before.nextElementSibling;
    }
    this.body.insertBefore(row, before);
    while (this.body.rows.length > LIMIT) {
      this.shown.delete(this.body.lastElementChild.dataset.tradeId);
      this.body.lastElementChild.remove();
    }
  }

  row(trade, id) {
    const row = document.createElement("tr");
    row.className = trade.side === "buy" ? "buy" : "sell";
    row.dataset.tradeId = id;
    row.title = `trade ${id}`;
    const cells = [timeOfDay(trade.time), trade.side, trade.price, trade.size];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  }
}
