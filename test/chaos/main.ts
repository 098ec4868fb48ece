import { commandLine, fail } from '../../lib/cli.js';
import { Infra } from './system.js';
import { ROLES, type Role } from './supervisor.js';
import { emergencyCleanup, failureMessage, replayCommand, runChaos, summarize, type ChaosResult } from './runner.js';

/** The chaos test from the command line (`npm run chaos -- ...`); see docs/pipeline.md, "The randomized fault test". */
const USAGE = `usage: npm run chaos -- --seed S --minutes M [options]

Runs the randomized model-based fault test back to back until the time is up
(or N runs), each run with its own seed (S, S+1, ...), fresh databases and an
emptied private Redis. A failure prints its violations, commands, timeline and
the line that replays it; the exit code is 1 if any run failed.

  --seed S              first seed (default: from the clock)
  --minutes M           how long to keep starting runs (10)
  --runs N              at most N runs
  --path P              replay one recorded path (with the seed it printed)
  --replay-path R       with --path: a shrunk case
  --commands MIN-MAX    commands per run (30-50)
  --scale web=2,relay=2,worker=2
  --env KEY=VALUE       a setting for every process, repeatable (e.g. JOB_ATTEMPTS=4)
  --shrink-minutes M    shrink a failure; each attempt is a full run
  --verbose             print the timeline as it happens`;

const out = (s: string) => process.stdout.write(`${s}\n`);

function parseScale(spec: string): Record<Role, number> {
  const scale: Record<Role, number> = { web: 2, relay: 2, worker: 2 };
  for (const part of spec.split(',').filter(Boolean)) {
    const [role, n] = part.split('=');
    if (!ROLES.includes(role as Role) || !/^\d+$/.test(n ?? '') || Number(n) < 1) throw new Error(`--scale: bad part ${JSON.stringify(part)} (want web=N,relay=N,worker=N, each at least 1)`);
    scale[role as Role] = Number(n);
  }
  return scale;
}

function parseEnv(list: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const kv of list) {
    const i = kv.indexOf('=');
    if (i <= 0) throw new Error(`--env: want KEY=VALUE, got ${JSON.stringify(kv)}`);
    env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return env;
}

async function main(): Promise<number> {
  const { values: v } = commandLine('chaos', USAGE, {
    seed: { type: 'string' },
    minutes: { type: 'string' },
    runs: { type: 'string' },
    path: { type: 'string' },
    'replay-path': { type: 'string' },
    commands: { type: 'string' },
    scale: { type: 'string' },
    env: { type: 'string', multiple: true },
    'shrink-minutes': { type: 'string' },
    verbose: { type: 'boolean' },
  });
  const values = { ...v, minutes: v.minutes ?? '10', commands: v.commands ?? '30-50', scale: v.scale ?? '', env: v.env ?? [], verbose: v.verbose ?? false };
  const seed = values.seed === undefined ? Date.now() % 2_147_483_647 : Number(values.seed);
  if (!Number.isInteger(seed)) fail('chaos', '--seed must be an integer');
  const m = /^(\d+)-(\d+)$/.exec(values.commands);
  if (!m || Number(m[1]) > Number(m[2])) fail('chaos', '--commands must be MIN-MAX');
  const replaying = values.path !== undefined;
  const maxRuns = replaying ? 1 : values.runs === undefined ? Infinity : Number(values.runs);
  const minutes = Number(values.minutes);
  const scale = parseScale(values.scale);
  const env = parseEnv(values.env);
  const extra = [values.scale ? `--scale ${values.scale}` : '', ...values.env.map((e) => `--env ${e}`), values.commands !== '30-50' ? `--commands ${values.commands}` : ''].filter(Boolean).join(' ');

  out(`chaos: seed ${seed}, ${replaying ? `replaying path ${values.path}` : `${minutes} min${Number.isFinite(maxRuns) ? `, at most ${maxRuns} run(s)` : ''}`}, ${values.commands} commands per run, scale ${JSON.stringify(scale)}`);
  const infra = await Infra.create();
  const onSignal = () => {
    out('interrupted: cleaning up');
    emergencyCleanup(infra);
    process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const results: ChaosResult[] = [];
  const t0 = Date.now();
  try {
    for (let i = 0; i < maxRuns && (i === 0 || Date.now() - t0 < minutes * 60_000); i++) {
      const runSeed = seed + i;
      const r = await runChaos(infra, {
        seed: runSeed,
        ...(values.path === undefined ? {} : { path: values.path }),
        ...(values['replay-path'] === undefined ? {} : { replayPath: values['replay-path'] }),
        minCommands: Number(m[1]),
        maxCommands: Number(m[2]),
        ...(values['shrink-minutes'] === undefined ? {} : { shrinkMs: Number(values['shrink-minutes']) * 60_000 }),
        system: { scale, env },
        ...(values.verbose ? { echo: out } : {}),
      });
      results.push(r);
      for (const e of r.executions) out(`seed ${runSeed} ${summarize(e)}`);
      if (r.failed) {
        out(failureMessage(r, extra));
        out('');
      }
    }
  } finally {
    await infra.destroy();
  }

  const failed = results.filter((r) => r.failed);
  const executions = results.flatMap((r) => r.executions);
  const faults = new Map<string, number>();
  for (const e of executions) for (const [k, v] of Object.entries(e.faults)) faults.set(k, (faults.get(k) ?? 0) + v);
  out('');
  out(`summary: ${results.length} seed(s), ${executions.length} run(s) in ${((Date.now() - t0) / 60_000).toFixed(1)} min; ${executions.reduce((n, e) => n + e.commands, 0)} commands, ${executions.reduce((n, e) => n + e.events, 0)} events`);
  out(`faults: ${[...faults].map(([k, v]) => `${k}×${v}`).join(', ') || 'none'}`);
  out(failed.length === 0 ? 'all runs passed' : `${failed.length} failed: ${failed.map((r) => replayCommand(r, extra)).join(' ; ')}`);
  return failed.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(2);
  },
);
