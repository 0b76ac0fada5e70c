// markdown-links: lists the links in Markdown files under the /data mount and flags relative
// links whose target does not exist. A Guild tool built with componentize-js; see README.md.
//
// Files are read through the WASI filesystem the host grants (wasi:filesystem), so a path that
// leaves the mount, by `..` or by a symbolic link pointing out of it, is refused by the host, not
// by this code. Links are followed when a path is opened; the directory walk does not enter them.
import { log } from 'guild:tool/log@0.1.0';
import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';

// Bounds on one run, so a huge tree ends in a clear error, not an exhausted budget.
const FILES_MAX = 10000;
const FILE_BYTES_MAX = 8 * 1024 * 1024;
const LINKS_MAX = 100000;
const READ_CHUNK_BYTES = 64 * 1024;

// Calls this instance has served, in the log line. Guild gives every call a fresh instance, so
// it always reads 1: a test holds the host to that.
let calls = 0;

const INPUT_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  title: 'Input',
  type: 'object',
  additionalProperties: false,
  properties: {
    path: {
      type: 'string',
      default: '/data',
      description: 'A Markdown file, or a directory walked for *.md and *.markdown files, under /data.',
    },
    external: {
      type: 'boolean',
      default: true,
      description: 'Whether to list external links (http:, https:, mailto:, ...) as well as relative ones.',
    },
  },
};

const OUTPUT_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  title: 'Output',
  type: 'object',
  required: ['files', 'links', 'broken'],
  properties: {
    files: { type: 'integer', description: 'Markdown files read.' },
    links: {
      type: 'array',
      items: {
        type: 'object',
        required: ['file', 'line', 'target', 'kind'],
        properties: {
          file: { type: 'string' },
          line: { type: 'integer' },
          text: { type: 'string' },
          target: { type: 'string' },
          kind: { enum: ['external', 'relative', 'anchor'] },
          broken: { type: 'string', description: 'Why a relative link does not resolve, when it does not.' },
        },
      },
    },
    broken: { type: 'integer', description: 'Relative links whose target is missing.' },
  },
};

/** A tool error: componentize-js turns a thrown `{tag, val}` into `result::err(tool-error)`. */
class ToolError extends Error {
  constructor(tag, val) {
    super(val);
    this.tag = tag;
    this.val = val;
  }
}
const invalid = (message) => new ToolError('invalid-input', message);

/** A WASI filesystem error as a tool error: refusals are denials, the rest failures. */
function fsError(path, e) {
  const code = e?.payload ?? e?.message ?? String(e);
  const denied = code === 'not-permitted' || code === 'access' || code === 'read-only';
  return new ToolError(denied ? 'denied' : 'failed', `${path}: ${code}`);
}

/** The mount holding `path` and the path relative to it. `..` is left for the host to judge. */
function locate(path) {
  for (const [descriptor, guest] of getDirectories()) {
    const root = guest.endsWith('/') ? guest : `${guest}/`;
    if (path === guest || path.startsWith(root)) {
      return { descriptor, relative: path.slice(root.length) || '.' };
    }
  }
  throw new ToolError('denied', `${path} is not under a mounted directory; mount one with --dir HOST::/data`);
}

function stat(path) {
  const { descriptor, relative } = locate(path);
  try {
    return descriptor.statAt({ symlinkFollow: true }, relative);
  } catch (e) {
    throw fsError(path, e);
  }
}

function readText(path) {
  const { descriptor, relative } = locate(path);
  let file;
  try {
    file = descriptor.openAt({ symlinkFollow: true }, relative, {}, { read: true });
  } catch (e) {
    throw fsError(path, e);
  }
  const chunks = [];
  let offset = 0n;
  for (;;) {
    let chunk, done;
    try {
      [chunk, done] = file.read(BigInt(READ_CHUNK_BYTES), offset);
    } catch (e) {
      throw fsError(path, e);
    }
    chunks.push(chunk);
    offset += BigInt(chunk.byteLength);
    if (offset > BigInt(FILE_BYTES_MAX)) {
      throw new ToolError('failed', `${path}: larger than ${FILE_BYTES_MAX} bytes`);
    }
    if (done || chunk.byteLength === 0) break;
  }
  const bytes = new Uint8Array(Number(offset));
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.byteLength;
  }
  return new TextDecoder().decode(bytes);
}

function listDir(path) {
  const { descriptor, relative } = locate(path);
  const names = [];
  try {
    const dir = descriptor.openAt({ symlinkFollow: true }, relative, { directory: true }, { read: true });
    const stream = dir.readDirectory();
    for (let entry = stream.readDirectoryEntry(); entry; entry = stream.readDirectoryEntry()) {
      names.push({ name: entry.name, type: entry.type });
    }
  } catch (e) {
    throw fsError(path, e);
  }
  return names.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Markdown files at or under `path`, sorted; symbolic links are not followed. */
function markdownFiles(path) {
  if (stat(path).type !== 'directory') return [path];
  const found = [];
  const walk = (dir) => {
    for (const { name, type } of listDir(dir)) {
      const child = `${dir === '/' ? '' : dir}/${name}`;
      if (type === 'directory') walk(child);
      else if (type === 'regular-file' && /\.(md|markdown)$/i.test(name)) {
        if (found.length >= FILES_MAX) throw new ToolError('failed', `more than ${FILES_MAX} Markdown files under ${path}`);
        found.push(child);
      }
    }
  };
  walk(path);
  return found;
}

const INLINE = /!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+["'][^"']*["'])?\s*\)/g;
const AUTOLINK = /<((?:https?|mailto|ftp):[^>\s]+)>/g;
const DEFINITION = /^\s{0,3}\[([^\]]+)\]:\s*<?(\S+?)>?(?:\s+["'(].*)?$/;

function kindOf(target) {
  if (target.startsWith('#')) return 'anchor';
  if (/^[a-z][a-z0-9+.-]*:/i.test(target)) return 'external';
  return 'relative';
}

/** Every link in `text`, skipping fenced code blocks. */
function linksIn(file, text) {
  const links = [];
  let fenced = false;
  text.split('\n').forEach((line, index) => {
    if (/^\s{0,3}(```|~~~)/.test(line)) {
      fenced = !fenced;
      return;
    }
    if (fenced) return;
    const at = { file, line: index + 1 };
    const definition = DEFINITION.exec(line);
    if (definition) {
      links.push({ ...at, text: definition[1], target: definition[2] });
      return;
    }
    for (const m of line.matchAll(INLINE)) links.push({ ...at, text: m[1], target: m[2] });
    for (const m of line.matchAll(AUTOLINK)) links.push({ ...at, text: m[1], target: m[1] });
  });
  return links.map((link) => ({ ...link, kind: kindOf(link.target) }));
}

/** `target` resolved against the directory of `file`, or null when it climbs above `/`. */
function resolveRelative(file, target) {
  const clean = decodeURI(target.split('#')[0].split('?')[0]);
  const parts = clean.startsWith('/') ? [] : file.split('/').slice(1, -1);
  for (const part of clean.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (parts.length === 0) return null;
      parts.pop();
    } else parts.push(part);
  }
  return `/${parts.join('/')}`;
}

/** Why a relative link is broken, or undefined when its target exists. */
function brokenReason(file, target) {
  const resolved = resolveRelative(file, target);
  if (resolved === null) return 'climbs above the root';
  try {
    stat(resolved);
    return undefined;
  } catch (e) {
    return e instanceof ToolError && e.tag === 'denied' ? `${resolved} is outside the mount` : `${resolved} does not exist`;
  }
}

function parseInput(text) {
  let input;
  try {
    input = JSON.parse(text);
  } catch (e) {
    throw invalid(`input is not JSON: ${e.message}`);
  }
  if (input === null || typeof input !== 'object' || Array.isArray(input)) throw invalid('input must be a JSON object');
  const unknown = Object.keys(input).filter((k) => !(k in INPUT_SCHEMA.properties));
  if (unknown.length) throw invalid(`unknown field(s): ${unknown.sort().join(', ')}`);
  const { path = '/data', external = true } = input;
  if (typeof path !== 'string' || !path.startsWith('/')) throw invalid('path must be an absolute path under /data');
  if (typeof external !== 'boolean') throw invalid('external must be true or false');
  return { path, external };
}

function run(text) {
  calls += 1;
  const { path, external } = parseInput(text);
  const files = markdownFiles(path);
  const links = [];
  for (const file of files) {
    for (const link of linksIn(file, readText(file))) {
      if (link.kind === 'external' && !external) continue;
      if (link.kind === 'relative') {
        const broken = brokenReason(file, link.target);
        if (broken) link.broken = broken;
      }
      if (links.length >= LINKS_MAX) throw new ToolError('failed', `more than ${LINKS_MAX} links under ${path}`);
      links.push(link);
    }
  }
  const broken = links.filter((link) => link.broken).length;
  log('info', `markdown-links ${path}: ${files.length} files, ${links.length} links, ${broken} broken (call ${calls} of this instance)`);
  return JSON.stringify({ files: files.length, links, broken });
}

export const tool = {
  describe() {
    return {
      name: 'markdown-links',
      version: '0.1.0',
      description:
        'Lists the links in Markdown files under /data (inline, reference and autolinks) and flags relative links whose target is missing.',
      inputSchema: JSON.stringify(INPUT_SCHEMA),
      outputSchema: JSON.stringify(OUTPUT_SCHEMA),
      capabilities: {
        dirs: [{ guestPath: '/data', access: 'read-only', purpose: 'the Markdown files to read' }],
        hosts: [],
        secrets: [],
        gpu: false,
      },
    };
  },
  run(input) {
    try {
      return run(input);
    } catch (e) {
      if (e instanceof ToolError) throw { tag: e.tag, val: e.val };
      throw { tag: 'failed', val: `unexpected error: ${e?.message ?? e}` };
    }
  },
};
