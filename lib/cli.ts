import { parseArgs, type ParseArgsConfig } from 'node:util';

/**
 * The command line of one of our commands: `--help` prints the usage and
 * exits 0; an unknown option or a bad value is one line naming it, the
 * synopsis (the usage's first line) with a pointer to --help, and exit 2.
 */
let synopsis = '';

export function commandLine<T extends NonNullable<ParseArgsConfig['options']>>(name: string, usage: string, options: T, allowPositionals = false) {
  synopsis = usage.split('\n')[0]!;
  let parsed;
  try {
    parsed = parseArgs({ options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals, strict: true });
  } catch (err) {
    fail(name, `${(err as Error).message.split('\n')[0]}`);
  }
  if ((parsed.values as Record<string, unknown>).help) {
    process.stdout.write(`${usage}\n`);
    process.exit(0);
  }
  return parsed as unknown as { values: { [K in keyof T]?: T[K]['type'] extends 'boolean' ? boolean : T[K]['multiple'] extends true ? string[] : string }; positionals: string[] };
}

/** One line naming the problem, the synopsis, exit 2. */
export function fail(name: string, message: string): never {
  console.error(`${name}: ${message}`);
  // How the command is run, as its usage says ("npm start", "npm run verify").
  if (synopsis) console.error(`${synopsis}  (${/^usage: (npm (?:run )?[\w:-]+)/.exec(synopsis)?.[1] ?? `npm run ${name}`} -- --help for more)`);
  process.exit(2);
}

/** A number option within bounds, or fail(). */
export function numberOption(name: string, option: string, value: string | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < min || n > max) fail(name, `--${option} takes a number from ${min} to ${max} (got ${JSON.stringify(value)})`);
  return n;
}
