// Candlestick + volume chart drawn with Plotly (a classic script served by the API, so it is
// the global `Plotly`). Candles are kept by start time: a live update replaces the forming
// candle in place, and redraws are batched to one per animation frame. A candle the API does
// not prove `complete` (trade ids missing in it or next to it, or a gap the backfill could not
// fill) gets a marker above its high.

import { PlotView } from "./plotview.js";

const COLOURS = {
  light: {
    paper: "#ffffff", text: "#1f2933", grid: "#e4e7eb", up: "#0a7d45", down: "#c5221f",
    incomplete: "#b7791f",
  },
  dark: {
    paper: "#161b22", text: "#e6edf3", grid: "#30363d", up: "#3fb950", down: "#f85149",
    incomplete: "#d29922",
  },
};
const MAX_CANDLES = 600;

export class CandleChart extends PlotView {
  constructor(element) {
    super(element);
    this.candles = new Map(); // start (ISO text) -> candle as the API sends it
    this.view = ""; // product and granularity: zoom is kept until they change
    this.loaded = false; // false until the first history arrives: "loading", not "empty"
  }

  /** Show `list` (any order) for `view`, dropping what was shown before. */
  replace(list, view) {
    this.view = view;
    this.loaded = true;
    this.candles = new Map(list.map((c) => [c.start, c]));
    this.draw();
  }

  /** Add a candle or replace the one with the same start. */
  upsert(candle) {
    this.candles.set(candle.start, candle);
    if (this.candles.size > MAX_CANDLES) {
      this.candles.delete(this.ordered()[0].start);
    }
    this.draw();
  }

  /** Candles oldest first (the API's ISO times sort as text). */
  ordered() {
    return [...this.candles.values()].sort((a, b) => (a.start < b.start ? -1 : 1));
  }

  render() {
    const colours = COLOURS[this.theme];
    const candles = this.ordered();
    const x = candles.map((c) => c.start);
    const price = {
      type: "candlestick",
      name: "price",
      x,
      open: candles.map((c) => Number(c.open)),
      high: candles.map((c) => Number(c.high)),
      low: candles.map((c) => Number(c.low)),
      close: candles.map((c) => Number(c.close)),
      increasing: { line: { color: colours.up } },
      decreasing: { line: { color: colours.down } },
      yaxis: "y",
    };
    const volume = {
      type: "bar",
      name: "volume",
      x,
      y: candles.map((c) => Number(c.volume)),
      marker: {
        color: candles.map((c) => (Number(c.close) >= Number(c.open) ? colours.up : colours.down)),
      },
      yaxis: "y2",
    };
    // `complete` is absent only from a server older than it: then `gap` alone says so.
    const missing = candles.filter((c) => c.complete === false || c.gap);
    const incomplete = {
      type: "scatter",
      mode: "markers",
      name: "incomplete",
      x: missing.map((c) => c.start),
      y: missing.map((c) => Number(c.high)),
      marker: { symbol: "triangle-down", size: 10, color: colours.incomplete },
      hovertext: missing.map((c) =>
        c.gap
          ? "incomplete: trades missing in a gap the backfill could not fill"
          : "incomplete: trade ids missing in or next to this candle",
      ),
      hoverinfo: "x+text",
      yaxis: "y",
    };
    // No candles: no axes at all (an empty date axis would invent a year-2000 time line),
    // only a line saying whether history is still loading or there is none.
    const shown = candles.length > 0;
    const state = shown ? "ready" : this.loaded ? "empty" : "loading";
    const note = state === "loading" ? "Loading candles…" : "No candles yet for this product and size";
    const axis = { gridcolor: colours.grid, zerolinecolor: colours.grid, visible: shown };
    const narrow = this.element.clientWidth < 480; // phones: less margin, fewer labels
    const layout = {
      uirevision: this.view,
      margin: { l: narrow ? 48 : 60, r: narrow ? 6 : 12, t: 8, b: 28 },
      paper_bgcolor: colours.paper,
      plot_bgcolor: colours.paper,
      font: { color: colours.text, family: "system-ui, sans-serif", size: narrow ? 11 : 12 },
      showlegend: false,
      xaxis: { ...axis, type: "date", rangeslider: { visible: false }, nticks: narrow ? 4 : 0 },
      yaxis: { ...axis, domain: [0.3, 1], title: { text: narrow ? "" : "Price" } },
      yaxis2: { ...axis, domain: [0, 0.22], title: { text: narrow ? "" : "Volume" } },
      annotations: shown
        ? []
        : [{ text: note, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }],
    };
    const config = { displaylogo: false, responsive: true, displayModeBar: !narrow && shown };
    this.element.dataset.state = state;
    window.Plotly.react(this.element, [price, volume, incomplete], layout, config);
    this.drawn = true;
  }
}
