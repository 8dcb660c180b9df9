// Llama 2 token ids from llama-tokenizer-js's own encoder (independent of ftune and of HF tokenizers),
// for tests/fixtures/llama2_goldens.jsonl. Run with node; see tools/README.md.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

function die(msg) {
  process.stderr.write(`make_llama2_goldens: ${msg}\n`);
  process.exit(1);
}

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
if (!args.js || !args.corpus || !args.out) die('usage: node tools/make_llama2_goldens.js --js llama-tokenizer.js --corpus corpus.jsonl --out goldens.jsonl');
if (!fs.existsSync(args.js)) die(`${args.js}: file not found`);
if (!fs.existsSync(args.corpus)) die(`${args.corpus}: file not found`);
const { default: tok } = await import(pathToFileURL(path.resolve(args.js)).href);

// Text the shared corpus lacks: code, byte fallback, space runs, digits, newlines.
const extra = [
  'Hello world', 'Hello', ' Hello', '  Hello  world  ', 'Hello\nworld', 'Hello\n\nworld\n', '\n\n\n',
  'line one\r\nline two', 'tab\tseparated\tvalues', '    indented four', 'trailing   ', '   ',
  'def add(a, b):\n    return a + b\n', 'for (int i = 0; i < n; ++i) { sum += v[i]; }',
  '#include <vector>\nint main() { return 0; }', 'SELECT id, name FROM users WHERE age >= 21;',
  '{"key": [1, 2, 3], "nested": {"x": null}}', 'x = 3.14159 * r ** 2', 'git commit -m "fix: off-by-one"',
  '0', '42', '2024', '1234567890', '3.0e-8', '1,234,567.89', '$19.99', '100%', '12:30pm', '+1 (555) 010-9999',
  'café naïve façade', 'Ünïcödé', 'Привет, мир!', 'Γειά σου κόσμε', 'こんにちは世界', '你好，世界',
  '안녕하세요', 'مرحبا بالعالم', 'שלום עולם', 'नमस्ते दुनिया', 'ภาษาไทย',
  '😀', 'I ❤️ Llama 🦙!', '👩‍👩‍👧‍👦 family', '🇫🇷🇯🇵', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙', '∀x ∈ ℝ: x² ≥ 0', '→ ← ↑ ↓ ⇒',
  '\u00a0non-breaking\u00a0space', 'zero\u200bwidth', 'a\u0301 combining', '\u2581already marked',
  'The quick brown fox jumps over the lazy dog.', "It's a dog's life, isn't it?", 'ALL CAPS SENTENCE HERE',
  'mIxEd CaSe', 'e-mail: someone@example.org', 'path/to/file_name.txt', 'snake_case_name and camelCaseName',
  '[INST] Hi [/INST] Hello', '<<SYS>>\nBe brief.\n<</SYS>>', '<html><body>text</body></html>',
];

const rows = [];
for (const line of fs.readFileSync(args.corpus, 'utf8').split('\n')) {
  if (line.trim()) rows.push(JSON.parse(line).text);
}
rows.push(...extra);
const out = [];
let skipped = 0;
for (const text of rows) {
  // The JS encoder knows no added tokens; text spelling one would be split by the others.
  if (/<unk>|<s>|<\/s>/.test(text)) { ++skipped; continue; }
  const ids = tok.encode(text, false, true);
  if (ids.some((id) => !(id >= 0))) die(`no id for part of ${JSON.stringify(text)}`);
  out.push(JSON.stringify({ text, ids }));
}
fs.writeFileSync(args.out, out.join('\n') + '\n');
process.stdout.write(JSON.stringify({ out: args.out, rows: out.length, skipped_special: skipped }) + '\n');
