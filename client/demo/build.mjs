// Builds the demo page into dist/ (or the directory given as the first argument): one
// minified ES module bundle, one stylesheet, and the HTML. The output is committed and
// embedded in the server binary; `test/demo-bundle.test.mjs` checks it equals a fresh build.
// Usage: node demo/build.mjs [OUTDIR]
import { build } from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const outdir = path.resolve(process.argv[2] ?? path.join(here, 'dist'));
fs.mkdirSync(outdir, { recursive: true });

const common = { bundle: true, minify: true, legalComments: 'none', logLevel: 'warning', write: false };
const js = await build({
  ...common,
  entryPoints: [path.join(here, 'src/main.ts')],
  format: 'esm',
  target: ['es2022', 'chrome100', 'firefox100', 'safari15'],
  platform: 'browser',
  // The client loads `ws` only on Node without a WebSocket; browsers never do.
  external: ['ws'],
});
const css = await build({ ...common, entryPoints: [path.join(here, 'src/style.css')] });

const files = {
  'app.js': js.outputFiles[0].contents,
  'app.css': css.outputFiles[0].contents,
  'index.html': fs.readFileSync(path.join(here, 'index.html')),
};
for (const [name, contents] of Object.entries(files)) {
  fs.writeFileSync(path.join(outdir, name), contents);
  const gz = zlib.gzipSync(contents, { level: 9 }).length;
  console.log(`${name.padEnd(10)} ${String(contents.length).padStart(8)} bytes, ${String(gz).padStart(7)} gzipped`);
}
