// What the two Plotly panels (candles, depth) share: a theme, redraws batched to one per
// animation frame, and following the panel's size when it changes without the window.

export class PlotView {
  constructor(element) {
    this.element = element;
    this.theme = "light";
    this.queued = false;
    this.drawn = false;
    new ResizeObserver(() => {
      if (this.drawn && !this.element.hidden) window.Plotly.Plots.resize(this.element);
    }).observe(element);
  }

  setTheme(name) {
    this.theme = name;
    this.draw();
  }

  draw() {
    if (this.queued) return;
    this.queued = true;
    requestAnimationFrame(() => {
      this.queued = false;
      this.render();
    });
  }
}
