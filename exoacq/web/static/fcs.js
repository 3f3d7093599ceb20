// A small reader of FCS 3.0/3.1 list-mode files (the format of a flow run's events.fcs), enough
// to draw the events in the browser: the TEXT keywords and one column per parameter.

/** Split FCS TEXT (first character = the delimiter; a doubled delimiter is a literal one). */
function splitText(text) {
  const delimiter = text[0];
  const fields = [];
  let current = "";
  for (let i = 1; i < text.length; i += 1) {
    const ch = text[i];
    if (ch === delimiter) {
      if (text[i + 1] === delimiter) {
        current += delimiter;
        i += 1;
      } else {
        fields.push(current);
        current = "";
      }
    } else {
      current += ch;
    }
  }
  if (current) fields.push(current);
  const keywords = {};
  for (let i = 0; i + 1 < fields.length; i += 2) keywords[fields[i].trim().toUpperCase()] = fields[i + 1];
  return keywords;
}

/**
 * Parse an FCS file. Returns {keywords, names, columns: {name: Float64Array}, events}.
 * Throws an Error naming what is not supported ($MODE other than L, $DATATYPE other than F, D, I).
 */
export function parseFcs(buffer) {
  const bytes = new Uint8Array(buffer);
  const latin1 = new TextDecoder("latin1");
  const header = latin1.decode(bytes.subarray(0, 58));
  if (!header.startsWith("FCS")) throw new Error("not an FCS file");
  const offset = (a, b) => parseInt(header.slice(a, b).trim() || "0", 10);
  const textStart = offset(10, 18), textEnd = offset(18, 26);
  const keywords = splitText(new TextDecoder("utf-8").decode(bytes.subarray(textStart, textEnd + 1)));
  let dataStart = offset(26, 34), dataEnd = offset(34, 42);
  if (!dataStart && keywords.$BEGINDATA) {
    dataStart = parseInt(keywords.$BEGINDATA, 10);
    dataEnd = parseInt(keywords.$ENDDATA, 10);
  }
  if ((keywords.$MODE || "L").toUpperCase() !== "L") throw new Error(`FCS $MODE ${keywords.$MODE}: only list mode is read`);
  const datatype = (keywords.$DATATYPE || "").toUpperCase();
  const nPar = parseInt(keywords.$PAR, 10);
  const nEvents = parseInt(keywords.$TOT, 10);
  const little = (keywords.$BYTEORD || "1,2,3,4").trim().startsWith("1");
  const names = [], widths = [];
  for (let p = 1; p <= nPar; p += 1) {
    names.push(keywords[`$P${p}N`] || `P${p}`);
    widths.push(parseInt(keywords[`$P${p}B`], 10));
  }
  if (!["F", "D", "I"].includes(datatype)) throw new Error(`FCS $DATATYPE ${datatype}: not read here`);
  const view = new DataView(buffer, dataStart, Math.max(0, dataEnd - dataStart + 1));
  const columns = Object.fromEntries(names.map((n) => [n, new Float64Array(nEvents)]));
  const rowBytes = widths.reduce((a, b) => a + b / 8, 0);
  if (rowBytes * nEvents > view.byteLength) throw new Error("FCS DATA segment shorter than $TOT events");
  let pos = 0;
  for (let e = 0; e < nEvents; e += 1) {
    for (let p = 0; p < nPar; p += 1) {
      let value;
      if (datatype === "F") { value = view.getFloat32(pos, little); pos += 4; }
      else if (datatype === "D") { value = view.getFloat64(pos, little); pos += 8; }
      else if (widths[p] === 16) { value = view.getUint16(pos, little); pos += 2; }
      else if (widths[p] === 32) { value = view.getUint32(pos, little); pos += 4; }
      else if (widths[p] === 8) { value = view.getUint8(pos); pos += 1; }
      else throw new Error(`FCS integer width ${widths[p]} bits: not read here`);
      columns[names[p]][e] = value;
    }
  }
  return { keywords, names, columns, events: nEvents };
}
