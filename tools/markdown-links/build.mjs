// One-command build of a JavaScript Guild tool: `npm run build` (after `npm install`).
//
// componentize-js turns app.js into a component for a WIT world. The Guild world
// (guild:tool/guild-tool, in wit/guild.wit) imports only guild:tool/log; a JavaScript tool that
// reads files must also name the WASI filesystem interfaces it calls, so this script assembles a
// WIT directory with one more world that adds them, taking the WASI WIT files from jco, pinned
// by package-lock.json. The host links WASI 0.2 and refuses a component importing anything else.
import { componentize } from '@bytecodealliance/componentize-js';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(here, process.argv[2] ?? 'tool.wasm');
const guildWit = join(here, 'wit', 'guild.wit');
const WASI_VERSION = '0.2.12';
const wasiWit = join(here, 'node_modules', '@bytecodealliance', 'jco', 'lib', 'wit', 'builtin', WASI_VERSION);

for (const [path, fix] of [
  [guildWit, 'copy guild.wit from Guild (`guild tool new` does) into wit/'],
  [wasiWit, 'run `npm install` first'],
]) {
  if (!existsSync(path)) {
    console.error(`build: ${path} is missing; ${fix}`);
    process.exit(1);
  }
}

// Assembled outside the source tree, which stays as the author wrote it.
const witDir = await mkdtemp(join(tmpdir(), 'guild-tool-wit-'));
await cp(guildWit, join(witDir, 'guild.wit'));
for (const pkg of ['wasi-io', 'wasi-clocks', 'wasi-filesystem']) {
  await cp(join(wasiWit, pkg), join(witDir, 'deps', pkg), { recursive: true });
}
await writeFile(
  join(witDir, 'js.wit'),
  `package guild:tool@0.1.0;

/// guild-tool plus the WASI filesystem calls a JavaScript tool makes itself.
world guild-tool-js {
    include guild-tool;
    import wasi:filesystem/preopens@${WASI_VERSION};
    import wasi:filesystem/types@${WASI_VERSION};
}
`,
);

let component;
try {
  ({ component } = await componentize({
    sourcePath: join(here, 'app.js'),
    witPath: witDir,
    worldName: 'guild-tool-js',
    // Without fetch the component imports no wasi:http; a tool can still ask for hosts in describe.
    disableFeatures: ['http', 'fetch-event'],
  }));
} finally {
  await rm(witDir, { recursive: true, force: true });
}
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);
console.log(`built ${out} (${(component.byteLength / 1048576).toFixed(1)} MiB)`);
