// {name}: counts the words of a text, or of a file under /data, and lists the most frequent
// ones. A Guild tool in JavaScript; replace this with what your tool does.
//
// Build: npm install && npm run build
import { log } from 'guild:tool/log@0.1.0';
import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';

const INPUT_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  type: 'object',
  additionalProperties: false,
  properties: {
    text: { type: 'string', description: 'The text to look at.' },
    path: { type: 'string', description: 'Or a file to read, under the /data mount.' },
    top: { type: 'integer', minimum: 0, maximum: 100, default: 3, description: 'How many of the most frequent words to return.' },
  },
};

/** Throw one of these from run: it becomes the tool-error `tag` with message `val`. */
const toolError = (tag, val) => ({ tag, val });

/** Read a UTF-8 file through the directories the host mounted (wasi:filesystem). */
function readText(path) {
  const mount = getDirectories().find(([, guest]) => path === guest || path.startsWith(`${guest.replace(/\/$/, '')}/`));
  if (!mount) throw toolError('denied', `${path} is not under a mounted directory`);
  const [dir, guest] = mount;
  try {
    const file = dir.openAt({ symlinkFollow: true }, path.slice(guest.length).replace(/^\//, '') || '.', {}, { read: true });
    const chunks = [];
    let offset = 0n;
    for (;;) {
      const [chunk, end] = file.read(65536n, offset);
      chunks.push(chunk);
      offset += BigInt(chunk.byteLength);
      if (end || chunk.byteLength === 0) break;
    }
    const decoder = new TextDecoder();
    return chunks.map((c, i) => decoder.decode(c, { stream: i < chunks.length - 1 })).join('');
  } catch (e) {
    // The sandbox refused (a path out of the mount by `..` or a symbolic link): a denial.
    const code = e?.payload ?? e?.message ?? String(e);
    throw toolError(code === 'not-permitted' || code === 'access' ? 'denied' : 'failed', `${path}: ${code}`);
  }
}

export const tool = {
  describe() {
    return {
      name: '{name}',
      version: '0.1.0',
      description: 'Counts the words of a text or a file and lists the most frequent ones.',
      inputSchema: JSON.stringify(INPUT_SCHEMA),
      outputSchema: undefined,
      capabilities: {
        dirs: [{ guestPath: '/data', access: 'read-only', purpose: 'files whose words to count' }],
        hosts: [],
        secrets: [],
        gpu: false,
      },
    };
  },
  run(input) {
    let request;
    try {
      request = JSON.parse(input);
    } catch (e) {
      throw toolError('invalid-input', `input is not JSON: ${e.message}`);
    }
    const known = Object.keys(INPUT_SCHEMA.properties);
    if (request === null || typeof request !== 'object' || Object.keys(request).some((k) => !known.includes(k))) {
      throw toolError('invalid-input', 'input must be an object with text or path, and top');
    }
    const { top = 3 } = request;
    if (!Number.isInteger(top) || top < 0 || top > 100) throw toolError('invalid-input', 'top must be an integer from 0 to 100');
    let text;
    if (typeof request.text === 'string') text = request.text;
    else if (typeof request.path === 'string') text = readText(request.path);
    else throw toolError('invalid-input', 'give text, or path to a file under /data');

    const counts = new Map();
    for (const word of text.toLowerCase().split(/\s+/).filter(Boolean)) counts.set(word, (counts.get(word) ?? 0) + 1);
    const ranked = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).slice(0, top);
    const words = [...counts.values()].reduce((a, b) => a + b, 0);
    log('info', `counted ${words} words`);
    return JSON.stringify({ words, most_frequent: ranked });
  },
};
