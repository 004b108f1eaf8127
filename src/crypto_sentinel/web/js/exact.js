// Exact decimal arithmetic on the API's price strings ("65000.12"), so comparisons for alerts
// and the spread never suffer binary floating-point rounding. Floats are used only to draw.

const DECIMAL = /^-?[0-9]+(\.[0-9]+)?$/;

/** True when `text` is a plain decimal number such as "12", "0.5" or "-3.25". */
export function isDecimal(text) {
  return typeof text === "string" && DECIMAL.test(text);
}

function parse(text) {
  const negative = text.startsWith("-");
  const [whole, fraction = ""] = (negative ? text.slice(1) : text).split(".");
  const units = BigInt(whole + fraction);
  return { units: negative ? -units : units, scale: fraction.length };
}

function aligned(a, b) {
  const x = parse(a);
  const y = parse(b);
  const scale = Math.max(x.scale, y.scale);
  return [
    x.units * 10n ** BigInt(scale - x.scale),
    y.units * 10n ** BigInt(scale - y.scale),
    scale,
  ];
}

/** -1, 0 or 1 as decimal string `a` is below, equal to or above `b`. */
export function compare(a, b) {
  const [x, y] = aligned(a, b);
  return x < y ? -1 : x > y ? 1 : 0;
}

/** Number of decimal places written in `text` ("1.50" -> 2). */
export function places(text) {
  return parse(text).scale;
}

/** `a - b` as an exact decimal string without trailing zeros. */
export function subtract(a, b) {
  const [x, y, scale] = aligned(a, b);
  return format(x - y, scale);
}

/** `text` rounded half away from zero to `digits` decimal places (for display). */
export function round(text, digits) {
  const { units, scale } = parse(text);
  if (scale <= digits) return text;
  const step = 10n ** BigInt(scale - digits);
  const size = units < 0n ? -units : units;
  const rounded = size / step + ((size % step) * 2n >= step ? 1n : 0n);
  return format(units < 0n ? -rounded : rounded, digits);
}

function format(units, scale) {
  const negative = units < 0n;
  const digits = (negative ? -units : units).toString().padStart(scale + 1, "0");
  let text = scale ? `${digits.slice(0, -scale)}.${digits.slice(-scale)}` : digits;
  if (scale) text = text.replace(/\.?0+$/, "");
  return negative && text !== "0" ? `-${text}` : text;
}
