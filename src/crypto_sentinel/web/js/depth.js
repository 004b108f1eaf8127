// The order book panel: a depth chart (cumulative bid and ask size by price, Plotly) and the
// book's spread and mid, from the `book` push channel. Only the newest book counts (the server
// conflates them), so a redraw per animation frame shows the latest one. Without a book the
// panel says why instead of drawing empty axes.

import { PlotView } from "./plotview.js";

const COLOURS = {
  light: { paper: "#ffffff", text: "#1f2933", grid: "#e4e7eb", bid: "#0a7d45", ask: "#c5221f" },
  dark: { paper: "#161b22", text: "#e6edf3", grid: "#30363d", bid: "#3fb950", ask: "#f85149" },
};
const EMPTY =
  "No order book for this product: order books are off (SENTINEL_BOOKS=false) or none has " +
  "been received yet.";

/** Running totals of [[price, size], ...] best first, as floats for drawing only. */
function cumulative(levels) {
  let total = 0;
  return levels.map(([price, size]) => {
    total += Number(size);
    return [Number(price), total];
  });
}

export class DepthChart extends PlotView {
  constructor(element, note, readout) {
    super(element);
    this.note = note;
    this.readout = readout;
    this.book = null;
    this.reset();
  }

  /** A new product: nothing shown until its book arrives. */
  reset() {
    this.book = null;
    this.draw();
  }

  /** The newest book message (REST shape plus spread and mid). */
  show(book) {
    this.book = book;
    this.draw();
  }

  render() {
    const book = this.book;
    const ready = book !== null && book.valid && (book.bids.length > 0 || book.asks.length > 0);
    const state = book === null ? "empty" : ready ? "ready" : "invalid";
    this.element.dataset.state = state;
    this.element.dataset.updateId = book && book.update_id !== null ? String(book.update_id) : "";
    this.readout.textContent = ready && book.spread !== null
      ? `Spread ${book.spread} · mid ${book.mid}`
      : "";
    this.note.textContent =
      state === "empty" ? EMPTY : state === "invalid"
        ? `Order book out of sync (${book.invalid_reason || "no levels"}): waiting for a new snapshot.`
        : "";
    this.note.hidden = state === "ready";
    this.element.hidden = state !== "ready";
    if (!ready) return;
    const colours = COLOURS[this.theme];
    const bids = cumulative(book.bids).reverse(); // lowest price first, for the x axis
    const asks = cumulative(book.asks);
    const side = (name, points, colour) => ({
      type: "scatter",
      mode: "lines",
      name,
      x: points.map((p) => p[0]),
      y: points.map((p) => p[1]),
      line: { shape: "hv", color: colour },
      fill: "tozeroy",
      hovertemplate: `${name} %{y} at %{x}<extra></extra>`,
    });
    const narrow = this.element.clientWidth < 480;
    const axis = { gridcolor: colours.grid, zerolinecolor: colours.grid };
    const layout = {
      uirevision: `${book.exchange}/${book.product_id}`,
      margin: { l: narrow ? 40 : 56, r: narrow ? 6 : 12, t: 8, b: 28 },
      paper_bgcolor: colours.paper,
      plot_bgcolor: colours.paper,
      font: { color: colours.text, family: "system-ui, sans-serif", size: narrow ? 11 : 12 },
      showlegend: false,
      xaxis: { ...axis, nticks: narrow ? 4 : 0, title: { text: narrow ? "" : "Price" } },
      yaxis: { ...axis, title: { text: narrow ? "" : "Cumulative size" } },
    };
    const config = { displaylogo: false, responsive: true, displayModeBar: false };
    window.Plotly.react(
      this.element,
      [side("bids", bids, colours.bid), side("asks", asks, colours.ask)],
      layout,
      config,
    );
    this.drawn = true;
  }
}
